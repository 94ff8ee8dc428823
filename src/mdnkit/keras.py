"""The Keras 3 front: the classic Keras MDN layer API, on any Keras backend.

Code written for the classic ``keras-mdn-layer`` package runs here after changing one import::

    from mdnkit import keras as mdn

    model = keras.Sequential([
        keras.Input((1,)),
        keras.layers.Dense(15, activation="relu"),
        keras.layers.Dense(15, activation="relu"),
        mdn.MDN(1, 5),                                  # 2*K*D + K = 15 outputs
    ])
    model.compile(loss=mdn.get_mixture_loss_func(1, 5), optimizer="rmsprop")
    params = model.predict(x)                           # (N, 15)
    y = mdn.sample_from_output(params, 1, 5, temp=1.0)  # (N, 1), one vectorised call

The network output for ``D`` output dimensions and ``K`` components is laid out as in the
classic layer, a vector of ``P = 2 K D + K`` numbers::

    [ mu_1 (D) ... mu_K (D) | sigma_1 (D) ... sigma_K (D) | logit_1 ... logit_K ]

and describes the diagonal Gaussian mixture

    p(y | x) = sum_k softmax(logits)_k  prod_d N(y_d | mu_kd, sigma_kd^2).

What differs from the classic layer (all of it bug fixes, nothing a correct program relies on;
docs/keras.md has the full table, checked side by side by tests/test_keras_compat.py):

* the loss returns one negative log-likelihood *per sample* (shape ``(B,)`` or ``(B, T)``) and
  reduces with a weighted mean, so ``sample_weight`` and masks weight samples as documented;
  it is computed in float32 or wider, in log space, with every normalising constant;
* ``compute_output_shape`` is right for inputs of any rank (``(B, T, F) -> (B, T, P)``);
* the layer, the loss, the metric and :func:`elu_plus_one_plus_epsilon` are registered
  serializable objects, so ``keras.models.load_model`` needs no ``custom_objects``;
* the in-graph sampling function and the MSE metric take a seed (a
  ``keras.random.SeedGenerator``) and so work inside ``model.fit`` on the JAX backend;
* :func:`sample_from_output` accepts one row ``(P,)``, a batch ``(N, P)`` or sequences
  ``(N, T, P)`` in one vectorised NumPy call; ``temp=0`` is greedy and ``sigma_temp=0``
  returns the component mean, never NaN.

What stays the same, on purpose: wrong-sized parameters raise :class:`MDNShapeError`, both a
``ValueError`` and the classic ``AssertionError``; the MSE "accuracy", called, returns one value
per sample; ``softmax`` keeps a float input's dtype; ``sample_from_categorical`` returns ``-1``
when it cannot sample; ``split_mixture_params`` returns slices of the input's own type.

The Keras backend (``torch``, ``jax`` or ``tensorflow``) is chosen by Keras itself, from the
``KERAS_BACKEND`` environment variable set before Keras is first imported, or from
``~/.keras/keras.json``. One convenience: if neither names a backend other than Keras's default
``tensorflow``, TensorFlow is not installed and Keras is not imported yet, importing this module
selects ``torch`` (a dependency of mdnkit) instead of letting ``import keras`` fail. When the
backend named is not installed, importing this module raises an ``ImportError`` that names
``KERAS_BACKEND``, the missing package and the backends that are installed.
"""

from __future__ import annotations

import importlib.util
import json
import math
import numbers
import os
import sys
from collections.abc import Callable
from typing import Any


def _default_backend_to_torch() -> None:
    """Pick the torch backend when Keras would otherwise pick an absent TensorFlow."""
    if "keras" in sys.modules or os.environ.get("KERAS_BACKEND"):
        return
    configured = "tensorflow"
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json")) as f:
            configured = json.load(f).get("backend", configured)
    except (OSError, ValueError, AttributeError):
        pass
    if configured == "tensorflow" and importlib.util.find_spec("tensorflow") is None:
        os.environ["KERAS_BACKEND"] = "torch"


#: the Keras backends this module is tested on (each one's package has the backend's name)
_BACKENDS = ("torch", "jax", "tensorflow")


def _backend_import_error(error: ModuleNotFoundError) -> ImportError | None:
    """An ``ImportError`` that names ``KERAS_BACKEND`` when ``import keras`` failed because the
    chosen backend's package is missing (``None`` when ``error`` is about something else)."""
    missing = (error.name or "").partition(".")[0]
    if missing not in _BACKENDS:
        return None
    installed = [b for b in _BACKENDS if importlib.util.find_spec(b) is not None] or ["none"]
    chosen = os.environ.get("KERAS_BACKEND")
    where = (
        f"KERAS_BACKEND={chosen}"
        if chosen
        else "the backend of keras.json ($KERAS_HOME or ~/.keras)"
    )
    return ImportError(
        f"Keras could not import its backend: {where} needs {missing!r}, which is not installed "
        f"(No module named {missing!r}); installed backends: {', '.join(installed)}. Set "
        "KERAS_BACKEND to one of them before keras is first imported, for example "
        f"`KERAS_BACKEND={installed[0]} python script.py`, or "
        f"os.environ['KERAS_BACKEND'] = '{installed[0]}' at the top of the script, before any "
        "`import keras`"
    )


_default_backend_to_torch()

try:
    import keras  # noqa: E402
except ModuleNotFoundError as _error:
    _better = _backend_import_error(_error)
    if _better is None:
        raise
    raise _better from _error
import numpy as np  # noqa: E402
from keras import layers, ops  # noqa: E402

__all__ = [
    "MDN",
    "MDNShapeError",
    "MixtureNLL",
    "MixtureMSEAccuracy",
    "elu_plus_one_plus_epsilon",
    "get_mixture_loss_func",
    "get_mixture_sampling_fun",
    "get_mixture_mse_accuracy",
    "split_mixture_params",
    "softmax",
    "sample_from_categorical",
    "sample_from_output",
]

_LOG_2PI = math.log(2.0 * math.pi)
_NARROW_FLOATS = ("float16", "bfloat16")
_MEAN_REDUCTIONS = ("sum_over_batch_size", "mean", "mean_with_sample_weight")

try:  # how Keras finds a tensor's mask on every backend; without it, no loss fast path
    from keras.src.backend.common.masking import get_keras_mask as _get_keras_mask
except ImportError:  # pragma: no cover - other Keras versions
    _get_keras_mask = None


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------


def _check_positive_int(value: Any, name: str) -> int:
    """Return ``value`` as an ``int`` if it is a positive integer, else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, found {value!r}")
    return int(value)


def _num_params(output_dim: int, num_mixes: int) -> int:
    return 2 * num_mixes * output_dim + num_mixes


def _check_sizes(output_dim: Any, num_mixes: Any) -> tuple[int, int, int]:
    d = _check_positive_int(output_dim, "output_dim")
    k = _check_positive_int(num_mixes, "num_mixes")
    return d, k, _num_params(d, k)


class MDNShapeError(ValueError, AssertionError):
    """Mixture parameters (or targets) of the wrong size for ``(output_dim, num_mixes)``.

    Both a ``ValueError`` (this project's rule for bad input) and an ``AssertionError`` (what
    keras-mdn-layer 1.0.0 raises, from an ``assert``, for wrong-sized ``params``), so code
    written for either catches it. The message keeps the classic sentence and adds the
    expected size ``P = 2 K D + K`` and the shape found.

    Example::

        >>> try:
        ...     split_mixture_params(np.zeros(14), 1, 5)
        ... except AssertionError as e:
        ...     print(type(e).__name__, isinstance(e, ValueError))
        MDNShapeError True
    """


def _wrong_size(found_shape: Any, d: int, k: int) -> MDNShapeError:
    p = _num_params(d, k)
    return MDNShapeError(
        "The size of params needs to match the mixture configuration: "
        f"mixture parameters must have last dimension 2*num_mixes*output_dim + num_mixes = "
        f"2*{k}*{d} + {k} = {p} (output_dim={d}, num_mixes={k}), found shape "
        f"{tuple(found_shape)}"
    )


# --------------------------------------------------------------------------------------------
# the layer
# --------------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="mdnkit")
def elu_plus_one_plus_epsilon(x: Any) -> Any:
    """ELU + 1 + epsilon: the positive activation used for the mixture scales.

    .. math:: \\sigma(x) = \\mathrm{ELU}(x) + 1 + \\varepsilon
              = \\begin{cases} x + 1 + \\varepsilon & x > 0 \\\\
                               e^{x} + \\varepsilon & x \\le 0 \\end{cases}

    with ``epsilon = keras.backend.epsilon()`` (1e-7 by default). It is smooth, positive,
    close to the identity for large ``x`` and bounded away from zero, which keeps the
    ``log sigma`` term of the loss finite. Registered as serializable, so a functional model
    that uses it as a ``Dense`` activation loads without ``custom_objects``.

    Example::

        >>> float(elu_plus_one_plus_epsilon(keras.ops.convert_to_tensor(0.0)))  # doctest: +SKIP
        1.0000001
    """
    return ops.elu(x) + 1.0 + keras.backend.epsilon()


@keras.saving.register_keras_serializable(package="mdnkit")
class MDN(layers.Layer):
    """A mixture density network output layer with the classic Keras MDN layout.

    Three dense heads on the same input ``h`` (of any rank; the last axis is the feature axis)::

        mu     = W_mu h + b_mu                    (K*D numbers, component-major)
        sigma  = ELU(W_s h + b_s) + 1 + epsilon   (K*D numbers, > 0)
        logits = W_pi h + b_pi                    (K numbers; pi = softmax(logits))

    concatenated to ``[mu | sigma | logits]``, ``2 K D + K`` numbers per position. With ``F``
    input features the layer has ``(F + 1) (2 K D + K)`` parameters, as the classic one; its
    sub-layers carry the classic names (``mdn_mus``, ``mdn_sigmas``, ``mdn_pi``).

    Args:
        output_dimension: ``D``, the dimension of the target ``y``.
        num_mixtures: ``K``, the number of Gaussian components.
        **kwargs: passed to ``keras.layers.Layer`` (``name``, ``dtype`` ...).

    Example::

        >>> model = keras.Sequential([keras.Input((1,)),
        ...                           keras.layers.Dense(15, activation="relu"),
        ...                           keras.layers.Dense(15, activation="relu"),
        ...                           MDN(1, 5)])
        >>> model.count_params()
        510
    """

    def __init__(self, output_dimension: int, num_mixtures: int, **kwargs: Any) -> None:
        d, k, _ = _check_sizes(output_dimension, num_mixtures)
        super().__init__(**kwargs)
        self.output_dim = d
        self.num_mix = k
        self.supports_masking = True
        policy = self.dtype_policy
        self.mdn_mus = layers.Dense(k * d, name="mdn_mus", dtype=policy)
        self.mdn_sigmas = layers.Dense(
            k * d, activation=elu_plus_one_plus_epsilon, name="mdn_sigmas", dtype=policy
        )
        self.mdn_pi = layers.Dense(k, name="mdn_pi", dtype=policy)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.mdn_mus.build(input_shape)
        self.mdn_sigmas.build(input_shape)
        self.mdn_pi.build(input_shape)
        self.built = True

    def call(self, inputs: Any, mask: Any = None) -> Any:
        return ops.concatenate(
            [self.mdn_mus(inputs), self.mdn_sigmas(inputs), self.mdn_pi(inputs)], axis=-1
        )

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        """``(..., F) -> (..., 2 K D + K)`` for inputs of any rank."""
        return tuple(input_shape[:-1]) + (_num_params(self.output_dim, self.num_mix),)

    def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
        return mask

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"output_dimension": self.output_dim, "num_mixtures": self.num_mix})
        return config


# --------------------------------------------------------------------------------------------
# the loss
# --------------------------------------------------------------------------------------------


def _wide(x: Any) -> Any:
    """Cast a tensor to float32 if it is a narrower float (or not a float at all)."""
    x = ops.convert_to_tensor(x)
    dtype = keras.backend.standardize_dtype(x.dtype)
    if dtype in _NARROW_FLOATS or not dtype.startswith("float"):
        x = ops.cast(x, "float32")
    return x


def _split_tensor(y_pred: Any, d: int, k: int) -> tuple[Any, Any, Any]:
    """``(..., P) -> mu (..., K, D), sigma (..., K, D), logits (..., K)`` as Keras tensors."""
    last = y_pred.shape[-1] if len(y_pred.shape) else None
    if len(y_pred.shape) == 0 or (last is not None and last != _num_params(d, k)):
        raise _wrong_size(y_pred.shape, d, k)
    lead = tuple(ops.shape(y_pred)[:-1])
    mu = ops.reshape(y_pred[..., : k * d], lead + (k, d))
    sigma = ops.reshape(y_pred[..., k * d : 2 * k * d], lead + (k, d))
    logits = y_pred[..., 2 * k * d :]
    return mu, sigma, logits


def _mixture_log_prob(y_true: Any, y_pred: Any, d: int, k: int) -> Any:
    """log p(y_true) under the mixture in ``y_pred``, shape ``y_pred.shape[:-1]``."""
    y_pred = _wide(y_pred)
    y_true = ops.cast(ops.convert_to_tensor(y_true), y_pred.dtype)
    mu, sigma, logits = _split_tensor(y_pred, d, k)
    lead = tuple(ops.shape(y_pred)[:-1])
    static_lead = tuple(y_pred.shape[:-1])
    if None not in static_lead and None not in tuple(y_true.shape):
        expected = math.prod(static_lead) * d
        found = math.prod(tuple(y_true.shape))
        if expected != found:
            raise MDNShapeError(
                f"y_true must hold output_dim={d} values per prediction, i.e. shape "
                f"{static_lead + (d,)}, found shape {tuple(y_true.shape)} for predictions of "
                f"shape {tuple(y_pred.shape)}"
            )
    y = ops.reshape(y_true, lead + (1, d))
    z = (y - mu) / sigma
    log_comp = (
        -0.5 * d * _LOG_2PI
        - ops.sum(ops.log(sigma), axis=-1)
        - 0.5 * ops.sum(ops.square(z), axis=-1)
    )
    return ops.logsumexp(ops.log_softmax(logits, axis=-1) + log_comp, axis=-1)


@keras.saving.register_keras_serializable(package="mdnkit")
class MixtureNLL(keras.losses.Loss):
    """Negative log-likelihood of a diagonal Gaussian mixture, one value per sample.

    For a target ``y`` (D numbers) and parameters ``[mu | sigma | logits]``:

    .. math:: -\\log p(y) = -\\operatorname{logsumexp}_k \\Big[ \\log\\operatorname{softmax}(
              \\mathrm{logits})_k - \\tfrac{D}{2}\\log 2\\pi - \\sum_d \\log\\sigma_{kd}
              - \\tfrac12 \\sum_d \\big(\\tfrac{y_d-\\mu_{kd}}{\\sigma_{kd}}\\big)^2 \\Big]

    computed in log space and in float32 or wider, even from float16 predictions. ``call``
    returns the per-sample values (shape ``y_pred.shape[:-1]``, e.g. ``(B,)`` or ``(B, T)``);
    the default reduction ``"mean_with_sample_weight"`` turns them into the weighted mean
    ``sum_i w_i l_i / sum_i w_i`` (masked positions get weight 0). A sample weight of shape
    ``(B,)`` for sequence predictions ``(B, T, P)`` weights every step of a sequence.

    Args:
        output_dim: ``D``.
        num_mixes: ``K``.
        name, reduction, dtype: as for ``keras.losses.Loss``; a float16/bfloat16 ``dtype``
            is widened to float32.

    Example::

        >>> loss = MixtureNLL(1, 1)
        >>> y_pred = np.array([[0.0, 1.0, 0.0]])      # mu=0, sigma=1, one component
        >>> round(float(loss(np.array([[0.0]]), y_pred)), 4)  # 0.5 log(2 pi)
        0.9189
    """

    def __init__(
        self,
        output_dim: int,
        num_mixes: int,
        name: str = "mdn_loss",
        reduction: str | None = "mean_with_sample_weight",
        dtype: str | None = None,
    ) -> None:
        d, k, _ = _check_sizes(output_dim, num_mixes)
        dtype = dtype or keras.backend.floatx()
        if keras.backend.standardize_dtype(dtype) in _NARROW_FLOATS:
            dtype = "float32"
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.output_dim = d
        self.num_mixes = k

    def __call__(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        if (
            sample_weight is None
            and self.reduction in _MEAN_REDUCTIONS
            and keras.backend.backend() != "tensorflow"  # keep TF's distribution scaling
            and _get_keras_mask is not None
            and _get_keras_mask(y_pred) is None
        ):
            # fast path, the same value as Keras's reduction: the plain mean of the losses
            y_pred = ops.convert_to_tensor(y_pred, dtype=self.dtype)
            return ops.mean(self.call(ops.convert_to_tensor(y_true, dtype=self.dtype), y_pred))
        if sample_weight is not None:
            sample_weight = ops.convert_to_tensor(sample_weight)
            n_lead = len(y_pred.shape) - 1
            if 0 < len(sample_weight.shape) < n_lead:
                # per-sequence weights (B,) for per-step losses (B, T): weight every step
                while len(sample_weight.shape) < n_lead:
                    sample_weight = ops.expand_dims(sample_weight, -1)
                # a real product, not a broadcast view: Keras later updates the weights in place
                ones = ops.ones(tuple(ops.shape(y_pred)[:-1]), dtype=sample_weight.dtype)
                sample_weight = sample_weight * ones
        return super().__call__(y_true, y_pred, sample_weight=sample_weight)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return -_mixture_log_prob(y_true, y_pred, self.output_dim, self.num_mixes)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {"output_dim": self.output_dim, "num_mixes": self.num_mixes, "dtype": self.dtype}
        )
        return config


def get_mixture_loss_func(output_dim: int, num_mixes: int) -> MixtureNLL:
    """The mixture negative log-likelihood loss for an ``MDN(output_dim, num_mixes)`` output.

    .. math:: \\ell(y, \\theta) = -\\log \\sum_k \\pi_k \\prod_d
              \\mathcal N(y_d \\mid \\mu_{kd}, \\sigma_{kd}^2)

    Returns a registered :class:`MixtureNLL` (a ``keras.losses.Loss``): per-sample values,
    weighted-mean reduction, serializable with the model. Works for ``(B, P)`` and
    ``(B, T, P)`` outputs.

    Example::

        >>> model.compile(loss=get_mixture_loss_func(1, 5), optimizer="rmsprop")  # doctest: +SKIP
    """
    return MixtureNLL(output_dim, num_mixes)


# --------------------------------------------------------------------------------------------
# in-graph sampling and the MSE metric
# --------------------------------------------------------------------------------------------


def _seed_generator(seed: int | keras.random.SeedGenerator | None) -> keras.random.SeedGenerator:
    if isinstance(seed, keras.random.SeedGenerator):
        return seed
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise ValueError(
            f"seed must be an int, a keras.random.SeedGenerator or None, found {seed!r}"
        )
    return keras.random.SeedGenerator(None if seed is None else int(seed))


def _sample_tensor(y_pred: Any, d: int, k: int, seed: keras.random.SeedGenerator) -> Any:
    """One draw from each mixture in ``y_pred`` (..., P) -> (..., D), with Keras ops."""
    y_pred = _wide(y_pred)
    mu, sigma, logits = _split_tensor(y_pred, d, k)
    lead = tuple(ops.shape(logits)[:-1])
    # Gumbel-max: argmax_k(logits_k + G_k), G_k ~ Gumbel(0, 1), is a draw from softmax(logits).
    u = keras.random.uniform(lead + (k,), minval=1e-12, maxval=1.0, seed=seed)
    idx = ops.argmax(logits - ops.log(-ops.log(u)), axis=-1)
    onehot = ops.one_hot(idx, k, dtype=y_pred.dtype)[..., None]  # (..., K, 1)
    mean = ops.sum(onehot * mu, axis=-2)
    scale = ops.sum(onehot * sigma, axis=-2)
    return mean + scale * keras.random.normal(lead + (d,), seed=seed, dtype=y_pred.dtype)


def get_mixture_sampling_fun(
    output_dim: int, num_mixes: int, seed: int | keras.random.SeedGenerator | None = None
) -> Callable[[Any], Any]:
    """A function drawing one sample per mixture from MDN outputs, with Keras ops.

    ``k ~ Categorical(softmax(logits))`` (Gumbel-max), then ``y = mu_k + sigma_k * eps`` with
    ``eps ~ N(0, I)``. Shapes ``(..., P) -> (..., D)``. The randomness comes from a
    ``keras.random.SeedGenerator`` (made from ``seed``, or given), so the function can be
    traced and jitted on every backend, JAX included; the generator is exposed as the
    function's ``seed_generator`` attribute.

    Example::

        >>> sample = get_mixture_sampling_fun(1, 5, seed=0)
        >>> y = sample(model(x))          # (B, 1)  # doctest: +SKIP
    """
    d, k, _ = _check_sizes(output_dim, num_mixes)
    generator = _seed_generator(seed)

    def sampling_func(y_pred: Any) -> Any:
        return _sample_tensor(y_pred, d, k, generator)

    sampling_func.seed_generator = generator  # type: ignore[attr-defined]
    return sampling_func


def _mixture_sample_mse(
    y_true: Any, y_pred: Any, output_dim: int, num_mixes: int, seed: Any
) -> Any:
    samples = _sample_tensor(y_pred, output_dim, num_mixes, seed)
    y = ops.reshape(ops.cast(ops.convert_to_tensor(y_true), samples.dtype), ops.shape(samples))
    return ops.mean(ops.square(samples - y), axis=-1)


@keras.saving.register_keras_serializable(package="mdnkit")
class MixtureMSEAccuracy(keras.metrics.MeanMetricWrapper):
    """Mean squared error between one sample of the predicted mixture and the target.

    .. math:: \\mathrm{mse}_i = \\tfrac1D \\lVert \\tilde y_i - y_i \\rVert^2, \\qquad
              \\tilde y_i \\sim p(\\cdot \\mid \\theta_i)

    Two faces, so that keras-mdn-layer code runs unchanged and training stays seeded:

    * called, ``metric(y_true, y_pred)``, it is the classic function: it returns one value
      per sample, ``mse_i`` (shape ``y_pred.shape[:-1]``, e.g. ``(B,)``), and keeps no state;
    * as a Keras metric (``update_state`` / ``result``, which is how ``model.compile(metrics=
      [...])`` uses it) it accumulates the (weighted) mean of ``mse_i``.

    The sampler's ``SeedGenerator`` state is a variable of the metric, so on JAX the random
    stream advances from step to step inside ``model.fit``; ``reset_state`` clears the
    running mean only. Registered serializable (keeps ``output_dim``, ``num_mixes``, ``seed``).

    Example::

        >>> model.compile(loss=get_mixture_loss_func(1, 5), optimizer="rmsprop",
        ...               metrics=[MixtureMSEAccuracy(1, 5, seed=0)])  # doctest: +SKIP
    """

    def __init__(
        self,
        output_dim: int,
        num_mixes: int,
        seed: int | None = None,
        name: str = "mse_func",
        dtype: str | None = None,
    ) -> None:
        d, k, _ = _check_sizes(output_dim, num_mixes)
        generator = _seed_generator(seed)
        super().__init__(
            fn=_mixture_sample_mse,
            name=name,
            dtype=dtype,
            output_dim=d,
            num_mixes=k,
            seed=generator,
        )
        self.output_dim = d
        self.num_mixes = k
        self.seed = None if isinstance(seed, keras.random.SeedGenerator) else seed
        self._seed_generator = generator
        # tracked as a metric variable, so stateless (JAX) training steps carry it forward
        self._seed_state = generator.state

    def __call__(self, y_true: Any, y_pred: Any) -> Any:  # type: ignore[override]
        """One squared error per sample, as the classic ``mse_func(y_true, y_pred)``.

        Draws one sample per mixture (advancing the seed) and returns
        ``mean_d (sample_d - y_d)^2`` with shape ``y_pred.shape[:-1]``; the running mean of
        the metric is left untouched.
        """
        return _mixture_sample_mse(
            y_true, y_pred, self.output_dim, self.num_mixes, self._seed_generator
        )

    def reset_state(self) -> None:
        for v in self.variables:
            if v is not self._seed_state:
                v.assign(ops.zeros(v.shape, dtype=v.dtype))

    def get_config(self) -> dict[str, Any]:
        return {
            "output_dim": self.output_dim,
            "num_mixes": self.num_mixes,
            "seed": self.seed,
            "name": self.name,
            "dtype": self.dtype,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> MixtureMSEAccuracy:
        return cls(**config)


def get_mixture_mse_accuracy(
    output_dim: int, num_mixes: int, seed: int | None = None
) -> MixtureMSEAccuracy:
    """An MSE "accuracy" metric: squared error of one mixture sample against the target.

    Returns a registered :class:`MixtureMSEAccuracy` metric (seeded, so it runs inside
    ``model.fit`` on every backend, JAX included). Called directly it behaves as the classic
    function: ``acc(y_true, y_pred)`` returns one value per sample, shape ``(batch,)``.
    See its docstring for the maths.

    Example::

        >>> acc = get_mixture_mse_accuracy(1, 1, seed=0)
        >>> params = np.array([[0.0, 1e-6, 0.0], [3.0, 1e-6, 0.0]], dtype="float32")
        >>> np.round(keras.ops.convert_to_numpy(acc(np.zeros((2, 1)), params)), 3).tolist()
        [0.0, 9.0]

        >>> model.compile(loss=get_mixture_loss_func(1, 5), optimizer="rmsprop",
        ...               metrics=[get_mixture_mse_accuracy(1, 5, seed=0)])  # doctest: +SKIP
    """
    return MixtureMSEAccuracy(output_dim, num_mixes, seed=seed)


# --------------------------------------------------------------------------------------------
# NumPy side: splitting, softmax, sampling
# --------------------------------------------------------------------------------------------


def split_mixture_params(params: Any, output_dim: int, num_mixes: int) -> tuple[Any, Any, Any]:
    """Split mixture parameters into ``mus``, ``sigs`` and ``pi_logits``.

    Along the last axis, ``params = [mus (K*D) | sigs (K*D) | pi_logits (K)]``. Works for one
    row ``(P,)`` (as the classic function) and for any leading dims ``(..., P)``. The parts
    are slices of ``params`` of its own type, as in the classic function: a list gives lists,
    an array gives array views, a framework tensor gives tensors (a nested list is read as an
    array).

    Raises:
        MDNShapeError: (a ``ValueError`` and an ``AssertionError``) if the last dimension is
            not ``2 K D + K``.

    Example::

        >>> mus, sigs, logits = split_mixture_params(np.arange(15.0), 1, 5)
        >>> mus.tolist(), sigs.tolist(), logits.tolist()
        ([0.0, 1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0, 9.0], [10.0, 11.0, 12.0, 13.0, 14.0])
    """
    d, k, p = _check_sizes(output_dim, num_mixes)
    if isinstance(params, list | tuple) and (
        not params or not isinstance(params[0], numbers.Number)
    ):
        params = np.asarray(params)  # nested (or empty) Python sequences: read as an array
    shape = tuple(np.shape(params))
    if len(shape) == 0 or shape[-1] != p:
        raise _wrong_size(shape, d, k)
    if len(shape) == 1:  # plain slices: lists stay lists, tensors stay tensors
        return params[: k * d], params[k * d : 2 * k * d], params[2 * k * d :]
    return params[..., : k * d], params[..., k * d : 2 * k * d], params[..., 2 * k * d :]


def softmax(w: Any, t: float = 1.0) -> np.ndarray:
    """Softmax of logits with a temperature, along the last axis.

    .. math:: \\operatorname{softmax}(w, t)_k = \\frac{e^{w_k / t}}{\\sum_j e^{w_j / t}}

    ``t -> 0`` tends to the one-hot vector of the largest logit and ``t = 0`` returns exactly
    that (the first maximum on ties); ``t -> inf`` tends to uniform. Never NaN for finite ``w``.
    Computed in float64; the result has the classic dtype, that of ``np.array(w) / t``
    (a float array keeps its precision, anything else gives float64).

    Example::

        >>> softmax([0.0, np.log(3.0)]).round(3).tolist()
        [0.25, 0.75]
        >>> softmax([1.0, 2.0, 0.5], t=0).tolist()
        [0.0, 1.0, 0.0]
    """
    t = float(t)
    if not t >= 0:
        raise ValueError(f"temperature t must be >= 0, found {t!r}")
    raw = np.asarray(w)
    out_dtype = raw.dtype if np.issubdtype(raw.dtype, np.floating) else np.float64
    x = raw.astype(np.float64)
    if x.ndim == 0:
        raise ValueError(f"logits must have at least one dimension, found a scalar {w!r}")
    if t == 0.0:
        return np.eye(x.shape[-1], dtype=out_dtype)[np.argmax(x, axis=-1)]
    z = (x - np.max(x, axis=-1, keepdims=True)) / t
    e = np.exp(z)
    return (e / np.sum(e, axis=-1, keepdims=True)).astype(out_dtype, copy=False)


_Seed = int | np.random.Generator | np.random.RandomState | None


def _rng(seed: _Seed) -> Any:
    """``None`` -> NumPy's global legacy generator (so ``np.random.seed`` works as in the
    classic package); an int -> a new ``np.random.default_rng(seed)``; a Generator or
    RandomState is used as given."""
    if seed is None:
        return np.random.mtrand._rand
    if isinstance(seed, np.random.Generator | np.random.RandomState):
        return seed
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        return np.random.default_rng(int(seed))
    raise ValueError(f"seed must be None, an int or a numpy Generator, found {seed!r}")


def _uniform(rng: Any, size: int) -> np.ndarray:
    return rng.random(size) if isinstance(rng, np.random.Generator) else rng.random_sample(size)


def _categorical_rows(probs: np.ndarray, rng: Any) -> np.ndarray:
    """One index per row of ``probs`` (n, K) by inverting the CDF; zero-weight components
    are never chosen; a row without positive finite mass gives -1."""
    cum = np.cumsum(probs, axis=-1)
    total = cum[:, -1]
    u = _uniform(rng, probs.shape[0]) * total
    idx = np.minimum(np.sum(cum <= u[:, None], axis=-1), probs.shape[-1] - 1)
    return np.where((total > 0) & np.isfinite(total), idx, -1)


# Rows are processed in blocks of this many, so that the (K, block) work arrays stay in cache.
_BLOCK = 16384


def _sample_block(
    flat: np.ndarray,
    d: int,
    k: int,
    temp: float,
    scale: float,
    u: np.ndarray | None,
    z: np.ndarray | None,
    offsets: np.ndarray,
) -> np.ndarray:
    """Draw one sample per row of a contiguous block ``flat`` (n, P); see sample_from_output.

    Works on the logits transposed to (K, n), so every step is one vectorised operation over
    the rows, with a loop over the K components only. ``offsets[i] = i * P``."""
    n = flat.shape[0]
    weights = flat[:, 2 * k * d :].T.astype(np.float64, order="C")  # (K, n), contiguous copy
    if u is None:  # greedy
        idx = np.argmax(weights, axis=0)
    else:
        weights -= weights.max(axis=0)
        if temp != 1.0:
            weights /= temp
        np.exp(weights, out=weights)
        for j in range(1, k):  # running sum: weights[j] = sum_{i <= j} exp(...)
            weights[j] += weights[j - 1]
        # idx = #{j < K-1 : cum_j <= u * total}: the first j with cum_j > u * total
        idx = np.count_nonzero(weights[:-1] <= u * weights[-1], axis=0)
    col = offsets[:n] + idx * d  # flat position of mu_{idx, 0} in each row
    values = flat.reshape(-1)
    if d > 1:
        col = col[:, None] + np.arange(d)
    out = values[col].astype(np.float64)
    if z is not None:
        out += scale * values[col + k * d] * (z[:, 0] if d == 1 else z)
    return out.reshape(n, d)


def sample_from_categorical(dist: Any, seed: _Seed = None) -> Any:
    """Draw an index from a categorical distribution with probabilities ``dist``.

    For one distribution ``(K,)`` returns an ``int`` (as the classic function); for a batch
    ``(..., K)`` an integer array of the leading shape, one draw per row. Draws by inverting
    the cumulative distribution: ``k = min{k : sum_{j<=k} p_j > u}``, ``u ~ U(0, 1)`` scaled to
    the total mass (so unnormalised weights work). As in the classic function, sampling that
    cannot succeed (all weights zero, or NaN) returns ``-1``.

    Example::

        >>> sample_from_categorical(np.array([0.0, 1.0, 0.0]))
        1
    """
    p = np.asarray(dist, dtype=np.float64)
    if p.ndim == 0 or p.shape[-1] == 0:
        raise ValueError(f"dist must have shape (..., K) with K >= 1, found shape {p.shape}")
    if np.any(p < 0):
        raise ValueError("dist must hold non-negative probabilities, found a negative entry")
    idx = _categorical_rows(p.reshape(-1, p.shape[-1]), _rng(seed))
    return int(idx[0]) if p.ndim == 1 else idx.reshape(p.shape[:-1])


def sample_from_output(
    params: Any,
    output_dim: int,
    num_mixes: int,
    temp: float = 1.0,
    sigma_temp: float = 1.0,
    seed: _Seed = None,
) -> np.ndarray:
    """Sample from MDN outputs with temperatures, in NumPy.

    For each row ``[mus | sigs | pi_logits]``:

    1. ``k ~ Categorical(softmax(pi_logits / temp))`` (``temp = 0``: ``k = argmax``),
    2. ``y ~ N(mu_k, sigma_temp * diag(sigma_k^2))``, i.e. ``y = mu_k + sqrt(sigma_temp)
       * sigma_k * eps`` (``sigma_temp = 0``: ``y = mu_k``).

    ``params`` may be one row ``(P,)`` (returns ``(D,)``, the classic behaviour, so it works
    under ``np.apply_along_axis``), a batch ``(N, P)`` (returns ``(N, D)``) or sequences
    ``(N, T, P)`` (returns ``(N, T, D)``); all rows are drawn in one vectorised call.

    Args:
        params: mixture parameters, last dimension ``P = 2 K D + K``.
        output_dim: ``D``. num_mixes: ``K``.
        temp: divides the logits (>= 0; ``inf`` gives uniform component choice).
        sigma_temp: multiplies each component covariance (>= 0, finite).
        seed: ``None`` uses NumPy's global random state (``np.random.seed`` applies); an int
            or ``np.random.Generator`` gives reproducible draws.

    Raises:
        MDNShapeError: wrong-sized ``params`` (says expected vs found); it is a ``ValueError``
            and an ``AssertionError``, what the classic function raised.
        ValueError: a negative temperature.

    Example::

        >>> preds = model.predict(x)                      # (N, 15)  # doctest: +SKIP
        >>> y = sample_from_output(preds, 1, 5, temp=1.0, seed=0)   # (N, 1)  # doctest: +SKIP
    """
    d, k, p = _check_sizes(output_dim, num_mixes)
    temp = float(temp)
    sigma_temp = float(sigma_temp)
    if not temp >= 0:
        raise ValueError(f"temp must be >= 0, found {temp!r}")
    if not (sigma_temp >= 0 and math.isfinite(sigma_temp)):
        raise ValueError(f"sigma_temp must be finite and >= 0, found {sigma_temp!r}")
    arr = np.asarray(params)
    if arr.ndim == 0 or arr.shape[-1] != p:
        raise _wrong_size(arr.shape, d, k)
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    lead = arr.shape[:-1]
    flat = np.ascontiguousarray(arr.reshape(-1, p))
    n = flat.shape[0]
    if seed is None and n >= 256:
        # a fast Generator seeded from NumPy's global state: np.random.seed still applies
        seed = np.random.default_rng(np.random.randint(0, 2**31, size=4))  # noqa: NPY002
    rng = _rng(seed)
    greedy = temp == 0.0 or k == 1
    u = None if greedy else _uniform(rng, n)
    z = rng.standard_normal((n, d)) if sigma_temp > 0.0 else None
    scale = math.sqrt(sigma_temp)
    out = np.empty((n, d))
    offsets = np.arange(0, min(n, _BLOCK) * p, p)
    with np.errstate(over="ignore", under="ignore"):
        for s in range(0, n, _BLOCK):
            e = min(s + _BLOCK, n)
            out[s:e] = _sample_block(
                flat[s:e],
                d,
                k,
                temp,
                scale,
                None if u is None else u[s:e],
                None if z is None else z[s:e],
                offsets,
            )
    return out.reshape(lead + (d,))

"""A scikit-learn estimator over :class:`~mdnkit.MDN` and :func:`~mdnkit.fit`: :class:`MDNRegressor`.

It follows scikit-learn's rules (``__init__`` only stores parameters, ``fit`` returns ``self``,
learned attributes end in ``_``, ``score`` is higher-is-better), so it clones, pickles, and works
in a :class:`~sklearn.pipeline.Pipeline` and :class:`~sklearn.model_selection.GridSearchCV`.
Beyond ``predict`` it gives the whole predictive distribution: quantiles, intervals, samples and
the :class:`~mdnkit.GaussianMixture` itself.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import Tensor, nn

from . import checks
from .ensemble import MDNEnsemble, MemberRows
from .mixture import GaussianMixture
from .models import MDN
from .options import Activation, CovarianceType, LRSchedule, PointPrediction, ScaleTransform
from .training import History, fit

__all__ = [
    "MDNRegressor",
    "DiscreteTargetWarning",
    "TrainingBudget",
    "training_budget",
    "target_resolution",
    "target_resolutions",
    "scale_floor",
    "discrete_target_message",
    "member_rows",
    "AUTO_COMPONENTS",
    "AUTO_STEPS",
    "AUTO_ROWS",
    "AUTO_PATIENCE_STEPS",
    "AUTO_PATIENCE_ROWS",
    "RESOLUTION_FLOOR",
]

#: ``epochs="auto"``: as many epochs as make this many optimiser steps (early stopping ends
#: most runs well before) ...
AUTO_STEPS = 5_000
#: ... or as see this many rows, whichever is fewer (a budget of arithmetic for large sets).
AUTO_ROWS = 1_000_000
#: ``patience="auto"``: this many optimiser steps without improvement ...
AUTO_PATIENCE_STEPS = 1_000
#: ... or this many rows seen, whichever is fewer, and at least 20 epochs.
AUTO_PATIENCE_ROWS = 200_000
#: ``num_components="auto"``: the numbers of components tried (the lowest validation NLL wins).
AUTO_COMPONENTS = (1, 3, 5, 10)
#: A discrete target's scale floor, as a fraction of its resolution h (see
#: :func:`target_resolution`): a component narrower than h/2 would be a spike on one value.
RESOLUTION_FLOOR = 0.5


class DiscreteTargetWarning(UserWarning):
    """``MDNRegressor.fit`` found a discrete target (:func:`target_resolution`) and floors the
    component scales at :data:`RESOLUTION_FLOOR` times its resolution."""


class TrainingBudget(NamedTuple):
    """The resolved ``epochs``, ``batch_size`` and ``patience`` of a fit (see
    :func:`training_budget`)."""

    epochs: int
    batch_size: int
    patience: int | None


def training_budget(
    n_rows: int,
    epochs: int | Literal["auto"] = "auto",
    batch_size: int | Literal["auto"] = "auto",
    patience: int | Literal["auto"] | None = "auto",
) -> TrainingBudget:
    r"""The training budget for ``n_rows`` training rows, each ``"auto"`` resolved so that
    small data sets get enough optimiser steps:

    * ``batch_size``: :math:`\min(128, \max(32, \lfloor n/32 \rfloor))` rows, about 32
      batches an epoch;
    * ``epochs``: :data:`AUTO_STEPS` steps or :data:`AUTO_ROWS` rows seen, whichever is fewer:
      :math:`\min(\lceil 5000 / b \rceil, \lceil 10^6 / n \rceil)` with
      :math:`b = \lceil n / \text{batch} \rceil` batches an epoch;
    * ``patience``: :data:`AUTO_PATIENCE_STEPS` steps or :data:`AUTO_PATIENCE_ROWS` rows,
      whichever is fewer, and at least 20 epochs: :math:`\max(20, \min(\lceil 1000 / b \rceil,
      \lceil 2 \cdot 10^5 / n \rceil))`.

    Example:
        >>> training_budget(250)          # a small set: 8 batches of 32 an epoch
        TrainingBudget(epochs=625, batch_size=32, patience=125)
        >>> training_budget(8000)         # a large one: 63 batches of 128, 10^6 rows
        TrainingBudget(epochs=80, batch_size=128, patience=20)
    """
    n = max(1, int(n_rows))
    if batch_size == "auto":
        batch = min(128, max(32, n // 32))
    else:
        batch = checks.positive_int("batch_size", batch_size)
    per_epoch = math.ceil(n / batch)
    if epochs == "auto":
        n_epochs = min(math.ceil(AUTO_STEPS / per_epoch), math.ceil(AUTO_ROWS / n))
    else:
        n_epochs = checks.positive_int("epochs", epochs)
    if patience == "auto":
        steps = math.ceil(AUTO_PATIENCE_STEPS / per_epoch)
        wait: int | None = max(20, min(steps, math.ceil(AUTO_PATIENCE_ROWS / n)))
    else:
        wait = checks.positive_int("patience", patience, or_none=True)
    return TrainingBudget(n_epochs, batch, wait)


def target_resolution(y: Any) -> float | None:
    r"""The resolution h of a discrete-looking target, or None for a continuous one.

    A target is discrete when its distinct values lie on a grid of step h (the smallest gap
    between them; integers, counts, scores, values rounded to a fixed number of decimals) *and*
    there are few of them: at most a quarter as many as rows, so that each value is shared by
    four rows on average.  There a mixture can put a component of near-zero width on a value
    and report a density, hence an NLL, that means nothing; :class:`MDNRegressor` then floors
    its scales at :data:`RESOLUTION_FLOOR` :math:`\cdot h`.

    Example:
        >>> target_resolution(np.array([3, 5, 6, 5, 6, 7, 5, 6, 4, 6, 5, 6] * 2))  # 5 values
        1.0
        >>> target_resolution(np.linspace(0, 1, 12)) is None    # as many values as rows
        True
    """
    v = np.asarray(y, dtype=np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    u = np.unique(v)
    if u.size < 2 or u.size > v.size / 4:
        return None
    span = u[-1] - u[0]
    steps = round(span / float(np.diff(u).min()))
    h = span / steps  # the grid step, averaged over the range (robust to float32 rounding)
    units = (u - u[0]) / h
    if not np.allclose(units, np.round(units), rtol=0.0, atol=0.05):
        return None
    return float(f"{h:.10g}")


def target_resolutions(
    y: Any, setting: float | Literal["auto"] | None = "auto"
) -> list[float | None] | None:
    """Each output's resolution h for a ``target_resolution`` setting (``"auto"``: detected by
    :func:`target_resolution`, None for a continuous output; a number: that h for every
    output), or None when the scale floor is not raised (``setting=None``, or nothing found).

    Example:
        >>> target_resolutions(np.c_[np.arange(40) % 4, np.linspace(0, 1, 40)])
        [1.0, None]
        >>> target_resolutions(np.linspace(0, 1, 40)) is None
        True
    """
    if setting is None:
        return None
    y2 = np.asarray(y, dtype=np.float64)
    y2 = y2.reshape(len(y2), -1)
    if setting != "auto":
        h = checks.number("target_resolution", setting, low=0.0, low_open=True)
        return [h] * y2.shape[1]
    found = [target_resolution(y2[:, d]) for d in range(y2.shape[1])]
    return None if all(h is None for h in found) else found


def discrete_target_message(found: Sequence[float | None], off: str, value: str) -> str:
    """The one warning a discrete target gets (:class:`DiscreteTargetWarning`), naming how to
    turn the floor ``off`` and how to set a ``value`` in the caller's words."""
    which = ", ".join(f"{h:g}" if h is not None else "continuous" for h in found)
    return (
        f"the target looks discrete (resolution {which}: values on a grid, few of them); "
        f"component scales are floored at {RESOLUTION_FLOOR:g} x the resolution, so the NLL is "
        "that of a density smoothed over each value's bin (close to the binned "
        f"probability-mass NLL plus log(resolution)); pass {off} to fit it as continuous, or "
        f"{value} to set the resolution"
    )


def scale_floor(
    y: Any,
    resolution: Sequence[float | None] | None,
    min_scale: float,
    covariance: CovarianceType = "diagonal",
) -> float:
    r"""The components' scale floor in standardised units: ``min_scale``, raised to
    :data:`RESOLUTION_FLOOR` :math:`\cdot h_d / s_d` for each discrete output d (h its
    resolution, s its standard deviation in ``y``; spherical components: the root mean
    variance), the smallest of those when there are several.

    Example:
        >>> scale_floor(np.arange(40) % 4, [1.0], 1e-3)     # s = 1.118: 0.5 / 1.118
        0.4472135954999579
    """
    floor = checks.number("min_scale", min_scale, low=0.0)
    if resolution is None:
        return floor
    t = torch.as_tensor(np.asarray(y, dtype=np.float64))
    sd = t.reshape(t.shape[0], -1).std(0, correction=0)
    if covariance == "spherical":
        sd = sd.square().mean().sqrt().expand_as(sd)
    raised = [
        RESOLUTION_FLOOR * h / float(s)
        for h, s in zip(resolution, sd)
        if h is not None and float(s) > 0
    ]
    return max(floor, min(raised)) if raised else floor


class MDNRegressor(RegressorMixin, BaseEstimator):
    r"""Mixture density network regressor: predicts a Gaussian mixture :math:`p(y\mid x)`.

    By default a deep ensemble (Lakshminarayanan et al. 2017) of ``n_estimators`` MDNs
    (:class:`~mdnkit.MDN` networks, inputs and targets standardised inside, each from its own
    random initial weights), trained together as one batched network
    (:class:`~mdnkit.ensemble.MDNEnsemble`) by :func:`~mdnkit.fit`, each member on its
    negative log-likelihood

    .. math::

        -\frac1N\sum_i \log \sum_k \pi_{mk}(x_i)\,\mathcal{N}(y_i\mid\mu_{mk}(x_i),\Sigma_{mk}(x_i)).

    The prediction is the equal-weight mixture of the members' mixtures, itself a
    :class:`~mdnkit.GaussianMixture` of ``n_estimators`` x K components; early stopping and the
    learning-rate schedule watch its NLL on a validation split of the training rows.  With
    ``n_estimators=1`` the network is one :class:`~mdnkit.MDN`.

    :meth:`score` is the mean log-likelihood per sample (nats, higher is better), *not* the
    :math:`R^2` of other regressors: it rewards a correct spread, not only a correct mean.

    Parameters:
        hidden, activation, covariance, scale_transform, min_scale, dropout:
            each network (see :class:`~mdnkit.MDN`).
        num_components: K, or ``"auto"``: each of :data:`AUTO_COMPONENTS` is trained and the
            one with the lowest validation NLL kept (``num_components_`` says which).
        n_estimators: the number of ensemble members M (1: a single network).
        epochs, batch_size, patience: ``"auto"`` (the defaults) resolves them from the number
            of training rows (:func:`training_budget`: about 32 batches an epoch, up to
            :data:`AUTO_STEPS` optimiser steps, patience :data:`AUTO_PATIENCE_STEPS` steps);
            or numbers, as :func:`~mdnkit.fit` takes them (``patience=None``: no early stop).
        lr, weight_decay, validation_split, lr_schedule: the training (see :func:`~mdnkit.fit`).
        target_resolution: ``"auto"`` (default) detects a discrete target
            (:func:`target_resolution`: values on a grid of step h, few of them), warns once
            (:class:`DiscreteTargetWarning`) and floors the component scales at
            :data:`RESOLUTION_FLOOR` :math:`\cdot h`, so no component becomes a spike on one
            value; the NLL is then that of a density smoothed over each value's bin, within a
            few hundredths of a nat of the binned (probability-mass) NLL plus :math:`\log h`
            when the predicted spread is a few h.  A number sets h; None fits the target as
            continuous.
        random_state: seed (int, ``RandomState`` or None) for the weights, the split and the
            shuffling: the same seed gives the same model.
        device: torch device for training and prediction (None: CPU).
        verbose: show a progress bar while fitting.

    Attributes:
        model_: the trained network (:class:`~mdnkit.ensemble.MDNEnsemble`, or
            :class:`~mdnkit.MDN` when ``n_estimators=1``).
        history_: the :class:`~mdnkit.History` of its training.
        num_components_: K of ``model_`` (the chosen one with ``num_components="auto"``).
        components_scores_: the best validation NLL of each K trained.
        target_resolution_: each output's resolution (None: continuous), or None when the
            scale floor is not raised.
        n_features_in_: number of input features.
        n_outputs_: number of target dimensions D.

    Example:
        >>> import numpy as np
        >>> from mdnkit import MDNRegressor
        >>> rng = np.random.default_rng(0)
        >>> y = rng.uniform(-10.5, 10.5, 1000)
        >>> X = (7 * np.sin(0.75 * y) + 0.5 * y + rng.normal(size=1000))[:, None]
        >>> reg = MDNRegressor(hidden=(32, 32), num_components=8, epochs=20, random_state=0)
        >>> reg = reg.fit(X, y)
        >>> reg.predict(X[:3]).shape, reg.sample(X[:3], n_samples=10).shape
        ((3,), (3, 10))
        >>> lo, hi = reg.predict_interval(X[:3], coverage=0.9)
        >>> reg.predict_distribution(X[:3]).num_components      # 5 members x 8 components
        40
    """

    def __init__(
        self,
        hidden: Sequence[int] = (64, 64),
        activation: Activation = "gelu",
        num_components: int | Literal["auto"] = 10,
        covariance: CovarianceType = "diagonal",
        scale_transform: ScaleTransform = "softplus",
        min_scale: float = 1e-3,
        dropout: float = 0.0,
        n_estimators: int = 5,
        epochs: int | Literal["auto"] = "auto",
        batch_size: int | Literal["auto"] = "auto",
        lr: float = 3e-3,
        weight_decay: float = 0.0,
        validation_split: float = 0.1,
        patience: int | Literal["auto"] | None = "auto",
        lr_schedule: LRSchedule | None = "plateau",
        target_resolution: float | Literal["auto"] | None = "auto",
        random_state: int | np.random.RandomState | None = None,
        device: str | None = None,
        verbose: bool = False,
    ) -> None:
        self.hidden = hidden
        self.activation = activation
        self.num_components = num_components
        self.covariance = covariance
        self.scale_transform = scale_transform
        self.min_scale = min_scale
        self.dropout = dropout
        self.n_estimators = n_estimators
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.validation_split = validation_split
        self.patience = patience
        self.lr_schedule = lr_schedule
        self.target_resolution = target_resolution
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        # score() is the mean log-likelihood (nats), not R^2: the "score > 0.5" check of
        # scikit-learn's R^2 regressors does not apply.
        tags.regressor_tags.poor_score = True
        tags.non_deterministic = self.random_state is None
        return tags

    # ------------------------------------------------------------------ fitting
    def _device(self) -> torch.device:
        return torch.device(self.device) if self.device is not None else torch.device("cpu")

    def fit(self, X: Any, y: Any) -> MDNRegressor:
        """Fit the network on ``X`` ``(n_samples, n_features)`` and ``y`` ``(n_samples,)`` or
        ``(n_samples, n_outputs)``; returns ``self``."""
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=np.float64)
        self._y_1d = y.ndim == 1
        y2 = y.reshape(-1, 1) if y.ndim == 1 else y
        self.n_outputs_ = int(y2.shape[1])
        seed = int(check_random_state(self.random_state).randint(0, 2**31 - 1))
        candidates = self._candidates()
        self.target_resolution_ = self._target_resolution(y2)
        x_t = torch.from_numpy(np.array(X, dtype=np.float32))
        y_t = torch.from_numpy(np.array(y2, dtype=np.float32))
        members = checks.positive_int("n_estimators", self.n_estimators)
        if members == 1:
            train, val = _split(x_t, y_t, self.validation_split, seed)
            floor = self._scale_floor(train[1])
        else:
            train, val = member_rows(x_t, y_t, members, self.validation_split, seed)
            floor = self._scale_floor(y_t)
        budget = training_budget(
            int(train[0].shape[0]), self.epochs, self.batch_size, self.patience
        )
        best: tuple[float, int, nn.Module, History] | None = None
        self.components_scores_: dict[int, float] = {}
        for k in candidates:
            model = self._network(k, floor, seed)
            trained: nn.Module = model
            if isinstance(model, MDNEnsemble):
                model.prepare(x_t, y_t)  # one standardisation, from every row
                trained = MemberRows(model)
            history = fit(
                trained,
                *train,
                validation_data=val,
                validation_split=0.0,  # split here above: the same rows for every candidate
                epochs=budget.epochs,
                batch_size=budget.batch_size,
                lr=self.lr,
                weight_decay=self.weight_decay,
                patience=budget.patience,
                lr_schedule=self.lr_schedule,
                progress=bool(self.verbose),
                seed=seed,
                device=self._device(),
            )
            self.components_scores_[k] = history.best_nll
            if best is None or history.best_nll < best[0]:
                best = (history.best_nll, k, model, history)
        assert best is not None
        _, self.num_components_, model, self.history_ = best
        self.model_ = model.eval()
        return self

    def _candidates(self) -> tuple[int, ...]:
        """The numbers of components to train: the one asked for, or :data:`AUTO_COMPONENTS`."""
        if self.num_components == "auto":
            if not self.validation_split > 0:
                raise ValueError(
                    "num_components='auto' chooses by validation NLL and needs "
                    f"validation_split > 0, found {self.validation_split!r}"
                )
            return AUTO_COMPONENTS
        return (checks.positive_int("num_components", self.num_components),)

    def _hidden(self) -> tuple[int, ...]:
        if isinstance(self.hidden, numbers.Integral):
            return (int(self.hidden),)
        return tuple(int(h) for h in self.hidden)

    def _network(self, k: int, floor: float, seed: int) -> nn.Module:
        """A fresh network with ``k`` components (its weights drawn from ``seed``): an
        :class:`~mdnkit.MDN`, or an :class:`~mdnkit.ensemble.MDNEnsemble` of
        ``n_estimators`` members."""
        members = checks.positive_int("n_estimators", self.n_estimators)
        kw: dict[str, Any] = {
            "hidden": self._hidden(),
            "activation": self.activation,
            "num_components": k,
            "covariance": self.covariance,
            "scale_transform": self.scale_transform,
            "min_scale": floor,
            "dropout": self.dropout,
        }
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if members == 1:
                return MDN(self.n_features_in_, self.n_outputs_, **kw)
            return MDNEnsemble(self.n_features_in_, self.n_outputs_, n_members=members, **kw)

    def _target_resolution(self, y: np.ndarray) -> list[float | None] | None:
        """Each output's resolution h (None: continuous), or None when the floor is not
        raised; warns once when ``target_resolution="auto"`` finds a discrete output."""
        found = target_resolutions(y, self.target_resolution)
        if found is not None and self.target_resolution == "auto":
            warnings.warn(
                "MDNRegressor: "
                + discrete_target_message(found, "target_resolution=None", "a number"),
                DiscreteTargetWarning,
                stacklevel=3,
            )
        return found

    def _scale_floor(self, y: Tensor) -> float:
        """:func:`scale_floor` of the training targets ``y`` for this estimator's settings."""
        return scale_floor(y, self.target_resolution_, self.min_scale, self.covariance)

    # ------------------------------------------------------------------ prediction
    def _x(self, X: Any) -> torch.Tensor:
        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        dev = next(self.model_.parameters()).device
        return torch.from_numpy(np.array(X, dtype=np.float32)).to(dev)

    def _out(self, t: torch.Tensor) -> np.ndarray:
        """(..., D) tensor -> float64 array, the last axis dropped for 1-D targets."""
        a = t.detach().cpu().double().numpy()
        return a[..., 0] if self._y_1d else a

    def predict_distribution(self, X: Any) -> GaussianMixture:
        """The predictive :class:`~mdnkit.GaussianMixture`, batch shape ``(n_samples,)``, event ``(D,)``."""
        x = self._x(X)
        self.model_.eval()
        with torch.no_grad():
            return self.model_(x)

    def predict(self, X: Any, kind: PointPrediction = "mean") -> np.ndarray:
        r"""A point prediction: the mixture ``"mean"`` :math:`\sum_k \pi_k\mu_k` (default), the
        ``"median"`` (of each output's marginal) or the ``"mode"`` (the highest density point).

        Shape ``(n_samples,)`` for 1-D targets, else ``(n_samples, n_outputs)``.
        """
        checks.choice("kind", kind, PointPrediction)
        m = self.predict_distribution(X)
        if kind == "mean":
            return self._out(m.mean)
        if kind == "mode":
            return self._out(m.mode)
        return self._out(self._marginal_icdf(m, torch.tensor(0.5, dtype=torch.float64)))

    def _marginal_icdf(self, m: GaussianMixture, q: torch.Tensor) -> torch.Tensor:
        """Quantiles of each output's marginal: q ``(Q,)`` or scalar -> ``(Q?, N, D)``."""
        q = q.reshape(q.shape + (1,) * len(m.batch_shape))
        cols = [m.marginal(d).icdf(q) for d in range(self.n_outputs_)]
        return torch.cat(cols, dim=-1)

    def predict_quantiles(self, X: Any, q: float | Sequence[float]) -> np.ndarray:
        """Quantiles of each output's predictive marginal :math:`F^{-1}(q)`.

        ``q`` a float: shape like :meth:`predict`; ``q`` a list of Q levels: ``(n_samples, Q)``
        for 1-D targets, else ``(n_samples, Q, n_outputs)``.
        """
        qa = np.asarray(q, dtype=np.float64)
        if qa.ndim > 1 or not np.all((qa > 0) & (qa < 1)):
            raise ValueError(f"q must be a level or a 1-D list of levels in (0, 1), found {q!r}")
        m = self.predict_distribution(X)
        out = self._marginal_icdf(m, torch.as_tensor(qa))  # (Q?, N, D)
        if qa.ndim == 1:
            out = out.movedim(0, 1)  # (N, Q, D)
        return self._out(out)

    def predict_interval(self, X: Any, coverage: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
        """The central interval holding ``coverage`` of each output's predictive probability:
        ``(lower, upper)``, the quantiles at :math:`(1 \\mp c)/2`, each shaped like :meth:`predict`."""
        coverage = checks.number("coverage", coverage, low=0, high=1, low_open=True, high_open=True)
        a = (1 - coverage) / 2
        both = self.predict_quantiles(X, [a, 1 - a])
        return both[:, 0], both[:, 1]

    def sample(
        self,
        X: Any,
        n_samples: int = 1,
        temperature: float = 1.0,
        sigma_temperature: float = 1.0,
        random_state: int | None = None,
    ) -> np.ndarray:
        """Draw ``n_samples`` targets per row from the predictive mixture.

        ``temperature`` divides the mixture logits, ``sigma_temperature`` multiplies the component
        covariances (0 and 0: the mean of the most likely component).  Shape
        ``(n_rows, n_samples)`` for 1-D targets, else ``(n_rows, n_samples, n_outputs)``.
        """
        if isinstance(n_samples, bool) or not isinstance(n_samples, numbers.Integral):
            raise TypeError(f"n_samples must be an integer, found {type(n_samples).__name__}")
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, found {n_samples}")
        m = self.predict_distribution(X)
        seed = int(check_random_state(random_state).randint(0, 2**31 - 1))
        s = m.sample(
            (int(n_samples),),
            temperature=temperature,
            sigma_temperature=sigma_temperature,
            generator=seed,
        )
        return self._out(s.movedim(0, 1))

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        r"""Mean log-likelihood per sample, :math:`\frac1N\sum_i\log p(y_i\mid x_i)` (nats; higher
        is better), weighted by ``sample_weight`` when given."""
        x = self._x(X)
        y = np.asarray(y, dtype=np.float64)
        if y.ndim == 1:
            y = y[:, None]
        if y.shape != (x.shape[0], self.n_outputs_):
            raise ValueError(
                f"expected y of shape ({x.shape[0]},) or ({x.shape[0]}, {self.n_outputs_}), "
                f"found {np.shape(y)}"
            )
        m = self.predict_distribution(X)
        with torch.no_grad():
            lp = m.log_prob(torch.as_tensor(y, dtype=m.loc.dtype, device=m.loc.device))
        lp = lp.double().cpu().numpy()
        if sample_weight is None:
            return float(lp.mean())
        w = np.asarray(sample_weight, dtype=np.float64)
        return float((w * lp).sum() / w.sum())

    # ------------------------------------------------------------------ model files
    def config(self) -> dict[str, Any]:
        """JSON description for :func:`mdnkit.save`: parameters and the fitted shapes."""
        check_is_fitted(self, "model_")
        params = self.get_params()
        params["hidden"] = (
            [int(params["hidden"])]
            if isinstance(params["hidden"], numbers.Integral)
            else [int(h) for h in params["hidden"]]
        )
        rs = params["random_state"]
        params["random_state"] = int(rs) if isinstance(rs, numbers.Integral) else None
        params["device"] = None if params["device"] is None else str(params["device"])
        return {
            "params": params,
            "n_features_in": int(self.n_features_in_),
            "n_outputs": int(self.n_outputs_),
            "y_1d": bool(self._y_1d),
            "model": self.model_.config(),
            "model_class": type(self.model_).__name__,
            "num_components": int(self.num_components_),
            "components_scores": {
                str(k): (v if math.isfinite(v) else None)
                for k, v in self.components_scores_.items()
            },
            "target_resolution": self.target_resolution_,
            "history": self.history_.as_dict(),
            **(
                {"feature_names_in": [str(c) for c in self.feature_names_in_]}
                if hasattr(self, "feature_names_in_")
                else {}
            ),
        }

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The trained network's tensors (for :func:`mdnkit.save`)."""
        check_is_fitted(self, "model_")
        return self.model_.state_dict()

    @classmethod
    def from_saved(cls, config: dict[str, Any], state: dict[str, torch.Tensor]) -> MDNRegressor:
        """Rebuild a fitted estimator from :meth:`config` and :meth:`state_dict` (what
        :func:`mdnkit.load` calls; classes with this method are built by it, not by
        ``cls(**config)``)."""
        params = dict(config["params"])
        params["hidden"] = tuple(params["hidden"])
        ensemble = config.get("model_class") == "MDNEnsemble"
        if "model_class" not in config:  # written before ensembles: one MDN, no floor
            params.setdefault("n_estimators", 1)
            params.setdefault("target_resolution", None)
        est = cls(**params)
        model = MDNEnsemble(**config["model"]) if ensemble else MDN(**config["model"])
        model.load_state_dict(state)
        est.model_ = model.eval()
        est.num_components_ = int(config.get("num_components", model.num_components))
        scores = config.get("components_scores") or {}
        est.components_scores_ = {
            int(k): (float(v) if v is not None else math.inf) for k, v in scores.items()
        }
        est.target_resolution_ = config.get("target_resolution")
        est.n_features_in_ = int(config["n_features_in"])
        est.n_outputs_ = int(config["n_outputs"])
        est._y_1d = bool(config["y_1d"])
        if "feature_names_in" in config:
            est.feature_names_in_ = np.asarray(config["feature_names_in"], dtype=object)
        est.history_ = History.from_dict(config.get("history") or {})
        return est


def _split(
    x: Tensor, y: Tensor, fraction: float, seed: int
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor] | None]:
    """(training rows, validation rows or None): a random ``fraction`` of the rows held out
    (drawn by a generator seeded with ``seed``), when that leaves at least one row each side."""
    fraction = checks.number("validation_split", fraction, low=0.0, high=1.0, high_open=True)
    n = int(x.shape[0])
    n_val = int(round(n * fraction))
    if n_val < 1 or n - n_val < 1:
        return (x, y), None
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    vi, ti = perm[:n_val], perm[n_val:]
    return (x[ti], y[ti]), (x[vi], y[vi])


def member_rows(
    x: Tensor, y: Tensor, members: int, fraction: float, seed: int
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor] | None]:
    r"""Each ensemble member's training and validation rows, for :class:`~mdnkit.ensemble.MemberRows`.

    The rows are shuffled (a generator seeded with ``seed``) and member m holds out the m-th
    block of :math:`V = \operatorname{round}(N \cdot \text{fraction})` of them (blocks taken in
    turn, wrapping round), training on the other :math:`N - V` in its own order; with M blocks
    of 10 % every row is trained on by at least M - 1 members, and each member is validated on
    rows it never saw.  Returns ``((x (N-V, M, in), y (N-V, M, D)), (x (V, M, in), y (V, M,
    D)))``, or every row for every member (each in its own order) and None when ``fraction`` is
    0 or leaves no row on one side.

    Example:
        >>> (xt, yt), (xv, yv) = member_rows(torch.randn(100, 3), torch.randn(100, 1), 5, 0.1, 0)
        >>> tuple(xt.shape), tuple(xv.shape)
        ((90, 5, 3), (10, 5, 3))
    """
    fraction = checks.number("validation_split", fraction, low=0.0, high=1.0, high_open=True)
    n = int(x.shape[0])
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    n_val = int(round(n * fraction))
    if n_val < 1 or n - n_val < 1:
        train = torch.stack([torch.randperm(n, generator=gen) for _ in range(members)], 1)
        return (x[train], y[train]), None
    held = torch.stack([perm[(torch.arange(n_val) + m * n_val) % n] for m in range(members)], 1)
    keep = []
    for m in range(members):
        mask = torch.ones(n, dtype=torch.bool)
        mask[held[:, m]] = False
        rows = torch.nonzero(mask).squeeze(1)
        keep.append(rows[torch.randperm(rows.shape[0], generator=gen)])
    train = torch.stack(keep, 1)
    return (x[train], y[train]), (x[held], y[held])

r"""The NumPy step runtime: live, event-by-event generation from an :class:`~mdnkit.MDNRNN`.

A generator reads the previous event, advances the recurrent state and samples the next event:

.. math::

    k \sim \operatorname{softmax}(\log\pi / T), \qquad
    y = \mu_k + \sqrt{S}\,L_k\,\varepsilon,\ \varepsilon \sim \mathcal{N}(0, I), \qquad
    s \sim \operatorname{softmax}(q / T_{pen}),

with the temperatures of one :class:`Sampling` (0: greedy, the argmax / the mean).
:class:`StepGenerator` runs the cells on NumPy copies of the weights, with no PyTorch call per
step; :class:`~mdnkit.sequence.OnnxGenerator` runs the exported step on onnxruntime.  Both share
:class:`GeneratorBase` (``step``, ``predict``, ``reset``, ``generate``) and the same sampling
code, so the same seed gives the same events.

Example:
    >>> from mdnkit.sequence import MDNRNN
    >>> model = MDNRNN(event_dim=2, hidden_size=16, num_layers=1)
    >>> g = StepGenerator(model, temperature=0.5, generator=0)
    >>> e = g.step()          # the first event, after the start token
    >>> e = g.step(e)         # the next one
    >>> e.shape, g.sampling.temperature
    ((2,), 0.5)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from .. import checks
from .model import MDNRNN

__all__ = ["Sampling", "GeneratorBase", "StepGenerator", "StepParams"]

_SOURCES = "None, an int seed, a numpy.random.Generator or a torch.Generator"
_FLOAT32 = np.dtype(np.float32)


# ---------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Sampling:
    r"""How a generator draws events: the three temperatures, the number of streams, the seed.

    ``temperature`` :math:`T` divides the mixture logits, ``sigma_temperature`` :math:`S`
    multiplies each component's covariance (the noise by :math:`\sqrt{S}`), ``pen_temperature``
    divides the pen-state logits; 0 is greedy (the most likely component, its mean, the most
    likely pen state), ``inf`` a uniform choice (``sigma_temperature`` must be finite).
    ``batch`` is the number of independent streams; ``generator`` the random source: None, an
    int seed, a ``numpy.random.Generator`` or a ``torch.Generator`` (the same seed gives the same
    events).  Checked once, here; every generator holds one as ``g.sampling``.

    Example:
        >>> s = Sampling(temperature=0.8, sigma_temperature=0.25, batch=4, generator=0)
        >>> s.root_sigma, s.batch
        (0.5, 4)
        >>> Sampling(temperature=-1.0)
        Traceback (most recent call last):
        ...
        ValueError: temperature must be a number >= 0, found -1.0
    """

    temperature: float = 1.0
    sigma_temperature: float = 1.0
    pen_temperature: float = 1.0
    batch: int = 1
    generator: Any = None
    #: :math:`\sqrt{S}`, the factor of the noise.
    root_sigma: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        put = object.__setattr__  # frozen: store the checked values once
        put(self, "batch", checks.positive_int("batch", self.batch))
        for name in ("temperature", "sigma_temperature", "pen_temperature"):
            finite = name == "sigma_temperature"  # inf is a uniform choice for the other two
            put(self, name, checks.number(name, getattr(self, name), low=0.0, finite=finite))
        put(self, "root_sigma", math.sqrt(self.sigma_temperature))
        g = self.generator
        ok = g is None or isinstance(g, (np.random.Generator, torch.Generator))
        if not ok and not (isinstance(g, (int, np.integer)) and not isinstance(g, bool)):
            raise TypeError(f"generator must be {_SOURCES}, found {type(g).__name__}")

    def rng(self) -> np.random.Generator:
        """The NumPy random source of one generator: a fresh one from a seed (or from a draw of
        a ``torch.Generator``), a ``numpy.random.Generator`` itself (shared, not copied)."""
        g = self.generator
        if g is None:
            return np.random.default_rng()
        if isinstance(g, np.random.Generator):
            return g
        if isinstance(g, torch.Generator):
            return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=g)))
        return np.random.default_rng(int(g))


# ---------------------------------------------------------------------------------------- sampling
def _py_categorical(logits: list[float], t: float, rng: np.random.Generator) -> int:
    """One draw from softmax(logits / t) in plain Python (faster than NumPy for a few logits);
    the same draw as :meth:`_Sampler.categorical` for one row."""
    if t == 0.0:
        return max(range(len(logits)), key=logits.__getitem__)
    z = [v / t for v in logits] if t != 1.0 else logits
    top = max(z)
    w = [math.exp(v - top) for v in z]
    u = (1.0 - rng.random()) * sum(w)
    acc = 0.0
    for j, v in enumerate(w):
        acc += v
        if acc >= u:
            return j
    return len(w) - 1


class StepParams(NamedTuple):
    """One step's output, per stream, in data units: the next event's distribution parameters.

    ``logits`` (normalised) ``(B, K)``, ``loc`` ``(B, K, D)``, ``scale`` ``(B, K, D)`` or
    ``scale_tril`` ``(B, K, D, D)`` for a joint mixture; ``logits``, ``loc``, ``scale`` ``(B, D,
    K)`` for a per-dimension one; ``pen_logits`` ``(B, P)``, ``done_logits`` ``(B,)``,
    ``reward_loc`` and ``reward_scale`` ``(B,)``, each None when the model has no such part.
    """

    logits: np.ndarray
    loc: np.ndarray
    scale: np.ndarray | None
    scale_tril: np.ndarray | None
    pen_logits: np.ndarray | None = None
    done_logits: np.ndarray | None = None
    reward_loc: np.ndarray | None = None
    reward_scale: np.ndarray | None = None


class _Sampler:
    """NumPy sampling of the next event from one step's parameters (data units).

    Draws, in this order: the component(s) and the Gaussian noise of the continuous part, the
    pen state, the reward's noise, the done flag (the same order in every runtime)."""

    def __init__(
        self,
        event_dim: int,
        pen_states: int,
        sampling: Sampling,
        *,
        reward: bool = False,
        done: bool = False,
        per_dimension: bool = False,
    ) -> None:
        self.event_dim, self.pen_states, self.batch = event_dim, pen_states, sampling.batch
        self.reward, self.done, self.per_dimension = reward, done, per_dimension
        self.columns = event_dim + (1 if pen_states else 0) + int(reward) + int(done)
        # plain floats, read on every step
        self.temperature = sampling.temperature
        self.sigma_temperature = sampling.sigma_temperature
        self.pen_temperature = sampling.pen_temperature
        self.root_sigma = sampling.root_sigma
        self.rng = sampling.rng()
        self.rows = np.arange(self.batch)

    def categorical(self, logits: np.ndarray, t: float) -> np.ndarray:
        """One draw per row of ``logits`` ``(B, n)`` from softmax(logits / t)."""
        if t == 0.0:
            return logits.argmax(-1)
        z = logits.astype(np.float64)
        z = z / t if t != 1.0 else z
        p = np.exp(z - z.max(-1, keepdims=True))
        cdf = np.cumsum(p, -1)
        u = 1.0 - self.rng.random(logits.shape[0])  # (0, 1]
        idx = (cdf < (u * cdf[:, -1])[:, None]).sum(-1)
        return np.minimum(idx, logits.shape[-1] - 1)

    def _discrete(self, logits: np.ndarray, t: float) -> Any:
        if self.batch == 1:
            return _py_categorical(logits[0].tolist(), t, self.rng)
        return self.categorical(logits, t)

    def sample(self, p: StepParams) -> np.ndarray:
        """Events ``(B, columns)`` from one step's :class:`StepParams`."""
        if self.per_dimension:
            y = self._per_dimension(p.logits, p.loc, p.scale)
        elif self.batch == 1:
            y = self._joint_one(p.logits[0], p.loc[0], p.scale, p.scale_tril)
        else:
            y = self._joint(p.logits, p.loc, p.scale, p.scale_tril)
        out = np.empty((self.batch, self.columns), np.float32)
        col = self.event_dim
        out[:, :col] = y
        if self.pen_states:
            out[:, col] = self._discrete(p.pen_logits, self.pen_temperature)
            col += 1
        if self.reward:
            r = p.reward_loc
            if self.sigma_temperature != 0.0:
                eps = self.rng.standard_normal(self.batch, dtype=np.float32)
                r = r + p.reward_scale * eps * np.float32(self.root_sigma)
            out[:, col] = r
            col += 1
        if self.done:  # Bernoulli(sigmoid(logit / T_pen)): a two-way categorical over [0, logit]
            two = np.stack([np.zeros_like(p.done_logits), p.done_logits], -1)
            out[:, col] = self._discrete(two, self.pen_temperature)
        return out

    def _joint(self, logits, loc, scale, scale_tril) -> np.ndarray:
        rows = self.rows
        k = self.categorical(logits, self.temperature)
        y = loc[rows, k]
        if self.sigma_temperature != 0.0:
            eps = self.rng.standard_normal(y.shape, dtype=np.float32)
            if scale_tril is not None:
                noise = np.einsum("bij,bj->bi", scale_tril[rows, k], eps)
            else:
                noise = scale[rows, k] * eps
            y = y + noise * self.root_sigma if self.root_sigma != 1.0 else y + noise
        return y

    def _joint_one(self, logits, loc, scale, scale_tril) -> np.ndarray:
        """:meth:`_joint` for one stream, with scalar Python where NumPy's call overhead
        dominates; the same draws in the same order."""
        k = _py_categorical(logits.tolist(), self.temperature, self.rng)
        if self.sigma_temperature == 0.0:
            return loc[k]
        eps = self.rng.standard_normal(self.event_dim, dtype=np.float32)
        noise = scale_tril[0, k] @ eps if scale_tril is not None else scale[0, k] * eps
        if self.root_sigma != 1.0:
            noise *= self.root_sigma
        return loc[k] + noise

    def _per_dimension(self, logits, loc, scale) -> np.ndarray:
        """Each dimension draws its own component: ``(B, D, K)`` parameters → ``(B, D)``."""
        b, d, k = logits.shape
        idx = self.categorical(logits.reshape(b * d, k), self.temperature).reshape(b, d, 1)
        y = np.take_along_axis(loc, idx, -1)[..., 0]
        if self.sigma_temperature != 0.0:
            eps = self.rng.standard_normal((b, d), dtype=np.float32)
            sig = np.take_along_axis(scale, idx, -1)[..., 0]
            y = y + sig * eps * np.float32(self.root_sigma)
        return y


# ---------------------------------------------------------------------------------------- generators
class GeneratorBase:
    """``step`` / ``predict`` / ``reset`` / ``generate`` over one runtime's ``_advance``.

    A runtime subclass sets up its state, calls ``GeneratorBase.__init__`` with the event layout,
    its :class:`Sampling` and the model's conditioning sizes, sets ``self.context`` (from
    :meth:`_as_context`), and implements ``_reset_state()`` and ``_advance(event or None,
    inputs or None)``, which reads one event per stream (None: the start token, which begins a
    fresh sequence) with the step's inputs and returns the next event's :class:`StepParams`.
    """

    def __init__(
        self,
        event_dim: int,
        pen_states: int,
        sampling: Sampling,
        *,
        input_dim: int = 0,
        context_dim: int = 0,
        reward: bool = False,
        done: bool = False,
        per_dimension: bool = False,
    ) -> None:
        self.event_dim, self.pen_states = int(event_dim), int(pen_states)
        self.input_dim, self.context_dim = int(input_dim), int(context_dim)
        self.reward, self.done = bool(reward), bool(done)
        #: the sampling settings (temperatures, batch, random source)
        self.sampling = sampling
        self.sampler = _Sampler(
            self.event_dim,
            self.pen_states,
            sampling,
            reward=self.reward,
            done=self.done,
            per_dimension=per_dimension,
        )
        self.batch = sampling.batch
        #: the streams' context ``(batch, context_dim)`` (None without one)
        self.context: np.ndarray | None = None

    @property
    def columns(self) -> int:
        """Columns of an event row: ``event_dim`` (+ pen-state index, reward, done flag)."""
        return self.sampler.columns

    def _advance(self, event: np.ndarray | None, inputs: np.ndarray | None) -> StepParams:
        raise NotImplementedError  # pragma: no cover - abstract

    def _reset_state(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def reset(self, context: Any = None) -> None:
        """Forget the past: every stream starts a fresh sequence; ``context`` ``(context_dim,)``
        or ``(batch, context_dim)`` replaces the streams' context (None: keep it)."""
        if context is not None:
            self.context = self._as_context(context)
        self._reset_state()

    def retune(
        self,
        temperature: float | None = None,
        sigma_temperature: float | None = None,
        pen_temperature: float | None = None,
    ) -> Sampling:
        """Change the temperatures (None: keep one) while keeping the recurrent state and the
        random source: a live control.  The values are checked as :class:`Sampling` checks
        them; the new settings are returned and kept as ``g.sampling``.

        Example:
            >>> from mdnkit.sequence import MDNRNN
            >>> g = MDNRNN(2, hidden_size=8).generator(generator=0)
            >>> e = g.step()
            >>> g.retune(temperature=0.5).temperature
            0.5
        """
        changes = {"temperature": temperature, "sigma_temperature": sigma_temperature}
        changes["pen_temperature"] = pen_temperature
        s = replace(self.sampling, **{k: v for k, v in changes.items() if v is not None})
        smp = self.sampler
        smp.temperature, smp.sigma_temperature = s.temperature, s.sigma_temperature
        smp.pen_temperature, smp.root_sigma = s.pen_temperature, s.root_sigma
        self.sampling = s
        self._retuned()
        return s

    def _retuned(self) -> None:
        """Hook: a runtime that caches a value derived from the temperatures refreshes it."""

    def _next(self, event: np.ndarray | None, inputs: np.ndarray | None) -> np.ndarray:
        return self.sampler.sample(self._advance(event, inputs))

    def _read(self, event: np.ndarray | None, inputs: np.ndarray | None) -> None:
        self._advance(event, inputs)

    def _as_array(self, v: Any) -> np.ndarray:
        a = v.detach().cpu().numpy() if isinstance(v, Tensor) else np.asarray(v)
        return np.ascontiguousarray(a, dtype=np.float32)

    def _as_context(self, context: Any) -> np.ndarray | None:
        """The context as ``(batch, context_dim)`` float32 (a ``(context_dim,)`` one is shared)."""
        c, b = self.context_dim, self.batch
        if c == 0:
            if context is not None:
                raise ValueError(
                    "expected no context (the model has context_dim=0), found a context of "
                    f"shape {tuple(np.shape(context))}"
                )
            return None
        if context is None:
            raise ValueError(
                f"expected a context of shape ({c},) or ({b}, {c}) (context_dim={c}), found None"
            )
        a = self._as_array(context)
        if a.shape == (c,):
            a = np.broadcast_to(a, (b, c))
        if a.shape != (b, c):
            raise ValueError(
                f"expected a context of shape ({c},) or ({b}, {c}) for {b} stream(s), "
                f"found {a.shape}"
            )
        return np.ascontiguousarray(a)

    def _as_inputs(self, inputs: Any) -> np.ndarray | None:
        """One step's inputs as ``(batch, input_dim)`` float32."""
        i, b = self.input_dim, self.batch
        if i == 0:
            if inputs is not None:
                raise ValueError(
                    "expected no per-step inputs (the model has input_dim=0), found inputs of "
                    f"shape {tuple(np.shape(inputs))}"
                )
            return None
        if inputs is None:
            raise ValueError(
                f"expected per-step inputs of shape ({b}, {i}) (input_dim={i}), found None"
            )
        a = self._as_array(inputs)
        if a.ndim == 1 and b == 1:
            a = a[None, :]
        if a.shape != (b, i):
            one = f"({i},) or " if b == 1 else ""
            raise ValueError(
                f"expected per-step inputs of shape {one}({b}, {i}) for {b} stream(s), "
                f"found {tuple(np.shape(inputs))}"
            )
        return a

    def _as_event(self, event: Any) -> tuple[np.ndarray, str, bool]:
        kind = "tensor" if isinstance(event, Tensor) else "numpy"
        a = event.detach().cpu().numpy() if isinstance(event, Tensor) else np.asarray(event)
        found = tuple(a.shape)
        single = a.ndim == 1 and self.batch == 1
        if single:
            a = a[None, :]
        if a.shape != (self.batch, self.columns):
            one = f"({self.columns},) or " if self.batch == 1 else ""
            raise ValueError(
                f"expected an event of shape {one}({self.batch}, {self.columns}) for a batch of "
                f"{self.batch} stream(s), found {found}"
            )
        return np.ascontiguousarray(a, dtype=np.float32), kind, single

    def predict(self, event: Any = None, inputs: Any = None) -> dict[str, np.ndarray | None]:
        """Read one event per stream (``None``: the start token) with the step's ``inputs``
        (what is known about the event being predicted) and return the parameters of the next
        event's distribution in data units, the fields of :class:`StepParams`: ``logits``
        (normalised, ``(B, K)``), ``loc`` ``(B, K, D)``, ``scale`` ``(B, K, D)`` or
        ``scale_tril`` ``(B, K, D, D)`` (per dimension: ``(B, D, K)`` each), ``pen_logits``
        ``(B, P)``, ``done_logits``, ``reward_loc``, ``reward_scale`` ``(B,)`` or None.
        Advances the state."""
        e = None if event is None else self._as_event(event)[0]
        return self._advance(e, self._as_inputs(inputs))._asdict()

    def step(self, event: Any = None, inputs: Any = None) -> Any:
        """Read the previous event and return a sample of the next one.

        ``event`` is ``(columns,)`` (one stream) or ``(batch, columns)``, a NumPy array or a
        tensor; the result has the same shape and type.  ``None`` reads the start token: use it
        for the first step of a fresh sequence (after :meth:`reset`); it returns ``(batch,
        columns)`` NumPy events (``(columns,)`` when ``batch == 1``).  ``inputs``
        ``(input_dim,)`` or ``(batch, input_dim)``: what the model is told about the event it
        predicts (a world model: the action just taken), required when ``input_dim > 0``.
        """
        ins = None if inputs is None and self.input_dim == 0 else self._as_inputs(inputs)
        if event is None:
            out = self._next(None, ins)
            return out[0] if self.batch == 1 else out
        e, kind, single = self._as_event(event)
        out = self._next(e, ins)
        if single:
            out = out[0]
        return torch.from_numpy(out) if kind == "tensor" else out

    def _as_prime(self, prime: Any) -> np.ndarray:
        p = prime.detach().cpu().numpy() if isinstance(prime, Tensor) else np.asarray(prime)
        if p.ndim == 2:
            p = np.broadcast_to(p, (self.batch, *p.shape))
        if p.ndim != 3 or p.shape[0] != self.batch or p.shape[2] != self.columns or p.shape[1] < 1:
            raise ValueError(
                f"prime must have shape (P, {self.columns}) or ({self.batch}, P, {self.columns}) "
                f"with P >= 1, found {tuple(p.shape)}"
            )
        return np.ascontiguousarray(p, dtype=np.float32)

    def _as_input_sequence(self, inputs: Any, n: int) -> np.ndarray | None:
        """``generate``'s inputs as ``(batch, n, input_dim)``: one row per event, prime included."""
        i, b = self.input_dim, self.batch
        if i == 0 or inputs is None:
            self._as_inputs(inputs)  # the right error when one is missing or unexpected
            return None
        a = self._as_array(inputs)
        if a.shape == (n, i):
            a = np.broadcast_to(a, (b, n, i))
        if a.shape != (b, n, i):
            raise ValueError(
                f"expected inputs of shape ({n}, {i}) or ({b}, {n}, {i}) (one row per event, "
                f"prime + steps = {n}), found {a.shape}"
            )
        return a

    def generate(self, steps: int, prime: Any = None, inputs: Any = None) -> np.ndarray:
        """Reset, read the start token and ``prime`` (``(P, columns)`` or ``(batch, P,
        columns)``), then sample ``steps`` events: a float32 array ``(batch, steps, columns)``.
        ``inputs`` ``(P + steps, input_dim)`` or ``(batch, P + steps, input_dim)``: row ``j``
        conditions event ``j`` of the sequence prime + new events."""
        steps = checks.nonnegative_int("steps", steps)
        p = None if prime is None else self._as_prime(prime)
        n_prime = 0 if p is None else p.shape[1]
        cond = self._as_input_sequence(inputs, n_prime + steps)

        def at(j: int) -> np.ndarray | None:
            return None if cond is None else np.ascontiguousarray(cond[:, j])

        self.reset()
        out = np.empty((self.batch, steps, self.columns), dtype=np.float32)
        if steps == 0:
            return out
        if p is None:
            e = self._next(None, at(0))
        else:
            self._read(None, at(0))
            for i in range(n_prime - 1):
                self._read(p[:, i], at(i + 1))
            e = self._next(p[:, -1], at(n_prime))
        out[:, 0] = e
        for i in range(1, steps):
            e = self._next(e, at(n_prime + i))
            out[:, i] = e
        return out


def _npy(t: Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy().copy()


def _fold_rnn(model: MDNRNN, shift: np.ndarray, scale: np.ndarray) -> list[tuple]:
    """The recurrent layers as NumPy matrices, the input standardisation folded into layer 0:
    ``(W,)`` per LSTM layer, one matrix for what it reads from the state buffer (``[x, h_0,
    1]`` for layer 0, ``[h_{l-1}, 1, h_l]`` above it: see :meth:`StepGenerator._reset_state`)
    with the gates' columns in the order ``[i, f, o, g]``; ``(W_ih, W_hh, b_ih, b_hh)`` per GRU
    layer."""
    d, h = model.event_dim, model.hidden_size
    layers = []
    for layer in range(model.num_layers):
        w_ih, w_hh, b_ih, b_hh = (
            _npy(getattr(model.rnn, f"{name}_l{layer}"))
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        )
        if layer == 0:
            # W [(u - m) / s] = (W / s) u - W (m / s)
            b_ih = b_ih - w_ih[:, :d] @ (shift / scale)
            w_ih[:, :d] = w_ih[:, :d] / scale
        if model.cell == "lstm":
            # sigma(a) = (1 + tanh(a / 2)) / 2: pre-scale the i, f, o columns so that one tanh
            # over all four gates does the work; PyTorch's order i, f, g, o becomes i, f, o, g
            # (the three sigmoid gates side by side)
            gate = np.arange(4 * h) // h
            order = np.concatenate([np.flatnonzero(gate == j) for j in (0, 1, 3, 2)])
            half = np.where(np.arange(4 * h) < 3 * h, 0.5, 1.0).astype(np.float32)
            bias = (b_ih + b_hh)[None]
            rows = [w_ih.T, w_hh.T, bias] if layer == 0 else [w_ih.T, bias, w_hh.T]
            w = np.concatenate(rows, 0)[:, order] * half
            layers.append((np.ascontiguousarray(w, np.float32),))
        else:
            layers.append((np.ascontiguousarray(w_ih.T), np.ascontiguousarray(w_hh.T), b_ih, b_hh))
    return layers


def _linear(layer: Any) -> np.ndarray:
    """An ``nn.Linear`` as one matrix for ``[x, 1]``."""
    return np.concatenate([_npy(layer.weight).T, _npy(layer.bias)[None]])


def _fold_head(model: MDNRNN, shift: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The head, then the pen logits, the done logit and the reward's (mean, raw scale), as one
    matrix for ``[h, 1]``; the means (and the reward's mean) in data units."""
    layout = model.head.layout
    w = _linear(model.head.proj)
    k = layout.num_components
    # the means block is component-major (K, D), or dimension-major (D, K) per dimension
    col_scale = np.repeat(scale, k) if layout.per_dimension else np.tile(scale, k)
    col_shift = np.repeat(shift, k) if layout.per_dimension else np.tile(shift, k)
    w[:, layout.loc] *= col_scale
    w[-1, layout.loc] += col_shift
    parts = [w]
    for extra in (model.pen, model.done_head):
        if extra is not None:
            parts.append(_linear(extra))
    if model.reward_head is not None:
        wr = _linear(model.reward_head)
        wr[:, 0] *= _npy(model.reward_scale)[0]
        wr[-1, 0] += _npy(model.reward_shift)[0]
        parts.append(wr)
    return np.ascontiguousarray(np.concatenate(parts, 1), np.float32)


def _per_component(block: slice, width: int, k: int) -> list[slice]:
    """The slices of the ``k`` components' entries (``width`` each) inside a block of the head."""
    return [slice(block.start + j * width, block.start + (j + 1) * width) for j in range(k)]


class StepGenerator(GeneratorBase):
    r"""Step-by-step generation from an :class:`MDNRNN`, on NumPy copies of its weights.

    Per step and stream, an LSTM layer computes
    :math:`(i, f, g, o) = W_{ih} x + W_{hh} h + b`, :math:`c' = \sigma(f) c + \sigma(i)\tanh(g)`,
    :math:`h' = \sigma(o) \tanh(c')` (a GRU: PyTorch's ``nn.GRU`` equations); the head maps the
    top :math:`h'` to the mixture (decoded by the head's :class:`~mdnkit.layout.HeadLayout`),
    and one component and one point are drawn (:math:`k \sim \operatorname{softmax}(\log\pi /
    T)`, :math:`y = \mu_k + \sqrt{S}\,L_k \varepsilon`; per dimension, one component per
    value).  No PyTorch call is made per step.  The keyword arguments are those of
    :class:`Sampling`, plus the streams' ``context`` for a model with ``context_dim > 0``.

    Example:
        >>> from mdnkit.sequence import MDNRNN
        >>> model = MDNRNN(event_dim=2, hidden_size=16, num_layers=2)
        >>> g = model.generator(batch=4, temperature=0.7, generator=1)
        >>> e = g.step()                    # (4, 2): the first events of 4 independent streams
        >>> e = g.step(e)
        >>> g.reset()                       # start again
        >>> world = MDNRNN(3, hidden_size=16, num_layers=1, input_dim=1, context_dim=2)
        >>> g = world.generator(context=[1.0, 0.0], generator=0)
        >>> e = g.step(None, inputs=[0.5])  # the first event, told its input
        >>> e = g.step(e, inputs=[-0.5])    # the next event, told its own input
        >>> e.shape
        (3,)
    """

    def __init__(
        self,
        model: MDNRNN,
        batch: int = 1,
        temperature: float = 1.0,
        sigma_temperature: float = 1.0,
        pen_temperature: float = 1.0,
        generator: Any = None,
        context: Any = None,
    ) -> None:
        sampling = Sampling(
            temperature=temperature,
            sigma_temperature=sigma_temperature,
            pen_temperature=pen_temperature,
            batch=batch,
            generator=generator,
        )
        self._setup(model, sampling, context)

    @classmethod
    def from_sampling(cls, model: MDNRNN, sampling: Sampling, context: Any = None) -> StepGenerator:
        """A generator for ``model`` with ready-made settings (and the streams' ``context``).

        Example:
            >>> from mdnkit.sequence import MDNRNN
            >>> g = StepGenerator.from_sampling(MDNRNN(3, hidden_size=8), Sampling(batch=2))
            >>> g.step().shape
            (2, 3)
        """
        self = cls.__new__(cls)
        self._setup(model, sampling, context)
        return self

    def _setup(self, model: MDNRNN, sampling: Sampling, context: Any) -> None:
        if not isinstance(model, MDNRNN):
            raise TypeError(f"model must be an MDNRNN, found {type(model).__name__}")
        if not isinstance(sampling, Sampling):
            raise TypeError(f"sampling must be a Sampling, found {type(sampling).__name__}")
        #: the head's parameter layout and scale transform (shared with the model, immutable)
        self.layout = layout = model.head.layout
        super().__init__(
            model.event_dim,
            model.pen_states,
            sampling,
            input_dim=model.input_dim,
            context_dim=model.context_dim,
            reward=model.reward,
            done=model.done,
            per_dimension=layout.per_dimension,
        )
        self.context = self._as_context(context)
        self.cell, self.num_layers, self.hidden = model.cell, model.num_layers, model.hidden_size
        self._shift, self._scale = _npy(model.shift), _npy(model.scale)
        self._in0 = model.input_size
        first = model.event_dim + model.pen_states + 1  # inputs, then the context, follow
        self._inp = slice(first, first + model.input_dim)
        self._ctx = slice(first + model.input_dim, model.input_size)
        self._layers = _fold_rnn(model, self._shift, self._scale)
        self._w_head = _fold_head(model, self._shift, self._scale)
        self._w_init = _linear(model.state_init) if model.state_init is not None else None
        self._r_scale = _npy(model.reward_scale) if model.reward else None
        # the sigmoid gates' 0.5 + 0.5 tanh, as arrays shaped like what they meet (a NumPy call
        # that broadcasts, or that takes a Python number, costs more than one that does not)
        three = 3 * self.hidden
        self._half = np.full((1, three) if self.batch == 1 else (three,), 0.5, np.float32)
        # Read on every step: where the extra logits and each component's entries sit.
        k, n = layout.num_components, layout.num_params
        self._pen = slice(n, n + self.pen_states)  # the pen logits follow the head's
        self._done_at = n + self.pen_states  # then the done logit, then the reward's two
        self._reward_at = self._done_at + int(self.done)
        self._logits = layout.logits
        loc_of = _per_component(layout.loc, layout.out_features, k)
        self._pieces = list(zip(loc_of, _per_component(layout.scale, layout.scale_width, k)))
        self._to_scale = layout.scale_map.numpy
        # One stream, a joint mixture of diagonal/spherical components, no extra heads: sample
        # from the raw head output, transforming only the chosen component's scales.
        self._fast = (
            self.batch == 1
            and layout.covariance != "full"
            and not layout.per_dimension
            and not (self.done or self.reward)
        )
        self._plain = self._fast and self.input_dim == 0  # (step's shortcut, see there)
        self._width, self._event_shape = self.columns, (self.columns,)
        self._retuned()
        self._reset_state()

    def _retuned(self) -> None:
        root = np.float32(self.sampling.root_sigma)
        self._noise_scale = (self._scale * root).astype(np.float32)

    def _reset_state(self) -> None:
        b, h, n0, layers = self.batch, self.hidden, self._in0, self.num_layers
        # One state buffer per stream, [x | h_0 1 | h_1 1 | ...]: layer 0 reads [x, h_0, 1],
        # layer l > 0 reads [h_{l-1}, 1, h_l] and the head [h_top, 1], each a contiguous slice,
        # and each layer writes its new h where the next layer (and its own next step) reads it.
        state = np.zeros((b, n0 + layers * (h + 1)), np.float32)
        starts = [n0 + i * (h + 1) for i in range(layers)]
        state[:, [s + h for s in starts]] = 1.0
        self._x = state[:, :n0]
        self._h = [state[:, s : s + h] for s in starts]
        self._reads = [state[:, : n0 + h + 1]] + [state[:, s - h - 1 : s + h] for s in starts[1:]]
        self._top = state[:, starts[-1] :]
        # (one stream: the views step's shortcut reads and writes; the start token's flag)
        self._x_event, self._top_row, self._flag = state[0, : self.event_dim], self._top[0], False
        self._tmp = np.zeros((b, h), np.float32)
        self._cells = [self._cell() for _ in range(layers)] if self.cell == "lstm" else []
        self._c = [cell[-1] for cell in self._cells]
        if self.context is not None:
            self._x[:, self._ctx] = self.context  # constant for the whole sequence
        self._initial = None
        if self._w_init is not None:  # tanh(W c + b): per layer h, then c for an LSTM
            s = np.tanh(self.context @ self._w_init[:-1] + self._w_init[-1])
            per = 2 if self.cell == "lstm" else 1
            self._initial = s.reshape(b, layers, per, h).astype(np.float32)
            self._load_initial()

    def _cell(self) -> tuple[np.ndarray, ...]:
        """One LSTM layer's buffers and views: the gates ``[i, f, o, g]``, the three sigmoid
        gates, o, then (one stream) ``[i, f]``, ``[g, c]``, their product ``[i g, f c]`` and its
        halves, or (several) i, f, g; last the cell state c.  For one stream c sits right after
        the gates, so that ``[i, f] * [g, c]`` is one call."""
        b, h = self.batch, self.hidden
        if b == 1:
            buf, pair = np.zeros((1, 5 * h), np.float32), np.zeros((1, 2 * h), np.float32)
            gates, c = buf[:, : 4 * h], buf[:, 4 * h :]
            views = (buf[:, : 2 * h], buf[:, 3 * h :], pair, pair[:, :h], pair[:, h:])
            return (gates, gates[:, : 3 * h], gates[:, 2 * h : 3 * h], *views, c)
        gates, c = np.zeros((b, 4 * h), np.float32), np.zeros((b, h), np.float32)
        i_, f_, o_, g_ = (gates[:, j * h : (j + 1) * h] for j in range(4))
        return gates, gates[:, : 3 * h], o_, i_, f_, g_, c

    def _load_initial(self) -> None:
        """Set the state to the context's initial state (the start of a sequence)."""
        for i, h in enumerate(self._h):
            h[:] = self._initial[:, i, 0]
            if self.cell == "lstm":
                self._c[i][:] = self._initial[:, i, 1]

    @property
    def state(self) -> tuple[np.ndarray, ...]:
        """The recurrent state, as ``nn.LSTM``/``nn.GRU`` lay it out: ``(h, c)`` or ``(h,)``,
        each ``(num_layers, batch, hidden_size)`` (copies)."""
        h = np.stack(self._h)
        return (h, np.stack(self._c)) if self.cell == "lstm" else (h,)

    def _write_input(self, event: np.ndarray | None, inputs: np.ndarray | None) -> None:
        x = self._x
        d, p = self.event_dim, self.pen_states
        if inputs is not None:
            x[:, self._inp] = inputs
        if event is None:
            if self._initial is not None:
                self._load_initial()  # the start token begins a sequence from the context
            x[:, :d] = self._shift  # standardised to 0 by the folded first layer
            if p:
                x[:, d : d + p] = 0.0
            x[:, d + p] = 1.0
            self._flag = True
            return
        x[:, :d] = event[:, :d]
        if p:
            x[:, d : d + p] = 0.0
            idx = np.clip(np.rint(event[:, d]).astype(np.int64), 0, p - 1)
            x[self.sampler.rows, d + idx] = 1.0
        x[:, d + p] = 0.0
        self._flag = False

    def _lstm(self) -> None:
        half, tmp = self._half, self._tmp
        if self.batch == 1:
            for (w,), read, h, cell in zip(self._layers, self._reads, self._h, self._cells):
                gates, sig, o, i_f, g_c, pair, ig, fc, c = cell
                np.dot(read, w, out=gates)
                np.tanh(gates, out=gates)
                np.multiply(sig, half, out=sig)
                np.add(sig, half, out=sig)  # (sigma(i), sigma(f), sigma(o), tanh(g))
                np.multiply(i_f, g_c, out=pair)  # (i g, f c)
                np.add(ig, fc, out=c)
                np.tanh(c, out=tmp)
                np.multiply(o, tmp, out=h)
            return
        for (w,), read, h, cell in zip(self._layers, self._reads, self._h, self._cells):
            gates, sig, o, i, f, g, c = cell
            np.dot(read, w, out=gates)
            np.tanh(gates, out=gates)
            np.multiply(sig, half, out=sig)
            np.add(sig, half, out=sig)
            c *= f
            np.multiply(i, g, out=tmp)
            c += tmp
            np.tanh(c, out=tmp)
            np.multiply(o, tmp, out=h)

    def _gru(self) -> None:
        hd = self.hidden
        for i, (w_ih, w_hh, b_ih, b_hh) in enumerate(self._layers):
            h_prev = self._h[i]
            gi = (self._x if i == 0 else self._h[i - 1]) @ w_ih + b_ih
            gh = h_prev @ w_hh + b_hh
            rz = gi[:, : 2 * hd] + gh[:, : 2 * hd]
            rz = 0.5 + 0.5 * np.tanh(0.5 * rz)
            r, z = rz[:, :hd], rz[:, hd:]
            nn_ = np.tanh(gi[:, 2 * hd :] + r * gh[:, 2 * hd :])
            h_prev[:] = nn_ + z * (h_prev - nn_)

    def _raw(self, event: np.ndarray | None, inputs: np.ndarray | None) -> np.ndarray:
        """Advance the state by one event; return the raw head output ``(B, num_params [+
        extra heads])`` (the means already in data units)."""
        self._write_input(event, inputs)
        if self.cell == "lstm":
            self._lstm()
        else:
            self._gru()
        return self._top @ self._w_head  # [h, 1] @ [W; b]

    def _advance(self, event: np.ndarray | None, inputs: np.ndarray | None) -> StepParams:
        return self._decode(self._raw(event, inputs))

    def _read(self, event: np.ndarray | None, inputs: np.ndarray | None) -> None:
        self._raw(event, inputs)

    def _decode(self, p: np.ndarray) -> StepParams:
        logits, loc, scale, tril = self.layout.decode_numpy(p)
        if tril is not None:
            tril *= self._scale[:, None]
        elif self.layout.per_dimension:
            scale = scale * self._scale[:, None]  # (B, D, K), standardised -> data units
        else:
            scale = scale * self._scale
        out = StepParams(logits, loc, scale, tril, p[:, self._pen] if self.pen_states else None)
        if self.done:
            out = out._replace(done_logits=p[:, self._done_at])
        if self.reward:
            r = self._reward_at
            sig = self._to_scale(np.ascontiguousarray(p[:, r + 1])) * self._r_scale
            out = out._replace(reward_loc=p[:, r], reward_scale=sig)
        return out

    def _sample_one(self, p: np.ndarray) -> np.ndarray:
        """One stream, diagonal/spherical components: the event ``(columns,)`` from the raw head
        output ``p`` ``(num_params,)``, with the same draws as :meth:`_Sampler.sample`."""
        smp, d = self.sampler, self.event_dim
        j = _py_categorical(p[self._logits].tolist(), smp.temperature, smp.rng)
        loc, raw = self._pieces[j]
        out = np.empty(self._width, np.float32)
        y = out[:d] if self.pen_states else out
        if smp.sigma_temperature != 0.0:
            eps = smp.rng.standard_normal(d, dtype=np.float32)
            eps *= self._noise_scale  # sqrt(S) * the standardisation's scale
            eps *= self._to_scale(p[raw])
            np.add(p[loc], eps, out=y)
        else:
            y[:] = p[loc]
        if self.pen_states:
            out[-1] = _py_categorical(p[self._pen].tolist(), smp.pen_temperature, smp.rng)
        return out

    def _sample_fast(self, event: np.ndarray | None, inputs: np.ndarray | None) -> np.ndarray:
        return self._sample_one(self._raw(event, inputs)[0])[None]

    def step(self, event: Any = None, inputs: Any = None) -> Any:
        """:meth:`GeneratorBase.step`: read the previous event and return a sample of the next
        one.  (One stream reading a float32 NumPy event ``(columns,)`` with nothing else goes
        straight to the cells and the sampler: the general checks and copies would cost a
        tenth of the step.)"""
        if not (
            self._plain
            and inputs is None
            and type(event) is np.ndarray
            and event.dtype is _FLOAT32
            and event.shape == self._event_shape
        ):
            return super().step(event, inputs)
        if self.pen_states:
            self._write_input(event[None], None)
        else:
            np.copyto(self._x_event, event)
            if self._flag:  # the start token's flag, set by the previous input
                self._x[:, self.event_dim] = 0.0
                self._flag = False
        if self.cell == "lstm":
            self._lstm()
        else:
            self._gru()
        return self._sample_one(np.dot(self._top_row, self._w_head))

    def _next(self, event: np.ndarray | None, inputs: np.ndarray | None) -> np.ndarray:
        if self._fast:
            return self._sample_fast(event, inputs)
        return self.sampler.sample(self._advance(event, inputs))

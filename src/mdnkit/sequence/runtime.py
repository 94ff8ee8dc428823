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
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import checks
from .model import MDNRNN

__all__ = ["Sampling", "GeneratorBase", "StepGenerator"]

_SOURCES = "None, an int seed, a numpy.random.Generator or a torch.Generator"


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


class _Sampler:
    """NumPy sampling of the next event from one step's mixture parameters (data units)."""

    def __init__(self, event_dim: int, pen_states: int, sampling: Sampling) -> None:
        self.event_dim, self.pen_states, self.batch = event_dim, pen_states, sampling.batch
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

    def sample(
        self,
        logits: np.ndarray,
        loc: np.ndarray,
        scale: np.ndarray | None,
        scale_tril: np.ndarray | None,
        pen_logits: np.ndarray | None,
    ) -> np.ndarray:
        """Events ``(B, columns)`` from normalised ``logits`` ``(B, K)``, ``loc`` ``(B, K, D)``,
        ``scale`` ``(B, K, D)`` or ``scale_tril`` ``(B, K, D, D)``, ``pen_logits`` ``(B, P)``."""
        if self.batch == 1:
            return self._sample_one(logits[0], loc[0], scale, scale_tril, pen_logits)
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
        if pen_logits is None:
            return y.astype(np.float32, copy=False)
        s = self.categorical(pen_logits, self.pen_temperature)
        out = np.empty((y.shape[0], self.event_dim + 1), dtype=np.float32)
        out[:, : self.event_dim] = y
        out[:, self.event_dim] = s
        return out

    def _sample_one(self, logits, loc, scale, scale_tril, pen_logits) -> np.ndarray:
        """:meth:`sample` for one stream, with scalar Python where NumPy's call overhead
        dominates; the same draws in the same order."""
        k = _py_categorical(logits.tolist(), self.temperature, self.rng)
        d = self.event_dim
        out = np.empty((1, d + (1 if pen_logits is not None else 0)), np.float32)
        if self.sigma_temperature != 0.0:
            eps = self.rng.standard_normal(d, dtype=np.float32)
            if scale_tril is not None:
                noise = scale_tril[0, k] @ eps
            else:
                noise = scale[0, k] * eps
            if self.root_sigma != 1.0:
                noise *= self.root_sigma
            out[0, :d] = loc[k] + noise
        else:
            out[0, :d] = loc[k]
        if pen_logits is not None:
            out[0, d] = _py_categorical(pen_logits[0].tolist(), self.pen_temperature, self.rng)
        return out


# ---------------------------------------------------------------------------------------- generators
class GeneratorBase:
    """``step`` / ``predict`` / ``reset`` / ``generate`` over one runtime's ``_advance``.

    A runtime subclass sets up its state, calls ``GeneratorBase.__init__`` with the event layout
    and its :class:`Sampling`, and implements ``reset()`` and ``_advance(event or None)``, which
    reads one event per stream and returns the next event's mixture parameters in data units,
    ``(logits, loc, scale, scale_tril, pen_logits)``.
    """

    def __init__(self, event_dim: int, pen_states: int, sampling: Sampling) -> None:
        self.event_dim, self.pen_states = int(event_dim), int(pen_states)
        #: the sampling settings (temperatures, batch, random source)
        self.sampling = sampling
        self.sampler = _Sampler(self.event_dim, self.pen_states, sampling)
        self.batch = sampling.batch

    @property
    def columns(self) -> int:
        """Columns of an event row: ``event_dim`` (+ 1 for the pen-state index)."""
        return self.event_dim + (1 if self.pen_states else 0)

    def _advance(self, event: np.ndarray | None):  # pragma: no cover - abstract
        raise NotImplementedError

    def reset(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _next(self, event: np.ndarray | None) -> np.ndarray:
        return self.sampler.sample(*self._advance(event))

    def _read(self, event: np.ndarray | None) -> None:
        self._advance(event)

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

    def predict(self, event: Any = None) -> dict[str, np.ndarray | None]:
        """Read one event per stream (``None``: the start token) and return the parameters of the
        next event's distribution in data units: ``logits`` (normalised, ``(B, K)``), ``loc``
        ``(B, K, D)``, ``scale`` ``(B, K, D)`` or ``scale_tril`` ``(B, K, D, D)``, ``pen_logits``
        ``(B, P)`` or None.  Advances the state."""
        e = None if event is None else self._as_event(event)[0]
        return dict(zip(("logits", "loc", "scale", "scale_tril", "pen_logits"), self._advance(e)))

    def step(self, event: Any = None) -> Any:
        """Read the previous event and return a sample of the next one.

        ``event`` is ``(columns,)`` (one stream) or ``(batch, columns)``, a NumPy array or a
        tensor; the result has the same shape and type.  ``None`` reads the start token: use it
        for the first step of a fresh sequence (after :meth:`reset`); it returns ``(batch,
        columns)`` NumPy events (``(columns,)`` when ``batch == 1``).
        """
        if event is None:
            out = self._next(None)
            return out[0] if self.batch == 1 else out
        e, kind, single = self._as_event(event)
        out = self._next(e)
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

    def generate(self, steps: int, prime: Any = None) -> np.ndarray:
        """Reset, read the start token and ``prime`` (``(P, columns)`` or ``(batch, P,
        columns)``), then sample ``steps`` events: a float32 array ``(batch, steps, columns)``."""
        steps = checks.nonnegative_int("steps", steps)
        self.reset()
        out = np.empty((self.batch, steps, self.columns), dtype=np.float32)
        if steps == 0:
            return out
        if prime is None:
            e = self._next(None)
        else:
            p = self._as_prime(prime)
            self._read(None)
            for i in range(p.shape[1] - 1):
                self._read(p[:, i])
            e = self._next(p[:, -1])
        out[:, 0] = e
        for i in range(1, steps):
            e = self._next(e)
            out[:, i] = e
        return out


def _npy(t: Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy().copy()


def _fold_rnn(model: MDNRNN, shift: np.ndarray, scale: np.ndarray) -> list[tuple]:
    """The recurrent layers as NumPy matrices, the input standardisation folded into layer 0:
    ``(W,)`` per LSTM layer (one matrix for the buffer ``[x, h, 1]``), ``(W_ih, W_hh, b_ih,
    b_hh)`` per GRU layer."""
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
            # sigma(a) = (1 + tanh(a / 2)) / 2: pre-scale the i, f, o rows so that one tanh
            # over all four gates does the work; the last row of W is the bias.
            half = np.where(np.arange(4 * h) // h == 2, 1.0, 0.5).astype(np.float32)
            w = np.concatenate([w_ih.T, w_hh.T, (b_ih + b_hh)[None]], 0) * half
            layers.append((np.ascontiguousarray(w, np.float32),))
        else:
            layers.append((np.ascontiguousarray(w_ih.T), np.ascontiguousarray(w_hh.T), b_ih, b_hh))
    return layers


def _fold_head(model: MDNRNN, shift: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The head (and the pen logits) as one matrix for ``[h, 1]``, the means in data units."""
    layout = model.head.layout
    w = np.concatenate([_npy(model.head.proj.weight).T, _npy(model.head.proj.bias)[None]])
    w[:, layout.loc] *= np.tile(scale, layout.num_components)
    w[-1, layout.loc] += np.tile(shift, layout.num_components)
    if model.pen is not None:
        w_pen = np.concatenate([_npy(model.pen.weight).T, _npy(model.pen.bias)[None]])
        w = np.concatenate([w, w_pen], 1)
    return np.ascontiguousarray(w, np.float32)


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
    T)`, :math:`y = \mu_k + \sqrt{S}\,L_k \varepsilon`).  No PyTorch call is made per step.
    The keyword arguments are those of :class:`Sampling`.

    Example:
        >>> from mdnkit.sequence import MDNRNN
        >>> model = MDNRNN(event_dim=2, hidden_size=16, num_layers=2)
        >>> g = model.generator(batch=4, temperature=0.7, generator=1)
        >>> e = g.step()                    # (4, 2): the first events of 4 independent streams
        >>> e = g.step(e)
        >>> g.reset()                       # start again
    """

    def __init__(
        self,
        model: MDNRNN,
        batch: int = 1,
        temperature: float = 1.0,
        sigma_temperature: float = 1.0,
        pen_temperature: float = 1.0,
        generator: Any = None,
    ) -> None:
        sampling = Sampling(
            temperature=temperature,
            sigma_temperature=sigma_temperature,
            pen_temperature=pen_temperature,
            batch=batch,
            generator=generator,
        )
        self._setup(model, sampling)

    @classmethod
    def from_sampling(cls, model: MDNRNN, sampling: Sampling) -> StepGenerator:
        """A generator for ``model`` with ready-made settings.

        Example:
            >>> from mdnkit.sequence import MDNRNN
            >>> g = StepGenerator.from_sampling(MDNRNN(3, hidden_size=8), Sampling(batch=2))
            >>> g.step().shape
            (2, 3)
        """
        self = cls.__new__(cls)
        self._setup(model, sampling)
        return self

    def _setup(self, model: MDNRNN, sampling: Sampling) -> None:
        if not isinstance(model, MDNRNN):
            raise TypeError(f"model must be an MDNRNN, found {type(model).__name__}")
        if not isinstance(sampling, Sampling):
            raise TypeError(f"sampling must be a Sampling, found {type(sampling).__name__}")
        super().__init__(model.event_dim, model.pen_states, sampling)
        #: the head's parameter layout and scale transform (shared with the model, immutable)
        self.layout = layout = model.head.layout
        self.cell, self.num_layers, self.hidden = model.cell, model.num_layers, model.hidden_size
        self._shift, self._scale = _npy(model.shift), _npy(model.scale)
        self._in0 = model.input_size
        self._layers = _fold_rnn(model, self._shift, self._scale)
        self._w_head = _fold_head(model, self._shift, self._scale)
        gate = np.arange(4 * self.hidden) // self.hidden == 2
        self._mul = np.where(gate, 1.0, 0.5).astype(np.float32)
        self._add = np.where(gate, 0.0, 0.5).astype(np.float32)
        # Read on every step: where the pen logits and each component's entries sit.
        k = layout.num_components
        self._pen = slice(layout.num_params, None)  # the pen logits follow the head's
        self._logits = layout.logits
        self._loc_of = _per_component(layout.loc, layout.out_features, k)
        self._scale_of = _per_component(layout.scale, layout.scale_width, k)
        self._to_scale = layout.scale_map.numpy
        # One stream, diagonal/spherical components: sample from the raw head output,
        # transforming only the chosen component's scales.
        self._fast = self.batch == 1 and layout.covariance != "full"
        self._noise_scale = (self._scale * np.float32(sampling.root_sigma)).astype(np.float32)
        self.reset()

    def reset(self) -> None:
        """Forget the past: every stream starts a fresh sequence."""
        b, h = self.batch, self.hidden
        # The state lives in the input buffers: layer l reads [x_l, h_l, 1] from _buf[l].
        self._sizes = [self._in0] + [h] * (self.num_layers - 1)
        self._buf = [np.zeros((b, n + h + 1), np.float32) for n in self._sizes]
        for buf in self._buf:
            buf[:, -1] = 1.0
        self._c = [np.zeros((b, h), np.float32) for _ in range(self.num_layers)]
        self._gates = np.zeros((b, 4 * h), np.float32)
        self._tmp = np.zeros((b, h), np.float32)

    @property
    def state(self) -> tuple[np.ndarray, ...]:
        """The recurrent state, as ``nn.LSTM``/``nn.GRU`` lay it out: ``(h, c)`` or ``(h,)``,
        each ``(num_layers, batch, hidden_size)`` (copies)."""
        h = np.stack([buf[:, n : n + self.hidden] for buf, n in zip(self._buf, self._sizes)])
        return (h, np.stack(self._c)) if self.cell == "lstm" else (h,)

    def _write_input(self, event: np.ndarray | None) -> None:
        x = self._buf[0]
        d, p = self.event_dim, self.pen_states
        if event is None:
            x[:, :d] = self._shift  # standardised to 0 by the folded first layer
            if p:
                x[:, d : d + p] = 0.0
            x[:, d + p] = 1.0
            return
        x[:, :d] = event[:, :d]
        if p:
            x[:, d : d + p] = 0.0
            idx = np.clip(np.rint(event[:, d]).astype(np.int64), 0, p - 1)
            x[self.sampler.rows, d + idx] = 1.0
        x[:, d + p] = 0.0

    def _lstm(self) -> None:
        bufs, sizes, hd = self._buf, self._sizes, self.hidden
        g, tmp, mul, add = self._gates, self._tmp, self._mul, self._add
        last = len(bufs) - 1
        for i, (w,) in enumerate(self._layers):
            buf, n = bufs[i], sizes[i]
            np.dot(buf, w, out=g)
            np.tanh(g, out=g)
            g *= mul
            g += add  # (sigma(i), sigma(f), tanh(g), sigma(o))
            c = self._c[i]
            c *= g[:, hd : 2 * hd]
            np.multiply(g[:, :hd], g[:, 2 * hd : 3 * hd], out=tmp)
            c += tmp
            np.tanh(c, out=tmp)
            h = buf[:, n : n + hd]
            np.multiply(g[:, 3 * hd :], tmp, out=h)
            if i < last:
                bufs[i + 1][:, :hd] = h

    def _gru(self) -> None:
        bufs, sizes, hd = self._buf, self._sizes, self.hidden
        last = len(bufs) - 1
        for i, (w_ih, w_hh, b_ih, b_hh) in enumerate(self._layers):
            buf, n = bufs[i], sizes[i]
            h_prev = buf[:, n : n + hd]
            gi = buf[:, :n] @ w_ih + b_ih
            gh = h_prev @ w_hh + b_hh
            rz = gi[:, : 2 * hd] + gh[:, : 2 * hd]
            rz = 0.5 + 0.5 * np.tanh(0.5 * rz)
            r, z = rz[:, :hd], rz[:, hd:]
            nn_ = np.tanh(gi[:, 2 * hd :] + r * gh[:, 2 * hd :])
            h = nn_ + z * (h_prev - nn_)
            buf[:, n : n + hd] = h
            if i < last:
                bufs[i + 1][:, :hd] = h

    def _raw(self, event: np.ndarray | None) -> np.ndarray:
        """Advance the state by one event; return the raw head output ``(B, num_params [+ P])``
        (the means already in data units)."""
        self._write_input(event)
        if self.cell == "lstm":
            self._lstm()
        else:
            self._gru()
        return self._buf[-1][:, self._sizes[-1] :] @ self._w_head  # [h, 1] @ [W; b]

    def _advance(self, event: np.ndarray | None):
        return self._decode(self._raw(event))

    def _read(self, event: np.ndarray | None) -> None:
        self._raw(event)

    def _decode(self, p: np.ndarray):
        logits, loc, scale, tril = self.layout.decode_numpy(p)
        if tril is None:
            scale = scale * self._scale  # standardised -> data units
        else:
            tril *= self._scale[:, None]
        pen = p[:, self._pen] if self.pen_states else None
        return logits, loc, scale, tril, pen

    def _sample_fast(self, event: np.ndarray | None) -> np.ndarray:
        """One stream, diagonal/spherical components: the same draws as :meth:`_Sampler.sample`."""
        p = self._raw(event)[0]
        smp = self.sampler
        j = _py_categorical(p[self._logits].tolist(), smp.temperature, smp.rng)
        y = p[self._loc_of[j]]
        if smp.sigma_temperature != 0.0:
            sig = self._to_scale(p[self._scale_of[j]])
            eps = smp.rng.standard_normal(self.event_dim, dtype=np.float32)
            eps *= self._noise_scale  # sqrt(S) * the standardisation's scale
            eps *= sig
            y = y + eps
        out = np.empty((1, self.columns), np.float32)
        out[0, : self.event_dim] = y
        if self.pen_states:
            out[0, -1] = _py_categorical(p[self._pen].tolist(), smp.pen_temperature, smp.rng)
        return out

    def _next(self, event: np.ndarray | None) -> np.ndarray:
        if self._fast:
            return self._sample_fast(event)
        return self.sampler.sample(*self._advance(event))

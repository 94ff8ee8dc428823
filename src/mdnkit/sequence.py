r"""Sequences: the MDN-RNN, its training loss on padded batches, real-time generation and export.

An MDN-RNN reads a sequence of events :math:`x_1, x_2, \dots` and at every step predicts the
distribution of the **next** event,

.. math::

    p(x_{t+1} \mid x_{\le t}) = \underbrace{\sum_{k=1}^K \pi_k(h_t)\,
        \mathcal{N}\big(u_{t+1} \mid \mu_k(h_t), \Sigma_k(h_t)\big)}_{\text{continuous part}}
        \;\cdot\; \underbrace{\operatorname{softmax}(q(h_t))_{s_{t+1}}}_{\text{pen state}},
    \qquad h_t = \operatorname{RNN}(h_{t-1}, x_t),

where :math:`u` is the continuous part of an event and :math:`s` its optional discrete pen state.

Event layout
    An event is a row of ``event_dim`` continuous numbers, followed, when ``pen_states > 0``, by
    one more column holding the pen state **index** (0 .. pen_states-1, stored as a float).  For
    sketch-rnn "stroke-3" data ``(dx, dy, pen_lifted)`` use ``event_dim=2, pen_states=2``:
    state 0 = the pen stays on the paper after this point, 1 = the pen is lifted.  With
    ``pen_states=3`` the third state means "end of drawing" (stroke-5's p3).

Start token
    Every sequence is read after a fixed *start token* (an input with only a start flag
    set), so the first event is predicted too and the loss is the full sequence likelihood
    :math:`-\frac{1}{\sum_b L_b}\sum_b \log p(x^{(b)}_{1..L_b})`: a mean NLL **per event**.

Units
    The continuous part is standardised inside the model (:meth:`MDNRNN.prepare`), but every
    density, NLL and sample is in data units (the NLL includes :math:`\sum_d \log s_d`).

Generation
    :meth:`MDNRNN.generator` returns a :class:`StepGenerator`, a stateful object whose
    ``step(previous_event)`` returns a sample of the next event, for live use.  It runs the
    recurrent cells and the sampling on NumPy copies of the weights (measured faster per step on a
    CPU than any PyTorch call path for the small networks used live: see
    ``benchmarks/bench_realtime.py``).  :func:`export_onnx` writes the one-step function to ONNX;
    :class:`OnnxGenerator` runs it on onnxruntime with the same interface.

Temperatures follow the project convention: ``temperature`` divides the mixture logits,
``sigma_temperature`` multiplies the covariances, ``pen_temperature`` divides the pen logits;
0 means greedy (most likely component / its mean / most likely pen state).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .files import atomic_path
from .head import MDNHead, ScaleTransform
from .mixture import CovarianceType, GaussianMixture

__all__ = [
    "MDNRNN",
    "StepGenerator",
    "OnnxGenerator",
    "export_onnx",
    "pad_sequences",
    "windows",
]

CellType = Literal["lstm", "gru"]
Standardize = Literal["auto", "full", "scale", "none"]
ArrayLike = np.ndarray | Tensor

_LOG_2PI = math.log(2.0 * math.pi)


# ---------------------------------------------------------------------------------------- helpers
def pad_sequences(
    sequences: Sequence[ArrayLike], value: float = 0.0, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """Stack sequences of different lengths into one zero-padded batch.

    Args:
        sequences: arrays or tensors of shape ``(L_i, D)`` (all the same D, every ``L_i >= 1``).
        value: the padding value (it never affects :meth:`MDNRNN.loss`).
        dtype: dtype of the returned batch.

    Returns:
        ``(x, lengths)``: ``x`` of shape ``(B, max L_i, D)`` and ``lengths`` ``(B,)`` (int64).

    Example:
        >>> x, lengths = pad_sequences([np.zeros((3, 2)), np.ones((5, 2))])
        >>> tuple(x.shape), lengths.tolist()
        ((2, 5, 2), [3, 5])
    """
    if isinstance(sequences, (np.ndarray, Tensor)) or not isinstance(sequences, Sequence):
        raise TypeError(
            f"pad_sequences expects a list of (L, D) arrays, found {type(sequences).__name__}"
        )
    if len(sequences) == 0:
        raise ValueError("pad_sequences needs at least one sequence, found an empty list")
    seqs = []
    for i, s in enumerate(sequences):
        t = torch.as_tensor(np.asarray(s) if not isinstance(s, Tensor) else s)
        if t.dim() == 1:
            t = t.unsqueeze(-1)
        if t.dim() != 2 or t.shape[0] < 1:
            raise ValueError(
                f"sequence {i} must have shape (L, D) with L >= 1, found {tuple(t.shape)}"
            )
        if seqs and t.shape[1] != seqs[0].shape[1]:
            raise ValueError(
                f"all sequences need the same event dimension: sequence 0 has D={seqs[0].shape[1]}, "
                f"sequence {i} has D={t.shape[1]}"
            )
        seqs.append(t.to(dtype))
    lengths = torch.tensor([s.shape[0] for s in seqs], dtype=torch.long)
    x = torch.full((len(seqs), int(lengths.max()), seqs[0].shape[1]), value, dtype=dtype)
    for i, s in enumerate(seqs):
        x[i, : s.shape[0]] = s
    return x, lengths


def windows(stream: ArrayLike, length: int, stride: int | None = None) -> ArrayLike:
    """Cut one long stream of events ``(N, D)`` into overlapping windows ``(W, length, D)``.

    Window ``i`` is ``stream[i * stride : i * stride + length]``; only complete windows are kept,
    so ``W = (N - length) // stride + 1``.  The result is a copy of the same type (NumPy array or
    tensor) as ``stream``.

    Example:
        >>> windows(np.arange(10.0).reshape(5, 2), length=3, stride=2).shape
        (2, 3, 2)
    """
    if not isinstance(stream, (np.ndarray, Tensor)):
        raise TypeError(f"stream must be a NumPy array or a tensor, found {type(stream).__name__}")
    if stream.ndim != 2:
        raise ValueError(f"stream must have shape (N, D), found {tuple(stream.shape)}")
    stride = length if stride is None else stride
    for name, v in (("length", length), ("stride", stride)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer, found {v!r}")
    n = stream.shape[0]
    if n < length:
        raise ValueError(f"the stream has {n} events, fewer than one window of length {length}")
    starts = np.arange(0, n - length + 1, stride)
    idx = starts[:, None] + np.arange(length)[None, :]
    if isinstance(stream, Tensor):
        return stream[torch.from_numpy(idx)].clone()
    return stream[idx].copy()


def _as_rng(generator: Any) -> np.random.Generator:
    """A NumPy generator from None, an int seed, a NumPy generator or a torch.Generator."""
    if generator is None:
        return np.random.default_rng()
    if isinstance(generator, np.random.Generator):
        return generator
    if isinstance(generator, torch.Generator):
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        return np.random.default_rng(seed)
    if isinstance(generator, (int, np.integer)) and not isinstance(generator, bool):
        return np.random.default_rng(int(generator))
    raise TypeError(
        "generator must be None, an int seed, a numpy.random.Generator or a torch.Generator, "
        f"found {type(generator).__name__}"
    )


def _check_temperature(value: float, name: str, allow_inf: bool = True) -> float:
    """A temperature >= 0 (0: greedy; inf: uniform choice, allowed for the categorical ones)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number >= 0, found {value!r}") from None
    if not (v >= 0) or (math.isinf(v) and not allow_inf):
        limit = "" if allow_inf else "finite "
        raise ValueError(f"{name} must be a {limit}number >= 0 (0 means greedy), found {value!r}")
    return v


# ---------------------------------------------------------------------------------------- model
class MDNRNN(nn.Module):
    r"""A recurrent mixture density network: RNN → :class:`~mdnkit.MDNHead` (+ pen-state logits).

    At step :math:`t` the network has read the start token and events :math:`x_1..x_t` and
    predicts :math:`x_{t+1}`: a Gaussian mixture over the ``event_dim`` continuous values and,
    when ``pen_states > 0``, a categorical distribution over the pen state (layout in the module
    docstring).  The training loss is the NLL per event,

    .. math::

        \mathcal{L} = \frac{1}{\sum_b L_b} \sum_b \sum_{t=1}^{L_b}
            \Big[-\log p(u^{(b)}_t \mid x^{(b)}_{<t}) - \log \operatorname{softmax}(q_t)_{s^{(b)}_t}\Big],

    in data units (the continuous part is standardised inside, see :meth:`prepare`).

    Args:
        event_dim: number of continuous values per event (D, any size >= 1).
        hidden_size: units per recurrent layer.
        num_layers: stacked recurrent layers.
        cell: ``"lstm"`` or ``"gru"``.
        num_components: K, mixture components.
        covariance: ``"diagonal"``, ``"spherical"`` or ``"full"`` (see :class:`~mdnkit.MDNHead`).
        pen_states: 0 (no discrete part), 2 or 3.
        dropout: dropout between recurrent layers during training.
        scale_transform: the head's positive transform for the scales.
        min_scale: the head's scale floor, in standardised units.
        standardize: ``"full"`` (subtract the mean, divide by the std), ``"scale"`` (divide by the
            std only, the usual choice for pen offsets), ``"none"``, or ``"auto"`` (``"scale"``
            with pen states, ``"full"`` without).

    Example:
        >>> model = MDNRNN(event_dim=2, hidden_size=32, num_layers=1, pen_states=2)
        >>> events = torch.cat([torch.randn(7, 2), torch.randint(0, 2, (7, 1))], -1)
        >>> x, lengths = pad_sequences([events, events[:4]])   # (dx, dy, pen state)
        >>> loss = model.loss(x, lengths)              # mean NLL per event
        >>> mixture, pen_logits, state = model(x)      # predictions of the next events
        >>> mixture.batch_shape, tuple(pen_logits.shape)
        (torch.Size([2, 7]), (2, 7, 2))
        >>> model.generate(10, temperature=0.8, generator=0).shape
        torch.Size([1, 10, 3])
    """

    def __init__(
        self,
        event_dim: int,
        hidden_size: int = 256,
        num_layers: int = 2,
        cell: CellType = "lstm",
        num_components: int = 5,
        covariance: CovarianceType = "diagonal",
        pen_states: int = 0,
        dropout: float = 0.0,
        scale_transform: ScaleTransform = "softplus",
        min_scale: float = 1e-4,
        standardize: Standardize = "auto",
    ) -> None:
        super().__init__()
        for name, v in (
            ("event_dim", event_dim),
            ("hidden_size", hidden_size),
            ("num_layers", num_layers),
            ("num_components", num_components),
        ):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, found {v!r}")
        if cell not in ("lstm", "gru"):
            raise ValueError(f"cell must be 'lstm' or 'gru', found {cell!r}")
        if pen_states not in (0, 2, 3) or isinstance(pen_states, bool):
            raise ValueError(f"pen_states must be 0, 2 or 3, found {pen_states!r}")
        if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a number in [0, 1), found {dropout!r}")
        if standardize not in ("auto", "full", "scale", "none"):
            raise ValueError(
                f"standardize must be 'auto', 'full', 'scale' or 'none', found {standardize!r}"
            )
        self.event_dim = int(event_dim)
        self.hidden_size = int(hidden_size)
        self.num_layers = int(num_layers)
        self.cell = cell
        self.num_components = int(num_components)
        self.covariance = covariance
        self.pen_states = int(pen_states)
        self.dropout = float(dropout)
        self.scale_transform = scale_transform
        self.min_scale = float(min_scale)
        self.standardize = standardize
        self._standardize = (
            ("scale" if pen_states else "full") if standardize == "auto" else standardize
        )
        self.input_size = self.event_dim + self.pen_states + 1  # + the start flag
        rnn_cls = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn_cls(
            self.input_size,
            self.hidden_size,
            self.num_layers,
            batch_first=True,
            dropout=self.dropout if self.num_layers > 1 else 0.0,
        )
        self.head = MDNHead(
            self.hidden_size,
            self.event_dim,
            self.num_components,
            covariance=covariance,
            scale_transform=scale_transform,
            min_scale=min_scale,
        )
        self.pen = nn.Linear(self.hidden_size, self.pen_states) if self.pen_states else None
        self.register_buffer("shift", torch.zeros(self.event_dim))
        self.register_buffer("scale", torch.ones(self.event_dim))

    # ------------------------------------------------------------------ description
    @property
    def columns(self) -> int:
        """Columns of an event row: ``event_dim`` (+ 1 for the pen-state index)."""
        return self.event_dim + (1 if self.pen_states else 0)

    def config(self) -> dict[str, Any]:
        """The constructor's arguments, JSON-able: ``MDNRNN(**model.config())`` rebuilds it."""
        return {
            "event_dim": self.event_dim,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "cell": self.cell,
            "num_components": self.num_components,
            "covariance": self.covariance,
            "pen_states": self.pen_states,
            "dropout": self.dropout,
            "scale_transform": self.scale_transform,
            "min_scale": self.min_scale,
            "standardize": self.standardize,
        }

    def extra_repr(self) -> str:
        return f"event_dim={self.event_dim}, pen_states={self.pen_states}, standardize='{self._standardize}'"

    # ------------------------------------------------------------------ input checks
    def _check_x(self, x: ArrayLike) -> Tensor:
        if not isinstance(x, Tensor):
            x = torch.as_tensor(np.asarray(x))
        if x.dim() == 2:
            x = x.unsqueeze(0)
        if x.dim() != 3 or x.shape[-1] != self.columns:
            pen = " + 1 pen-state column" if self.pen_states else ""
            raise ValueError(
                f"expected events of shape (B, T, {self.columns}) ({self.event_dim} continuous"
                f"{pen}), found {tuple(x.shape)}"
            )
        if x.shape[1] < 1:
            raise ValueError("expected at least one event per sequence, found T=0")
        ref = self.shift
        return x.to(device=ref.device, dtype=ref.dtype)

    def _check_lengths(self, lengths: ArrayLike | None, b: int, t: int) -> Tensor:
        device = self.shift.device
        if lengths is None:
            return torch.full((b,), t, dtype=torch.long, device=device)
        lt = lengths if isinstance(lengths, Tensor) else torch.as_tensor(np.asarray(lengths))
        lt = lt.reshape(-1)
        if lt.shape[0] != b:
            raise ValueError(f"expected {b} lengths (one per sequence), found {lt.shape[0]}")
        if lt.is_floating_point():
            if not torch.equal(lt, lt.round()):
                raise ValueError(f"lengths must be whole numbers, found {lt[:5].tolist()}")
        lt = lt.round().long().to(device) if lt.is_floating_point() else lt.long().to(device)
        if (lt < 1).any() or (lt > t).any():
            raise ValueError(
                f"lengths must lie in [1, T={t}], found values from {int(lt.min())} to {int(lt.max())}"
            )
        return lt

    def _pen_index(self, x: Tensor, mask: Tensor) -> Tensor:
        p = torch.where(
            mask, x[..., self.event_dim], torch.zeros((), dtype=x.dtype, device=x.device)
        )
        idx = p.round()
        bad = mask & ((idx != p) | (idx < 0) | (idx >= self.pen_states))
        if bad.any():
            raise ValueError(
                f"the last column must hold a pen-state index in 0..{self.pen_states - 1}, "
                f"found values such as {p[bad][:3].tolist()}"
            )
        return idx.long()

    # ------------------------------------------------------------------ standardisation
    @torch.no_grad()
    def prepare(self, x: ArrayLike, lengths: ArrayLike | None = None) -> MDNRNN:
        """Set the standardisation from the real (non-padded) events and spread the head's initial
        components over them (:meth:`MDNHead.init_from_data`).  ``fit`` calls it once.

        ``x`` is ``(B, T, columns)`` (or ``(N, columns)`` for a single stream) with ``lengths``
        ``(B,)`` (None: all complete).  Returns ``self``.
        """
        x = self._check_x(x)
        lengths = self._check_lengths(lengths, x.shape[0], x.shape[1])
        mask = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
        u = x[..., : self.event_dim][mask].to(torch.float64)
        if not torch.isfinite(u).all():
            raise ValueError("the events contain NaN or inf")
        if self._standardize == "none":
            shift, scale = torch.zeros(self.event_dim), torch.ones(self.event_dim)
        else:
            std = u.std(0) if u.shape[0] > 1 else torch.ones(self.event_dim, dtype=torch.float64)
            scale = torch.where(std > 0, std, torch.ones_like(std))
            shift = u.mean(0) if self._standardize == "full" else torch.zeros_like(scale)
        self.shift.copy_(shift.to(self.shift))
        self.scale.copy_(scale.to(self.scale))
        z = (u - self.shift.double()) / self.scale.double()
        if z.shape[0] >= self.num_components:
            sub = z
            if z.shape[0] > 20000:
                g = torch.Generator().manual_seed(0)
                sub = z[torch.randperm(z.shape[0], generator=g)[:20000]]
            self.head.init_from_data(sub, generator=0)
        return self

    def _encode(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Events (data units) → network inputs: standardised values, pen one-hot, start flag 0."""
        u = (x[..., : self.event_dim] - self.shift) / self.scale
        parts = [u]
        if self.pen_states:
            idx = x[..., self.event_dim].round().long().clamp(0, self.pen_states - 1)
            parts.append(F.one_hot(idx, self.pen_states).to(u.dtype))
        parts.append(torch.zeros_like(u[..., :1]))
        inp = torch.cat(parts, -1)
        if mask is not None:  # padding may hold anything, NaN too: never let it reach the RNN
            inp = torch.where(mask.unsqueeze(-1), inp, torch.zeros((), dtype=inp.dtype))
        return inp

    def _start(self, b: int, like: Tensor) -> Tensor:
        s = torch.zeros(b, 1, self.input_size, dtype=like.dtype, device=like.device)
        s[..., -1] = 1.0
        return s

    def _mixture_std(self, h: Tensor) -> GaussianMixture:
        return self.head(h)

    # ------------------------------------------------------------------ forward / loss
    def forward(
        self, x: ArrayLike, state: Any = None
    ) -> tuple[GaussianMixture, Tensor | None, Any]:
        """Predict the next event after each of ``x`` ``(B, T, columns)``.

        Output ``t`` is the distribution of event ``t + 1`` given events ``0..t``.  With
        ``state=None`` a fresh sequence starts (the start token is read first); pass the returned
        state to continue a sequence.

        Returns:
            ``(mixture, pen_logits, state)``: a :class:`~mdnkit.GaussianMixture` with batch shape
            ``(B, T)`` in data units, pen logits ``(B, T, pen_states)`` (None without pen
            states), and the recurrent state (``(h, c)`` for an LSTM, ``h`` for a GRU, each
            ``(num_layers, B, hidden_size)``).
        """
        x = self._check_x(x)
        inp = self._encode(x)
        if state is None:
            _, state = self.rnn(self._start(x.shape[0], inp), None)
        h, state = self.rnn(inp, state)
        mixture = self._mixture_std(h).affine(self.shift, self.scale)
        pen = self.pen(h) if self.pen is not None else None
        return mixture, pen, state

    def _terms(self, x: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor]:
        """Per-event NLL of the continuous part and of the pen state (zero at padding), and the mask."""
        x = self._check_x(x)
        b, t = x.shape[0], x.shape[1]
        lengths = self._check_lengths(lengths, b, t)
        tmax = int(lengths.max())
        x = x[:, :tmax]
        mask = torch.arange(tmax, device=x.device)[None, :] < lengths[:, None]
        inp = torch.cat([self._start(b, x), self._encode(x[:, :-1], mask[:, :-1])], 1)
        h, _ = self.rnn(inp)
        m = self._mixture_std(h)
        u = (x[..., : self.event_dim] - self.shift) / self.scale
        u = torch.where(mask.unsqueeze(-1), u, torch.zeros((), dtype=u.dtype))
        log_det = self.scale.log().sum()
        lp = m.log_prob(u) - log_det
        zero = torch.zeros((), dtype=lp.dtype, device=lp.device)
        mix_nll = torch.where(mask, -lp, zero)
        pen_nll = None
        if self.pen is not None:
            target = self._pen_index(x, mask)
            logits = self.pen(h)
            ce = F.cross_entropy(
                logits.reshape(-1, self.pen_states), target.reshape(-1), reduction="none"
            )
            pen_nll = torch.where(mask, ce.reshape(b, tmax).to(lp.dtype), zero)
        return mix_nll, pen_nll, mask

    def loss(
        self,
        x: ArrayLike,
        lengths: ArrayLike | None = None,
        reduction: Literal["mean", "sum", "none"] = "mean",
    ) -> Tensor:
        r"""NLL of the sequences ``x`` ``(B, T, columns)`` with ``lengths`` ``(B,)``, in nats.

        ``"mean"``: per real event (continuous NLL + pen cross-entropy), averaged over all
        :math:`\sum_b L_b` real events of the batch; ``"sum"``: their total (the batch's negative
        log-likelihood); ``"none"``: the per-event NLL ``(B, T')`` with zeros at padding
        (:math:`T' = \max_b L_b`).  Padded steps contribute nothing, whatever they hold.
        """
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', found {reduction!r}")
        mix_nll, pen_nll, mask = self._terms(x, lengths)
        nll = mix_nll if pen_nll is None else mix_nll + pen_nll
        if reduction == "none":
            return nll
        if reduction == "sum":
            return nll.sum()
        return nll.sum() / mask.sum()

    @torch.no_grad()
    def evaluate(
        self, x: ArrayLike, lengths: ArrayLike | None = None, batch_size: int = 256
    ) -> dict[str, float]:
        """Mean NLL per real event over a (large) set of sequences, computed in batches.

        Returns a dict: ``nll`` (total per event), ``mixture_nll`` and ``pen_nll`` (its two
        parts; ``pen_nll`` is 0 without pen states) and ``events`` (the count).
        """
        was = self.training
        self.eval()
        x = self._check_x(x)
        lengths = self._check_lengths(lengths, x.shape[0], x.shape[1])
        tot_mix = tot_pen = 0.0
        n = 0
        for i in range(0, x.shape[0], batch_size):
            mix, pen, mask = self._terms(x[i : i + batch_size], lengths[i : i + batch_size])
            tot_mix += float(mix.double().sum())
            tot_pen += float(pen.double().sum()) if pen is not None else 0.0
            n += int(mask.sum())
        self.train(was)
        return {
            "nll": (tot_mix + tot_pen) / n,
            "mixture_nll": tot_mix / n,
            "pen_nll": tot_pen / n,
            "events": n,
        }

    # ------------------------------------------------------------------ generation
    def generator(
        self,
        batch: int = 1,
        temperature: float = 1.0,
        sigma_temperature: float = 1.0,
        pen_temperature: float = 1.0,
        generator: Any = None,
    ) -> StepGenerator:
        """A stateful :class:`StepGenerator` for live use: ``g.step(previous_event) -> next_event``.

        It snapshots the current weights (make a new one after more training).

        Example:
            >>> model = MDNRNN(event_dim=3, hidden_size=16, num_layers=1)
            >>> g = model.generator(temperature=0.5, generator=0)
            >>> e = g.step()                 # first event (after the start token)
            >>> e = g.step(e)                # the next one, and so on
            >>> e.shape
            (3,)
        """
        return StepGenerator(
            self,
            batch=batch,
            temperature=temperature,
            sigma_temperature=sigma_temperature,
            pen_temperature=pen_temperature,
            generator=generator,
        )

    def generate(
        self,
        steps: int,
        prime: ArrayLike | None = None,
        temperature: float = 1.0,
        sigma_temperature: float = 1.0,
        pen_temperature: float = 1.0,
        generator: Any = None,
        batch: int = 1,
    ) -> Tensor:
        """Sample ``steps`` new events for ``batch`` independent sequences, in data units.

        Args:
            steps: number of events to generate.
            prime: optional events ``(P, columns)`` or ``(batch, P, columns)`` read first; the
                generated events continue them (the prime is not included in the output).
            temperature, sigma_temperature, pen_temperature: see the module docstring.
            generator: int seed, ``numpy.random.Generator``, ``torch.Generator`` or None; the
                same seed gives the same events (and the same as :meth:`generator`'s steps).
            batch: number of independent sequences.

        Returns:
            A float32 tensor ``(batch, steps, columns)``.
        """
        g = self.generator(batch, temperature, sigma_temperature, pen_temperature, generator)
        return torch.from_numpy(g.generate(steps, prime=prime))


# ---------------------------------------------------------------------------------------- sampling
class _Sampler:
    """NumPy sampling of the next event from one step's mixture parameters (data units)."""

    def __init__(
        self,
        event_dim: int,
        pen_states: int,
        batch: int,
        temperature: float,
        sigma_temperature: float,
        pen_temperature: float,
        generator: Any,
    ) -> None:
        if not isinstance(batch, (int, np.integer)) or isinstance(batch, bool) or batch < 1:
            raise ValueError(f"batch must be a positive integer, found {batch!r}")
        self.event_dim, self.pen_states, self.batch = event_dim, pen_states, int(batch)
        self.temperature = _check_temperature(temperature, "temperature")
        self.sigma_temperature = _check_temperature(
            sigma_temperature, "sigma_temperature", allow_inf=False
        )
        self.pen_temperature = _check_temperature(pen_temperature, "pen_temperature")
        self._root_s = math.sqrt(self.sigma_temperature)
        self.rng = _as_rng(generator)
        self._rows = np.arange(self.batch)

    def _categorical(self, logits: np.ndarray, t: float) -> np.ndarray:
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
        if self.batch == 1:
            return self._sample_one(logits[0], loc[0], scale, scale_tril, pen_logits)
        rows = self._rows
        k = self._categorical(logits, self.temperature)
        y = loc[rows, k]
        if self.sigma_temperature != 0.0:
            eps = self.rng.standard_normal(y.shape, dtype=np.float32)
            if scale_tril is not None:
                noise = np.einsum("bij,bj->bi", scale_tril[rows, k], eps)
            else:
                noise = scale[rows, k] * eps
            y = y + noise * self._root_s if self._root_s != 1.0 else y + noise
        if pen_logits is None:
            return y.astype(np.float32, copy=False)
        s = self._categorical(pen_logits, self.pen_temperature)
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
            if self._root_s != 1.0:
                noise *= self._root_s
            out[0, :d] = loc[k] + noise
        else:
            out[0, :d] = loc[k]
        if pen_logits is not None:
            out[0, d] = _py_categorical(pen_logits[0].tolist(), self.pen_temperature, self.rng)
        return out


def _py_categorical(logits: list[float], t: float, rng: np.random.Generator) -> int:
    """One draw from softmax(logits / t) in plain Python (faster than NumPy for a few logits);
    the same draw as :meth:`_Sampler._categorical` for one row."""
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


class _GeneratorBase:
    """step / reset / generate, given ``_advance(event or None) -> mixture parameters``."""

    event_dim: int
    pen_states: int
    batch: int

    @property
    def columns(self) -> int:
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

    def generate(self, steps: int, prime: Any = None) -> np.ndarray:
        """Reset, read the start token and ``prime`` (``(P, columns)`` or ``(batch, P,
        columns)``), then sample ``steps`` events: a float32 array ``(batch, steps, columns)``."""
        if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 0:
            raise ValueError(f"steps must be an integer >= 0, found {steps!r}")
        self.reset()
        out = np.empty((self.batch, steps, self.columns), dtype=np.float32)
        if steps == 0:
            return out
        if prime is None:
            e = self._next(None)
        else:
            p = prime.detach().cpu().numpy() if isinstance(prime, Tensor) else np.asarray(prime)
            if p.ndim == 2:
                p = np.broadcast_to(p, (self.batch, *p.shape))
            if (
                p.ndim != 3
                or p.shape[0] != self.batch
                or p.shape[2] != self.columns
                or p.shape[1] < 1
            ):
                raise ValueError(
                    f"prime must have shape (P, {self.columns}) or ({self.batch}, P, {self.columns}) "
                    f"with P >= 1, found {tuple(p.shape)}"
                )
            p = np.ascontiguousarray(p, dtype=np.float32)
            self._read(None)
            for i in range(p.shape[1] - 1):
                self._read(p[:, i])
            e = self._next(p[:, -1])
        out[:, 0] = e
        for i in range(1, steps):
            e = self._next(e)
            out[:, i] = e
        return out


def _softplus(a: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, a, dtype=a.dtype)


def _np_scale(raw: np.ndarray, kind: str, floor: float) -> np.ndarray:
    if kind == "softplus":
        return _softplus(raw) + floor
    if kind == "exp":
        return np.exp(np.minimum(raw, 80.0)) + floor
    return np.where(raw > 0, raw, np.expm1(np.minimum(raw, 0.0))) + 1.0 + floor


class StepGenerator(_GeneratorBase):
    r"""Step-by-step generation from an :class:`MDNRNN`, on NumPy copies of its weights.

    Per step and stream, an LSTM layer computes
    :math:`(i, f, g, o) = W_{ih} x + W_{hh} h + b`, :math:`c' = \sigma(f) c + \sigma(i)\tanh(g)`,
    :math:`h' = \sigma(o) \tanh(c')` (a GRU: PyTorch's ``nn.GRU`` equations); the head maps the
    top :math:`h'` to the mixture, and one component and one point are drawn
    (:math:`k \sim \operatorname{softmax}(\log\pi / T)`, :math:`y = \mu_k + \sqrt{S}\,L_k
    \varepsilon`).  No PyTorch call is made per step.

    Example:
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
        if not isinstance(model, MDNRNN):
            raise TypeError(f"model must be an MDNRNN, found {type(model).__name__}")
        self.event_dim, self.pen_states = model.event_dim, model.pen_states
        self.sampler = _Sampler(
            model.event_dim,
            model.pen_states,
            batch,
            temperature,
            sigma_temperature,
            pen_temperature,
            generator,
        )
        self.batch = self.sampler.batch
        self.cell, self.num_layers, self.hidden = model.cell, model.num_layers, model.hidden_size
        h = self.hidden

        def npy(t: Tensor) -> np.ndarray:
            return t.detach().to("cpu", torch.float32).numpy().copy()

        shift, scale = npy(model.shift), npy(model.scale)
        d = self.event_dim
        self._in0 = model.input_size
        self._layers = []
        for layer in range(self.num_layers):
            w_ih = npy(getattr(model.rnn, f"weight_ih_l{layer}"))
            w_hh = npy(getattr(model.rnn, f"weight_hh_l{layer}"))
            b_ih = npy(getattr(model.rnn, f"bias_ih_l{layer}"))
            b_hh = npy(getattr(model.rnn, f"bias_hh_l{layer}"))
            if layer == 0:
                # Fold the standardisation of the continuous inputs into the first layer:
                # W [(u - m) / s] = (W / s) u - W (m / s).
                b_ih = b_ih - w_ih[:, :d] @ (shift / scale)
                w_ih = w_ih.copy()
                w_ih[:, :d] = w_ih[:, :d] / scale
            if self.cell == "lstm":
                # sigma(a) = (1 + tanh(a / 2)) / 2: pre-scale the i, f, o rows so that one tanh
                # over all four gates does the work; one matrix for [x, h].
                half = np.where(np.arange(4 * h) // h == 2, 1.0, 0.5).astype(np.float32)
                # one matrix for the buffer [x, h, 1]: the last row is the bias
                w = np.concatenate([w_ih.T, w_hh.T, (b_ih + b_hh)[None]], 0) * half
                self._layers.append((np.ascontiguousarray(w, np.float32),))
            else:
                self._layers.append(
                    (np.ascontiguousarray(w_ih.T), np.ascontiguousarray(w_hh.T), b_ih, b_hh)
                )
        self._mul = np.where(np.arange(4 * h) // h == 2, 1.0, 0.5).astype(np.float32)
        self._add = np.where(np.arange(4 * h) // h == 2, 0.0, 0.5).astype(np.float32)
        # The head (and pen) as one matrix for [h, 1], the means already in data units.
        w_head = np.concatenate([npy(model.head.proj.weight).T, npy(model.head.proj.bias)[None]])
        kd = model.num_components * d
        w_head[:, :kd] *= np.tile(scale, model.num_components)
        w_head[-1, :kd] += np.tile(shift, model.num_components)
        if model.pen is not None:
            w_pen = np.concatenate([npy(model.pen.weight).T, npy(model.pen.bias)[None]])
            w_head = np.concatenate([w_head, w_pen], 1)
        self._w_head = np.ascontiguousarray(w_head, np.float32)
        self._shift, self._scale = shift, scale
        self._k, self._cov = model.num_components, model.covariance
        self._transform, self._floor = model.scale_transform, model.min_scale
        self._n_head = model.head.num_params
        self._n_scale = model.head.layout.n_scale
        if self._cov == "full":
            self._tril = np.tril_indices(d, -1)
        # A fast path for one stream with diagonal/spherical softplus components: sample from
        # the raw head output, transforming only the chosen component's scales.
        self._fast = self.batch == 1 and self._cov != "full" and self._transform == "softplus"
        self._noise_scale = (scale * np.float32(self.sampler._root_s)).astype(np.float32)
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
            x[self.sampler._rows, d + idx] = 1.0
        x[:, d + p] = 0.0

    def _raw(self, event: np.ndarray | None) -> np.ndarray:
        """Advance the state by one event; return the raw head output ``(B, num_params [+ P])``."""
        self._write_input(event)
        bufs, sizes, hd = self._buf, self._sizes, self.hidden
        last = len(bufs) - 1
        if self.cell == "lstm":
            g, tmp, mul, add = self._gates, self._tmp, self._mul, self._add
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
        else:
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
        return bufs[-1][:, sizes[-1] :] @ self._w_head  # [h, 1] @ [W; b]

    def _advance(self, event: np.ndarray | None):
        return self._decode(self._raw(event))

    def _read(self, event: np.ndarray | None) -> None:
        self._raw(event)

    def _sample_fast(self, event: np.ndarray | None) -> np.ndarray:
        """One stream, diagonal/spherical softplus components: the same draws as _Sampler."""
        p = self._raw(event)[0]
        smp = self.sampler
        k, d = self._k, self.event_dim
        off = k * d + self._n_scale
        j = _py_categorical(p[off : off + k].tolist(), smp.temperature, smp.rng)
        y = p[j * d : (j + 1) * d]
        if smp.sigma_temperature != 0.0:
            if self._cov == "diagonal":
                raw = p[k * d + j * d : k * d + (j + 1) * d]
            else:
                raw = p[k * d + j : k * d + j + 1]
            sig = np.logaddexp(0.0, raw, dtype=np.float32)
            sig += self._floor
            eps = smp.rng.standard_normal(d, dtype=np.float32)
            eps *= self._noise_scale  # sqrt(S) * the standardisation's scale
            eps *= sig
            y = y + eps
        out = np.empty((1, self.columns), np.float32)
        out[0, :d] = y
        if self.pen_states:
            out[0, d] = _py_categorical(p[self._n_head :].tolist(), smp.pen_temperature, smp.rng)
        return out

    def _next(self, event: np.ndarray | None) -> np.ndarray:
        if self._fast:
            return self._sample_fast(event)
        return self.sampler.sample(*self._advance(event))

    def _decode(self, p: np.ndarray):
        b, k, d = p.shape[0], self._k, self.event_dim
        loc = p[:, : k * d].reshape(b, k, d)  # data units already (folded into the head)
        raw = p[:, k * d : k * d + self._n_scale]
        logits = p[:, k * d + self._n_scale : self._n_head]
        logits = logits - logits.max(-1, keepdims=True)
        logits = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        pen = p[:, self._n_head :] if self.pen_states else None
        scale = tril = None
        if self._cov == "diagonal":
            scale = _np_scale(raw, self._transform, self._floor).reshape(b, k, d) * self._scale
        elif self._cov == "spherical":
            scale = _np_scale(raw, self._transform, self._floor)[:, :, None] * self._scale
        else:
            raw = raw.reshape(b, k, d * (d + 1) // 2)
            tril = np.zeros((b, k, d, d), np.float32)
            ar = np.arange(d)
            tril[:, :, ar, ar] = _np_scale(raw[..., :d], self._transform, self._floor)
            tril[:, :, self._tril[0], self._tril[1]] = raw[..., d:]
            tril *= self._scale[:, None]
        return logits, loc, scale, tril, pen


# ---------------------------------------------------------------------------------------- ONNX
class _OnnxStep(nn.Module):
    """One step of an MDNRNN as plain tensor maths, for export: (event, start, state) →
    (logits, loc, scale | scale_tril, [pen_logits], new state)."""

    def __init__(self, model: MDNRNN) -> None:
        super().__init__()
        self.m = model
        d = model.event_dim
        index = torch.full((d, d), d * (d + 1) // 2, dtype=torch.long)  # the zero slot
        index[range(d), range(d)] = torch.arange(d)
        rows, cols = torch.tril_indices(d, d, offset=-1)
        index[rows, cols] = d + torch.arange(rows.numel())
        self.register_buffer("_tril_index", index.reshape(-1))

    def _decode(self, p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        m, head = self.m, self.m.head
        k, d, n_scale = m.num_components, m.event_dim, head.layout.n_scale
        b = p.shape[0]
        loc = p[:, : k * d].reshape(b, k, d) * m.scale + m.shift
        raw = p[:, k * d : k * d + n_scale]
        logits = torch.log_softmax(p[:, k * d + n_scale :], -1)
        if m.covariance == "diagonal":
            scale = m.head.layout.scale_map.forward(raw).reshape(b, k, d)
            return logits, loc, scale * m.scale
        if m.covariance == "spherical":
            scale = m.head.layout.scale_map.forward(raw).reshape(b, k, 1)
            return logits, loc, scale * m.scale
        raw = raw.reshape(b, k, d * (d + 1) // 2)
        diag = m.head.layout.scale_map.forward(raw[..., :d])
        # entries of L row by row: gather from [diag, strictly-lower, 0] with a constant index
        flat = torch.cat([diag, raw[..., d:], torch.zeros_like(raw[..., :1])], -1)
        tril = flat.index_select(-1, self._tril_index).reshape(b, k, d, d)
        return logits, loc, tril * m.scale[:, None]

    def forward(self, event: Tensor, start: Tensor, h: Tensor, c: Tensor | None = None):
        m = self.m
        d, hd = m.event_dim, m.hidden_size
        u = (event[:, :d] - m.shift) / m.scale
        keep = 1.0 - start
        parts = [u * keep]
        if m.pen_states:
            states = torch.arange(m.pen_states, dtype=event.dtype, device=event.device)
            onehot = (torch.round(event[:, d : d + 1]) == states).to(event.dtype)
            parts.append(onehot * keep)
        parts.append(start)
        x = torch.cat(parts, -1)
        h_in = h
        new_h, new_c = [], []
        for layer in range(m.num_layers):
            w_ih = getattr(m.rnn, f"weight_ih_l{layer}")
            w_hh = getattr(m.rnn, f"weight_hh_l{layer}")
            b_ih = getattr(m.rnn, f"bias_ih_l{layer}")
            b_hh = getattr(m.rnn, f"bias_hh_l{layer}")
            h = h_in[layer]
            if m.cell == "lstm":
                c_l = c[layer]
                g = x @ w_ih.t() + b_ih + h @ w_hh.t() + b_hh
                i_g = torch.sigmoid(g[:, :hd])
                f_g = torch.sigmoid(g[:, hd : 2 * hd])
                g_g = torch.tanh(g[:, 2 * hd : 3 * hd])
                o_g = torch.sigmoid(g[:, 3 * hd :])
                c_l = f_g * c_l + i_g * g_g
                x = o_g * torch.tanh(c_l)
                new_c.append(c_l)
            else:
                gi = x @ w_ih.t() + b_ih
                gh = h @ w_hh.t() + b_hh
                r = torch.sigmoid(gi[:, :hd] + gh[:, :hd])
                z = torch.sigmoid(gi[:, hd : 2 * hd] + gh[:, hd : 2 * hd])
                n = torch.tanh(gi[:, 2 * hd :] + r * gh[:, 2 * hd :])
                x = (1.0 - z) * n + z * h
            new_h.append(x)
        out = list(self._decode(m.head.proj(x)))
        if m.pen is not None:
            out.append(m.pen(x))
        out.append(torch.stack(new_h))
        if m.cell == "lstm":
            out.append(torch.stack(new_c))
        return tuple(out)


def _onnx_names(model_or_cfg: MDNRNN | dict) -> tuple[list[str], list[str]]:
    cfg = model_or_cfg.config() if isinstance(model_or_cfg, MDNRNN) else model_or_cfg
    inputs = ["event", "start", "h"] + (["c"] if cfg["cell"] == "lstm" else [])
    outputs = ["logits", "loc", "scale_tril" if cfg["covariance"] == "full" else "scale"]
    if cfg["pen_states"]:
        outputs.append("pen_logits")
    outputs += ["h_out"] + (["c_out"] if cfg["cell"] == "lstm" else [])
    return inputs, outputs


def export_onnx(model: MDNRNN, path: str | os.PathLike, opset: int = 18) -> None:
    """Export the one-step function of ``model`` to an ONNX file (written atomically).

    Inputs: ``event`` ``(B, columns)`` float32 (the previous event, data units), ``start``
    ``(B, 1)`` (1.0: read the start token instead of the event), ``h`` (and ``c`` for an LSTM)
    ``(num_layers, B, hidden_size)``.  Outputs: ``logits`` ``(B, K)`` (normalised log-weights),
    ``loc`` ``(B, K, D)``, ``scale`` ``(B, K, D)`` (or ``scale_tril`` ``(B, K, D, D)``),
    ``pen_logits`` ``(B, P)`` with pen states, ``h_out`` (and ``c_out``), all in data units.
    ``B`` is dynamic.  The model's ``config()`` is stored in the metadata under ``"mdnkit"``.
    Written by ``torch.onnx.export`` with the TorchScript exporter (``dynamo=False``: offline and
    fast), or the dynamo exporter (``onnxscript``) where that one is missing.
    Run it with :class:`OnnxGenerator`.

    Example:
        >>> export_onnx(MDNRNN(2, hidden_size=16), "step.onnx")   # doctest: +SKIP
        >>> OnnxGenerator("step.onnx").generate(20, ).shape          # doctest: +SKIP
        (1, 20, 2)
    """
    if not isinstance(model, MDNRNN):
        raise TypeError(f"model must be an MDNRNN, found {type(model).__name__}")
    try:
        import onnx
    except ImportError as err:  # pragma: no cover
        raise ImportError("export_onnx needs the 'onnx' package: pip install mdnkit[onnx]") from err
    import copy
    import warnings

    m = copy.deepcopy(model).to("cpu", torch.float32).eval()
    step = _OnnxStep(m).eval()
    b = 2
    shape = (m.num_layers, b, m.hidden_size)
    args = [torch.zeros(b, m.columns), torch.zeros(b, 1), torch.zeros(shape)]
    if m.cell == "lstm":
        args.append(torch.zeros(shape))
    in_names, out_names = _onnx_names(m)
    dyn_axes = {n: {0: "batch"} for n in ("event", "start")}
    for n in ("h", "c", "h_out", "c_out"):
        dyn_axes[n] = {1: "batch"}
    for n in out_names[:-2] if m.cell == "lstm" else out_names[:-1]:
        dyn_axes[n] = {0: "batch"}
    dyn_axes = {k: v for k, v in dyn_axes.items() if k in in_names + out_names}
    with atomic_path(path, suffix=".onnx") as tmp:
        kwargs = dict(
            input_names=in_names,
            output_names=out_names,
            dynamic_axes=dyn_axes,
            opset_version=opset,
        )
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            try:
                # The TorchScript exporter: offline, fast (0.2 s against ~10 s for dynamo).
                torch.onnx.export(step, tuple(args), tmp, dynamo=False, **kwargs)
            except Exception:  # a torch without it: the dynamo exporter (needs onnxscript)
                del kwargs["dynamic_axes"]
                batch = torch.export.Dim("batch")
                shapes = [{0: batch}, {0: batch}] + [{1: batch}] * (len(args) - 2)
                torch.onnx.export(
                    step,
                    tuple(args),
                    tmp,
                    dynamo=True,
                    dynamic_shapes=tuple(shapes),
                    verbose=False,
                    **kwargs,
                )
        proto = onnx.load(tmp)
        entry = proto.metadata_props.add()
        entry.key, entry.value = "mdnkit", json.dumps(m.config())
        onnx.save(proto, tmp)


class OnnxGenerator(_GeneratorBase):
    """Step-by-step generation from an ONNX file written by :func:`export_onnx`, on onnxruntime.

    Same interface as :class:`StepGenerator` (``step``, ``predict``, ``reset``, ``generate``), the
    sampling done in NumPy with the same code, so the same seed gives the same events (up to
    float32 rounding differences between the two runtimes).

    Example:
        >>> g = OnnxGenerator("step.onnx", temperature=0.8, generator=0)   # doctest: +SKIP
        >>> e = g.step(); e = g.step(e)                                    # doctest: +SKIP
    """

    def __init__(
        self,
        path: str | os.PathLike,
        batch: int = 1,
        temperature: float = 1.0,
        sigma_temperature: float = 1.0,
        pen_temperature: float = 1.0,
        generator: Any = None,
        threads: int = 1,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as err:  # pragma: no cover
            raise ImportError(
                "OnnxGenerator needs the 'onnxruntime' package: pip install mdnkit[onnx]"
            ) from err
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise ValueError(
                f"expected an ONNX file written by export_onnx, found no file at {path!r}"
            )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        if "mdnkit" not in meta:
            raise ValueError(f"{path!r} has no 'mdnkit' metadata: expected a file from export_onnx")
        self.config = cfg = json.loads(meta["mdnkit"])
        self.event_dim, self.pen_states = int(cfg["event_dim"]), int(cfg["pen_states"])
        self.sampler = _Sampler(
            self.event_dim,
            self.pen_states,
            batch,
            temperature,
            sigma_temperature,
            pen_temperature,
            generator,
        )
        self.batch = self.sampler.batch
        self._lstm = cfg["cell"] == "lstm"
        self._full = cfg["covariance"] == "full"
        self._shape = (int(cfg["num_layers"]), self.batch, int(cfg["hidden_size"]))
        self._in_names, self._out_names = _onnx_names(cfg)
        self._zero_event = np.zeros((self.batch, self.columns), np.float32)
        self._start1 = np.ones((self.batch, 1), np.float32)
        self._start0 = np.zeros((self.batch, 1), np.float32)
        self.reset()

    def reset(self) -> None:
        """Forget the past: every stream starts a fresh sequence."""
        self.h = np.zeros(self._shape, np.float32)
        self.c = np.zeros(self._shape, np.float32)

    def _advance(self, event: np.ndarray | None):
        feed = {
            "event": self._zero_event if event is None else event,
            "start": self._start1 if event is None else self._start0,
            "h": self.h,
        }
        if self._lstm:
            feed["c"] = self.c
        out = self.session.run(None, feed)
        if self._lstm:
            self.h, self.c = out[-2], out[-1]
            out = out[:-2]
        else:
            self.h = out[-1]
            out = out[:-1]
        logits, loc, sc = out[0], out[1], out[2]
        pen = out[3] if self.pen_states else None
        if self._full:
            return logits, loc, None, sc, pen
        return logits, loc, sc, None, pen

r"""The MDN-RNN: a recurrent network with an :class:`~mdnkit.MDNHead` (and pen-state logits) on top.

At step :math:`t` the network has read the start token and events :math:`x_1..x_t` and predicts
:math:`x_{t+1}`,

.. math::

    p(x_{t+1} \mid x_{\le t}, a_{t+1}, c) = \sum_{k=1}^K \pi_k(h_t)\,
        \mathcal{N}\big(u_{t+1} \mid \mu_k(h_t), \Sigma_k(h_t)\big)
        \cdot \operatorname{softmax}(q(h_t))_{s_{t+1}},
    \qquad h_t = \operatorname{RNN}(h_{t-1}, [x_t, a_{t+1}, c]),

with :math:`u` the continuous part of an event, :math:`s` its optional pen state (the event
layout is described in :mod:`mdnkit.sequence`), :math:`a` optional per-step inputs and :math:`c`
an optional per-sequence context (which may also set :math:`h_0`).  The head's settings
(components, covariance, mixture type, scale transform, floor) live in the head: the model
reads them from ``model.head.layout``.

Example:
    >>> model = MDNRNN(event_dim=3, hidden_size=16, num_layers=1, num_components=4)
    >>> model.num_components, model.head.layout.num_params
    (4, 28)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.distributions import Normal
from torch.nn import functional as F

from .. import checks
from ..head import MDNHead
from ..layout import DEFAULT_MIN_SCALE
from ..mixture import GaussianMixture
from ..options import (
    CellType,
    CovarianceType,
    MixtureType,
    Reduction,
    ScaleTransform,
    Standardize,
)
from ..per_dimension import PerDimensionMixture
from .data import ArrayLike
from .fast import LSTMFastStep

if TYPE_CHECKING:
    from .runtime import StepGenerator

__all__ = ["MDNRNN", "PEN_STATES", "NetworkInputs", "SequenceOutput"]

#: The allowed numbers of pen states: none, stroke-3's (down, lifted) or stroke-5's (+ the end).
PEN_STATES = (0, 2, 3)


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, found {value!r}")
    return bool(value)


def _masked(t: Tensor, mask: Tensor | None) -> Tensor:
    """``t`` with zeros where ``mask`` is False (padding); ``t`` itself without a mask."""
    if mask is None:
        return t
    return torch.where(mask, t, torch.zeros((), dtype=t.dtype, device=t.device))


class SequenceOutput(tuple):
    """What :meth:`MDNRNN.forward` returns: unpacks as ``(mixture, pen_logits, state)``, with the
    optional extra heads as attributes.

    Attributes:
        mixture: the next event's continuous part, batch shape ``(B, T)``, data units
            (:class:`~mdnkit.GaussianMixture`, or :class:`~mdnkit.PerDimensionMixture`).
        pen_logits: ``(B, T, pen_states)`` or None.
        state: the recurrent state to continue from.
        done_logits: ``(B, T)`` Bernoulli logits of the next event's done flag (``done=True``),
            else None.
        reward: a ``torch.distributions.Normal`` with batch shape ``(B, T)`` over the next
            event's reward, in data units (``reward=True``), else None.

    Example:
        >>> out = MDNRNN(2, hidden_size=8, num_layers=1, done=True)(torch.zeros(1, 4, 3))
        >>> mixture, pen_logits, state = out
        >>> tuple(out.done_logits.shape), out.reward is None
        ((1, 4), True)
    """

    def __new__(
        cls,
        mixture: Any,
        pen_logits: Tensor | None,
        state: Any,
        done_logits: Tensor | None = None,
        reward: Normal | None = None,
    ) -> SequenceOutput:
        obj = super().__new__(cls, (mixture, pen_logits, state))
        obj.done_logits = done_logits
        obj.reward = reward
        return obj

    @property
    def mixture(self) -> Any:
        return self[0]

    @property
    def pen_logits(self) -> Tensor | None:
        return self[1]

    @property
    def state(self) -> Any:
        return self[2]


class NetworkInputs(NamedTuple):
    """A training batch as the recurrent network reads it (:meth:`MDNRNN.network_inputs`).

    Attributes:
        x: the checked events, cut to the longest length ``T'``: ``(B, T', columns)``.
        inputs: the recurrent network's input at every step, ``(B, T', input_size)``.
        context: the checked context ``(B, context_dim)``, or None.
        lengths: ``(B,)`` long, each sequence's number of events.
        mask: ``(B, T')``, True at real events.
        padded: whether any event is padding (False: ``mask`` is all True).
    """

    x: Tensor
    inputs: Tensor
    context: Tensor | None
    lengths: Tensor
    mask: Tensor
    padded: bool


class MDNRNN(nn.Module):
    r"""A recurrent mixture density network: RNN → :class:`~mdnkit.MDNHead` (+ pen-state logits).

    At step :math:`t` the network has read the start token and events :math:`x_1..x_t` and
    predicts :math:`x_{t+1}`: a Gaussian mixture over the ``event_dim`` continuous values and,
    when ``pen_states > 0``, a categorical distribution over the pen state (layout in
    :mod:`mdnkit.sequence`).  The training loss is the NLL per event,

    .. math::

        \mathcal{L} = \frac{1}{\sum_b L_b} \sum_b \sum_{t=1}^{L_b}
            \Big[-\log p(u^{(b)}_t \mid x^{(b)}_{<t}) - \log \operatorname{softmax}(q_t)_{s^{(b)}_t}
            \;[-\log \mathcal{N}(r_t) - \log \mathrm{Bern}(d_t)]\Big],

    in data units (the continuous part is standardised inside, see :meth:`prepare`).

    **Conditioning.**  The recurrent input of the step that *predicts* event :math:`t` is
    ``[encode(x[:, t-1]) (the start token at t = 0), inputs[:, t], context]``: per-step
    ``inputs`` are aligned with the event they help predict.  A world model's
    ``inputs[:, t]`` is the action taken after observation ``t - 1`` (``inputs[:, 0]``: none,
    zeros), predicting observation ``t``; a class-conditional model's ``context`` is the class
    one-hot; sketch-rnn's decoder's ``context`` is the VAE latent :math:`z`, which also sets the
    initial state, :math:`(h_0, c_0) = \operatorname{split}(\tanh(W z + b))` (``context_init``).

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
        input_dim: size of the per-step ``inputs`` (0: none).  Used as given (not standardised).
        context_dim: size of the per-sequence ``context`` (0: none).  Used as given.
        context_init: with ``context_dim > 0``, also set the initial recurrent state from the
            context through a linear layer and tanh (per layer: ``h`` then, for an LSTM, ``c``).
        mixture: ``"joint"`` (one K-component mixture over the D values) or ``"per_dimension"``
            (each value its own K-component 1-D mixture, the World Models MDN-RNN's; diagonal).
        done: also predict a done flag per event (a Bernoulli logit; the event's last column,
            0 or 1).
        reward: also predict a reward per event (a Gaussian; the column after the pen state).

    Example:
        >>> from mdnkit.sequence import pad_sequences
        >>> model = MDNRNN(event_dim=2, hidden_size=32, num_layers=1, pen_states=2)
        >>> events = torch.cat([torch.randn(7, 2), torch.randint(0, 2, (7, 1))], -1)
        >>> x, lengths = pad_sequences([events, events[:4]])   # (dx, dy, pen state)
        >>> loss = model.loss(x, lengths)              # mean NLL per event
        >>> mixture, pen_logits, state = model(x)      # predictions of the next events
        >>> mixture.batch_shape, tuple(pen_logits.shape)
        (torch.Size([2, 7]), (2, 7, 2))
        >>> model.generate(10, temperature=0.8, generator=0).shape
        torch.Size([1, 10, 3])
        >>> cond = MDNRNN(2, hidden_size=16, num_layers=1, input_dim=1, context_dim=3)
        >>> z, a = torch.randn(2, 3), torch.randn(2, 7, 1)
        >>> cond.loss(x[..., :2], lengths, a, z).shape
        torch.Size([])
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
        min_scale: float = DEFAULT_MIN_SCALE,
        standardize: Standardize = "auto",
        input_dim: int = 0,
        context_dim: int = 0,
        context_init: bool = True,
        mixture: MixtureType = "joint",
        done: bool = False,
        reward: bool = False,
    ) -> None:
        super().__init__()
        event_dim = checks.positive_int("event_dim", event_dim)
        self.hidden_size = checks.positive_int("hidden_size", hidden_size)
        self.num_layers = checks.positive_int("num_layers", num_layers)
        self.cell = checks.choice("cell", cell, CellType)
        self.pen_states = int(checks.choice("pen_states", pen_states, PEN_STATES))
        self.dropout = checks.number("dropout", dropout, low=0.0, high=1.0, high_open=True)
        self.standardize = checks.choice("standardize", standardize, Standardize)
        self._standardize = (
            ("scale" if self.pen_states else "full") if standardize == "auto" else standardize
        )
        self.input_dim = checks.nonnegative_int("input_dim", input_dim)
        self.context_dim = checks.nonnegative_int("context_dim", context_dim)
        self.context_init = _flag("context_init", context_init) and self.context_dim > 0
        self.done = _flag("done", done)
        self.reward = _flag("reward", reward)
        self.head = MDNHead(
            self.hidden_size,
            event_dim,
            num_components,
            covariance=covariance,
            scale_transform=scale_transform,
            min_scale=min_scale,
            mixture=mixture,
        )
        rnn_cls = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn_cls(
            self.input_size,
            self.hidden_size,
            self.num_layers,
            batch_first=True,
            dropout=self.dropout if self.num_layers > 1 else 0.0,
        )
        self.pen = nn.Linear(self.hidden_size, self.pen_states) if self.pen_states else None
        self.register_buffer("shift", torch.zeros(event_dim))
        self.register_buffer("scale", torch.ones(event_dim))
        # optional parts exist only when asked for: older model files load unchanged
        per_layer = self.hidden_size * (2 if self.cell == "lstm" else 1)
        self.state_init = (
            nn.Linear(self.context_dim, self.num_layers * per_layer) if self.context_init else None
        )
        self.done_head = nn.Linear(self.hidden_size, 1) if self.done else None
        self.reward_head = nn.Linear(self.hidden_size, 2) if self.reward else None
        if self.reward:
            self.register_buffer("reward_shift", torch.zeros(1))
            self.register_buffer("reward_scale", torch.ones(1))

    # ------------------------------------------------------------------ description
    # The head's settings are read from the head, never stored twice.
    @property
    def event_dim(self) -> int:
        """D, the continuous values per event (the head's ``out_features``)."""
        return self.head.layout.out_features

    @property
    def num_components(self) -> int:
        """K, the head's mixture components."""
        return self.head.layout.num_components

    @property
    def covariance(self) -> CovarianceType:
        """The head's covariance type."""
        return self.head.layout.covariance

    @property
    def mixture(self) -> MixtureType:
        """The head's mixture type, ``"joint"`` or ``"per_dimension"``."""
        return self.head.layout.mixture

    @property
    def scale_transform(self) -> ScaleTransform:
        """The head's positive transform of the raw scales."""
        return self.head.layout.scale_transform

    @property
    def min_scale(self) -> float:
        """The head's scale floor, in standardised units."""
        return self.head.layout.min_scale

    @property
    def input_size(self) -> int:
        """Network inputs per step: ``event_dim`` values, the pen one-hot, the start flag, the
        per-step inputs and the context, in this order."""
        return self.event_dim + self.pen_states + 1 + self.input_dim + self.context_dim

    @property
    def columns(self) -> int:
        """Columns of an event row: ``event_dim`` (+ 1 for the pen-state index, + 1 for the
        reward, + 1 for the done flag)."""
        return self.event_dim + (1 if self.pen_states else 0) + int(self.reward) + int(self.done)

    @property
    def reward_column(self) -> int | None:
        """Index of the reward column of an event row (None without a reward head)."""
        return self.event_dim + (1 if self.pen_states else 0) if self.reward else None

    @property
    def done_column(self) -> int | None:
        """Index of the done column of an event row, the last (None without a done head)."""
        return self.columns - 1 if self.done else None

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
            "input_dim": self.input_dim,
            "context_dim": self.context_dim,
            "context_init": self.context_init,
            "mixture": self.mixture,
            "done": self.done,
            "reward": self.reward,
        }

    def extra_repr(self) -> str:
        extra = "".join(
            f", {k}={v!r}"
            for k, v in self.config().items()
            if k in ("input_dim", "context_dim", "mixture", "done", "reward")
            and v != {"mixture": "joint"}.get(k, 0)
        )
        return (
            f"event_dim={self.event_dim}, pen_states={self.pen_states}, "
            f"standardize='{self._standardize}'{extra}"
        )

    # ------------------------------------------------------------------ input checks
    def _describe_columns(self) -> str:
        parts = [f"{self.event_dim} continuous"]
        if self.pen_states:
            parts.append("1 pen-state column")
        if self.reward:
            parts.append("1 reward column")
        if self.done:
            parts.append("1 done column")
        return " + ".join(parts)

    def _check_x(self, x: ArrayLike) -> Tensor:
        if not isinstance(x, Tensor):
            x = torch.as_tensor(np.asarray(x))
        if x.dim() == 2:
            x = x.unsqueeze(0)
        if x.dim() != 3 or x.shape[-1] != self.columns:
            raise ValueError(
                f"expected events of shape (B, T, {self.columns}) ({self._describe_columns()}), "
                f"found {tuple(x.shape)}"
            )
        if x.shape[1] < 1:
            raise ValueError("expected at least one event per sequence, found T=0")
        ref = self.shift
        return x.to(device=ref.device, dtype=ref.dtype)

    def _as_tensor(self, v: ArrayLike) -> Tensor:
        t = v if isinstance(v, Tensor) else torch.as_tensor(np.asarray(v))
        return t.to(device=self.shift.device, dtype=self.shift.dtype)

    def _check_inputs(self, inputs: ArrayLike | None, b: int, t: int) -> Tensor | None:
        """Per-step inputs ``(B, T, input_dim)`` (``(T, input_dim)`` for one sequence)."""
        i = self.input_dim
        if i == 0:
            if inputs is not None:
                raise ValueError(
                    "expected no per-step inputs (this model has input_dim=0), found inputs of "
                    f"shape {tuple(np.shape(inputs))}"
                )
            return None
        if inputs is None:
            raise ValueError(
                f"expected per-step inputs of shape (B, T, {i}) = ({b}, {t}, {i}) "
                f"(input_dim={i}), found None"
            )
        a = self._as_tensor(inputs)
        if a.dim() == 2 and b == 1:
            a = a.unsqueeze(0)
        if tuple(a.shape) != (b, t, i):
            raise ValueError(
                f"expected per-step inputs of shape (B, T, input_dim) = ({b}, {t}, {i}), "
                f"found {tuple(a.shape)}"
            )
        return a

    def _check_context(self, context: ArrayLike | None, b: int) -> Tensor | None:
        """Per-sequence context ``(B, context_dim)`` (a ``(context_dim,)`` one is shared)."""
        c = self.context_dim
        if c == 0:
            if context is not None:
                raise ValueError(
                    "expected no context (this model has context_dim=0), found a context of "
                    f"shape {tuple(np.shape(context))}"
                )
            return None
        if context is None:
            raise ValueError(
                f"expected a context of shape (B, {c}) = ({b}, {c}) (context_dim={c}), found None"
            )
        z = self._as_tensor(context)
        if z.dim() == 1 and z.shape[0] == c:
            z = z.expand(b, c)
        if tuple(z.shape) != (b, c):
            raise ValueError(
                f"expected a context of shape (B, context_dim) = ({b}, {c}), found {tuple(z.shape)}"
            )
        return z

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

    def _pen_index(self, x: Tensor, mask: Tensor | None) -> Tensor:
        p = _masked(x[..., self.event_dim], mask)
        idx = p.round()
        bad = (idx != p) | (idx < 0) | (idx >= self.pen_states)
        if mask is not None:
            bad = mask & bad
        if bad.any():
            raise ValueError(
                f"the last column must hold a pen-state index in 0..{self.pen_states - 1}, "
                f"found values such as {p[bad][:3].tolist()}"
            )
        return idx.long()

    # ------------------------------------------------------------------ standardisation
    @torch.no_grad()
    def prepare(
        self,
        x: ArrayLike,
        lengths: ArrayLike | None = None,
        inputs: ArrayLike | None = None,
        context: ArrayLike | None = None,
    ) -> MDNRNN:
        """Set the standardisation from the real (non-padded) events and spread the head's initial
        components over them (:meth:`MDNHead.init_from_data`).  ``fit`` calls it once.

        ``x`` is ``(B, T, columns)`` (or ``(N, columns)`` for a single stream) with ``lengths``
        ``(B,)`` (None: all complete).  The continuous values (and the reward) are standardised;
        ``inputs`` and ``context`` are used as given (a one-hot or a VAE latent already has a
        unit scale, and a latent changes while its encoder trains): when given, only their
        shapes are checked.  Returns ``self``.
        """
        x = self._check_x(x)
        lengths = self._check_lengths(lengths, x.shape[0], x.shape[1])
        if inputs is not None:
            self._check_inputs(inputs, x.shape[0], x.shape[1])
        if context is not None:
            self._check_context(context, x.shape[0])
        mask = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
        u = x[..., : self.event_dim][mask].to(torch.float64)
        if not torch.isfinite(u).all():
            raise ValueError("the events contain NaN or inf")
        shift, scale = self._statistics(u, self._standardize)
        self.shift.copy_(shift.to(self.shift))
        self.scale.copy_(scale.to(self.scale))
        if self.reward:
            r = x[..., self.reward_column][mask].to(torch.float64)[:, None]
            mode = "none" if self._standardize == "none" else "full"
            r_shift, r_scale = self._statistics(r, mode)
            self.reward_shift.copy_(r_shift.to(self.reward_shift))
            self.reward_scale.copy_(r_scale.to(self.reward_scale))
        z = (u - self.shift.double()) / self.scale.double()
        if z.shape[0] >= self.num_components:
            sub = z
            if z.shape[0] > 20000:
                g = torch.Generator().manual_seed(0)
                sub = z[torch.randperm(z.shape[0], generator=g)[:20000]]
            self.head.init_from_data(sub, generator=0)
        return self

    @staticmethod
    def _statistics(u: Tensor, mode: str) -> tuple[Tensor, Tensor]:
        """``(shift, scale)`` of values ``u`` ``(N, D)`` for a standardisation ``mode``."""
        d = u.shape[1]
        if not torch.isfinite(u).all():
            raise ValueError("the events contain NaN or inf")
        if mode == "none":
            return torch.zeros(d), torch.ones(d)
        std = u.std(0) if u.shape[0] > 1 else torch.ones(d, dtype=torch.float64)
        scale = torch.where(std > 0, std, torch.ones_like(std))
        shift = u.mean(0) if mode == "full" else torch.zeros_like(scale)
        return shift, scale

    # ------------------------------------------------------------------ the network's inputs
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
        s = torch.zeros(b, 1, self.event_dim + self.pen_states + 1, dtype=like.dtype)
        s[..., -1] = 1.0
        return s.to(like.device)

    def _conditioned(
        self, enc: Tensor, inputs: Tensor | None, context: Tensor | None, mask: Tensor | None
    ) -> Tensor:
        """``[encoded events, inputs, context]`` per step (padded steps' inputs zeroed)."""
        parts = [enc]
        if inputs is not None:
            if mask is not None:
                zero = torch.zeros((), dtype=inputs.dtype, device=inputs.device)
                inputs = torch.where(mask.unsqueeze(-1), inputs, zero)
            parts.append(inputs)
        if context is not None:
            parts.append(context.unsqueeze(1).expand(-1, enc.shape[1], -1))
        return torch.cat(parts, -1) if len(parts) > 1 else enc

    def initial_state(self, context: Tensor | None) -> Any:
        r"""The recurrent state before the start token: :math:`\tanh(W c + b)` split per layer
        into ``h`` (then ``c`` for an LSTM) with ``context_init``, else None (zeros).

        Returns ``(h, c)`` (LSTM) or ``h`` (GRU), each ``(num_layers, B, hidden_size)``, or None.
        """
        if self.state_init is None:
            return None
        n, hd = self.num_layers, self.hidden_size
        s = torch.tanh(self.state_init(context))
        if self.cell == "gru":
            return s.reshape(-1, n, hd).transpose(0, 1).contiguous()
        s = s.reshape(-1, n, 2, hd)
        return s[:, :, 0].transpose(0, 1).contiguous(), s[:, :, 1].transpose(0, 1).contiguous()

    # ------------------------------------------------------------------ forward / loss
    def forward(
        self,
        x: ArrayLike,
        state: Any = None,
        inputs: ArrayLike | None = None,
        context: ArrayLike | None = None,
    ) -> SequenceOutput:
        """Predict the next event after each of ``x`` ``(B, T, columns)``.

        Output ``t`` is the distribution of event ``t + 1`` given events ``0..t``.  With
        ``state=None`` a fresh sequence starts (the start token is read first, from the
        context's initial state with ``context_init``); pass the returned state to continue a
        sequence.

        ``inputs[:, t]`` ``(B, T, input_dim)`` is read with ``x[:, t]``: it conditions output
        ``t``, the prediction of event ``t + 1`` (so ``forward``'s ``inputs[:, t]`` is
        :meth:`loss`'s ``inputs[:, t + 1]``); the start token read when ``state=None`` gets zero
        inputs.  ``context`` ``(B, context_dim)`` enters every step.

        Returns:
            a :class:`SequenceOutput` that unpacks as ``(mixture, pen_logits, state)``: a
            :class:`~mdnkit.GaussianMixture` (or :class:`~mdnkit.PerDimensionMixture`) with
            batch shape ``(B, T)`` in data units, pen logits ``(B, T, pen_states)`` (None without
            pen states), and the recurrent state (``(h, c)`` for an LSTM, ``h`` for a GRU, each
            ``(num_layers, B, hidden_size)``); ``.done_logits`` and ``.reward`` hold the extra
            heads' predictions.
        """
        x = self._check_x(x)
        b, t = x.shape[0], x.shape[1]
        inputs = self._check_inputs(inputs, b, t)
        context = self._check_context(context, b)
        enc = self._encode(x)
        if state is None:
            zero = None if inputs is None else inputs.new_zeros(b, 1, self.input_dim)
            first = self._conditioned(self._start(b, enc), zero, context, None)
            _, state = self.rnn(first, self.initial_state(context))
        h, state = self.rnn(self._conditioned(enc, inputs, context, None), state)
        mixture = self._mixture_std(h).affine(self.shift, self.scale)
        pen = self.pen(h) if self.pen is not None else None
        done = self.done_head(h)[..., 0] if self.done_head is not None else None
        reward = None
        if self.reward_head is not None:
            loc, scale = self._reward_std(h)
            reward = Normal(
                loc * self.reward_scale + self.reward_shift,
                scale * self.reward_scale,
                validate_args=False,
            )
        return SequenceOutput(mixture, pen, state, done, reward)

    def _mixture_std(self, h: Tensor) -> GaussianMixture | PerDimensionMixture:
        return self.head(h)

    def _reward_std(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """The reward's mean and standard deviation in standardised units, ``(B, T)`` each."""
        raw = self.reward_head(h)
        return raw[..., 0], self.head.layout.scale_map.forward(raw[..., 1])

    def _terms(
        self,
        x: ArrayLike,
        lengths: ArrayLike | None,
        inputs: ArrayLike | None,
        context: ArrayLike | None,
    ) -> tuple[dict[str, Tensor], Tensor]:
        """Per-event NLL terms (zero at padding), by part, and the mask."""
        seen = self.network_inputs(x, lengths, inputs, context)
        h, _ = self.rnn(seen.inputs, self.initial_state(seen.context))
        return self._nll_terms(h, seen.x, seen.mask if seen.padded else None), seen.mask

    def network_inputs(
        self,
        x: ArrayLike,
        lengths: ArrayLike | None = None,
        inputs: ArrayLike | None = None,
        context: ArrayLike | None = None,
    ) -> NetworkInputs:
        """The batch :meth:`loss` takes, checked as it checks it, as the recurrent network reads
        it in training (a :class:`NetworkInputs`): the input of the step that predicts event
        ``t`` is ``[encoded x[:, t-1] (the start token at t = 0), inputs[:, t], context]``,
        zeros at padding, cut to the longest length.

        Example:
            >>> model = MDNRNN(2, hidden_size=8, num_layers=1, pen_states=2)
            >>> seen = model.network_inputs(torch.zeros(3, 5, 3), [5, 2, 4])
            >>> tuple(seen.inputs.shape), seen.padded, seen.inputs[:, 0, -1].tolist()
            ((3, 5, 5), True, [1.0, 1.0, 1.0])
        """
        x = self._check_x(x)
        b, t = x.shape[0], x.shape[1]
        lengths = self._check_lengths(lengths, b, t)
        inputs = self._check_inputs(inputs, b, t)
        context = self._check_context(context, b)
        tmax = int(lengths.max())
        x = x[:, :tmax]
        inputs = None if inputs is None else inputs[:, :tmax]
        mask = torch.arange(tmax, device=x.device)[None, :] < lengths[:, None]
        padded = not bool(lengths.min() == tmax)
        # nothing is padding (windows cut from a stream, say): the masking is skipped
        real = mask if padded else None
        enc = torch.cat(
            [self._start(b, x), self._encode(x[:, :-1], None if real is None else real[:, :-1])], 1
        )
        steps = self._conditioned(enc, inputs, context, real)
        return NetworkInputs(x, steps, context, lengths, mask, padded)

    def standardized_targets(
        self, x: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """The targets of checked events ``x`` ``(B, T, columns)`` (real where ``mask``): the
        standardised continuous values ``(B, T, event_dim)`` and the pen-state indices
        ``(B, T)`` (long; None without pen states), zeros at padding.  An index that is not a
        whole number in ``0 .. pen_states - 1`` raises a :class:`ValueError`."""
        u = (x[..., : self.event_dim] - self.shift) / self.scale
        if mask is not None:
            u = torch.where(mask.unsqueeze(-1), u, torch.zeros((), dtype=u.dtype))
        return u, (self._pen_index(x, mask) if self.pen_states else None)

    def _nll_terms(self, h: Tensor, x: Tensor, mask: Tensor | None) -> dict[str, Tensor]:
        """The NLL of each part of every event given the network's outputs ``h`` (``mask``:
        which events are real; None: all of them)."""
        m = self._mixture_std(h)
        u, target = self.standardized_targets(x, mask)
        lp = m.log_prob(u) - self.scale.log().sum()
        terms = {"mixture_nll": _masked(-lp, mask)}
        if self.pen is not None and target is not None:
            ce = F.cross_entropy(
                self.pen(h).reshape(-1, self.pen_states), target.reshape(-1), reduction="none"
            )
            terms["pen_nll"] = _masked(ce.reshape(target.shape).to(lp.dtype), mask)
        if self.reward_head is not None:
            r = _masked(x[..., self.reward_column], mask)
            loc, scale = self._reward_std(h)
            z = (r - self.reward_shift) / self.reward_scale
            lr = Normal(loc, scale, validate_args=False).log_prob(z) - self.reward_scale.log()
            terms["reward_nll"] = _masked(-lr, mask)
        if self.done_head is not None:
            d = _masked(x[..., self.done_column], mask)
            if ((d < 0) | (d > 1) | torch.isnan(d)).any():
                bad = d[(d < 0) | (d > 1) | torch.isnan(d)][:3].tolist()
                raise ValueError(f"the done column must hold values in [0, 1], found {bad}")
            bce = F.binary_cross_entropy_with_logits(self.done_head(h)[..., 0], d, reduction="none")
            terms["done_nll"] = _masked(bce, mask)
        return terms

    def loss(
        self,
        x: ArrayLike,
        lengths: ArrayLike | None = None,
        inputs: ArrayLike | None = None,
        context: ArrayLike | None = None,
        *,
        reduction: Reduction = "mean",
    ) -> Tensor:
        r"""NLL of the sequences ``x`` ``(B, T, columns)`` with ``lengths`` ``(B,)``, in nats.

        ``inputs`` ``(B, T, input_dim)``: ``inputs[:, t]`` is read by the step that predicts
        ``x[:, t]`` (with ``x[:, t-1]``, or the start token at ``t = 0``); padded steps' inputs
        are ignored, whatever they hold.  ``context`` ``(B, context_dim)``.  A batch tuple
        ``(x, lengths, inputs, context)`` works positionally, as :func:`~mdnkit.fit` passes
        it; None entries are allowed here, but ``fit``'s data tuples hold tensors only, so a
        model with a context and no per-step inputs is trained through a small adapter (see
        ``examples/conditional.py``).

        ``"mean"``: per real event (continuous NLL + pen cross-entropy + reward NLL + done
        cross-entropy, those the model has), averaged over all :math:`\sum_b L_b` real events of
        the batch; ``"sum"``: their total (the batch's negative log-likelihood); ``"none"``: the
        per-event NLL ``(B, T')`` with zeros at padding (:math:`T' = \max_b L_b`).
        """
        checks.choice("reduction", reduction, Reduction)
        terms, mask = self._terms(x, lengths, inputs, context)
        nll = sum(terms.values())
        if reduction == "none":
            return nll
        if reduction == "sum":
            return nll.sum()
        return nll.sum() / mask.sum()

    def fast_step(self, *data: Tensor) -> LSTMFastStep | None:
        """The autograd-free training step :func:`mdnkit.fit` uses (:mod:`mdnkit.sequence.fast`)
        for in-memory sequences ``data = (x, lengths, inputs, context)`` (as :meth:`loss` takes
        them) when its formulas hold: an LSTM without dropout between layers and without a
        context-set initial state, a joint mixture with diagonal or spherical components,
        no done or reward head, every parameter trainable, float32 or float64 on the CPU
        (on a GPU a loop of small kernels per step would be bound by their launches: autograd
        runs cuDNN's fused LSTM there); else None."""
        if not 1 <= len(data) <= 4 or any(not isinstance(t, Tensor) for t in data):
            return None
        own = ("loss", "_terms", "_nll_terms", "_mixture_std", "network_inputs")
        params = list(self.parameters())
        ok = (
            self.cell == "lstm"
            and (self.dropout == 0.0 or self.num_layers == 1)
            and self.state_init is None
            and self.done_head is None
            and self.reward_head is None
            and self.covariance != "full"
            and self.mixture == "joint"
            and all(getattr(type(self), n) is getattr(MDNRNN, n) for n in own)
            and all(p.requires_grad for p in params)
            and len(params) == 4 * self.num_layers + (4 if self.pen_states else 2)  # none shared
            and len({(p.device, p.dtype) for p in params}) == 1
            and params[0].device.type == "cpu"
            and params[0].dtype in (torch.float32, torch.float64)
        )
        return LSTMFastStep(self) if ok else None

    @torch.no_grad()
    def evaluate(
        self,
        x: ArrayLike,
        lengths: ArrayLike | None = None,
        inputs: ArrayLike | None = None,
        context: ArrayLike | None = None,
        batch_size: int = 256,
    ) -> dict[str, float]:
        """Mean NLL per real event over a (large) set of sequences, computed in batches.

        Returns a dict: ``nll`` (total per event), its parts ``mixture_nll``, ``pen_nll``,
        ``reward_nll`` and ``done_nll`` (0 for a part the model does not have) and ``events``
        (the count).
        """
        batch_size = checks.positive_int("batch_size", batch_size)
        was = self.training
        self.eval()
        x = self._check_x(x)
        b, t = x.shape[0], x.shape[1]
        lengths = self._check_lengths(lengths, b, t)
        inputs = self._check_inputs(inputs, b, t)
        context = self._check_context(context, b)
        parts = ("mixture_nll", "pen_nll", "reward_nll", "done_nll")
        tot = dict.fromkeys(parts, 0.0)
        n = 0
        for i in range(0, b, batch_size):
            rows = slice(i, i + batch_size)
            terms, mask = self._terms(
                x[rows],
                lengths[rows],
                None if inputs is None else inputs[rows],
                None if context is None else context[rows],
            )
            for name, value in terms.items():
                tot[name] += float(value.double().sum())
            n += int(mask.sum())
        self.train(was)
        out = {"nll": sum(tot.values()) / n}
        out.update({name: v / n for name, v in tot.items()})
        out["events"] = n
        return out

    # ------------------------------------------------------------------ generation
    def generator(
        self,
        batch: int = 1,
        temperature: float = 1.0,
        sigma_temperature: float = 1.0,
        pen_temperature: float = 1.0,
        generator: Any = None,
        context: ArrayLike | None = None,
    ) -> StepGenerator:
        """A stateful :class:`~mdnkit.sequence.StepGenerator` for live use:
        ``g.step(previous_event, inputs) -> next_event``.  The settings are those of
        :class:`~mdnkit.sequence.Sampling`; ``context`` ``(context_dim,)`` or ``(batch,
        context_dim)`` is the streams' context (``g.reset(context=...)`` changes it).

        It snapshots the current weights (make a new one after more training).

        Example:
            >>> model = MDNRNN(event_dim=3, hidden_size=16, num_layers=1)
            >>> g = model.generator(temperature=0.5, generator=0)
            >>> e = g.step()                 # first event (after the start token)
            >>> e = g.step(e)                # the next one, and so on
            >>> e.shape
            (3,)
        """
        from .runtime import Sampling, StepGenerator  # the runtime reads the model

        sampling = Sampling(
            temperature=temperature,
            sigma_temperature=sigma_temperature,
            pen_temperature=pen_temperature,
            batch=batch,
            generator=generator,
        )
        return StepGenerator.from_sampling(self, sampling, context=context)

    def generate(
        self,
        steps: int,
        prime: ArrayLike | None = None,
        temperature: float = 1.0,
        sigma_temperature: float = 1.0,
        pen_temperature: float = 1.0,
        generator: Any = None,
        batch: int = 1,
        inputs: ArrayLike | None = None,
        context: ArrayLike | None = None,
    ) -> Tensor:
        """Sample ``steps`` new events for ``batch`` independent sequences, in data units.

        Args:
            steps: number of events to generate.
            prime: optional events ``(P, columns)`` or ``(batch, P, columns)`` read first; the
                generated events continue them (the prime is not included in the output).
            temperature, sigma_temperature, pen_temperature: see
                :class:`~mdnkit.sequence.Sampling`.
            generator: int seed, ``numpy.random.Generator``, ``torch.Generator`` or None; the
                same seed gives the same events (and the same as :meth:`generator`'s steps).
            batch: number of independent sequences.
            inputs: per-step inputs ``(P + steps, input_dim)`` or ``(batch, P + steps,
                input_dim)``, aligned as in :meth:`loss` with the sequence prime + new events:
                ``inputs[:, P + i]`` conditions the ``i``-th new event.
            context: ``(context_dim,)`` or ``(batch, context_dim)``.

        Returns:
            A float32 tensor ``(batch, steps, columns)``.
        """
        from .runtime import Sampling, StepGenerator

        sampling = Sampling(
            temperature=temperature,
            sigma_temperature=sigma_temperature,
            pen_temperature=pen_temperature,
            batch=batch,
            generator=generator,
        )
        g = StepGenerator.from_sampling(self, sampling, context=context)
        return torch.from_numpy(g.generate(steps, prime=prime, inputs=inputs))

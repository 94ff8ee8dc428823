r"""The MDN-RNN: a recurrent network with an :class:`~mdnkit.MDNHead` (and pen-state logits) on top.

At step :math:`t` the network has read the start token and events :math:`x_1..x_t` and predicts
:math:`x_{t+1}`,

.. math::

    p(x_{t+1} \mid x_{\le t}) = \sum_{k=1}^K \pi_k(h_t)\,
        \mathcal{N}\big(u_{t+1} \mid \mu_k(h_t), \Sigma_k(h_t)\big)
        \cdot \operatorname{softmax}(q(h_t))_{s_{t+1}},
    \qquad h_t = \operatorname{RNN}(h_{t-1}, x_t),

with :math:`u` the continuous part of an event and :math:`s` its optional pen state (the event
layout is described in :mod:`mdnkit.sequence`).  The head's settings (components, covariance,
scale transform, floor) live in the head: the model reads them from ``model.head.layout``.

Example:
    >>> model = MDNRNN(event_dim=3, hidden_size=16, num_layers=1, num_components=4)
    >>> model.num_components, model.head.layout.num_params
    (4, 28)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .. import checks
from ..head import MDNHead
from ..layout import DEFAULT_MIN_SCALE
from ..mixture import GaussianMixture
from ..options import CellType, CovarianceType, Reduction, ScaleTransform, Standardize
from .data import ArrayLike

if TYPE_CHECKING:
    from .runtime import StepGenerator

__all__ = ["MDNRNN", "PEN_STATES"]

#: The allowed numbers of pen states: none, stroke-3's (down, lifted) or stroke-5's (+ the end).
PEN_STATES = (0, 2, 3)


class MDNRNN(nn.Module):
    r"""A recurrent mixture density network: RNN → :class:`~mdnkit.MDNHead` (+ pen-state logits).

    At step :math:`t` the network has read the start token and events :math:`x_1..x_t` and
    predicts :math:`x_{t+1}`: a Gaussian mixture over the ``event_dim`` continuous values and,
    when ``pen_states > 0``, a categorical distribution over the pen state (layout in
    :mod:`mdnkit.sequence`).  The training loss is the NLL per event,

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
        rnn_cls = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn_cls(
            event_dim + self.pen_states + 1,  # + the start flag
            self.hidden_size,
            self.num_layers,
            batch_first=True,
            dropout=self.dropout if self.num_layers > 1 else 0.0,
        )
        self.head = MDNHead(
            self.hidden_size,
            event_dim,
            num_components,
            covariance=covariance,
            scale_transform=scale_transform,
            min_scale=min_scale,
        )
        self.pen = nn.Linear(self.hidden_size, self.pen_states) if self.pen_states else None
        self.register_buffer("shift", torch.zeros(event_dim))
        self.register_buffer("scale", torch.ones(event_dim))

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
    def scale_transform(self) -> ScaleTransform:
        """The head's positive transform of the raw scales."""
        return self.head.layout.scale_transform

    @property
    def min_scale(self) -> float:
        """The head's scale floor, in standardised units."""
        return self.head.layout.min_scale

    @property
    def input_size(self) -> int:
        """Network inputs per step: ``event_dim`` values, the pen one-hot and the start flag."""
        return self.event_dim + self.pen_states + 1

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
        reduction: Reduction = "mean",
    ) -> Tensor:
        r"""NLL of the sequences ``x`` ``(B, T, columns)`` with ``lengths`` ``(B,)``, in nats.

        ``"mean"``: per real event (continuous NLL + pen cross-entropy), averaged over all
        :math:`\sum_b L_b` real events of the batch; ``"sum"``: their total (the batch's negative
        log-likelihood); ``"none"``: the per-event NLL ``(B, T')`` with zeros at padding
        (:math:`T' = \max_b L_b`).  Padded steps contribute nothing, whatever they hold.
        """
        checks.choice("reduction", reduction, Reduction)
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
        batch_size = checks.positive_int("batch_size", batch_size)
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
        """A stateful :class:`~mdnkit.sequence.StepGenerator` for live use:
        ``g.step(previous_event) -> next_event``.  The settings are those of
        :class:`~mdnkit.sequence.Sampling`.

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
        return StepGenerator.from_sampling(self, sampling)

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
            temperature, sigma_temperature, pen_temperature: see
                :class:`~mdnkit.sequence.Sampling`.
            generator: int seed, ``numpy.random.Generator``, ``torch.Generator`` or None; the
                same seed gives the same events (and the same as :meth:`generator`'s steps).
            batch: number of independent sequences.

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
        g = StepGenerator.from_sampling(self, sampling)
        return torch.from_numpy(g.generate(steps, prime=prime))

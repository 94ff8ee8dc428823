r"""SketchRNN's variational autoencoder (Ha & Eck 2017) on mdnkit's MDN-RNN.

A drawing is a sequence of pen events.  A bidirectional LSTM reads the whole drawing and gives the
mean and log-variance of a latent vector :math:`z`; the decoder, an :class:`~mdnkit.MDNRNN`
conditioned on :math:`z` (``context_dim = z_dim``: :math:`z` enters the recurrent input at every
step and sets the initial state through :math:`\tanh(Wz + b)`), predicts the drawing again event
by event:

.. math::

    q(z \mid x) = \mathcal{N}\big(\mu(x), \operatorname{diag} e^{\ell(x)}\big), \qquad
    z = \mu + e^{\ell / 2} \odot \varepsilon, \quad \varepsilon \sim \mathcal{N}(0, I),

    p(x \mid z) = \prod_{i=1}^{N_{\max}} \Big[\sum_{k=1}^K \pi_{ik}\,
        \mathcal{N}(\Delta_i \mid \mu_{ik}, \Sigma_{ik})\Big]^{[i \le L]}
        \operatorname{softmax}(q_i)_{s_i}.

Events (stroke-5 in mdnkit's layout)
    A drawing comes in sketch-rnn's stroke-3 rows ``(dx, dy, pen_lifted)``.  Inside, it becomes
    :math:`N_{\max}` events ``(dx / σ, dy / σ, s)`` with pen state :math:`s` = 0 (the pen stays
    down), 1 (it is lifted after this point) or 2 (the drawing has ended: every step after the
    last point, with zero offsets), i.e. stroke-5 with the one-hot ``(p1, p2, p3)`` written as the
    index mdnkit's ``MDNRNN(pen_states=3)`` reads (:func:`strokes_to_events`).  :math:`σ` is one
    number for both axes, the standard deviation of all training ``dx`` and ``dy`` together, and
    :math:`N_{\max}` the longest training drawing (both set by :meth:`SketchVAE.prepare`).  The
    decoder first reads sketch-rnn's :math:`S_0` ``(0, 0, pen down)`` (after mdnkit's own start
    token), then the events.

Loss, as sketch-rnn trains it (the magenta ``sketch_rnn`` code, restated)
    .. math::

        L_R = \frac{1}{B N_{\max}} \sum_{b=1}^{B} \sum_{i=1}^{N_{\max}} \Big(
            [i \le L_b]\,\big(-\log(p_{\text{offset}}(\Delta_{bi}) + 10^{-6})\big)
            - \log \operatorname{softmax}(q_{bi})_{s_{bi}} \Big),

        L_{KL} = -\frac{1}{2 B\, d_z} \sum_{b, j} \big(1 + \ell_{bj} - \mu_{bj}^2 - e^{\ell_{bj}}\big),

        \text{loss} = L_R + w_{KL}\, \eta_{\text{step}} \max(L_{KL}, \text{kl\_min}), \qquad
        \eta_{\text{step}} = 1 - (1 - \eta_{\min}) R^{\text{step}}.

    Offsets are in units of :math:`σ` (the :math:`10^{-6}` inside the log is sketch-rnn's); the pen
    cross-entropy counts **all** :math:`N_{\max}` steps, the steps after the end included (so the
    model learns to stop); :math:`L_{KL}` is a mean over the batch **and** the latent dimensions
    (not a sum over them), and the floor applies to that mean.  ``step`` counts the training
    calls of :meth:`SketchVAE.loss` and is a buffer, so a saved model goes on annealing where it
    stopped.

Example:
    >>> x, lengths = pad_sequences([np.array([[1, 0, 0], [0, 2, 1]]), np.array([[3, 1, 1]])])
    >>> abs(kl_divergence(torch.zeros(2, 4), torch.zeros(2, 4)).item())
    0.0
    >>> strokes_to_events(x, lengths, max_len=3)[1].tolist()
    [[3.0, 1.0, 1.0], [0.0, 0.0, 2.0], [0.0, 0.0, 2.0]]
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .. import checks
from ..options import CovarianceType
from .data import ArrayLike, pad_sequences  # noqa: F401  (the docstring examples use it)
from .model import MDNRNN

__all__ = [
    "SketchVAE",
    "strokes_to_events",
    "events_to_strokes",
    "kl_divergence",
    "kl_weight_schedule",
    "augment_strokes",
    "slerp",
    "check_strokes",
    "drawings_list",
]

#: sketch-rnn's guard inside the log of the offset density.
OFFSET_EPSILON = 1e-6
#: The pen state of the steps after a drawing has ended (stroke-5's p3).
END = 2


# ---------------------------------------------------------------------- data
def check_strokes(x: ArrayLike, lengths: ArrayLike | None) -> tuple[Tensor, Tensor]:
    """Stroke-3 batch ``x`` ``(B, T, 3)`` (or one drawing ``(T, 3)``) and ``lengths`` ``(B,)``
    checked: float tensors, lengths in ``[1, T]``, pen values 0/1 and finite offsets at the real
    points (padding may hold anything).  Returns ``(x, lengths)``."""
    t = x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3 or t.shape[-1] != 3 or t.shape[1] < 1:
        raise ValueError(
            f"expected stroke-3 drawings of shape (B, T, 3) (dx, dy, pen_lifted), found {tuple(t.shape)}"
        )
    t = t.float() if not t.is_floating_point() else t
    b, n = t.shape[0], t.shape[1]
    if lengths is None:
        lt = torch.full((b,), n, dtype=torch.long)
    else:
        lt = lengths if isinstance(lengths, Tensor) else torch.as_tensor(np.asarray(lengths))
        lt = lt.reshape(-1)
        if lt.shape[0] != b or (lt.is_floating_point() and not torch.equal(lt, lt.round())):
            raise ValueError(f"expected {b} whole-number lengths, found {lt[:5].tolist()}")
        lt = lt.round().long().to(t.device)
        if (lt < 1).any() or (lt > n).any():
            raise ValueError(
                f"lengths must lie in [1, T={n}], found values from {int(lt.min())} to {int(lt.max())}"
            )
    mask = torch.arange(n, device=t.device)[None, :] < lt[:, None]
    real = t[mask]
    if not torch.isfinite(real).all():
        raise ValueError("the drawings contain NaN or inf at real points")
    bad = (real[:, 2] != 0) & (real[:, 2] != 1)
    if bad.any():
        raise ValueError(
            f"column 2 must hold pen_lifted = 0 or 1 (stroke-3), found {real[bad, 2][:3].tolist()}"
        )
    return t, lt


def strokes_to_events(x: ArrayLike, lengths: ArrayLike | None, max_len: int) -> Tensor:
    """Stroke-3 drawings → stroke-5 events in mdnkit's layout, padded to ``max_len`` steps.

    Event ``i < L`` is ``(dx, dy, pen_lifted)`` (pen state 0 = down, 1 = lifted); every event
    ``i >= L`` is ``(0, 0, 2)``, "the drawing has ended" (sketch-rnn's ``to_big_strokes``).
    Returns a float tensor ``(B, max_len, 3)``; ValueError if a drawing is longer than
    ``max_len``.

    Example:
        >>> strokes_to_events(torch.tensor([[[1.0, 2.0, 1.0]]]), None, max_len=2).tolist()
        [[[1.0, 2.0, 1.0], [0.0, 0.0, 2.0]]]
    """
    t, lt = check_strokes(x, lengths)
    max_len = checks.positive_int("max_len", max_len)
    if int(lt.max()) > max_len:
        raise ValueError(
            f"drawings must have at most max_len={max_len} points, found one of {int(lt.max())}"
        )
    b = t.shape[0]
    out = torch.zeros(b, max_len, 3, dtype=t.dtype, device=t.device)
    out[..., 2] = END
    n = min(max_len, t.shape[1])
    mask = torch.arange(n, device=t.device)[None, :] < lt[:, None]
    out[:, :n] = torch.where(mask.unsqueeze(-1), t[:, :n], out[:, :n])
    return out


def events_to_strokes(events: ArrayLike) -> tuple[Tensor, Tensor]:
    """Stroke-5 events ``(B, T, 3)`` (pen state 0/1/2) → stroke-3 ``(x, lengths)``.

    Each drawing ends before its first "end" event (state 2); ``lengths`` may be 0 when the first
    event is one.  ``x`` is ``(B, T, 3)`` with ``pen_lifted = 1`` where the state is 1, zeros
    after the end.

    Example:
        >>> x, n = events_to_strokes(torch.tensor([[[1.0, 1.0, 0.0], [2.0, 0.0, 1.0], [0.0, 0.0, 2.0]]]))
        >>> n.tolist(), x[0, :2].tolist()
        ([2], [[1.0, 1.0, 0.0], [2.0, 0.0, 1.0]])
    """
    e = events if isinstance(events, Tensor) else torch.as_tensor(np.asarray(events))
    if e.dim() != 3 or e.shape[-1] != 3:
        raise ValueError(f"expected events of shape (B, T, 3), found {tuple(e.shape)}")
    e = e.float() if not e.is_floating_point() else e
    ended = (e[..., 2].round() == END).long().cumsum(1) > 0
    lengths = (~ended).sum(1)
    x = torch.where(ended.unsqueeze(-1), torch.zeros((), dtype=e.dtype), e)
    x[..., 2] = (x[..., 2].round() == 1).to(e.dtype)
    return x, lengths


def augment_strokes(
    x: Tensor,
    lengths: Tensor,
    scale: float = 0.0,
    drop_prob: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    r"""sketch-rnn's two augmentations of a stroke-3 batch (checked ``(x, lengths)``).

    - **Scaling**: ``dx`` and ``dy`` of each drawing multiplied by factors drawn uniformly from
      :math:`[1 - s, 1 + s]`, one per axis and drawing.
    - **Point dropping**: inside a stroke, a point whose previous point is also inside the
      stroke (pen down) and that is more than the 2nd point after a pen lift is removed with
      probability ``drop_prob``, its offset added to the point before it (so the drawing keeps
      its shape with fewer points).  Points after which the pen is lifted are never dropped.

    Returns ``(x, lengths)``, new tensors (lengths can only shrink).

    Example:
        >>> x = torch.tensor([[[1.0, 0, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0], [1, 0, 1]]])
        >>> y, n = augment_strokes(x, torch.tensor([5]), drop_prob=1.0)
        >>> n.tolist(), y[0, : int(n[0])].sum(0).tolist()
        ([4], [5.0, 0.0, 1.0])
    """
    b, t = x.shape[0], x.shape[1]
    mask = torch.arange(t, device=x.device)[None, :] < lengths[:, None]
    x = torch.where(mask.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype))
    if scale > 0:
        f = 1.0 + (torch.rand(b, 1, 2, generator=generator, dtype=x.dtype) * 2 - 1) * scale
        x = torch.cat([x[..., :2] * f.to(x.device), x[..., 2:]], -1)
    if drop_prob <= 0:
        return x, lengths.clone()
    pen = x[..., 2] > 0.5
    prev = torch.cat([torch.ones_like(pen[:, :1]), pen[:, :-1]], 1)
    idx = torch.arange(t, device=x.device).expand(b, t)
    last_reset = torch.where(pen | prev, idx, torch.zeros_like(idx)).cummax(1).values
    count = idx - last_reset  # points since the count was last reset, as sketch-rnn counts
    u = torch.rand(b, t, generator=generator).to(x.device)
    drop = mask & ~pen & ~prev & (count > 2) & (u < drop_prob)
    kept = mask & ~drop
    group = kept.long().cumsum(1) - 1  # the kept point each point's offset goes to
    out = torch.zeros_like(x)
    offsets = torch.where(mask.unsqueeze(-1), x[..., :2], torch.zeros((), dtype=x.dtype))
    out[..., :2].scatter_add_(1, group.clamp(min=0).unsqueeze(-1).expand(b, t, 2), offsets)
    new_len = kept.sum(1)
    out[..., 2].scatter_add_(1, group.clamp(min=0), x[..., 2] * kept)  # dropped: pen 0
    valid = torch.arange(t, device=x.device)[None, :] < new_len[:, None]
    return torch.where(valid.unsqueeze(-1), out, torch.zeros((), dtype=x.dtype)), new_len


# ---------------------------------------------------------------------- latent-space maths
def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    r"""sketch-rnn's :math:`L_{KL}`: :math:`\mathrm{KL}(\mathcal{N}(\mu, e^{\ell}) \,\|\,
    \mathcal{N}(0, I))` **averaged** over the batch and the latent dimensions,

    .. math:: L_{KL} = -\frac{1}{2 B d_z} \sum_{b,j} \big(1 + \ell_{bj} - \mu_{bj}^2 - e^{\ell_{bj}}\big).

    (The KL of one drawing in nats is ``d_z`` times its per-dimension mean.)

    Example:
        >>> round(kl_divergence(torch.ones(1, 2), torch.zeros(1, 2)).item(), 4)
        0.5
    """
    return -0.5 * torch.mean(1.0 + logvar - mu.square() - logvar.exp())


def kl_weight_schedule(step: Any, kl_weight: float, eta_min: float, decay: float) -> Any:
    r"""The annealed KL weight at training step ``step`` (float, array or tensor),

    .. math:: w_{KL}\,\eta_{\text{step}}, \qquad
              \eta_{\text{step}} = 1 - (1 - \eta_{\min}) R^{\text{step}},

    from :math:`w_{KL}\eta_{\min}` at step 0 up to :math:`w_{KL}` (sketch-rnn's ``kl_weight``,
    ``kl_weight_start`` = :math:`w_{KL}`-free :math:`\eta_{\min}`, ``kl_decay_rate`` = R).

    Example:
        >>> round(kl_weight_schedule(0, 0.5, 0.01, 0.99995), 10)
        0.005
    """
    return kl_weight * (1.0 - (1.0 - eta_min) * decay**step)


def slerp(a: Tensor, b: Tensor, steps: int) -> Tensor:
    r"""Spherical interpolation from ``a`` to ``b`` (vectors ``(d,)``) in ``steps`` points,

    .. math:: z(t) = \frac{\sin((1-t)\omega)}{\sin\omega} a + \frac{\sin(t\omega)}{\sin\omega} b,
              \qquad \cos\omega = \frac{a \cdot b}{\lVert a\rVert \lVert b\rVert},

    :math:`t` evenly spaced in :math:`[0, 1]` (sketch-rnn's notebook interpolates latent vectors
    this way); linear where :math:`\sin\omega \approx 0`.  Returns ``(steps, d)``.

    Example:
        >>> z = slerp(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), 3)
        >>> [round(v, 4) for v in z[1].tolist()]
        [0.7071, 0.7071]
    """
    steps = checks.positive_int("steps", steps)
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    if a.dim() != 1 or a.shape != b.shape:
        raise ValueError(
            f"expected two latent vectors of the same shape (d,), found {tuple(a.shape)} and {tuple(b.shape)}"
        )
    t = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)[:, None]
    cos = torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-300)
    omega = torch.arccos(cos.clamp(-1.0, 1.0))
    so = torch.sin(omega)
    if float(so) < 1e-6:
        z = (1 - t) * a + t * b
    else:
        z = torch.sin((1 - t) * omega) / so * a + torch.sin(t * omega) / so * b
    return z.float()


# ---------------------------------------------------------------------- the model
class SketchVAE(nn.Module):
    r"""SketchRNN's VAE: bidirectional-LSTM encoder → :math:`z` → conditioned MDN-RNN decoder.

    The loss and its settings are sketch-rnn's (formulas in :mod:`mdnkit.sequence.vae`):
    :math:`L_R + w_{KL}\eta_{\text{step}}\max(L_{KL}, \text{kl\_min})`, offsets divided by one
    scalar :math:`σ`, :math:`N_{\max}` steps per drawing.  Inputs are stroke-3 drawings padded
    into ``x`` ``(B, T, 3)`` with ``lengths`` ``(B,)`` (:func:`~mdnkit.sequence.pad_sequences`),
    so ``fit(model, x, lengths)`` trains it (it calls :meth:`prepare` then :meth:`loss`).

    Args:
        z_dim: latent size (sketch-rnn: 128).
        encoder_size: units of each direction of the encoder LSTM (256).
        decoder_size: units of the decoder LSTM (512).
        num_components: K, the decoder's mixture components (20).
        covariance: the components' covariance; ``"full"`` is sketch-rnn's correlated bivariate
            normal.
        kl_weight, eta_min, kl_decay: :math:`w_{KL}` (0.5), :math:`\eta_{\min}` (0.01) and
            :math:`R` (0.99995) of the annealed weight (:func:`kl_weight_schedule`).
        kl_min: the floor under :math:`L_{KL}` (sketch-rnn's ``kl_tolerance``, 0.2).
        scale_augment, stroke_drop: training-time augmentation (:func:`augment_strokes`),
            off by default (sketch-rnn uses 0.15 and 0.10).
        max_len: :math:`N_{\max}`; None: the longest training drawing (set by :meth:`prepare`).

    Example:
        >>> torch.manual_seed(0) and None
        >>> drawings = [np.array([[1, 0, 0], [0, 1, 0], [-1, 0, 1]] * 2), np.array([[2, 2, 1]])]
        >>> x, lengths = pad_sequences(drawings)
        >>> model = SketchVAE(z_dim=4, encoder_size=8, decoder_size=16, num_components=2)
        >>> model = model.prepare(x, lengths)
        >>> mu, logvar = model.encode(x, lengths)
        >>> tuple(mu.shape), model.loss(x, lengths).dim()
        ((2, 4), 0)
        >>> sorted(model.evaluate(x, lengths))[:3]
        ['L_KL', 'L_KL_floored', 'L_R']
        >>> y, n = model.reconstruct(x, lengths, temperature=0.5, generator=0)
        >>> tuple(y.shape)
        (2, 6, 3)
    """

    def __init__(
        self,
        z_dim: int = 128,
        encoder_size: int = 256,
        decoder_size: int = 512,
        num_components: int = 20,
        covariance: CovarianceType = "full",
        kl_weight: float = 0.5,
        kl_min: float = 0.2,
        eta_min: float = 0.01,
        kl_decay: float = 0.99995,
        scale_augment: float = 0.0,
        stroke_drop: float = 0.0,
        max_len: int | None = None,
    ) -> None:
        super().__init__()
        self.z_dim = checks.positive_int("z_dim", z_dim)
        self.encoder_size = checks.positive_int("encoder_size", encoder_size)
        self.kl_weight = checks.number("kl_weight", kl_weight, low=0.0)
        self.kl_min = checks.number("kl_min", kl_min, low=0.0)
        self.eta_min = checks.number("eta_min", eta_min, low=0.0, high=1.0)
        self.kl_decay = checks.number("kl_decay", kl_decay, low=0.0, high=1.0)
        self.scale_augment = checks.number("scale_augment", scale_augment, low=0.0, high=1.0)
        self.stroke_drop = checks.number("stroke_drop", stroke_drop, low=0.0, high=1.0)
        self.max_len_setting = checks.positive_int("max_len", max_len, or_none=True)
        self.encoder = nn.LSTM(5, self.encoder_size, batch_first=True, bidirectional=True)
        self.to_mu = nn.Linear(2 * self.encoder_size, self.z_dim)
        self.to_logvar = nn.Linear(2 * self.encoder_size, self.z_dim)
        for layer in (self.to_mu, self.to_logvar):  # sketch-rnn: N(0, 0.001) weights, 0 bias
            nn.init.normal_(layer.weight, std=0.001)
            nn.init.zeros_(layer.bias)
        self.decoder = MDNRNN(
            event_dim=2,
            hidden_size=decoder_size,
            num_layers=1,
            num_components=num_components,
            covariance=covariance,
            pen_states=3,
            standardize="none",  # the offsets arrive divided by sigma, as sketch-rnn's do
            context_dim=self.z_dim,
        )
        self.register_buffer("offset_scale", torch.ones(()))
        self.register_buffer("max_len", torch.tensor(max_len or 0, dtype=torch.long))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def config(self) -> dict[str, Any]:
        """The constructor's arguments, JSON-able: ``SketchVAE(**model.config())`` rebuilds it."""
        return {
            "z_dim": self.z_dim,
            "encoder_size": self.encoder_size,
            "decoder_size": self.decoder.hidden_size,
            "num_components": self.decoder.num_components,
            "covariance": self.decoder.covariance,
            "kl_weight": self.kl_weight,
            "kl_min": self.kl_min,
            "eta_min": self.eta_min,
            "kl_decay": self.kl_decay,
            "scale_augment": self.scale_augment,
            "stroke_drop": self.stroke_drop,
            "max_len": self.max_len_setting,
        }

    def extra_repr(self) -> str:
        return f"z_dim={self.z_dim}, max_len={int(self.max_len)}, step={int(self.step)}"

    # ------------------------------------------------------------------ data
    @property
    def n_max(self) -> int:
        """:math:`N_{\\max}`, the steps every drawing is padded to; ValueError before :meth:`prepare`."""
        n = int(self.max_len)
        if n < 1:
            raise ValueError("N_max is not set: call model.prepare(x, lengths) first (fit does)")
        return n

    @torch.no_grad()
    def prepare(self, x: ArrayLike, lengths: ArrayLike | None = None) -> SketchVAE:
        r"""Set :math:`σ`, the standard deviation of all real ``dx`` and ``dy`` of the training
        drawings together (population std, as NumPy's ``np.std``), and :math:`N_{\max}` (the
        longest drawing, unless ``max_len`` was given), and spread the decoder's initial
        components over the normalised offsets.  ``fit`` calls it once.  Returns ``self``."""
        t, lt = check_strokes(x, lengths)
        mask = torch.arange(t.shape[1])[None, :] < lt[:, None]
        offsets = t[..., :2][mask].double().reshape(-1)
        std = float(offsets.std(unbiased=False)) if offsets.numel() > 1 else 1.0
        self.offset_scale.fill_(std if std > 0 else 1.0)
        self.max_len.fill_(self.max_len_setting or int(lt.max()))
        ev = self.events(t, lt)
        self.decoder.prepare(ev, lt)
        return self

    def events(self, x: ArrayLike, lengths: ArrayLike | None) -> Tensor:
        """Stroke-3 drawings → the normalised stroke-5 events the decoder reads, ``(B, N_max, 3)``."""
        ev = strokes_to_events(x, lengths, self.n_max)
        ref = self.offset_scale
        ev = ev.to(device=ref.device, dtype=ref.dtype)
        return torch.cat([ev[..., :2] / ref, ev[..., 2:]], -1)

    # ------------------------------------------------------------------ encoder
    def encode(self, x: ArrayLike, lengths: ArrayLike | None = None) -> tuple[Tensor, Tensor]:
        r"""The posterior :math:`q(z \mid x)`: ``(mu, logvar)``, each ``(B, z_dim)``.

        The bidirectional LSTM reads each drawing's real points only (the padding never reaches
        it: packed sequences) as ``(dx/σ, dy/σ, one-hot pen state)``; its two final hidden states
        go through two linear maps.
        """
        t, lt = check_strokes(x, lengths)
        ref = self.offset_scale
        t = t.to(device=ref.device, dtype=ref.dtype)
        mask = torch.arange(t.shape[1], device=t.device)[None, :] < lt[:, None].to(t.device)
        pen = F.one_hot(t[..., 2].round().long().clamp(0, 2), 3).to(t.dtype)
        feats = torch.cat([t[..., :2] / ref, pen], -1)
        feats = torch.where(mask.unsqueeze(-1), feats, torch.zeros((), dtype=t.dtype))
        packed = nn.utils.rnn.pack_padded_sequence(
            feats, lt.cpu(), batch_first=True, enforce_sorted=False
        )
        _, (h, _) = self.encoder(packed)
        last = torch.cat([h[0], h[1]], -1)
        return self.to_mu(last), self.to_logvar(last)

    def sample_z(self, mu: Tensor, logvar: Tensor, generator: Any = None) -> Tensor:
        r"""A reparameterised draw :math:`z = \mu + e^{\ell/2}\varepsilon` (differentiable)."""
        g = checks.as_generator(generator)
        eps = torch.randn(mu.shape, generator=g, dtype=mu.dtype).to(mu.device)
        return mu + (0.5 * logvar).exp() * eps

    # ------------------------------------------------------------------ decoder terms
    def step_terms(self, events: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """Per-step offset log-density (normalised units) and pen cross-entropy, each
        ``(B, N_max)``, of normalised events given ``z`` (teacher forcing after :math:`S_0`)."""
        s0 = torch.zeros_like(events[:, :1])  # sketch-rnn's S_0: no offset, pen down
        inputs = torch.cat([s0, events[:, :-1]], 1)
        mixture, pen_logits, _ = self.decoder(inputs, context=z)
        log_p = mixture.log_prob(events[..., :2])
        target = events[..., 2].round().long()
        ce = F.cross_entropy(pen_logits.transpose(1, 2), target, reduction="none")
        return log_p, ce.to(log_p.dtype)

    def reconstruction(
        self, x: Tensor, lengths: Tensor, z: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(offset_nll, log_p, pen_ce, mask)`` for stroke-3 ``x``: sketch-rnn's masked offset
        term ``-log(p + 1e-6)`` (0 after the end), the raw log-density, the pen cross-entropy of
        every step and the real-point mask, each ``(B, N_max)``."""
        ev = self.events(x, lengths)
        log_p, ce = self.step_terms(ev, z)
        mask = ev[..., 2] != END
        guarded = -torch.logaddexp(log_p, torch.full_like(log_p, math.log(OFFSET_EPSILON)))
        offset = torch.where(mask, guarded, torch.zeros((), dtype=log_p.dtype))
        return offset, log_p, ce, mask

    # ------------------------------------------------------------------ the loss
    def current_kl_weight(self) -> float:
        r""":math:`w_{KL}\eta_{\text{step}}` at the current training step."""
        return float(
            kl_weight_schedule(int(self.step), self.kl_weight, self.eta_min, self.kl_decay)
        )

    def loss(self, x: ArrayLike, lengths: ArrayLike | None = None) -> Tensor:
        r"""The scalar training loss :math:`L_R + w_{KL}\eta_{\text{step}}\max(L_{KL},
        \text{kl\_min})` (sketch-rnn's ``cost``).

        In training mode (with gradients) the augmentations apply, :math:`z` is a fresh
        reparameterised draw and ``step`` advances by one after its weight is read.  In
        evaluation mode (``fit``'s validation) :math:`z` is drawn with a fixed seed and the weight
        is the final :math:`w_{KL}`, so the value depends on the model alone.
        """
        t, lt = check_strokes(x, lengths)
        training = self.training and torch.is_grad_enabled()
        if training and (self.scale_augment > 0 or self.stroke_drop > 0):
            t, lt = augment_strokes(t, lt, self.scale_augment, self.stroke_drop)
        mu, logvar = self.encode(t, lt)
        z = self.sample_z(mu, logvar, None if training else 0)
        offset, _, ce, _ = self.reconstruction(t, lt, z)
        l_r = (offset + ce).mean()
        l_kl = torch.clamp(kl_divergence(mu, logvar), min=self.kl_min)
        weight = self.current_kl_weight() if training else self.kl_weight
        if training:
            self.step.add_(1)
        return l_r + weight * l_kl

    @torch.no_grad()
    def evaluate(
        self,
        x: ArrayLike,
        lengths: ArrayLike | None = None,
        batch_size: int = 100,
        sample: bool = True,
        generator: Any = 0,
    ) -> dict[str, float]:
        r"""Scores over a set of drawings, in batches, in evaluation mode.

        sketch-rnn's numbers (normalised units, comparable with its published tables):
        ``L_R`` (mean over drawings × :math:`N_{\max}` steps, as in the module docstring),
        ``L_KL`` (per-dimension mean) and ``L_KL_floored`` (:math:`\max(L_{KL},` kl_min), the
        value sketch-rnn logs as ``kl``).  With ``sample`` (sketch-rnn's evaluation) :math:`z` is
        drawn from :math:`q` (seeded by ``generator``), else :math:`z = \mu`.

        mdnkit's numbers (data units, offsets in the drawings' own units): ``nll`` — the NLL per
        real point, :math:`-\log p(\Delta) - \log p(s)` given :math:`z`, averaged over the
        ``events`` real points (its parts ``offset_nll`` and ``pen_nll``); ``end_nll`` — the
        cross-entropy of the "end" state right after the last point, per drawing; ``elbo_nll`` —
        the negative ELBO per real point, (reconstruction NLL with the end term + KL in nats) /
        points, an upper bound on the model's NLL per point.
        """
        batch_size = checks.positive_int("batch_size", batch_size)
        t, lt = check_strokes(x, lengths)
        was = self.training
        self.eval()
        g = checks.as_generator(generator)
        sums = dict.fromkeys(("l_r", "kl", "off", "pen", "end", "kl_nats"), 0.0)
        for i in range(0, t.shape[0], batch_size):
            xb, nb = t[i : i + batch_size], lt[i : i + batch_size]
            for k, v in self.batch_scores(xb, nb, sample, g).items():
                sums[k] += v
        self.train(was)
        b, n = t.shape[0], int(lt.sum())
        return {
            "L_R": sums["l_r"] / b,
            "L_KL": sums["kl"] / b,
            "L_KL_floored": max(sums["kl"] / b, self.kl_min),
            "nll": (sums["off"] + sums["pen"]) / n,
            "offset_nll": sums["off"] / n,
            "pen_nll": sums["pen"] / n,
            "end_nll": sums["end"] / b,
            "elbo_nll": (sums["off"] + sums["pen"] + sums["end"] + sums["kl_nats"]) / n,
            "events": n,
            "drawings": b,
        }

    def batch_scores(
        self, x: Tensor, lengths: Tensor, sample: bool, generator: torch.Generator | None
    ) -> dict[str, float]:
        """Sums over one batch of the quantities :meth:`evaluate` averages."""
        mu, logvar = self.encode(x, lengths)
        z = self.sample_z(mu, logvar, generator) if sample else mu
        offset, log_p, ce, mask = self.reconstruction(x, lengths, z)
        steps = torch.arange(ce.shape[1], device=ce.device)[None, :]
        at_end = steps == lengths.to(ce.device)[:, None]  # the first "end" step, if any
        log_det = 2.0 * math.log(float(self.offset_scale))  # normalised → data units
        kl = -0.5 * (1.0 + logvar - mu.square() - logvar.exp())
        zero = torch.zeros((), dtype=ce.dtype)
        return {
            "l_r": float((offset + ce).double().mean(1).sum()),
            "kl": float(kl.double().mean(1).sum()),
            "kl_nats": float(kl.double().sum()),
            "off": float(torch.where(mask, -log_p + log_det, zero).double().sum()),
            "pen": float(torch.where(mask, ce, zero).double().sum()),
            "end": float(torch.where(at_end, ce, zero).double().sum()),
        }

    # ------------------------------------------------------------------ generation
    def decode(
        self,
        z: Tensor,
        steps: int | None = None,
        temperature: float = 1.0,
        sigma_temperature: float | None = None,
        pen_temperature: float | None = None,
        generator: Any = None,
    ) -> tuple[Tensor, Tensor]:
        r"""Draw one drawing per latent vector ``z`` ``(B, z_dim)`` (or ``(z_dim,)``).

        ``temperature`` :math:`\tau` divides the mixture logits; by default, as sketch-rnn's
        single temperature does, the pen logits are divided by :math:`\tau` too and the
        covariances multiplied by :math:`\tau^2` (``sigma_temperature`` and ``pen_temperature``
        override them; mdnkit's convention).  At most ``steps`` points (default
        :math:`N_{\max}`); a drawing ends at its first "end" state.

        Returns stroke-3 ``(x, lengths)`` in data units: ``x`` ``(B, steps, 3)`` (zeros after
        each end), ``lengths`` ``(B,)`` (0 for a drawing that ends at once).
        """
        z = torch.as_tensor(z, dtype=self.offset_scale.dtype)
        z = z.unsqueeze(0) if z.dim() == 1 else z
        if z.dim() != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"expected z of shape (B, {self.z_dim}), found {tuple(z.shape)}")
        steps = self.n_max if steps is None else checks.positive_int("steps", steps)
        tau = checks.number("temperature", temperature, low=0.0)
        sigma_t = tau**2 if sigma_temperature is None else sigma_temperature
        pen_t = tau if pen_temperature is None else pen_temperature
        s0 = torch.zeros(1, 3)  # sketch-rnn's S_0, read after mdnkit's start token
        events = self.decoder.generate(
            steps,
            prime=s0,
            temperature=tau,
            sigma_temperature=sigma_t,
            pen_temperature=pen_t,
            generator=generator,
            batch=z.shape[0],
            context=z.detach().cpu(),
        )
        events = events.to(self.offset_scale.device)
        events = torch.cat([events[..., :2] * self.offset_scale, events[..., 2:]], -1)
        return events_to_strokes(events)

    def generate(
        self,
        z: Tensor | None = None,
        steps: int | None = None,
        temperature: float = 1.0,
        batch: int = 1,
        generator: Any = None,
        **temperatures: float,
    ) -> tuple[Tensor, Tensor]:
        """New drawings: :meth:`decode` of ``z``, or of ``batch`` draws from the prior
        :math:`\\mathcal{N}(0, I)` when ``z`` is None (seeded by ``generator``)."""
        if z is None:
            batch = checks.positive_int("batch", batch)
            g = checks.as_generator(generator)
            z = torch.randn(batch, self.z_dim, generator=g)
        return self.decode(z, steps, temperature, generator=generator, **temperatures)

    @torch.no_grad()
    def reconstruct(
        self,
        x: ArrayLike,
        lengths: ArrayLike | None = None,
        temperature: float = 1.0,
        sample_z: bool = False,
        generator: Any = None,
        steps: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        r"""Encode the drawings and decode them again: :meth:`decode` of :math:`\mu(x)` (or of
        a draw from :math:`q(z \mid x)` with ``sample_z``).  Returns stroke-3 ``(x, lengths)``."""
        was = self.training
        self.eval()
        mu, logvar = self.encode(x, lengths)
        g = checks.as_generator(generator)
        z = self.sample_z(mu, logvar, g) if sample_z else mu
        out = self.decode(z, steps, temperature, generator=generator)
        self.train(was)
        return out

    def interpolate(self, a: Tensor, b: Tensor, steps: int) -> Tensor:
        """``steps`` latent vectors from ``a`` to ``b`` by spherical interpolation
        (:func:`slerp`, as sketch-rnn's notebook does); decode them with :meth:`decode`."""
        return slerp(a.detach().cpu(), b.detach().cpu(), steps).to(self.offset_scale.device)


def drawings_list(x: Tensor, lengths: Tensor) -> list[np.ndarray]:
    """Stroke-3 ``(x, lengths)`` → a list of ``(L_i, 3)`` NumPy arrays (the inverse of
    :func:`~mdnkit.sequence.pad_sequences`).

    Example:
        >>> [d.shape for d in drawings_list(*pad_sequences([np.ones((2, 3)), np.ones((1, 3))]))]
        [(2, 3), (1, 3)]
    """
    return [x[i, : int(n)].detach().cpu().numpy() for i, n in enumerate(lengths)]

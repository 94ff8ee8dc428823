r"""Deep ensembles of MDNs trained together: :class:`MDNEnsemble`.

An ensemble of M mixture density networks of one architecture, each started from its own random
weights (Lakshminarayanan et al. 2017, *Simple and Scalable Predictive Uncertainty Estimation
using Deep Ensembles*), predicts the equal-weight mixture of its members' mixtures,

.. math::

    p(y \mid x) = \frac1M \sum_{m=1}^{M} \sum_{k=1}^{K} \pi_{mk}(x)\,
                  \mathcal{N}\big(y \mid \mu_{mk}(x), \Sigma_{mk}(x)\big),

itself a Gaussian mixture of M·K components whose logits are the members' log-weights plus
:math:`\log(1/M)`.  The members are one *batched* network: every layer's weights are stacked
``(M, out, in)`` and a layer is one batched matrix product for all members (a block-diagonal
network), so M members train in one pass per batch rather than one after another.  Each member
minimises its own NLL (the members share nothing but the batches they see); the training loss
is the members' mean NLL.

:func:`mdnkit.fit` trains it like an :class:`~mdnkit.MDN`: ``prepare`` standardises the data
and spreads every member's initial components, and ``fast_step`` offers the autograd-free step
of :mod:`mdnkit.fast` (the same kernels, run over the M·N columns of all members).  In
evaluation mode :meth:`MDNEnsemble.loss` is the NLL of the ensemble's mixture, so ``fit``'s
validation NLL, early stopping and learning-rate schedule watch what the ensemble predicts.

:class:`MemberRows` trains the members on rows of their own instead (batches with a member
axis): each member holds out its own validation block and sees the data in its own order, so
the ensemble as a whole learns from every row and its members differ by their data as well as
by their initial weights.  :class:`~mdnkit.MDNRegressor` trains its ensembles this way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from . import checks
from .fast import ACTIVATIONS as FAST_ACTIVATIONS
from .fast import FlatDiagonalNLL, FlatParameters, nll_component_major
from .kernels import LOG_2PI
from .layout import DEFAULT_MIN_SCALE, HeadLayout
from .mixture import GaussianMixture
from .models import MDN
from .options import Activation, CovarianceType, ScaleTransform

__all__ = ["MDNEnsemble", "MemberRows", "EnsembleFastStep", "combine"]


class MDNEnsemble(nn.Module):
    r"""M MDNs of one architecture as one batched network; predicts their equal-weight mixture.

    Every member is an :class:`~mdnkit.MDN` with the given settings (its own random initial
    weights, drawn from torch's RNG); the ensemble keeps their layers stacked: ``weights[l]``
    ``(M, out, in)`` and ``biases[l]`` ``(M, out)``, and one standardisation of the inputs and
    targets (buffers ``x_mean``, ``x_std``, ``y_mean``, ``y_std``, set by :meth:`prepare`).

    .. math::

        p(y\mid x) = \frac1M\sum_m p_m(y\mid x), \qquad
        \log p(y\mid x) = \operatorname{logsumexp}_m \log p_m(y\mid x) - \log M .

    Args:
        in_features: the number of inputs (as :class:`~mdnkit.MDN`).
        out_features: the target's dimension D.
        hidden, activation, num_components, covariance: every member's network (see
            :class:`~mdnkit.MDN`), as are ``scale_transform``, ``min_scale`` and ``dropout``.
        n_members: M, the number of members.

    Example:
        >>> import torch
        >>> from mdnkit import fit
        >>> y = torch.empty(400, 1).uniform_(-10.5, 10.5)
        >>> x = 7 * torch.sin(0.75 * y) + 0.5 * y + torch.randn(400, 1)
        >>> ens = MDNEnsemble(1, 1, n_members=4, hidden=(16,), num_components=5)
        >>> history = fit(ens, x, y, epochs=3, seed=0, progress=False)
        >>> mixture = ens(x[:3])           # one GaussianMixture of 4 x 5 components
        >>> mixture.batch_shape, mixture.num_components
        (torch.Size([3]), 20)
    """

    x_mean: Tensor
    x_std: Tensor
    y_mean: Tensor
    y_std: Tensor

    def __init__(
        self,
        in_features: int,
        out_features: int,
        n_members: int = 5,
        hidden: Sequence[int] | int = (64, 64),
        activation: Activation = "tanh",
        num_components: int = 5,
        covariance: CovarianceType = "diagonal",
        scale_transform: ScaleTransform = "softplus",
        min_scale: float = DEFAULT_MIN_SCALE,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.n_members = checks.positive_int("n_members", n_members)
        members = [
            MDN(
                in_features,
                out_features,
                hidden=hidden,
                activation=activation,
                num_components=num_components,
                covariance=covariance,
                scale_transform=scale_transform,
                min_scale=min_scale,
                dropout=dropout,
            )
            for _ in range(self.n_members)
        ]
        first = members[0]
        self.in_features, self.out_features = first.in_features, first.out_features
        self.hidden, self.activation = first.hidden, first.activation
        self.dropout = first.dropout
        #: every member's head layout (the flat parameters of :mod:`mdnkit.layout`)
        self.layout: HeadLayout = first.head.layout
        linears = [_linears(m) for m in members]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.stack([ls[i].weight.detach() for ls in linears]))
            for i in range(len(linears[0]))
        )
        self.biases = nn.ParameterList(
            nn.Parameter(torch.stack([ls[i].bias.detach() for ls in linears]))
            for i in range(len(linears[0]))
        )
        acts = [m for m in first.body if not isinstance(m, (nn.Linear, nn.Dropout))]
        self.act = acts[0] if acts else nn.Identity()
        for name in ("x_mean", "x_std", "y_mean", "y_std"):
            self.register_buffer(name, getattr(first, name).clone())

    # ------------------------------------------------------------------ configuration
    @property
    def num_components(self) -> int:
        """K, the number of components of each member (the ensemble's mixture has M·K)."""
        return self.layout.num_components

    @property
    def covariance(self) -> str:
        """The covariance type of the components."""
        return self.layout.covariance

    def config(self) -> dict[str, Any]:
        """The constructor's arguments as a JSON-able dict: ``MDNEnsemble(**e.config())``."""
        lay = self.layout
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "n_members": self.n_members,
            "hidden": list(self.hidden),
            "activation": self.activation,
            "num_components": lay.num_components,
            "covariance": lay.covariance,
            "scale_transform": lay.scale_transform,
            "min_scale": lay.min_scale,
            "dropout": self.dropout,
        }

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"n_members={self.n_members}, hidden={self.hidden}, "
            f"num_components={self.num_components}"
        )

    # ------------------------------------------------------------------ members
    def member(self, m: int) -> MDN:
        """Member ``m`` as a standalone :class:`~mdnkit.MDN` (a copy of its weights and of the
        ensemble's standardisation)."""
        if isinstance(m, bool) or not isinstance(m, (int, np.integer)):
            raise TypeError(f"m must be an integer, found {type(m).__name__}")
        if not -self.n_members <= m < self.n_members:
            raise ValueError(f"m must be in [0, {self.n_members}), found {m}")
        lay = self.layout
        net = MDN(
            self.in_features,
            self.out_features,
            hidden=self.hidden,
            activation=self.activation,  # type: ignore[arg-type]
            num_components=lay.num_components,
            covariance=lay.covariance,
            scale_transform=lay.scale_transform,
            min_scale=lay.min_scale,
            dropout=self.dropout,
        ).to(device=self.x_mean.device, dtype=self.weights[0].dtype)
        with torch.no_grad():
            for lin, w, b in zip(_linears(net), self.weights, self.biases):
                lin.weight.copy_(w[m])
                lin.bias.copy_(b[m])
            for name in ("x_mean", "x_std", "y_mean", "y_std"):
                getattr(net, name).copy_(getattr(self, name))
        return net

    def set_member(self, m: int, net: MDN) -> None:
        """Copy the weights of ``net`` (an :class:`~mdnkit.MDN` of the members' architecture)
        into member ``m``."""
        with torch.no_grad():
            for lin, w, b in zip(_linears(net), self.weights, self.biases):
                w[m].copy_(lin.weight)
                b[m].copy_(lin.bias)

    @torch.no_grad()
    def prepare(self, x: Tensor | np.ndarray, y: Tensor | np.ndarray) -> MDNEnsemble:
        """Set the standardisation from the training data and spread every member's initial
        components over the targets (:meth:`MDN.prepare` on each member); :func:`mdnkit.fit`
        calls this once."""
        for m in range(self.n_members):
            net = self.member(m).prepare(x, y)
            self.set_member(m, net)
        for name in ("x_mean", "x_std", "y_mean", "y_std"):
            getattr(self, name).copy_(getattr(net, name))
        return self

    # ------------------------------------------------------------------ forward
    def standardized_params(self, x: Tensor) -> Tensor:
        """Every member's flat head parameters of the standardised target for raw inputs ``x``
        ``(..., in)``: ``(M, ..., P)``."""
        x = _last_dim(x, self.in_features, self.x_mean)
        lead = x.shape[:-1]
        h = ((x - self.x_mean) / self.x_std).reshape(1, -1, self.in_features)
        h = self._network(h.expand(self.n_members, -1, -1))
        return h.reshape(self.n_members, *lead, h.shape[-1])

    def _network(self, h: Tensor) -> Tensor:
        """Every member's network on its standardised inputs ``h`` ``(M, N, in)``: ``(M, N,
        P)``."""
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            if i < last:
                h = self.act(h)
                if self.dropout > 0:
                    h = nn.functional.dropout(h, self.dropout, self.training)
        return h

    def member_mixtures(self, x: Tensor) -> GaussianMixture:
        """The members' mixtures over the standardised target, batch shape ``(M, ...)``."""
        logits, loc, scale, tril = self.layout.decode(self.standardized_params(x))
        return GaussianMixture(logits, loc, scale, tril, validate_args=False)

    def standardized_mixture(self, x: Tensor) -> GaussianMixture:
        """The ensemble's mixture (M·K components) over the standardised target."""
        logits, loc, scale, tril = self.layout.decode(self.standardized_params(x))
        return combine(logits, loc, scale, tril)

    def forward(self, x: Tensor) -> GaussianMixture:
        """The predictive mixture :math:`p(y\\mid x)` in the target's units (M·K components),
        batch shape ``x.shape[:-1]``."""
        m = self.standardized_mixture(x)
        ys, ym = self.y_std.to(m.loc.dtype), self.y_mean.to(m.loc.dtype)
        return m.affine(ym, ys[:1] if m.covariance_type == "spherical" else ys)

    def member_nll(self, x: Tensor, y: Tensor) -> Tensor:
        """Each member's mean NLL of ``y`` given ``x`` in the target's units, shape ``(M,)``."""
        x = _last_dim(x, self.in_features, self.x_mean)
        y = _target(y, x, self.out_features, self.y_mean)
        z = (y - self.y_mean) / self.y_std
        lp = self.member_mixtures(x).log_prob(z)  # (M, ...)
        return -lp.reshape(self.n_members, -1).mean(-1) + self.y_std.log().sum()

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        r"""In training mode the members' mean NLL, :math:`\frac1M\sum_m -\frac1N\sum_i\log
        p_m(y_i\mid x_i)` (what each member minimises); in evaluation mode the NLL of the
        ensemble's mixture, :math:`-\frac1N\sum_i\log p(y_i\mid x_i)` (what it predicts), both
        in the target's units."""
        if self.training:
            return self.member_nll(x, y).mean()
        x = _last_dim(x, self.in_features, self.x_mean)
        y = _target(y, x, self.out_features, self.y_mean)
        z = (y - self.y_mean) / self.y_std
        lp = self.member_mixtures(x).log_prob(z)  # (M, ...)
        lp = torch.logsumexp(lp, 0) - math.log(self.n_members)
        return -lp.mean() + self.y_std.log().sum()

    @torch.no_grad()
    def nll(self, x: Tensor, y: Tensor) -> float:
        """The ensemble's mean NLL (nats per row, target units) as a float."""
        was = self.training
        self.eval()
        try:
            return float(self.loss(x, y))
        finally:
            self.train(was)

    def member_rows_params(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Each member's flat head parameters ``(M, N, P)`` and standardised targets ``(M, N,
        D)`` for its own rows: ``x`` ``(N, M, in)`` and ``y`` ``(N, M, D)`` hold member m's rows
        in column m (see :class:`MemberRows`)."""
        x = _last_dim(x, self.in_features, self.x_mean)
        if x.dim() != 3 or x.shape[1] != self.n_members:
            raise ValueError(
                f"expected each member's rows, x of shape (N, M={self.n_members}, "
                f"{self.in_features}), found shape {tuple(x.shape)}"
            )
        y = _target(y, x, self.out_features, self.y_mean)
        h = self._network(((x - self.x_mean) / self.x_std).transpose(0, 1))  # (M, N, in)
        return h, ((y - self.y_mean) / self.y_std).transpose(0, 1)

    def member_rows_nll(self, x: Tensor, y: Tensor) -> Tensor:
        """Each member's mean NLL of its own rows (target units), shape ``(M,)`` (inputs as
        :meth:`member_rows_params`)."""
        params, z = self.member_rows_params(x, y)
        logits, loc, scale, tril = self.layout.decode(params)
        lp = GaussianMixture(logits, loc, scale, tril, validate_args=False).log_prob(z)
        return -lp.mean(-1) + self.y_std.log().sum()

    def fast_step(self, *data: Tensor) -> EnsembleFastStep | None:
        """The autograd-free training step :func:`mdnkit.fit` uses for in-memory rows
        ``(x (N, in), y)``: diagonal or spherical components, an activation the fast step
        knows, every parameter trainable, float32 or float64; else None (autograd)."""
        params = list(self.parameters())
        ok = (
            len(data) == 2
            and data[0].dim() == 2
            and self.dropout == 0.0
            and self.layout.covariance != "full"
            and (len(self.weights) == 1 or type(self.act) in FAST_ACTIVATIONS)
            and all(p.requires_grad for p in params)
            and len({(p.device, p.dtype) for p in params}) == 1
            and params[0].dtype in (torch.float32, torch.float64)
        )
        return EnsembleFastStep(self) if ok else None


class MemberRows(nn.Module):
    r"""Trains an :class:`MDNEnsemble` with every member on its own rows (with :func:`mdnkit.fit`).

    Batches carry a member axis: ``x`` ``(N, M, in)`` and ``y`` ``(N, M, D)``, column m holding
    member m's rows, so each member can train on its own subset of the data, in its own order,
    and be validated on rows it never sees (a cross-validation ensemble: Krogh & Vedelsby 1995,
    *Neural network ensembles, cross validation, and active learning*).  :meth:`loss` is the
    members' mean NLL of their own rows, :math:`\frac1M\sum_m -\frac1N\sum_i \log
    p_m(y_{im}\mid x_{im})`, in training and in evaluation mode.  It has no ``prepare``: call
    ``ensemble.prepare`` on all the rows first (``fit`` then leaves it as it is).

    Example:
        >>> from mdnkit import fit
        >>> ens = MDNEnsemble(2, 1, n_members=3, hidden=(8,), num_components=2)
        >>> x, y = torch.randn(100, 2), torch.randn(100, 1)
        >>> _ = ens.prepare(x, y)
        >>> rows = torch.stack([torch.randperm(100)[:90] for _ in range(3)], 1)   # (90, 3)
        >>> h = fit(MemberRows(ens), x[rows], y[rows], epochs=2, seed=0, progress=False)
        >>> len(h.train_nll)
        2
    """

    def __init__(self, ensemble: MDNEnsemble) -> None:
        super().__init__()
        if not isinstance(ensemble, MDNEnsemble):
            raise TypeError(f"ensemble must be an MDNEnsemble, found {type(ensemble).__name__}")
        self.ensemble = ensemble
        self.n_members = ensemble.n_members

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        """The members' mean NLL of their own rows (target units); for diagonal and spherical
        components by the fused kernel :class:`~mdnkit.fast.FlatDiagonalNLL` (every member has
        as many rows, so the mean over all the M·N rows is the mean of the members' means)."""
        ens = self.ensemble
        if ens.layout.covariance == "full":
            return ens.member_rows_nll(x, y).mean()
        params, z = ens.member_rows_params(x, y)
        return FlatDiagonalNLL.apply(params, z, ens) + ens.y_std.log().sum()

    def fast_step(self, *data: Tensor) -> EnsembleFastStep | None:
        """The ensemble's autograd-free step over each member's rows (see
        :meth:`MDNEnsemble.fast_step`), or None."""
        if len(data) != 2 or data[0].dim() != 3:
            return None
        if self.ensemble.fast_step(data[0][:, 0], data[1][:, 0]) is None:
            return None
        return EnsembleFastStep(self.ensemble, member_rows=True)


def combine(
    logits: Tensor, loc: Tensor, scale: Tensor | None, scale_tril: Tensor | None = None
) -> GaussianMixture:
    r"""The equal-weight mixture of M mixtures given with a leading member axis: ``logits``
    ``(M, ..., K)``, ``loc`` ``(M, ..., K, D)``, ``scale`` or ``scale_tril`` likewise, to one
    :class:`~mdnkit.GaussianMixture` of M·K components (member-major), whose logits are each
    member's log-weights plus :math:`\log(1/M)`.

    Example:
        >>> m = combine(torch.zeros(2, 3, 1), torch.randn(2, 3, 1, 1), torch.ones(2, 3, 1, 1))
        >>> m.batch_shape, m.num_components, float(m.weights.sum(-1)[0])
        (torch.Size([3]), 2, 1.0)
    """
    n = logits.shape[0]
    k = logits.shape[-1]
    logw = torch.log_softmax(logits, -1) - math.log(n)
    lead = logits.shape[1:-1]
    flat_logits = logw.movedim(0, -2).reshape(*lead, n * k)
    flat_loc = loc.movedim(0, -3).reshape(*lead, n * k, loc.shape[-1])
    if scale_tril is not None:
        d = scale_tril.shape[-1]
        tril = scale_tril.movedim(0, -4).reshape(*lead, n * k, d, d)
        return GaussianMixture(flat_logits, flat_loc, scale_tril=tril, validate_args=False)
    assert scale is not None
    flat_scale = scale.movedim(0, -3).reshape(*lead, n * k, scale.shape[-1])
    return GaussianMixture(flat_logits, flat_loc, flat_scale, validate_args=False)


class EnsembleFastStep(FlatParameters):
    r"""The :class:`~mdnkit.fast.FastStep` of an :class:`MDNEnsemble`: the MLP step of
    :class:`~mdnkit.fast.MLPFastStep` with every matrix product batched over the members.

    The network runs component-major per member, :math:`H_m^\top = f(W_m H_m^\top + b_m)`
    (``torch.baddbmm`` over m); the head's output ``(M, P, N)`` is laid out as ``(P, M·N)``, so
    the mixture NLL and its gradient are one call of
    :func:`~mdnkit.fast.nll_component_major` over the M·N columns.  Inside :meth:`attached` the
    ensemble's parameters are views of :attr:`flat` (one buffer, one gradient).
    """

    def __init__(self, model: MDNEnsemble, member_rows: bool = False) -> None:
        self.model = model
        #: batches hold each member's own rows, ``x`` ``(N, M, in)`` (see :class:`MemberRows`)
        self.member_rows = member_rows
        params: list[nn.Parameter] = []
        for w, b in zip(model.weights, model.biases):
            params += [w, b]
        super().__init__(params)
        self.layers: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
        for i in range(0, len(params), 2):
            w, b = self.values[i], self.values[i + 1]
            self.layers.append((w, b.unsqueeze(2), self.grads[i], self.grads[i + 1]))
        act = model.act
        self.act, self.in_place, self.act_backward = (
            FAST_ACTIVATIONS[type(act)](act) if len(self.layers) > 1 else (None, True, None)
        )
        if type(act) is nn.Tanh:
            self.act = _tanh_  # same values to float rounding, several times faster on the CPU
        self.offset = 0.5 * model.out_features * LOG_2PI + float(model.y_std.log().sum())

    def prepare(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Inputs ``(N, in)`` and targets ``(N, D)`` (with ``member_rows``: ``(N, M, in)`` and
        ``(N, M, D)``) in the network's standardised units."""
        m = self.model
        x = _last_dim(x, m.in_features, m.x_mean)
        y = _target(y, x, m.out_features, m.y_mean)
        want = 3 if self.member_rows else 2
        if x.dim() != want or (self.member_rows and x.shape[1] != m.n_members):
            shape = "(N, M, in)" if self.member_rows else "(N, in)"
            raise ValueError(
                f"the fast training step needs rows of x {shape}, found shape {tuple(x.shape)}"
            )
        return (x - m.x_mean) / m.x_std, (y - m.y_mean) / m.y_std

    def __call__(self, x: Tensor, z: Tensor) -> Tensor:
        return self.step(x, z)

    @torch.no_grad()
    def step(self, x: Tensor, z: Tensor) -> Tensor:
        """The members' mean NLL (data units, 0-dim) of one batch of standardised inputs ``x``
        ``(N, in)`` and targets ``z`` ``(N, D)``; its gradient is written into ``flat.grad``."""
        mm, n = self.model.n_members, x.shape[0]
        # shared rows (N, in): the first layer is one matrix product for every member; each
        # member's own rows (N, M, in): (M, in, N)
        h = x.permute(1, 2, 0) if self.member_rows else x.t()
        hs: list[Tensor] = [h]
        pres: list[Tensor | None] = [None]
        last = len(self.layers) - 1
        for i, (w, b, _, _) in enumerate(self.layers):
            if i == 0 and not self.member_rows:
                pre = torch.addmm(b.flatten(0, 1), w.flatten(0, 1), h).view(mm, -1, n)
            else:
                pre = torch.baddbmm(b, w, h)
            if i < last:
                h = self.act(pre)
                hs.append(h)
                pres.append(None if self.in_place else pre)
            else:
                h = pre
        p = h.shape[1]
        cm = h.transpose(0, 1).reshape(p, mm * n)  # (P, M·N): member-major columns
        zt = z.permute(2, 1, 0).reshape(-1, mm * n) if self.member_rows else z.t().repeat(1, mm)
        g = torch.empty_like(cm)
        total = nll_component_major(cm, zt, self.model, g, 1.0 / (mm * n))  # type: ignore[arg-type]
        g = g.view(p, mm, n).transpose(0, 1)  # (M, P, N)
        for i in range(last, -1, -1):
            w, _, gw, gb = self.layers[i]
            if i == 0 and not self.member_rows:
                torch.mm(g.reshape(-1, n), x, out=gw.view(-1, x.shape[1]))
            elif i == 0:
                torch.bmm(g, x.transpose(0, 1), out=gw)
            else:
                torch.bmm(g, hs[i].transpose(1, 2), out=gw)
            torch.sum(g, 2, out=gb)
            if i > 0:
                g = self.act_backward(torch.bmm(w.transpose(1, 2), g), hs[i], pres[i])
        return total.mul_(-1.0 / (mm * n)).add_(self.offset)


def _tanh_(z: Tensor) -> Tensor:
    """:math:`\\tanh z = 2\\,\\sigma(2z) - 1`, in place."""
    return torch.sigmoid_(z.mul_(2.0)).mul_(2.0).sub_(1.0)


def _linears(net: MDN) -> list[nn.Linear]:
    return [m for m in net.body if isinstance(m, nn.Linear)] + [net.head.proj]


def _last_dim(x: Any, width: int, like: Tensor) -> Tensor:
    if not isinstance(x, Tensor):
        x = torch.as_tensor(np.asarray(x, dtype=np.float64))
    if x.dim() < 1 or x.shape[-1] != width:
        raise ValueError(
            f"expected inputs of shape (..., in_features={width}), found shape {tuple(x.shape)}"
        )
    return x.to(device=like.device, dtype=like.dtype)


def _target(y: Any, x: Tensor, width: int, like: Tensor) -> Tensor:
    if not isinstance(y, Tensor):
        y = torch.as_tensor(np.asarray(y, dtype=np.float64))
    if width == 1 and y.dim() == x.dim() - 1 and y.shape == x.shape[:-1]:
        y = y.unsqueeze(-1)
    if y.shape[:-1] != x.shape[:-1] or y.shape[-1] != width:
        raise ValueError(
            f"expected targets of shape {(*x.shape[:-1], width)}, found {tuple(y.shape)}"
        )
    return y.to(device=like.device, dtype=like.dtype)

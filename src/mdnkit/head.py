"""The MDN head: a linear layer from features to the parameters of a Gaussian mixture.

``MDNHead(in_features, out_features, num_components)`` can be put at the end of any network
(MLP, RNN, transformer): its ``forward(h)`` returns a :class:`~mdnkit.GaussianMixture` with
``batch_shape = h.shape[:-1]``.

Flat parameter layout (the last dimension of :meth:`MDNHead.params`), with K components and D
output dimensions, the same order as the classic Keras MDN layer:

=================  =====================  ==============================================
block              size                   meaning
=================  =====================  ==============================================
means              K·D                    component-major: μ_1,1 … μ_1,D, μ_2,1 …
scales             K·D (diagonal)         raw σ, through the scale transform
                   K (spherical)          one raw σ per component
                   K·D(D+1)/2 (full)      per component: D raw diagonal entries of L
                                          (through the transform), then the D(D−1)/2
                                          strictly-lower entries row by row (unconstrained)
logits             K                      mixture logits
=================  =====================  ==============================================
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .mixture import CovarianceType, GaussianMixture

__all__ = ["MDNHead", "ScaleTransform", "kmeans"]

ScaleTransform = Literal["softplus", "exp", "elu"]
_TRANSFORMS = ("softplus", "exp", "elu")
_COVARIANCES = ("diagonal", "spherical", "full")


def _scale_forward(raw: Tensor, kind: str, floor: float) -> Tensor:
    if kind == "softplus":
        return F.softplus(raw) + floor
    if kind == "exp":
        return torch.exp(raw.clamp(max=80.0)) + floor
    return F.elu(raw) + 1.0 + floor  # the classic ELU + 1 + epsilon


def _scale_inverse(value: Tensor, kind: str, floor: float) -> Tensor:
    v = (value - floor).clamp_min(1e-6)
    if kind == "softplus":
        return v + torch.log(-torch.expm1(-v))
    if kind == "exp":
        return v.log()
    return torch.where(v > 1, v - 1, v.log())


def kmeans(
    y: Tensor, k: int, iters: int = 25, generator: torch.Generator | int | None = 0
) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means with k-means++ seeding on ``y`` ``(N, D)``: returns (centres ``(k, D)``, labels ``(N,)``).

    Example:
        >>> y = torch.cat([torch.randn(50, 2) - 5, torch.randn(50, 2) + 5])
        >>> centres, labels = kmeans(y, 2)
        >>> centres.shape
        torch.Size([2, 2])
    """
    if isinstance(generator, int):
        generator = torch.Generator().manual_seed(generator)
    y = y.detach().to(torch.float64).cpu()
    n = y.shape[0]
    if n < k:
        raise ValueError(f"k-means needs at least k={k} points, found {n}")
    first = torch.randint(n, (1,), generator=generator)
    centres = [y[first[0]]]
    d2 = (y - centres[0]).square().sum(-1)
    for _ in range(1, k):
        total = d2.sum()
        if total <= 0:
            nxt = torch.randint(n, (1,), generator=generator)[0]
        else:
            nxt = torch.multinomial(d2 / total, 1, generator=generator)[0]
        centres.append(y[nxt])
        d2 = torch.minimum(d2, (y - y[nxt]).square().sum(-1))
    c = torch.stack(centres)
    labels = torch.zeros(n, dtype=torch.long)
    for _ in range(iters):
        labels = torch.cdist(y, c).argmin(-1)
        counts = torch.bincount(labels, minlength=k).to(y.dtype)
        sums = torch.zeros_like(c).index_add_(0, labels, y)
        new = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], c)
        if torch.allclose(new, c):
            break
        c = new
    return c, labels


class MDNHead(nn.Module):
    r"""Features → Gaussian-mixture parameters → :class:`~mdnkit.GaussianMixture`.

    One linear layer produces, for every input row, the K·D means, the scales and the K logits
    (layout in the module docstring).  Scales go through a positive transform with a floor:

    * ``"softplus"``: :math:`\sigma = \log(1 + e^{a}) + \sigma_{min}` (default);
    * ``"exp"``: :math:`\sigma = e^{a} + \sigma_{min}`;
    * ``"elu"``: :math:`\sigma = \operatorname{ELU}(a) + 1 + \sigma_{min}` (the classic Keras layer's).

    Args:
        in_features: size of the incoming features.
        out_features: D, the dimension of the target.
        num_components: K.
        covariance: ``"diagonal"``, ``"spherical"`` or ``"full"``.
        scale_transform: one of the transforms above.
        min_scale: :math:`\sigma_{min} > 0`, the floor that stops a component collapsing onto a point.

    Example:
        >>> head = MDNHead(16, 2, num_components=5)
        >>> mixture = head(torch.randn(8, 16))
        >>> mixture.batch_shape, mixture.event_shape
        (torch.Size([8]), torch.Size([2]))
        >>> loss = -mixture.log_prob(torch.randn(8, 2)).mean()
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        num_components: int,
        covariance: CovarianceType = "diagonal",
        scale_transform: ScaleTransform = "softplus",
        min_scale: float = 1e-4,
    ) -> None:
        super().__init__()
        for name, v in (
            ("in_features", in_features),
            ("out_features", out_features),
            ("num_components", num_components),
        ):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, found {v!r}")
        if covariance not in _COVARIANCES:
            raise ValueError(f"covariance must be one of {_COVARIANCES}, found {covariance!r}")
        if scale_transform not in _TRANSFORMS:
            raise ValueError(
                f"scale_transform must be one of {_TRANSFORMS}, found {scale_transform!r}"
            )
        if not (
            isinstance(min_scale, (int, float)) and min_scale >= 0 and math.isfinite(min_scale)
        ):
            raise ValueError(f"min_scale must be a finite number >= 0, found {min_scale!r}")
        self.in_features = int(in_features)
        self.out_features = d = int(out_features)
        self.num_components = k = int(num_components)
        self.covariance = covariance
        self.scale_transform = scale_transform
        self.min_scale = float(min_scale)
        if covariance == "diagonal":
            self._n_scale = k * d
        elif covariance == "spherical":
            self._n_scale = k
        else:
            self._n_scale = k * d * (d + 1) // 2
        self.proj = nn.Linear(self.in_features, self.num_params)
        if covariance == "full":
            rows, cols = torch.tril_indices(d, d, offset=-1)
            self.register_buffer("_tril_rows", rows, persistent=False)
            self.register_buffer("_tril_cols", cols, persistent=False)

    @property
    def num_params(self) -> int:
        """Length of the flat parameter vector: K·D + (scale block) + K."""
        return self.num_components * self.out_features + self._n_scale + self.num_components

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"num_components={self.num_components}, covariance='{self.covariance}', "
            f"scale_transform='{self.scale_transform}', min_scale={self.min_scale}"
        )

    def params(self, h: Tensor) -> Tensor:
        """The flat parameter vector for features ``h`` ``(..., in_features)``: ``(..., num_params)``."""
        if h.shape[-1] != self.in_features:
            raise ValueError(
                f"expected features with last dimension in_features={self.in_features}, "
                f"found shape {tuple(h.shape)}"
            )
        return self.proj(h)

    def mixture(self, params: Tensor) -> GaussianMixture:
        """Build the :class:`GaussianMixture` from flat parameters ``(..., num_params)``."""
        if params.shape[-1] != self.num_params:
            raise ValueError(
                f"expected {self.num_params} mixture parameters in the last dimension, "
                f"found shape {tuple(params.shape)}"
            )
        k, d = self.num_components, self.out_features
        lead = params.shape[:-1]
        loc = params[..., : k * d].reshape(*lead, k, d)
        raw = params[..., k * d : k * d + self._n_scale]
        logits = params[..., k * d + self._n_scale :]
        if self.covariance == "diagonal":
            scale = _scale_forward(raw, self.scale_transform, self.min_scale).reshape(*lead, k, d)
            return GaussianMixture(logits, loc, scale, validate_args=False)
        if self.covariance == "spherical":
            scale = _scale_forward(raw, self.scale_transform, self.min_scale).unsqueeze(-1)
            return GaussianMixture(logits, loc, scale, validate_args=False)
        raw = raw.reshape(*lead, k, d * (d + 1) // 2)
        diag = _scale_forward(raw[..., :d], self.scale_transform, self.min_scale)
        tril = torch.diag_embed(diag)
        if d > 1:
            off = torch.zeros_like(tril)
            off[..., self._tril_rows, self._tril_cols] = raw[..., d:]
            tril = tril + off
        return GaussianMixture(logits, loc, scale_tril=tril, validate_args=False)

    def forward(self, h: Tensor) -> GaussianMixture:
        return self.mixture(self.params(h))

    @torch.no_grad()
    def init_from_data(
        self,
        y: Tensor | np.ndarray,
        method: Literal["auto", "kmeans", "quantile"] = "auto",
        generator: torch.Generator | int | None = 0,
        weight_scale: float = 0.1,
    ) -> MDNHead:
        r"""Spread the initial component means over the targets ``y`` ``(N, D)``.

        The means' biases are set to K centres of the data (quantiles at :math:`(k+\tfrac12)/K`
        for 1-D targets, k-means otherwise), their weights shrunk by ``weight_scale``, the
        scales' biases set so every component starts with about the spread of its cluster,
        and the logits' biases to the log cluster fractions.  Without this, components start
        near one point and can collapse onto one mode.  ``y`` is in the head's output units.
        """
        y = torch.as_tensor(np.asarray(y) if not isinstance(y, Tensor) else y).to(torch.float64)
        if y.dim() == 1:
            y = y.unsqueeze(-1)
        k, d = self.num_components, self.out_features
        if y.dim() != 2 or y.shape[1] != d:
            raise ValueError(f"expected targets of shape (N, {d}), found {tuple(y.shape)}")
        if not torch.isfinite(y).all():
            raise ValueError("targets contain NaN or inf")
        if method == "auto":
            method = "quantile" if d == 1 else "kmeans"
        if method == "quantile":
            if d != 1:
                raise ValueError(f"quantile initialisation needs 1-D targets, found D={d}")
            q = (torch.arange(k, dtype=torch.float64) + 0.5) / k
            centres = torch.quantile(y[:, 0], q).unsqueeze(-1)
            labels = torch.cdist(y, centres).argmin(-1)
        elif method == "kmeans":
            if y.shape[0] < k:
                raise ValueError(
                    f"need at least K={k} target rows to initialise, found {y.shape[0]}"
                )
            centres, labels = kmeans(y, k, generator=generator)
        else:
            raise ValueError(f"method must be 'auto', 'kmeans' or 'quantile', found {method!r}")
        counts = torch.bincount(labels, minlength=k).to(torch.float64)
        spread = torch.stack(
            [
                (y[labels == j] - centres[j]).square().mean(0).sqrt() if counts[j] > 1 else y.std(0)
                for j in range(k)
            ]
        )  # (K, D)
        floor = (y.std(0) / (4 * k)).clamp_min(10 * self.min_scale + 1e-6)
        spread = torch.maximum(spread, floor)
        w, b = self.proj.weight, self.proj.bias
        dt = w.dtype
        n_loc = k * d
        w[:n_loc] *= weight_scale
        b[:n_loc] = centres.reshape(-1).to(dt)
        s0 = slice(n_loc, n_loc + self._n_scale)
        w[s0] *= weight_scale
        if self.covariance == "diagonal":
            b[s0] = _scale_inverse(spread.reshape(-1), self.scale_transform, self.min_scale).to(dt)
        elif self.covariance == "spherical":
            b[s0] = _scale_inverse(spread.mean(-1), self.scale_transform, self.min_scale).to(dt)
        else:
            blk = torch.zeros(k, d * (d + 1) // 2, dtype=torch.float64)
            blk[:, :d] = _scale_inverse(spread, self.scale_transform, self.min_scale)
            b[s0] = blk.reshape(-1).to(dt)
        lg = slice(n_loc + self._n_scale, None)
        w[lg] *= weight_scale
        b[lg] = torch.log((counts + 1) / (counts.sum() + k)).to(dt)
        return self

"""The MDN head: a linear layer from features to the parameters of a Gaussian mixture.

``MDNHead(in_features, out_features, num_components)`` can be put at the end of any network
(MLP, RNN, transformer): its ``forward(h)`` returns a :class:`~mdnkit.GaussianMixture` with
``batch_shape = h.shape[:-1]`` (a :class:`~mdnkit.PerDimensionMixture` with
``mixture="per_dimension"``).  The flat parameter layout (the last dimension of
:meth:`MDNHead.params`) and the scale transforms are described in :mod:`mdnkit.layout`; the head
keeps its :class:`~mdnkit.layout.HeadLayout` as :attr:`MDNHead.layout`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from . import checks
from .layout import DEFAULT_MIN_SCALE, HeadLayout
from .mixture import GaussianMixture
from .options import CovarianceType, InitMethod, MixtureType, ScaleTransform
from .per_dimension import PerDimensionMixture

__all__ = ["MDNHead", "ScaleTransform", "kmeans"]


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


def _quantile_levels(k: int) -> Tensor:
    """The K levels :math:`(k + \tfrac12)/K` at which components start."""
    return (torch.arange(k, dtype=torch.float64) + 0.5) / k


class MDNHead(nn.Module):
    r"""Features → Gaussian-mixture parameters → :class:`~mdnkit.GaussianMixture`.

    One linear layer produces, for every input row, the K·D means, the scales and the K logits
    in the order of :mod:`mdnkit.layout`.  Scales go through a positive transform with a floor,
    :math:`\sigma = t(a) + \sigma_{min}`, with :math:`t` softplus (default), exp or ELU + 1
    (the classic Keras layer's); formulas in :mod:`mdnkit.layout`.

    Args:
        in_features: size of the incoming features.
        out_features: D, the dimension of the target.
        num_components: K.
        covariance: ``"diagonal"``, ``"spherical"`` or ``"full"``.
        scale_transform: ``"softplus"``, ``"exp"`` or ``"elu"``.
        min_scale: :math:`\sigma_{min} > 0`, the floor that stops a component collapsing onto a point.
        mixture: ``"joint"`` (one K-component mixture over the D values: a
            :class:`~mdnkit.GaussianMixture`) or ``"per_dimension"`` (each value its own
            K-component 1-D mixture, 3·K·D parameters: a :class:`~mdnkit.PerDimensionMixture`,
            diagonal only), :math:`p(y) = \prod_d \sum_k \pi_{dk}\,\mathcal{N}(y_d \mid
            \mu_{dk}, \sigma_{dk}^2)`.

    Example:
        >>> head = MDNHead(16, 2, num_components=5)
        >>> mixture = head(torch.randn(8, 16))
        >>> mixture.batch_shape, mixture.event_shape
        (torch.Size([8]), torch.Size([2]))
        >>> loss = -mixture.log_prob(torch.randn(8, 2)).mean()
        >>> MDNHead(16, 2, num_components=5, mixture="per_dimension")(torch.randn(8, 16)).loc.shape
        torch.Size([8, 2, 5])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        num_components: int,
        covariance: CovarianceType = "diagonal",
        scale_transform: ScaleTransform = "softplus",
        min_scale: float = DEFAULT_MIN_SCALE,
        mixture: MixtureType = "joint",
    ) -> None:
        super().__init__()
        self.in_features = checks.positive_int("in_features", in_features)
        #: where each parameter sits in the flat vector, and the scale transform (one home)
        self.layout = HeadLayout(
            num_components, out_features, covariance, scale_transform, min_scale, mixture
        )
        self.proj = nn.Linear(self.in_features, self.num_params)

    @property
    def out_features(self) -> int:
        """D, the dimension of the target."""
        return self.layout.out_features

    @property
    def num_components(self) -> int:
        """K, the number of mixture components."""
        return self.layout.num_components

    @property
    def covariance(self) -> CovarianceType:
        """The components' covariance type."""
        return self.layout.covariance

    @property
    def scale_transform(self) -> ScaleTransform:
        """The positive transform of the raw scales."""
        return self.layout.scale_transform

    @property
    def min_scale(self) -> float:
        r"""The scale floor :math:`\sigma_{min}`."""
        return self.layout.min_scale

    @property
    def mixture_type(self) -> MixtureType:
        """``"joint"`` or ``"per_dimension"``."""
        return self.layout.mixture

    @property
    def num_params(self) -> int:
        """Length of the flat parameter vector: K·D + (scale block) + K (3·K·D per dimension)."""
        return self.layout.num_params

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"num_components={self.num_components}, covariance='{self.covariance}', "
            f"scale_transform='{self.scale_transform}', min_scale={self.min_scale}"
            + (f", mixture='{self.mixture_type}'" if self.layout.per_dimension else "")
        )

    def params(self, h: Tensor) -> Tensor:
        """The flat parameter vector for features ``h`` ``(..., in_features)``: ``(..., num_params)``."""
        if h.shape[-1] != self.in_features:
            raise ValueError(
                f"expected features with last dimension in_features={self.in_features}, "
                f"found shape {tuple(h.shape)}"
            )
        return self.proj(h)

    def mixture(self, params: Tensor) -> GaussianMixture | PerDimensionMixture:
        """Build the :class:`GaussianMixture` (or :class:`PerDimensionMixture`) from flat
        parameters ``(..., num_params)``."""
        if params.shape[-1] != self.num_params:
            raise ValueError(
                f"expected {self.num_params} mixture parameters in the last dimension, "
                f"found shape {tuple(params.shape)}"
            )
        logits, loc, scale, tril = self.layout.decode(params)
        if self.layout.per_dimension:
            return PerDimensionMixture(logits, loc, scale, validate_args=False)
        return GaussianMixture(logits, loc, scale, tril, validate_args=False)

    def forward(self, h: Tensor) -> GaussianMixture | PerDimensionMixture:
        return self.mixture(self.params(h))

    @torch.no_grad()
    def init_from_data(
        self,
        y: Tensor | np.ndarray,
        method: InitMethod = "auto",
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
        if self.layout.per_dimension:
            return self._init_per_dimension(y, weight_scale)
        if method == "auto":
            method = "quantile" if d == 1 else "kmeans"
        if method == "quantile":
            if d != 1:
                raise ValueError(f"quantile initialisation needs 1-D targets, found D={d}")
            centres = torch.quantile(y[:, 0], _quantile_levels(k)).unsqueeze(-1)
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
        spread = torch.maximum(spread, self._scale_floor(y))
        w, b = self.proj.weight, self.proj.bias
        dt = w.dtype
        lay = self.layout
        inverse = lay.scale_map.inverse
        w[lay.loc] *= weight_scale
        b[lay.loc] = centres.reshape(-1).to(dt)
        w[lay.scale] *= weight_scale
        if self.covariance == "diagonal":
            b[lay.scale] = inverse(spread.reshape(-1)).to(dt)
        elif self.covariance == "spherical":
            b[lay.scale] = inverse(spread.mean(-1)).to(dt)
        else:
            blk = torch.zeros(k, lay.scale_width, dtype=torch.float64)
            blk[:, :d] = inverse(spread)
            b[lay.scale] = blk.reshape(-1).to(dt)
        lg = lay.logits
        w[lg] *= weight_scale
        b[lg] = torch.log((counts + 1) / (counts.sum() + k)).to(dt)
        return self

    def _scale_floor(self, y: Tensor) -> Tensor:
        """The smallest initial σ per dimension: a quarter of a K-th of the targets' spread, and
        well above the head's floor."""
        return (y.std(0) / (4 * self.num_components)).clamp_min(10 * self.min_scale + 1e-6)

    def _init_per_dimension(self, y: Tensor, weight_scale: float) -> MDNHead:
        """Per-dimension heads: each dimension's K means at its own quantiles
        :math:`(k+\tfrac12)/K`, each σ the spread of its quantile bin, equal weights."""
        k, d = self.num_components, self.out_features
        centres = torch.quantile(y, _quantile_levels(k), dim=0).T.contiguous()  # (D, K)
        width = y.std(0) / k if k > 1 else y.std(0)
        spread = torch.maximum(width, self._scale_floor(y))[:, None].expand(d, k)
        lay, w, b = self.layout, self.proj.weight, self.proj.bias
        for block in (lay.loc, lay.scale, lay.logits):
            w[block] *= weight_scale
        b[lay.loc] = centres.reshape(-1).to(b.dtype)
        b[lay.scale] = lay.scale_map.inverse(spread.reshape(-1)).to(b.dtype)
        b[lay.logits] = 0.0
        return self

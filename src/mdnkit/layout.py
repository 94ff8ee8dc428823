r"""The head's flat parameter layout and the scale transforms: one home for every runtime.

An :class:`~mdnkit.MDNHead` produces, for every row, one flat vector of mixture parameters.  Its
layout, with K components and D output dimensions (the same order as the classic Keras MDN
layer), is:

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

With ``mixture="per_dimension"`` (each of the D values has its own K-component 1-D mixture, the
World Models MDN-RNN's head; diagonal only) the three blocks are dimension-major, D·K each:
means :math:`\mu_{1,1} … \mu_{1,K}, \mu_{2,1} …`, then the raw σ in the same order, then the
logits in the same order (3·K·D in all), and :meth:`HeadLayout.split` gives ``(..., D, K)``
blocks, as :class:`~mdnkit.PerDimensionMixture` takes them.

and each raw scale :math:`a` becomes a positive :math:`\sigma` through a transform with a floor
:math:`\sigma_{min}`:

* ``"softplus"``: :math:`\sigma = \log(1 + e^{a}) + \sigma_{min}` (default);
* ``"exp"``: :math:`\sigma = e^{\min(a, 80)} + \sigma_{min}`;
* ``"elu"``: :math:`\sigma = \operatorname{ELU}(a) + 1 + \sigma_{min}` (the classic Keras layer's).

Every runtime reads the layout and the transform from here: the head (torch), the autograd-free
training step (:mod:`mdnkit.fast`, which also needs the derivative), the NumPy step generator
and the ONNX step (:mod:`mdnkit.sequence`).  Adding a transform is one entry in
:data:`TRANSFORMS` (and its name in :data:`mdnkit.options.ScaleTransform`).

Example:
    >>> layout = HeadLayout(num_components=3, out_features=2, covariance="diagonal")
    >>> layout.num_params, layout.loc, layout.scale, layout.logits
    (15, slice(0, 6, None), slice(6, 12, None), slice(12, 15, None))
    >>> logits, loc, scale, tril = layout.decode(torch.zeros(4, 15))
    >>> tuple(loc.shape), tuple(scale.shape), tril is None
    ((4, 3, 2), (4, 3, 2), True)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, NamedTuple, get_args

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from . import checks
from .options import CovarianceType, MixtureType, ScaleTransform

__all__ = ["HeadLayout", "ScaleMap", "TRANSFORMS", "DEFAULT_MIN_SCALE"]

#: The default scale floor :math:`\sigma_{min}` of every head and model, in the units the head
#: predicts in (standardised units for :class:`~mdnkit.MDN`, :class:`~mdnkit.MDNRNN` and
#: :class:`~mdnkit.MDNRegressor`: a thousandth of the target's standard deviation).
DEFAULT_MIN_SCALE = 1e-3

_EXP_MAX = 80.0  # e^80 ~ 5.5e34: finite in float32


class _Transform(NamedTuple):
    forward: Callable[[Tensor], Tensor]  # raw -> sigma without the floor
    inverse: Callable[[Tensor], Tensor]  # sigma - floor (> 0) -> raw
    derivative: Callable[[Tensor, Tensor], Tensor]  # (raw, sigma - floor) -> d sigma / d raw
    numpy: Callable[[np.ndarray], np.ndarray]  # forward in NumPy


def _np_elu1(a: np.ndarray) -> np.ndarray:
    return np.where(a > 0, a, np.expm1(np.minimum(a, 0.0))) + 1.0


#: name -> (forward, inverse, derivative, NumPy forward), each without the floor.
TRANSFORMS: dict[str, _Transform] = {
    "softplus": _Transform(
        F.softplus,
        lambda v: v + torch.log(-torch.expm1(-v)),
        lambda raw, s: torch.sigmoid(raw),
        lambda a: np.logaddexp(0.0, a, dtype=a.dtype),
    ),
    "exp": _Transform(
        lambda raw: torch.exp(raw.clamp(max=_EXP_MAX)),
        torch.log,
        lambda raw, s: s,  # e^raw (clamped like the value)
        lambda a: np.exp(np.minimum(a, _EXP_MAX)),
    ),
    "elu": _Transform(
        lambda raw: F.elu(raw) + 1.0,
        lambda v: torch.where(v > 1, v - 1, v.log()),
        lambda raw, s: torch.where(raw > 0, 1.0, s),  # 1, or e^raw below 0
        _np_elu1,
    ),
}
assert tuple(TRANSFORMS) == get_args(ScaleTransform)


#: the largest of the smallest normal numbers of NumPy's float dtypes (float16's): a scale floor
#: at least this large keeps every scale normal in any of them, with no clamp and no lookup
_NP_TINY_MAX = float(np.finfo(np.float16).tiny)


@dataclass(frozen=True)
class ScaleMap:
    r"""A scale transform with its floor: raw network output :math:`a` ↔ scale :math:`\sigma`.

    Example:
        >>> m = ScaleMap("softplus", 1e-3)
        >>> raw = torch.tensor([-2.0, 0.0, 3.0])
        >>> torch.allclose(m.inverse(m.forward(raw)), raw, atol=1e-5)
        True
    """

    name: ScaleTransform = "softplus"
    floor: float = DEFAULT_MIN_SCALE

    def __post_init__(self) -> None:
        checks.choice("scale_transform", self.name, ScaleTransform)
        checks.number("min_scale", self.floor, low=0.0)

    def forward(self, raw: Tensor) -> Tensor:
        r""":math:`\sigma = t(a) + \sigma_{min}`, and at least the smallest normal float of its
        dtype when the floor is below that (``min_scale=0``): a subnormal or zero scale has no
        finite reciprocal, and the head's mixtures are built without value checks."""
        # (raw is mostly a strided block of a head's output rows: copied to one contiguous
        # block first, the transform and its backward pass run vectorised, about 1.7x faster)
        sigma = TRANSFORMS[self.name].forward(raw.contiguous()) + self.floor
        tiny = torch.finfo(sigma.dtype).tiny
        return sigma if self.floor >= tiny else sigma.clamp_min(tiny)

    def inverse(self, value: Tensor) -> Tensor:
        """The raw value whose scale is ``value`` (values at or below the floor map to its
        smallest representable raw value)."""
        return TRANSFORMS[self.name].inverse((value - self.floor).clamp_min(1e-6))

    def with_derivative(self, raw: Tensor, need: bool = True) -> tuple[Tensor, Tensor | None]:
        r"""``(σ, dσ/da)`` (the derivative only when ``need``)."""
        sigma = self.forward(raw)
        if not need:
            return sigma, None
        return sigma, TRANSFORMS[self.name].derivative(raw, sigma - self.floor)

    def numpy(self, raw: np.ndarray) -> np.ndarray:
        """:meth:`forward` on a NumPy array (same dtype)."""
        out = TRANSFORMS[self.name].numpy(raw)
        out += self.floor  # (in place: the array's dtype)
        if self.floor >= _NP_TINY_MAX:
            return out
        return np.maximum(out, np.finfo(out.dtype).tiny, out=out)


@dataclass(frozen=True)
class HeadLayout:
    r"""Where each mixture parameter sits in the head's flat vector, and how to decode it.

    Args:
        num_components: K.
        out_features: D.
        covariance: ``"diagonal"``, ``"spherical"`` or ``"full"``.
        scale_transform, min_scale: the :class:`ScaleMap` of the scales.
        mixture: ``"joint"`` (one K-component mixture over the D values) or ``"per_dimension"``
            (D independent 1-D mixtures; needs ``covariance="diagonal"``).

    The attributes :attr:`loc`, :attr:`scale` and :attr:`logits` are the slices of the three
    blocks (over the last dimension of row-major parameters, or the first of component-major
    ones).

    Example:
        >>> lay = HeadLayout(3, 2, mixture="per_dimension")
        >>> lay.num_params, lay.logits
        (18, slice(12, 18, None))
        >>> logits, loc, scale, tril = lay.decode(torch.zeros(4, 18))
        >>> tuple(logits.shape), tuple(loc.shape), tuple(scale.shape)   # (..., D, K)
        ((4, 2, 3), (4, 2, 3), (4, 2, 3))
    """

    num_components: int
    out_features: int
    covariance: CovarianceType = "diagonal"
    scale_transform: ScaleTransform = "softplus"
    min_scale: float = DEFAULT_MIN_SCALE
    mixture: MixtureType = "joint"
    scale_map: ScaleMap = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        checks.positive_int("num_components", self.num_components)
        checks.positive_int("out_features", self.out_features)
        checks.choice("covariance", self.covariance, CovarianceType)
        checks.choice("mixture", self.mixture, MixtureType)
        if self.mixture == "per_dimension" and self.covariance != "diagonal":
            raise ValueError(
                "mixture='per_dimension' (one 1-D mixture per dimension) needs "
                f"covariance='diagonal', found covariance={self.covariance!r}"
            )
        object.__setattr__(self, "num_components", int(self.num_components))
        object.__setattr__(self, "out_features", int(self.out_features))
        checks.number("min_scale", self.min_scale, low=0.0)
        object.__setattr__(self, "min_scale", float(self.min_scale))
        object.__setattr__(self, "scale_map", ScaleMap(self.scale_transform, self.min_scale))

    # ---------------------------------------- sizes and slices (computed once: the layout is frozen)
    @cached_property
    def scale_width(self) -> int:
        """Raw scale entries per component: D, 1 or D(D+1)/2 (D per dimension: the scale block
        is K·D either way)."""
        d = self.out_features
        return {"diagonal": d, "spherical": 1, "full": d * (d + 1) // 2}[self.covariance]

    @cached_property
    def n_loc(self) -> int:
        """Size of the means block, K·D."""
        return self.num_components * self.out_features

    @cached_property
    def n_scale(self) -> int:
        """Size of the scales block, K times :attr:`scale_width`."""
        return self.num_components * self.scale_width

    @cached_property
    def per_dimension(self) -> bool:
        """True for ``mixture="per_dimension"``: blocks of shape ``(..., D, K)``."""
        return self.mixture == "per_dimension"

    @cached_property
    def n_logits(self) -> int:
        """Size of the logits block: K (joint) or D·K (per dimension)."""
        return self.num_components * (self.out_features if self.per_dimension else 1)

    @cached_property
    def num_params(self) -> int:
        """Length of the flat parameter vector: K·D + (scale block) + K (3·K·D per dimension)."""
        return self.n_loc + self.n_scale + self.n_logits

    @cached_property
    def loc(self) -> slice:
        return slice(0, self.n_loc)

    @cached_property
    def scale(self) -> slice:
        return slice(self.n_loc, self.n_loc + self.n_scale)

    @cached_property
    def logits(self) -> slice:
        return slice(self.n_loc + self.n_scale, self.num_params)

    # ------------------------------------------------------------------ decoding
    def split(self, params: Any) -> tuple[Any, Any, Any]:
        """Row-major ``params`` ``(..., num_params)`` (tensor or array) → views ``loc``
        ``(..., K, D)``, raw scales ``(..., K, scale_width)`` and logits ``(..., K)``; per
        dimension, all three ``(..., D, K)``."""
        k, lead = self.num_components, tuple(params.shape[:-1])
        if self.per_dimension:
            dk = (*lead, self.out_features, k)
            return (
                params[..., self.loc].reshape(dk),
                params[..., self.scale].reshape(dk),
                params[..., self.logits].reshape(dk),
            )
        loc = params[..., self.loc].reshape(*lead, k, self.out_features)
        raw = params[..., self.scale].reshape(*lead, k, self.scale_width)
        return loc, raw, params[..., self.logits]

    def decode(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """``(logits, loc, scale, scale_tril)`` of the mixture, as
        :class:`~mdnkit.GaussianMixture` takes them (one of the last two is None), or
        ``(logits, loc, scale, None)`` of shape ``(..., D, K)`` as
        :class:`~mdnkit.PerDimensionMixture` takes them.  Made of operations ONNX can export."""
        loc, raw, logits = self.split(params)
        if self.covariance != "full":
            return logits, loc, self.scale_map.forward(raw), None
        d = self.out_features
        diag = self.scale_map.forward(raw[..., :d])
        # entries of L row by row: gather from [diag, strictly-lower, 0] with a constant index
        flat = torch.cat([diag, raw[..., d:], torch.zeros_like(raw[..., :1])], -1)
        index = torch.as_tensor(self._tril_gather, device=params.device)
        tril = flat.index_select(-1, index).reshape(*flat.shape[:-1], d, d)
        return logits, loc, None, tril

    @cached_property
    def _tril_gather(self) -> np.ndarray:
        """For each entry of a D×D matrix, row by row, its position in [diag, lower, 0]."""
        d = self.out_features
        index = np.full((d, d), d * (d + 1) // 2, dtype=np.int64)  # the zero slot
        index[np.arange(d), np.arange(d)] = np.arange(d)
        rows, cols = np.tril_indices(d, -1)
        index[rows, cols] = d + np.arange(rows.size)
        return index.reshape(-1)

    def decode_numpy(
        self, params: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        """:meth:`decode` in NumPy, the logits normalised (log-weights over the K components)."""
        loc, raw, logits = self.split(params)
        logits = logits - logits.max(-1, keepdims=True)
        logits = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        if self.covariance != "full":
            return logits, loc, self.scale_map.numpy(raw), None
        d = self.out_features
        diag = self.scale_map.numpy(raw[..., :d])
        zero = np.zeros_like(raw[..., :1])
        flat = np.concatenate([diag, raw[..., d:], zero], -1)
        tril = flat[..., self._tril_gather].reshape(*flat.shape[:-1], d, d)
        return logits, loc, None, tril

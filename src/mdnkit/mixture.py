"""A batch of Gaussian mixtures, as a ``torch.distributions.Distribution``.

For every element of a batch (any number of leading dimensions) the distribution is

.. math::

    p(y) = \\sum_{k=1}^{K} \\pi_k \\, \\mathcal{N}(y \\mid \\mu_k, \\Sigma_k),
    \\qquad \\pi = \\operatorname{softmax}(\\text{logits}),

over :math:`y \\in \\mathbb{R}^D`.  Three covariance types are supported:

* ``"diagonal"``: ``scale`` of shape ``(..., K, D)``, :math:`\\Sigma_k = \\operatorname{diag}(\\sigma_k^2)`;
* ``"spherical"``: ``scale`` of shape ``(..., K, 1)``, :math:`\\Sigma_k = \\sigma_k^2 I`;
* ``"full"``: ``scale_tril`` of shape ``(..., K, D, D)``, :math:`\\Sigma_k = L_k L_k^\\top`.

Everything is computed in log space (log-softmax for the weights, log-sum-exp over the
components, a triangular solve for full covariances), with every normalising constant, and in
float32 or wider even when the parameters are half precision.  The component-major kernels
that do the arithmetic of diagonal and spherical densities (and of drawing components) are in
:mod:`mdnkit.kernels`.  Derived values (``logits``, ``weights``, the moments, ``mode`` ...) are
computed on first use and kept, as ``torch.distributions`` does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints
from torch.distributions.utils import lazy_property

from . import checks
from .checks import as_generator
from .kernels import (
    LOG_2PI,
    UNROLL_MAX_D,
    DiagonalMixtureLogProb,
    broadcast_shapes,
    diagonal_terms,
    draw_components,
    shared_shift,
    shifted_weights_cdf,
    sum_last,
    weights_cdf,
)
from .options import CovarianceType

__all__ = [
    "GaussianMixture",
    "CovarianceType",
    "check_values",
    "check_temperature",
    "log_softmax",
    "promote",
    "tempered_logits",
]

Number = float | int
TemperatureLike = Number | Tensor


_SAMPLE_BLOCK_ELEMENTS = 1 << 18  # rows x components per block when drawing components
_SAMPLE_SMALL_ELEMENTS = 1 << 13  # draws x components up to which one row-major draw is faster


def promote(t: Tensor) -> Tensor:
    """Half-precision or integer parameters as float32 (the default dtype); others unchanged
    (DESIGN: losses in float32 or wider)."""
    dtype = t.dtype
    if dtype is torch.float32 or dtype is torch.float64:
        return t
    if dtype in (torch.float16, torch.bfloat16):
        return t.float()
    if not t.is_floating_point():
        return t.to(torch.get_default_dtype())
    return t


def check_temperature(
    value: TemperatureLike, name: str, like: Tensor, batch: torch.Size, finite: bool
) -> float | Tensor:
    """A checked temperature: a number >= 0 (finite if ``finite``) comes back as a float, and so
    does a one-element tensor without dimensions; a tensor of them broadcastable to ``batch`` as
    a tensor of ``like``'s dtype and device.  Else ValueError naming ``name``."""
    if isinstance(value, Tensor):
        bad = torch.isnan(value).any() or (value < 0).any()
        if bad or (finite and torch.isinf(value).any()):
            kind = "finite numbers" if finite else "numbers"
            raise ValueError(f"{name} must hold {kind} >= 0 (0 means greedy), found {value!r}")
        try:
            ok = broadcast_shapes(value.shape, batch) == batch
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(
                f"{name} must be a number or a tensor broadcastable to batch_shape "
                f"{tuple(batch)}, found a tensor of shape {tuple(value.shape)}"
            )
        if value.dim() == 0:
            return float(value)
        return value.to(dtype=like.dtype, device=like.device)
    return checks.number(name, value, low=0.0, finite=finite)


def tempered_logits(raw: Tensor, t: float | Tensor) -> Tensor:
    """``raw / t`` over the last (component) dimension, with the limits of the convention.

    ``t`` (>= 0) is a number or a tensor that broadcasts against ``raw``.  Each row is first
    shifted to a maximum of 0, so a tiny ``t`` gives -inf for the other components, never
    inf - inf.  ``t = 0``: 0 for the most likely component, -inf for the others (greedy).
    ``t = inf``: 0 for every component of nonzero weight (uniform over them), -inf for the
    zero-weight ones.
    """
    if not isinstance(t, Tensor):
        if t == 0:
            return _greedy(raw)
        if math.isinf(t):
            return _flat(raw)
        return (raw - raw.amax(-1, keepdim=True).nan_to_num_(0.0, 0.0, 0.0)) / t
    zero, inf = t == 0, torch.isinf(t)
    top = raw.amax(-1, keepdim=True).nan_to_num_(0.0, 0.0, 0.0)
    scaled = (raw - top) / torch.where(zero | inf, torch.ones_like(t), t)
    if bool(inf.any()):
        scaled = torch.where(inf, _flat(raw), scaled)
    if bool(zero.any()):
        scaled = torch.where(zero, _greedy(raw), scaled)
    return scaled


def _greedy(raw: Tensor) -> Tensor:
    """0 for each row's most likely component, -inf for the others."""
    return torch.full_like(raw, -math.inf).scatter_(-1, raw.argmax(-1, keepdim=True), 0.0)


def _flat(raw: Tensor) -> Tensor:
    """0 for every component of nonzero weight, -inf for the others."""
    return torch.where(raw == -math.inf, raw, torch.zeros_like(raw))


def log_softmax(raw: Tensor) -> Tensor:
    """``log_softmax(raw, -1)``: the rows shifted to a maximum of 0 first, so that the result is
    exact to rounding for logits of any size (subtracting a log-sum-exp of 1e6 from logits of
    1e6 would lose the fraction in float32).  As fast as ``raw - logsumexp(raw)`` and several
    times faster than ``torch.log_softmax`` on CPU for a short last dimension."""
    shifted = raw - raw.detach().amax(-1, keepdim=True)
    return shifted - shifted.exp().sum(-1, keepdim=True).log()


def _range(t: Tensor) -> tuple[float, float]:
    """``(min, max)`` of ``t`` in one pass (NaN if any entry is NaN; ``(inf, -inf)`` if empty)."""
    if t.numel() == 0:
        return math.inf, -math.inf
    lo, hi = torch.aminmax(t.detach())
    return float(lo), float(hi)


def _check_scale(name: str, scale: Tensor, what: str) -> None:
    """Every entry of ``scale`` finite and a normal number > 0 (at least ``finfo.tiny``)."""
    info = torch.finfo(scale.dtype)
    lo, hi = _range(scale)
    if lo >= info.tiny and hi <= info.max:
        return
    bad = scale[~((scale >= info.tiny) & (scale <= info.max))].flatten()[:3].tolist()
    raise ValueError(
        f"{what}, at least torch.finfo({scale.dtype}).tiny = {info.tiny:.4g} (a normal "
        f"number: the reciprocal of a smaller one overflows), found {name} values such as {bad}"
    )


def _plain(t: Tensor) -> Tensor:
    """``t`` without its graph (a detach is a call; most parameters need none)."""
    return t.detach() if t.requires_grad else t


def _values_look_good(
    logits: Tensor, loc: Tensor, scale: Tensor | None, scale_tril: Tensor | None
) -> bool:
    """True when the parameters surely pass :func:`check_values`: the sums of the logits, the
    means (and the Cholesky factors) are finite, so every entry is (NaN and inf propagate), and
    the scales (or Cholesky diagonals) lie in ``[finfo.tiny, finfo.max]``.  False says only
    "look closer"."""
    s = scale if scale is not None else torch.diagonal(scale_tril, dim1=-2, dim2=-1)
    if s.numel() == 0:
        return False
    parts = [_plain(logits).sum(), _plain(loc).sum(), *torch.aminmax(_plain(s))]
    if scale_tril is not None:
        parts.append(_plain(scale_tril).sum())
    values = torch.stack(parts).tolist()
    info = torch.finfo(s.dtype)
    return (
        math.isfinite(values[0])
        and math.isfinite(values[1])
        and values[2] >= info.tiny
        and values[3] <= info.max
        and (scale_tril is None or math.isfinite(values[4]))
    )


def check_values(
    logits: Tensor, loc: Tensor, scale: Tensor | None = None, scale_tril: Tensor | None = None
) -> None:
    """The value checks of a mixture's parameters (``validate_args``): logits not NaN or +inf
    and not all -inf for any batch entry (some component must have weight), finite means,
    finite scales (or Cholesky diagonals) of at least ``torch.finfo(dtype).tiny`` (normal
    numbers), finite Cholesky factors.

    Cheap when every value is good: one pass over each tensor and one synchronisation in all
    (a sum is finite only when every term is); the detailed checks below, which name what is
    wrong, run only when that quick look finds something (a -inf logit, a sum that overflowed).
    """
    if _values_look_good(logits, loc, scale, scale_tril):
        return
    lo, hi = _range(logits)
    if not hi < math.inf:  # NaN compares false
        raise ValueError("logits contain NaN or +inf")
    if lo == -math.inf:
        empty = int((logits.amax(-1) == -math.inf).sum())
        if empty:
            raise ValueError(
                f"logits must have at least one entry > -inf in every batch entry (the weights "
                f"are their softmax), found {empty} batch entr{'y' if empty == 1 else 'ies'} "
                f"of all -inf logits"
            )
    big = torch.finfo(loc.dtype).max
    lo, hi = _range(loc)
    if not (lo >= -big and hi <= big):
        raise ValueError("loc contains NaN or inf")
    if scale is not None:
        _check_scale("scale", scale, "scale must be positive and finite")
    elif scale_tril is not None:
        big = torch.finfo(scale_tril.dtype).max
        lo, hi = _range(scale_tril)
        if not (lo >= -big and hi <= big):
            raise ValueError("scale_tril contains NaN or inf")
        diag = torch.diagonal(scale_tril, dim1=-2, dim2=-1)
        _check_scale("diagonal", diag, "scale_tril must have a positive diagonal")


def _batch_shape(*shapes: torch.Size) -> torch.Size:
    """The batch shape the leading dimensions of logits, loc and scale (or scale_tril)
    broadcast to (no work when they are equal, as they mostly are); else ValueError."""
    if shapes[1] == shapes[0] and shapes[2] == shapes[0]:
        return shapes[0]
    try:
        return broadcast_shapes(*shapes)
    except RuntimeError:
        raise ValueError(
            "the leading (batch) dimensions of the parameters do not broadcast: "
            + ", ".join(f"{n} {tuple(s)}" for n, s in zip(("logits", "loc", "scale"), shapes))
        ) from None


def _squared_norm(diff: Tensor, tril: Tensor, inv_diag: Tensor, clamp: bool) -> Tensor:
    r""":math:`\lVert L^{-1} (y - \mu)\rVert^2` by forward substitution, ``(..., K)``, from the
    residuals ``diff`` ``(..., K, D)``, the factors ``tril`` and their inverse diagonals; each
    :math:`z_i` clamped to the finite floats if ``clamp``."""
    big = torch.finfo(diff.dtype).max
    zs: list[Tensor] = []
    sq = None
    for i in range(diff.shape[-1]):
        acc = diff[..., i]
        for j in range(i):
            acc = acc - tril[..., i, j] * zs[j]
        zi = acc * inv_diag[..., i]
        if clamp:
            zi = zi.clamp(-big, big)
        zs.append(zi)
        sq = zi * zi if sq is None else sq + zi * zi
    return sq


def event_values(value: Tensor, d: int, like: Tensor) -> Tensor:
    """``value`` as a tensor of ``like``'s dtype and device whose last dimension is the event's
    ``d``: the values a mixture's densities take (ValueError naming the shape otherwise)."""
    if not isinstance(value, Tensor):
        value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if value.dim() < 1 or value.shape[-1] != d:
        raise ValueError(
            f"expected values with the event shape (..., {d}) as last dimension, "
            f"found shape {tuple(value.shape)}"
        )
    if value.dtype != like.dtype:
        value = value.to(like.dtype)
    return value


class GaussianMixture(Distribution):
    r"""A batch of finite Gaussian mixtures over :math:`\mathbb{R}^D`.

    .. math::

        \log p(y) = \operatorname{logsumexp}_k \Big[\log\pi_k - \tfrac{D}{2}\log 2\pi
                    - \log\lvert L_k\rvert - \tfrac12 \lVert L_k^{-1}(y-\mu_k)\rVert^2\Big]

    Args:
        logits: mixture logits, shape ``(..., K)``; the weights are ``softmax(logits)``.
        loc: component means, shape ``(..., K, D)``.
        scale: component standard deviations, ``(..., K, D)`` (diagonal) or ``(..., K, 1)``
            (spherical: one :math:`\sigma` per component).
        scale_tril: lower-triangular Cholesky factors of the component covariances,
            ``(..., K, D, D)`` with a positive diagonal.  Give exactly one of ``scale`` and
            ``scale_tril``.
        validate_args: check values (finite parameters, positive scales) as well as shapes.
            Shapes are always checked.  Defaults to ``torch.distributions``' global setting.

    Leading dimensions of the parameters broadcast against each other to ``batch_shape``; the
    event shape is ``(D,)``.

    Example:
        >>> import torch
        >>> from mdnkit import GaussianMixture
        >>> m = GaussianMixture(torch.zeros(2), torch.tensor([[-1.0], [1.0]]), torch.ones(2, 1))
        >>> float(m.mean), round(float(m.variance), 4)
        (0.0, 2.0)
        >>> m.log_prob(torch.tensor([0.0])).shape
        torch.Size([])
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = False

    def __init__(
        self,
        logits: Tensor,
        loc: Tensor,
        scale: Tensor | None = None,
        scale_tril: Tensor | None = None,
        validate_args: bool | None = None,
    ) -> None:
        if (scale is None) == (scale_tril is None):
            raise ValueError("give exactly one of scale (diagonal/spherical) and scale_tril (full)")
        for name, t in (
            ("logits", logits),
            ("loc", loc),
            ("scale", scale),
            ("scale_tril", scale_tril),
        ):
            if t is not None and not isinstance(t, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, found {type(t).__name__}")
        lshape, mshape = logits.shape, loc.shape
        if len(lshape) < 1:
            raise ValueError(
                f"logits must have shape (..., K), found a scalar of shape {tuple(lshape)}"
            )
        if len(mshape) < 2:
            raise ValueError(f"loc must have shape (..., K, D), found shape {tuple(mshape)}")
        k, d = mshape[-2], mshape[-1]
        if lshape[-1] != k:
            raise ValueError(
                f"logits and loc disagree on the number of components K: logits has shape "
                f"{tuple(lshape)} (K={lshape[-1]}), loc has shape {tuple(mshape)} (K={k})"
            )
        if d < 1 or k < 1:
            raise ValueError(
                f"need K >= 1 components and D >= 1 dimensions, found loc shape {tuple(mshape)}"
            )
        if scale is not None:
            sshape = scale.shape
            if len(sshape) < 2 or sshape[-2] != k or sshape[-1] not in (1, d):
                raise ValueError(
                    f"scale must have shape (..., K, D) = (..., {k}, {d}) for diagonal or (..., {k}, 1) "
                    f"for spherical components, found {tuple(sshape)}"
                )
            self.covariance_type: CovarianceType = (
                "spherical" if sshape[-1] == 1 and d > 1 else "diagonal"
            )
            lead = sshape[:-2]
        else:
            sshape = scale_tril.shape
            if len(sshape) < 3 or sshape[-3:] != (k, d, d):
                raise ValueError(
                    f"scale_tril must have shape (..., K, D, D) = (..., {k}, {d}, {d}), "
                    f"found {tuple(sshape)}"
                )
            self.covariance_type = "full"
            lead = sshape[:-3]
        batch_shape = _batch_shape(lshape[:-1], mshape[:-2], lead)
        self._k, self._d = k, d

        logits, loc = promote(logits), promote(loc)
        scale = None if scale is None else promote(scale)
        scale_tril = None if scale_tril is None else promote(scale_tril)
        if validate_args or (validate_args is None and Distribution._validate_args):
            check_values(logits, loc, scale, scale_tril)
        # (broadcast only what needs it: an expand is a call, and most parameters have the
        # batch shape already)
        self._raw_logits = logits if lshape[:-1] == batch_shape else logits.expand(*batch_shape, k)
        self.loc = loc if mshape[:-2] == batch_shape else loc.expand(*batch_shape, k, d)
        if scale is not None:
            self.scale = scale if lead == batch_shape else scale.expand(*batch_shape, k, sshape[-1])
            self.scale_tril = None
        else:
            self.scale = None
            self.scale_tril = (
                scale_tril if lead == batch_shape else scale_tril.expand(*batch_shape, k, d, d)
            )
        self._batch_shape = batch_shape
        self._event_shape = torch.Size((d,))
        self._validate_args = False  # (the values are checked above, once)

    # ------------------------------------------------------------------ basic properties
    @lazy_property
    def logits(self) -> Tensor:
        r"""Normalised log-weights :math:`\log\pi_k` (log-softmax of the given logits), ``(..., K)``."""
        return log_softmax(self._raw_logits)

    @property
    def num_components(self) -> int:
        """K, the number of mixture components."""
        return self._k

    @lazy_property
    def weights(self) -> Tensor:
        r"""Mixture weights :math:`\pi = \operatorname{softmax}(\text{logits})`, shape ``(..., K)``."""
        return self.logits.exp()

    @property
    def probs(self) -> Tensor:
        """The mixture weights, :attr:`weights` (the name ``torch.distributions`` uses)."""
        return self.weights

    @lazy_property
    def component_scale_tril(self) -> Tensor:
        """Cholesky factors of every component covariance, ``(..., K, D, D)``, for any type."""
        if self.scale_tril is not None:
            return self.scale_tril
        return torch.diag_embed(self.scale.expand(*self.loc.shape))

    @lazy_property
    def component_covariance(self) -> Tensor:
        r"""Covariance matrices :math:`\Sigma_k` of every component, ``(..., K, D, D)``."""
        if self.scale_tril is not None:
            return self.scale_tril @ self.scale_tril.transpose(-1, -2)
        return torch.diag_embed(self.scale.expand(*self.loc.shape).square())

    @lazy_property
    def component_variance(self) -> Tensor:
        r"""Diagonal of each :math:`\Sigma_k`, ``(..., K, D)``."""
        if self.scale_tril is not None:
            return self.scale_tril.square().sum(-1)
        return self.scale.expand(*self.loc.shape).square()

    def expand(self, batch_shape, _instance=None) -> GaussianMixture:
        batch_shape = torch.Size(batch_shape)
        k, d = self._k, self._d
        if self.scale_tril is not None:
            return GaussianMixture(
                self._raw_logits.expand(*batch_shape, k),
                self.loc.expand(*batch_shape, k, d),
                scale_tril=self.scale_tril.expand(*batch_shape, k, d, d),
                validate_args=False,
            )
        return GaussianMixture(
            self._raw_logits.expand(*batch_shape, k),
            self.loc.expand(*batch_shape, k, d),
            self.scale.expand(*batch_shape, k, self.scale.shape[-1]),
            validate_args=False,
        )

    def __getitem__(self, index) -> GaussianMixture:
        """Index the batch dimensions: ``mixture[0]``, ``mixture[:, 3]``, ``mixture[mask]``."""
        if not isinstance(index, tuple):
            index = (index,)
        if any(i is Ellipsis for i in index):
            raise IndexError("Ellipsis is not supported when indexing a GaussianMixture")
        return GaussianMixture(
            self._raw_logits[index],
            self.loc[index],
            None if self.scale is None else self.scale[index],
            None if self.scale_tril is None else self.scale_tril[index],
            validate_args=False,
        )

    def __repr__(self) -> str:
        return (
            f"GaussianMixture(batch_shape={tuple(self.batch_shape)}, K={self._k}, D={self._d}, "
            f"covariance='{self.covariance_type}', dtype={self.loc.dtype})"
        )

    # ------------------------------------------------------------------ densities
    def _check_value(self, value: Tensor) -> Tensor:
        return event_values(value, self._d, self.loc)

    def component_log_prob(self, value: Tensor) -> Tensor:
        r""":math:`\log \mathcal{N}(y \mid \mu_k, \Sigma_k)` for every component, ``(..., K)``."""
        y = self._check_value(value).unsqueeze(-2)
        d = self._d
        if self.scale is not None:
            return diagonal_terms(self.loc, self.scale, y)[2] - 0.5 * d * LOG_2PI
        diff = y - self.loc
        tril = self.scale_tril
        diag = torch.diagonal(tril, dim1=-2, dim2=-1)
        if d <= UNROLL_MAX_D:
            # Forward substitution, one vector operation per entry of L: far faster than a
            # batched triangular solve for the small D of most MDNs.  1/L_ii as exp(-log L_ii):
            # the backward passes of a division or a reciprocal square the tiny (or huge)
            # number, and would give 0 * inf = NaN for a component of no weight and tiny L_ii.
            log_diag = diag.log()
            inv_diag = log_diag.neg().exp_()
            sq = _squared_norm(diff, tril, inv_diag, clamp=False)
            if sq.requires_grad and not bool(sq.detach().amax() < math.inf):
                # some z overflowed: again with every z_i clamped to the finite floats (the same
                # value, |z|^2 = inf), so that its gradient is 0 there, not NaN
                sq = _squared_norm(diff, tril, inv_diag, clamp=True)
            return -0.5 * sq - sum_last(log_diag) - 0.5 * d * LOG_2PI
        if diff.shape[:-1] != tril.shape[:-2]:
            tril = tril.expand(*diff.shape[:-1], d, d)
        z = torch.linalg.solve_triangular(tril, diff.unsqueeze(-1), upper=False).squeeze(-1)
        return -0.5 * z.square().sum(-1) - diag.log().sum(-1) - 0.5 * d * LOG_2PI

    def log_prob(self, value: Tensor) -> Tensor:
        r""":math:`\log p(y)`, shape ``broadcast(value.shape[:-1], batch_shape)``."""
        if self.scale is not None:
            y = self._check_value(value).unsqueeze(-2)
            return DiagonalMixtureLogProb.apply(self._raw_logits, self.loc, self.scale, y)
        return torch.logsumexp(self.logits + self.component_log_prob(value), dim=-1)

    def posterior(self, value: Tensor) -> Tensor:
        r"""Responsibilities :math:`p(k \mid y) = \pi_k \mathcal{N}_k(y) / p(y)`, ``(..., K)``."""
        return torch.softmax(self.logits + self.component_log_prob(value), dim=-1)

    # ------------------------------------------------------------------ sampling
    def _component_index(self, shape: torch.Size, t: float | Tensor, generator) -> Tensor:
        """Component indices of shape ``shape`` drawn from softmax(logits / T) (inverse CDF)."""
        logits = self._raw_logits
        if isinstance(t, Tensor):  # (rows of temperature 0 come out greedy: one nonzero weight)
            scaled, t = tempered_logits(logits, t.unsqueeze(-1)), 1.0
        elif t == 0.0:
            return logits.argmax(-1).expand(shape)
        elif math.isinf(t):
            scaled, t = tempered_logits(logits, t), 1.0
        else:
            scaled = logits
        if scaled.numel() == 0 or shape.numel() == 0:
            return torch.zeros(shape, dtype=torch.long, device=logits.device)
        if shape.numel() * self._k <= _SAMPLE_SMALL_ELEMENTS:
            # few draws: the fewest operations (the blocked draw's fixed cost dominates there)
            if t != 1.0:
                scaled = tempered_logits(scaled, t)
            return draw_components(scaled, shape, generator)
        return self._blocked_component_index(scaled, t, shape, generator)

    def _blocked_component_index(
        self, logits: Tensor, t: float, shape: torch.Size, generator
    ) -> Tensor:
        """:meth:`_component_index` for many draws from softmax(``logits`` / ``t``) (``t`` > 0
        finite): component-major blocks of rows.  An int32 tensor for one block of float32
        logits (int64 otherwise)."""
        k = self._k
        rows = logits if logits.dim() == 2 else logits.reshape(-1, k)
        nb = rows.shape[0]
        draws = shape.numel() // nb
        one = draws == 1  # one draw per row: in place on the cumulative weights
        # (S, B) uniforms, (B,) for one draw a row: the batch dims are the trailing ones of shape
        u_shape = (nb,) if one else (draws, nb)
        u = torch.rand(u_shape, dtype=rows.dtype, device=rows.device, generator=generator)
        # One shift for all rows (exp2, no clamp, no row-wise maximum) where it serves; else
        # each block's own, row by row where needed (weights_cdf).
        top = shared_shift(rows)
        # Blocks of rows small enough for the temporaries to stay in cache (a Python loop over
        # blocks, not rows: 8 iterations for 200 000 rows of 10 components).
        block = max(1024, _SAMPLE_BLOCK_ELEMENTS // k)
        if nb <= block:  # one block: no buffers to carve, no index to assemble
            idx = self._block_index(rows, u, top, t, None, one)
            return idx if one and len(shape) == 1 else idx.reshape(shape)
        size = block * k
        buffers = (rows.new_empty(size), rows.new_empty(size)) if one else None
        idx = torch.empty(u_shape, dtype=torch.long, device=rows.device)
        for b0 in range(0, nb, block):
            b1 = b0 + block
            idx[..., b0:b1] = self._block_index(rows[b0:b1], u[..., b0:b1], top, t, buffers, one)
        return idx.reshape(shape)

    def _block_index(
        self,
        rows: Tensor,
        u: Tensor,
        top: float | None,
        t: float,
        buffers: tuple[Tensor, Tensor] | None,
        one: bool,
    ) -> Tensor:
        """Component indices ``(S, C)`` (``(C,)`` if ``one``; int32 for float32 logits) of a
        block of rows ``(C, K)`` from its uniforms ``u`` of that shape: the number of cumulative
        weights below each threshold."""
        cdf = None if top is None else shifted_weights_cdf(rows, top, 1.0 / t, buffers)
        if cdf is None:
            cdf = weights_cdf(rows if t == 1.0 else tempered_logits(rows, t), buffers)  # (K, C)
        total = cdf[-1]
        # Threshold (1 - u) * total with u in [0, 1): in (0, total], so that rounding never
        # picks a component of zero weight; the index counts the cumulative weights below it.
        thr = torch.addcmul(total, u, total, value=-1.0)
        diff = cdf.sub_(thr) if one else cdf.unsqueeze(1) - thr
        if diff.dtype == torch.float32:
            # cdf < threshold exactly when the difference is negative (a difference of unequal
            # floats is never zero): its sign bit, as 0 / -1, summed as int32 (3x faster than
            # int64), is half the cost of a comparison's bool tensor and its sum (the clamp: a
            # NaN weight's sign bit is arbitrary; finite weights need none, as the threshold is
            # at most total)
            sign = diff.view(torch.int32).bitwise_right_shift_(31)
            return sign.sum(0, dtype=torch.int32).neg_().clamp_(max=self._k - 1)
        return (diff < 0).sum(0)

    @torch.no_grad()
    def sample(
        self,
        sample_shape: torch.Size | Sequence[int] = (),
        temperature: TemperatureLike = 1.0,
        sigma_temperature: TemperatureLike = 1.0,
        generator: torch.Generator | int | None = None,
    ) -> Tensor:
        r"""Draw samples, shape ``sample_shape + batch_shape + (D,)``, fully vectorised.

        A component is drawn from :math:`\operatorname{softmax}(\text{logits} / T)` and then a
        point from :math:`\mathcal{N}(\mu_k, S\,\Sigma_k)`, with :math:`T` = ``temperature`` and
        :math:`S` = ``sigma_temperature`` (so the standard deviation scales by :math:`\sqrt S`).
        ``temperature=0`` picks the most likely component, ``inf`` draws uniformly among the
        components of nonzero weight, and ``sigma_temperature=0`` returns the component's mean.
        Both may be tensors broadcastable to ``batch_shape``.

        Args:
            sample_shape: leading shape of the draws.
            temperature: :math:`T \ge 0`.
            sigma_temperature: :math:`S \ge 0`, finite.
            generator: a ``torch.Generator`` or an int seed; the same seed gives the same samples.

        Example:
            >>> m = GaussianMixture(torch.zeros(3), torch.randn(3, 2), torch.ones(3, 2))
            >>> m.sample((5,), temperature=0.5, generator=0).shape
            torch.Size([5, 2])
        """
        shape = self._extended_shape(sample_shape)[:-1]
        loc, k, d = self.loc, self._k, self._d
        gen = (
            generator if type(generator) is torch.Generator else as_generator(generator, loc.device)
        )
        t, s = self._temperatures(temperature, sigma_temperature)
        idx = self._component_index(shape, t, gen)
        # the chosen component's rows: (*shape, 1, C), gathered without broadcasting the
        # parameters to sample_shape first when there is none
        scale = self.scale
        if d == 1 and not isinstance(s, Tensor) and self._batch_shape.numel() > 0:
            return self._sample_1d(shape, idx, s, gen)
        if idx.dtype != torch.long:
            idx = idx.long()
        same = shape == self._batch_shape
        at = idx[..., None, None]
        gather_idx = at if d == 1 else at.expand(*shape, 1, d)
        mean = (loc if same else loc.expand(*shape, k, d)).gather(-2, gather_idx).squeeze(-2)
        if not isinstance(s, Tensor) and s == 0.0:
            return mean
        eps = torch.randn(*shape, d, dtype=loc.dtype, device=loc.device, generator=gen)
        if scale is None:
            gidx = idx[..., None, None, None].expand(*shape, 1, d, d)
            tril = self.scale_tril.expand(*shape, k, d, d).gather(-3, gidx).squeeze(-3)
            noise = (tril @ eps.unsqueeze(-1)).squeeze(-1)
        else:
            c = scale.shape[-1]
            sig = (scale if same else scale.expand(*shape, k, c)).gather(
                -2, gather_idx if c == d else at
            )
            if not isinstance(s, Tensor) and s == 1.0:
                return torch.addcmul(mean, sig.squeeze(-2), eps)  # one pass: mean + sigma * eps
            noise = sig.squeeze(-2) * eps
        if isinstance(s, Tensor):
            noise = noise * s.sqrt().unsqueeze(-1)
        elif s != 1.0:
            noise = noise * math.sqrt(s)
        return mean + noise

    def _sample_1d(self, shape: torch.Size, idx: Tensor, s: float, gen) -> Tensor:
        """:meth:`sample` of 1-D events, with its draws: each chosen component's mean and scale
        picked by their flat index (``take``: twice as fast as ``gather``, and no broadcast of
        the parameters to ``sample_shape``)."""
        loc, n = self.loc, self._batch_shape.numel()
        base = torch.arange(0, n * self._k, self._k, device=loc.device)  # row b starts at b K
        flat = torch.add(idx.reshape(-1, n), base)  # (S, n): index of (row, component)
        mean = loc.take(flat)
        if s == 0.0:
            return mean.view(*shape, 1)
        eps = torch.randn(flat.shape, dtype=loc.dtype, device=loc.device, generator=gen)
        if s != 1.0:
            eps.mul_(math.sqrt(s))
        sig = (self.scale if self.scale is not None else self.scale_tril).take(flat)
        return torch.addcmul(mean, sig, eps).view(*shape, 1)  # one pass: mean + sigma * eps

    def _temperatures(
        self, temperature: TemperatureLike, sigma_temperature: TemperatureLike
    ) -> tuple[float | Tensor, float | Tensor]:
        """The checked temperatures, floats or tensors of the batch (:func:`check_temperature`;
        ``sigma_temperature`` finite: an infinite variance has no samples)."""
        loc, batch = self.loc, self.batch_shape
        t = check_temperature(temperature, "temperature", loc, batch, finite=False)
        s = check_temperature(sigma_temperature, "sigma_temperature", loc, batch, finite=True)
        return t, s

    def with_temperature(
        self, temperature: TemperatureLike = 1.0, sigma_temperature: TemperatureLike = 1.0
    ) -> GaussianMixture:
        r"""The tempered mixture that :meth:`sample` draws from: logits / T, covariances × S.

        Temperature 0 gives all weight to the most likely component and ``inf`` equal weight to
        the components of nonzero weight; ``sigma_temperature`` must be positive and finite here
        (a zero-covariance mixture has no density).
        """
        t, s = self._temperatures(temperature, sigma_temperature)
        if bool((s == 0).any()) if isinstance(s, Tensor) else s == 0:
            raise ValueError("sigma_temperature must be > 0 for a tempered distribution")
        logits = tempered_logits(self._raw_logits, t.unsqueeze(-1) if isinstance(t, Tensor) else t)
        if not isinstance(s, Tensor):
            r = math.sqrt(s)
            if self.scale_tril is not None:
                return GaussianMixture(
                    logits, self.loc, scale_tril=self.scale_tril * r, validate_args=False
                )
            return GaussianMixture(logits, self.loc, self.scale * r, validate_args=False)
        root = s.sqrt()
        if self.scale_tril is not None:
            tril = self.scale_tril * root[..., None, None, None]
            return GaussianMixture(logits, self.loc, scale_tril=tril, validate_args=False)
        return GaussianMixture(
            logits, self.loc, self.scale * root[..., None, None], validate_args=False
        )

    # ------------------------------------------------------------------ moments
    @lazy_property
    def mean(self) -> Tensor:
        r""":math:`\mathbb{E}[y] = \sum_k \pi_k \mu_k`, shape ``batch_shape + (D,)``."""
        return (self.weights.unsqueeze(-1) * self.loc).sum(-2)

    @lazy_property
    def variance(self) -> Tensor:
        r"""Per-dimension variance, by the law of total variance:
        :math:`\sum_k \pi_k (\sigma_{k}^2 + (\mu_k - \bar\mu)^2)`."""
        w = self.weights.unsqueeze(-1)
        dev = self.loc - self.mean.unsqueeze(-2)
        return (w * (self.component_variance + dev.square())).sum(-2)

    @lazy_property
    def covariance_matrix(self) -> Tensor:
        r""":math:`\sum_k \pi_k \big(\Sigma_k + (\mu_k-\bar\mu)(\mu_k-\bar\mu)^\top\big)`, ``(..., D, D)``."""
        w = self.weights[..., None, None]
        dev = self.loc - self.mean.unsqueeze(-2)
        outer = dev.unsqueeze(-1) * dev.unsqueeze(-2)
        return (w * (self.component_covariance + outer)).sum(-3)

    @lazy_property
    def mode(self) -> Tensor:
        r"""The highest-density point, shape ``batch_shape + (D,)``: :meth:`find_mode` with its
        default settings (computed on first use and kept)."""
        return self.find_mode()

    def find_mode(self, max_iter: int = 200, tol: float = 1e-9) -> Tensor:
        r"""The highest-density point, shape ``batch_shape + (D,)``, found by a search whose
        ``max_iter`` and ``tol`` are given here (:attr:`mode` uses the defaults).

        A fixed-point (mean-shift) iteration for the stationary points of a Gaussian mixture,
        :math:`y \leftarrow \big(\sum_k r_k \Sigma_k^{-1}\big)^{-1} \sum_k r_k \Sigma_k^{-1}\mu_k`
        with responsibilities :math:`r_k(y)` (an EM-like ascent of the density), is started
        from every component mean; the point of highest density among the K results is
        returned.  Each start stops on its own once a step moves it by at most
        ``tol * (1 + |y|)`` (or after ``max_iter`` steps), so the work shrinks as starts
        converge.  Runs in float64.
        """
        with torch.no_grad():
            mix = self._to(torch.float64)
            k, d = self._k, self._d
            batch = mix.batch_shape
            nb = batch.numel()
            logits = mix.logits.reshape(nb, k)
            loc = mix.loc.reshape(nb, k, d)
            full = mix.scale_tril is not None
            if full:
                tril = mix.scale_tril.reshape(nb, k, d, d)
                eye = torch.eye(d, dtype=torch.float64, device=loc.device)
                linv = torch.linalg.solve_triangular(tril, eye.expand_as(tril), upper=False)
                prec = linv.transpose(-1, -2) @ linv  # (B, K, D, D)
                prec_mu = (prec @ loc.unsqueeze(-1)).squeeze(-1)
                spread = tril
            else:
                spread = mix.scale.reshape(nb, k, -1)
                prec = spread.square().reciprocal().expand(nb, k, d)  # (B, K, D)
                prec_mu = prec * loc

            def rows_mixture(rows: Tensor) -> GaussianMixture:
                if full:
                    return GaussianMixture(
                        logits[rows], loc[rows], scale_tril=spread[rows], validate_args=False
                    )
                return GaussianMixture(logits[rows], loc[rows], spread[rows], validate_args=False)

            # Starts: every component mean of every batch entry, (B * K, D); start s is in row s // K.
            y = loc.reshape(nb * k, d).clone()
            row_of = torch.arange(nb, device=loc.device).repeat_interleave(k)
            active = torch.arange(nb * k, device=loc.device)
            for _ in range(max_iter):
                if active.numel() == 0:
                    break
                rows = row_of[active]
                ya = y[active]
                r = rows_mixture(rows).posterior(ya).unsqueeze(-1)  # (A, K, 1)
                if full:
                    a = (r.unsqueeze(-1) * prec[rows]).sum(-3)
                    b = (r * prec_mu[rows]).sum(-2)
                    new = torch.linalg.solve(a, b.unsqueeze(-1)).squeeze(-1)
                else:
                    new = (r * prec_mu[rows]).sum(-2) / (r * prec[rows]).sum(-2)
                delta = (new - ya).abs().amax(-1)
                y[active] = new
                # a start that stopped moving, or whose step is not finite, is done
                moving = torch.isfinite(delta) & (delta > tol * (1.0 + new.abs().amax(-1)))
                active = active[moving]
            density = rows_mixture(row_of).log_prob(y).reshape(nb, k)
            best = density.argmax(-1)  # (B,)
            out = y.reshape(nb, k, d).gather(1, best[:, None, None].expand(nb, 1, d))
        return out.reshape(*batch, d).to(self.loc.dtype)

    def _to(self, dtype: torch.dtype) -> GaussianMixture:
        return GaussianMixture(
            self._raw_logits.to(dtype),
            self.loc.to(dtype),
            None if self.scale is None else self.scale.to(dtype),
            None if self.scale_tril is None else self.scale_tril.to(dtype),
            validate_args=False,
        )

    def affine(self, shift: Tensor, scale: Tensor) -> GaussianMixture:
        r"""The mixture of :math:`y = \text{shift} + \text{scale} \odot z` for :math:`z` from this one.

        ``shift`` and ``scale`` (positive) are per output dimension, shape ``(D,)``; ``scale``
        may have one entry for all dimensions, which keeps spherical components spherical (a
        spherical mixture scaled unequally per dimension becomes diagonal).  Used to bring a
        mixture over standardised targets into the data's units:
        :math:`\mu_k \mapsto \text{shift} + s\,\mu_k`, :math:`L_k \mapsto \operatorname{diag}(s) L_k`.
        """
        loc = self.loc * scale + shift
        if self.scale_tril is not None:
            tril = self.scale_tril * scale.reshape(-1, 1)
            return GaussianMixture(self._raw_logits, loc, scale_tril=tril, validate_args=False)
        return GaussianMixture(self._raw_logits, loc, self.scale * scale, validate_args=False)

    def marginal(self, dims: int | Sequence[int]) -> GaussianMixture:
        r"""The marginal mixture over the output dimensions ``dims`` (closed form).

        :math:`p(y_S) = \sum_k \pi_k \mathcal{N}(y_S \mid \mu_{k,S}, \Sigma_{k,SS})`: same weights,
        the selected entries of the means and the selected block of each covariance.
        """
        if isinstance(dims, int):
            dims = [dims]
        dims = list(dims)
        if (
            not dims
            or any(not -self._d <= i < self._d for i in dims)
            or len(set(i % self._d for i in dims)) != len(dims)
        ):
            raise ValueError(f"dims must be distinct indices in [0, {self._d}), found {dims}")
        idx = torch.tensor([i % self._d for i in dims], device=self.loc.device)
        loc = self.loc.index_select(-1, idx)
        if self.scale_tril is not None:
            cov = self.component_covariance.index_select(-1, idx).index_select(-2, idx)
            return GaussianMixture(
                self.logits, loc, scale_tril=torch.linalg.cholesky(cov), validate_args=False
            )
        if self.covariance_type == "spherical":
            return GaussianMixture(self.logits, loc, self.scale, validate_args=False)
        return GaussianMixture(
            self.logits, loc, self.scale.index_select(-1, idx), validate_args=False
        )

    # ------------------------------------------------------------------ 1-D: cdf and quantiles
    def _univariate(self, what: str) -> tuple[Tensor, Tensor, Tensor]:
        if self._d != 1:
            raise ValueError(
                f"{what} is defined for 1-D events only, this mixture has D={self._d}; "
                f"use .marginal(i).{what}(...) for one output dimension"
            )
        # sigma itself, not the square root of a variance that overflows for sigma > 1.8e19
        # in float32
        if self.scale_tril is not None:
            sigma = self.scale_tril[..., 0, 0].abs()
        else:
            sigma = self.scale.expand(self.loc.shape).squeeze(-1)
        return self.logits, self.loc.squeeze(-1), sigma

    def cdf(self, value: Tensor) -> Tensor:
        r""":math:`F(y) = \sum_k \pi_k \Phi\big((y-\mu_k)/\sigma_k\big)` for 1-D events.

        ``value`` has shape ``(..., 1)`` (the event shape, like :meth:`log_prob`); the result has
        shape ``broadcast(value.shape[:-1], batch_shape)``.
        """
        logits, mu, sigma = self._univariate("cdf")
        y = self._check_value(value).to(torch.float64)
        z = (y - mu.double()) / sigma.double()
        out = (logits.double().exp() * torch.special.ndtr(z)).sum(-1)
        return out.clamp(0.0, 1.0).to(self.loc.dtype)

    def icdf(self, value: Tensor, tol: float = 1e-10, max_iter: int = 100) -> Tensor:
        r"""Quantile function :math:`F^{-1}(q)` for 1-D events, vectorised.

        ``value`` holds probabilities, shape broadcastable to ``batch_shape``; the result has shape
        ``broadcast(value.shape, batch_shape) + (1,)``.  The root of :math:`F(y) = q` is bracketed
        by the components' own quantiles, :math:`\min_k` and :math:`\max_k` of
        :math:`\mu_k + \sigma_k\Phi^{-1}(q)`, and found by Newton steps safeguarded with bisection,
        in float64, to ``tol`` times min(q, 1 - q) in probability (well below 1e-6 in value for any
        sane scale).
        ``q = 0`` and ``q = 1`` give ``-inf`` and ``+inf``.
        """
        logits, mu, sigma = self._univariate("icdf")
        q = torch.as_tensor(value, device=mu.device).to(torch.float64)
        if torch.isnan(q).any() or (q < 0).any() or (q > 1).any():
            raise ValueError("icdf expects probabilities in [0, 1]")
        w_g, mu_g, sigma_g = logits.double().exp(), mu.double(), sigma.double()
        w, mu, sigma = w_g.detach(), mu_g.detach(), sigma_g.detach()
        shape = broadcast_shapes(q.shape, self.batch_shape)
        q = q.expand(shape)
        qc = q.clamp(1e-300, 1 - 1e-16).unsqueeze(-1)
        zq = torch.special.ndtri(qc)
        comp_q = mu + sigma * zq  # (..., K)
        # Components of zero weight do not bound the root.
        big = torch.finfo(torch.float64).max
        lo = torch.where(w > 0, comp_q, torch.full_like(comp_q, big)).amin(-1)
        hi = torch.where(w > 0, comp_q, torch.full_like(comp_q, -big)).amax(-1)
        y = 0.5 * (lo + hi)
        qv = q
        # Tolerance relative to the tail probability, so that far tails are found to 1e-6 in value.
        tol_q = tol * torch.minimum(q, 1 - q).clamp_min(1e-300)
        for _ in range(max_iter):
            z = (y.unsqueeze(-1) - mu) / sigma
            f = (w * torch.special.ndtr(z)).sum(-1) - qv
            pdf = (w * torch.exp(-0.5 * z.square()) / (sigma * math.sqrt(2 * math.pi))).sum(-1)
            lo = torch.where(f < 0, y, lo)
            hi = torch.where(f >= 0, y, hi)
            newton = y - f / pdf
            ok = (newton >= lo) & (newton <= hi) & torch.isfinite(newton)
            done = f.abs() <= tol_q
            # Converged entries stay where they are (a rejected Newton step there would jump to
            # the middle of the bracket); the others take a Newton step or bisect.
            y_new = torch.where(done, y, torch.where(ok, newton, 0.5 * (lo + hi)))
            step = (y_new - y).abs()
            y = y_new
            width = sigma.amin(-1)
            if bool((done | (step <= 1e-13 * (width + y.abs()))).all()):
                break
        if w_g.requires_grad or mu_g.requires_grad or sigma_g.requires_grad:
            # One Newton step at the root, with a graph: its value is the root (F(y) = q there) and
            # its gradient is the implicit one, dy/dθ = -(∂F/∂θ) / p(y), without differentiating
            # through the iterations.
            z = (y.unsqueeze(-1) - mu_g) / sigma_g
            f = (w_g * torch.special.ndtr(z)).sum(-1) - qv
            pdf = (w_g * torch.exp(-0.5 * z.square()) / (sigma_g * math.sqrt(2 * math.pi))).sum(-1)
            inner = (q > 0) & (q < 1)
            y = torch.where(inner, y - f / torch.where(inner, pdf, torch.ones_like(pdf)), y)
        y = torch.where(q == 0, torch.full_like(y, -math.inf), y)
        y = torch.where(q == 1, torch.full_like(y, math.inf), y)
        return y.unsqueeze(-1).to(self.loc.dtype)

    def quantile(self, q: float | Sequence[float] | Tensor) -> Tensor:
        """Quantiles ``q`` (a float or a 1-D list) of a 1-D mixture, shape ``q.shape + batch_shape + (1,)``."""
        qt = torch.as_tensor(q, dtype=torch.float64, device=self.loc.device)
        return self.icdf(qt.reshape(qt.shape + (1,) * len(self.batch_shape)))

    def interval(self, coverage: float = 0.9) -> tuple[Tensor, Tensor]:
        """Central interval holding ``coverage`` of the probability, for 1-D mixtures."""
        if not 0 < coverage < 1:
            raise ValueError(f"coverage must be in (0, 1), found {coverage}")
        a = (1 - coverage) / 2
        return self.icdf(torch.full(self.batch_shape, a)), self.icdf(
            torch.full(self.batch_shape, 1 - a)
        )

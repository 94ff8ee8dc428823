r"""Component-major CPU kernels: the arithmetic of a Gaussian mixture, shared by the
distribution (:class:`~mdnkit.GaussianMixture`) and the fast training step (:mod:`mdnkit.fast`).

**The layout, and why.**  A mixture's parameters arrive row-major, ``(..., K, D)``: the batch in
front and the tiny component (K, often 3 to 30) and event (D, often 1 to 3) axes innermost.  On a
CPU that is the slow order for the work a mixture needs: an elementwise operation that broadcasts
over an innermost axis of length 2, or a reduction over an innermost axis of length 10, runs
several times slower than the same arithmetic along one long contiguous axis.  These kernels
therefore work **component-major**, on ``(K, C, B)`` tensors with the flattened batch ``B``
innermost (:func:`to_component_major`, :func:`from_component_major`): every operation is then a
few long vector loops, sums over K are additions of contiguous rows, and sums over a short D are
unrolled into additions (:func:`sum_last`, :func:`sum_dim1`).  The fast training step gets this
layout for free: its network runs transposed, so the head's output ``(P, N)`` is already
component-major.

**What they compute.**  For a diagonal or spherical mixture with raw logits :math:`l_k`, scales
:math:`\sigma_k` and standardised residuals :math:`z_k = (y - \mu_k) / \sigma_k`
(:func:`diagonal_mixture_lse`):

.. math::

    \log p(y) + \tfrac D2 \log 2\pi = \operatorname{lse}_k (l_k + c_k) - \operatorname{lse}_k l_k,
    \qquad c_k = -\textstyle\sum_d \log\sigma_{kd} - \tfrac12 \lVert z_k \rVert^2 .

**The log-sum-exp, stably** (:func:`shifted_exp_sum`): with :math:`m = \max_k a_k`,
:math:`\operatorname{lse}_k a_k = m + \log \sum_k e^{a_k - m}`.  Every exponent is at most 0, so
nothing overflows, and the largest term is 1, so the sum never underflows to 0; a column that is
all :math:`-\infty` gives :math:`-\infty`, not NaN.  Exponents below :data:`EXP_FLOOR` count as
exactly zero, so that no subnormal float (ten times slower arithmetic on a CPU) reaches the
products downstream.

**Its gradient** is the softmax of its arguments, :math:`\partial\operatorname{lse}/\partial a_k =
e^{a_k - m} / \sum_j e^{a_j - m}`: the shifted exponentials the value was computed from, divided
by their sum.  So the backward pass (:func:`diagonal_mixture_grad`) reuses the forward pass's
pieces: with responsibilities :math:`r_k = p(k \mid y)` and weights :math:`\pi_k`,
:math:`\partial/\partial l_k = r_k - \pi_k`,
:math:`\partial/\partial \mu_k = r_k z_k / \sigma_k`,
:math:`\partial/\partial \sigma_k = r_k (z_k^2 - 1) / \sigma_k` (summed over d for a spherical
:math:`\sigma_k`) and :math:`\partial/\partial y = -\sum_k r_k z_k / \sigma_k`.
:class:`DiagonalMixtureLogProb` wraps the two as an autograd function on row-major tensors.

**Sampling.**  :func:`shifted_weights_cdf` gives the cumulative mixture weights the
distribution's sampler draws components from by inverse CDF, component-major too: every row
shifted by one number (:func:`shared_shift`) and exponentiated by ``exp2``, half the cost of
``exp``; where one shift does not serve (logits far apart, or not finite), :func:`weights_cdf`
shifts row by row.  :func:`draw_components` is the same draw row-major, in a handful of
operations, for few draws.

Example:
    >>> import torch
    >>> logits = torch.tensor([[0.0], [0.0]])  # (K, B): two equal weights, one row
    >>> z, inv = torch.zeros(2, 1, 1), torch.ones(2, 1, 1)  # y on both means, unit scales
    >>> lse, _ = diagonal_mixture_lse(logits, z, inv)
    >>> float(lse)  # log p(y) + log(2 pi) / 2, with p(y) = N(0 | 0, 1)
    0.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "broadcast_shapes",
    "LOG_2PI",
    "UNROLL_MAX_D",
    "EXP_FLOOR",
    "sum_last",
    "sum_dim1",
    "diagonal_terms",
    "to_component_major",
    "from_component_major",
    "shifted_exp_sum",
    "diagonal_mixture_lse",
    "diagonal_mixture_grad",
    "DiagonalMixtureLogProb",
    "cumsum_component_major",
    "weights_cdf",
    "LOG2_E",
    "SHARED_SHIFT_ROWS",
    "shared_shift",
    "shifted_weights_cdf",
    "draw_components",
]

#: :math:`\log 2\pi`, the Gaussian normalising constant per dimension (times 1/2)
LOG_2PI = math.log(2.0 * math.pi)

#: :math:`\log_2 e`: :math:`e^x = 2^{x \log_2 e}`, and ``exp2`` costs about half of ``exp`` on a CPU
LOG2_E = 1.0 / math.log(2.0)

#: the shift that :func:`shifted_weights_cdf` gives all rows is the largest logit of the first
#: this many rows (the smallest block a sampler works in, so that blocks do not change it)
SHARED_SHIFT_ROWS = 1024

_SHARED_LOW, _SHARED_HIGH = math.exp(-40.0), math.exp(40.0)

#: sums over a last (or second) dimension up to this long are unrolled into additions
UNROLL_MAX_D = 8

#: exponents below this count as -inf: e^-60 ≈ 1e-26 beside a largest term of 1 changes no
#: float64 sum, and it keeps every product downstream clear of subnormal floats (below ~1e-38
#: in float32), whose arithmetic is ten times slower on the CPU
EXP_FLOOR = -60.0


def broadcast_shapes(*shapes: Sequence[int]) -> torch.Size:
    """The shape the given shapes broadcast to, as ``torch.broadcast_shapes`` gives it (and the
    same ``RuntimeError`` when they do not), without its first call's import of sympy (about
    30 MB and a second of start-up, which every short command would pay)."""
    n = max((len(s) for s in shapes), default=0)
    out = [1] * n
    for shape in shapes:
        for i, d in enumerate(shape, n - len(shape)):
            if d != 1:
                if out[i] not in (1, d):
                    raise RuntimeError(
                        f"shape mismatch: the shapes {[tuple(s) for s in shapes]} do not broadcast"
                    )
                out[i] = d
    return torch.Size(out)


def sum_last(t: Tensor) -> Tensor:
    """``t.sum(-1)``, unrolled for a short last dimension (CPU reductions over a tiny innermost
    dimension are several times slower than the same number of elementwise additions)."""
    n = t.shape[-1]
    if n > UNROLL_MAX_D:
        return t.sum(-1)
    if n == 1:  # (a squeeze is the cheapest view)
        return t.squeeze(-1)
    out = t[..., 0]
    for i in range(1, n):
        out = out + t[..., i]
    return out


def sum_dim1(t: Tensor) -> Tensor:
    """``t.sum(1)``, unrolled for a short second dimension (D is small in most MDNs)."""
    n = t.shape[1]
    if n > UNROLL_MAX_D:
        return t.sum(1)
    if n == 1:  # (a squeeze is the cheapest view)
        return t.squeeze(1)
    out = t[:, 0]
    for i in range(1, n):
        out = out + t[:, i]
    return out


def diagonal_terms(loc: Tensor, scale: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""Row-major pieces of diagonal/spherical component densities: ``(z, 1/scale, c)``.

    ``loc`` ``(..., K, D)``, ``scale`` ``(..., K, D or 1)``, ``y`` ``(..., 1, D)``; ``z`` the
    standardised residuals and :math:`c_k = -\sum_d \log\sigma_{kd} - \tfrac12\lVert z_k\rVert^2`,
    the component log-densities without the :math:`-\tfrac D2\log 2\pi` term, ``(..., K)``.
    """
    inv = scale.reciprocal()
    z = (y - loc) * inv
    d = loc.shape[-1]
    log_det = sum_last(inv.log()) if scale.shape[-1] == d else d * inv[..., 0].log()
    return z, inv, log_det - 0.5 * sum_last(z * z)


def to_component_major(t: Tensor, batch: torch.Size) -> Tensor:
    """``(*b, K, C)`` -> contiguous ``(K, C, B)`` with ``B = prod(batch)`` (the batch dims broadcast).

    Elementwise work and reductions over K then run along a long contiguous innermost dimension
    (B), which is several times faster on CPU than broadcasting over a tiny innermost D or
    reducing over a tiny innermost K; and the way back (:func:`from_component_major`) copies
    contiguous runs of C.
    """
    k, c = t.shape[-2], t.shape[-1]
    t = t.expand(*batch, k, c)
    n = len(batch)
    return t.permute(n, n + 1, *range(n)).contiguous().reshape(k, c, -1)


def from_component_major(g: Tensor, batch: torch.Size, shape: torch.Size) -> Tensor:
    """Inverse of :func:`to_component_major` for a gradient ``(K, C, B)``, summed to ``shape``
    (the row-major shape of the tensor that was broadcast to ``batch``)."""
    n = len(batch)
    k, c = g.shape[0], g.shape[1]
    if tuple(shape[:-2]) == tuple(batch):
        # nothing to sum: one 2-D transpose (K C, B) -> (B, K C), which torch copies in cache
        # blocks, twice as fast as the 3-D permute; and the result is contiguous, so autograd
        # need not copy it again to accumulate it into a parameter's gradient
        return g.reshape(k * c, -1).t().contiguous().view(shape)
    g = g.reshape(k, c, *batch)
    lead = (1,) * (n - (len(shape) - 2)) + tuple(shape[:-2])
    g = g.sum_to_size(k, c, *lead)
    return g.permute(*range(2, n + 2), 0, 1).reshape(shape)


def shifted_exp_sum(
    a: Tensor, overwrite: bool = False, finite: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """``(exp(a - m), sum_k exp(a_k - m), m)`` with ``m = max_k a_k`` over dim 0 of ``(K, B)``.

    ``log(s) + m`` is the log-sum-exp; columns that are all ``-inf`` give ``-inf`` (not NaN).
    Terms at or below ``e^EXP_FLOOR`` are exactly 0; NaN stays NaN.  Differentiable (twice)
    when ``a`` requires a gradient and grad mode is on; otherwise it works in place on its
    temporaries, and on ``a`` itself if ``overwrite`` (``a`` is a temporary of the caller's).
    ``finite``: the caller knows every column's maximum is finite (finite logits, say), so the
    guard that makes an all ``-inf`` column give ``-inf`` is skipped (such a column gives NaN).
    """
    m = a.amax(0)
    if not finite:
        m = m.nan_to_num(0.0, 0.0, 0.0)
    if torch.is_grad_enabled() and a.requires_grad:  # (double backward) differentiable ops
        return _exp_sum(F.threshold(a - m, EXP_FLOOR, -math.inf).exp(), m)
    d = a.sub_(m) if overwrite else a - m
    # d <= EXP_FLOOR -> -inf, so its exponential is exactly 0 (and NaN stays NaN)
    return _exp_sum(F.threshold_(d, EXP_FLOOR, -math.inf).exp_(), m)


def _exp_sum(e: Tensor, m: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return e, e.sum(0), m


def diagonal_mixture_lse(
    logits: Tensor, z: Tensor, inv: Tensor, finite_logits: bool = False
) -> tuple[Tensor, tuple[Tensor, ...]]:
    r""":math:`\log p(y) + \tfrac D2\log 2\pi` of diagonal/spherical mixtures, component-major.

    ``logits`` ``(K, B)`` raw (unnormalised) logits, ``z`` ``(K, D, B)`` standardised residuals
    :math:`(y - \mu_k)/\sigma_k`, ``inv`` ``(K, C, B)`` :math:`1/\sigma` (``C`` = D, or 1 for
    spherical components).  Returns the ``(B,)`` value
    :math:`\operatorname{lse}_k(l_k + c_k) - \operatorname{lse}_k l_k` and the pieces
    :func:`diagonal_mixture_grad` needs, ``(e_l, s_l, e_a, s_a, zz)``: the
    :func:`shifted_exp_sum` exponentials and sums of the logits and of :math:`a = l + c`, and,
    for spherical components, the squared norms :math:`\lVert z_k\rVert^2` ``(K, B)`` (which
    their scales' gradient reuses; None for diagonal ones).  Leaves its inputs untouched.
    ``finite_logits``: every logit is finite (a linear layer's output, as in the fast training
    step), so the logits' log-sum-exp skips the guard for columns that are all ``-inf``
    (masked components); the densities' log-sum-exp keeps it.
    """
    d = z.shape[1]
    log_inv = inv.log()
    log_det = sum_dim1(log_inv) if inv.shape[1] == d else d * log_inv[:, 0]
    zz = sum_dim1(z * z)
    e_l, s_l, m_l = shifted_exp_sum(logits, finite=finite_logits)
    # a = (l - m_l) + (log_det - |z|^2 / 2), in place on temporaries (log's backward needs its
    # input only): the logits are shifted by their maximum before the densities' terms are
    # added, so that large logits (1e7 in float32, say) do not swamp those terms.
    a = torch.sub(logits, m_l).add_(log_det.add_(zz, alpha=-0.5))
    e_a, s_a, m_a = shifted_exp_sum(a, overwrite=True)
    spherical_zz = zz if inv.shape[1] != d else None
    return (s_a / s_l).log() + m_a, (e_l, s_l, e_a, s_a, spherical_zz)


def diagonal_mixture_grad(
    grad: Tensor | float,
    z: Tensor,
    inv: Tensor,
    pieces: tuple[Tensor, ...],
    out: tuple[Tensor, Tensor] | None = None,
    overwrite: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Gradients of ``grad`` times :func:`diagonal_mixture_lse`, component-major.

    ``grad``: the incoming gradient, ``(B,)`` or a number; ``z``, ``inv`` and ``pieces`` as given
    to and returned by :func:`diagonal_mixture_lse`.  Returns the gradients with respect to the
    logits ``(K, B)``, the means ``(K, D, B)`` and the scales ``(K, C, B)``:
    :math:`g(r_k - \pi_k)`, :math:`g\,r_k z_k/\sigma_k` and :math:`g\,r_k(z_k^2 - 1)/\sigma_k`
    (summed over d for spherical scales); the gradient with respect to ``y`` is minus the sum of
    the second over K.  ``out``: optional tensors to write the first two into (no autograd then);
    ``overwrite``: the exponentials in ``pieces`` are temporaries that may be overwritten.
    Differentiable when given tensors that require a gradient (and no ``out``).
    """
    e_l, s_l, e_a, s_a, zz = pieces
    d = z.shape[1]
    r, pi = _times_softmax(grad, e_a, s_a, overwrite), _times_softmax(grad, e_l, s_l, overwrite)
    # r (K, B): responsibilities times the incoming gradient; pi: the weights times it
    d_logits = torch.sub(r, pi, out=None if out is None else out[0])
    del pi  # (a full-size temporary: not kept alive while the larger ones below are made)
    r1 = r.unsqueeze(1)
    buf = None if out is None else out[1]
    # r multiplies first: a component of no weight (r = 0) gets a zero gradient even when its
    # z / sigma or |z|^2 overflows (a tiny sigma far from y), not 0 * inf = NaN
    if inv.shape[1] == d:
        # in place on temporaries: two full-size (K, D, B) buffers, not three
        rzi = torch.mul(z, r1, out=buf).mul_(inv)  # r z / sigma
        d_scale = (r1 * inv).neg_().addcmul_(rzi, z)  # r z^2 / sigma - r / sigma
    else:  # r (|z|^2 - D) / sigma, with r / sigma (K, 1, B) and |z|^2 from the forward pass
        assert zz is not None
        ri = r1 * inv
        rzi = torch.mul(z, ri, out=buf)
        d_scale = zz.clamp(max=torch.finfo(zz.dtype).max).sub_(d).unsqueeze(1).mul_(ri)
    return d_logits, rzi, d_scale


def _times_softmax(grad: Tensor | float, e: Tensor, s: Tensor, overwrite: bool) -> Tensor:
    """``grad * e / s`` (``e`` ``(K, B)``, ``s`` ``(B,)``), in place on ``e`` if ``overwrite``."""
    if isinstance(grad, Tensor):
        return e * (grad / s)
    out = e.div_(s) if overwrite else e / s
    return out if grad == 1.0 else out.mul_(grad)


def _diagonal_core(
    logits: Tensor, loc: Tensor, scale: Tensor, y: Tensor
) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, ...], torch.Size]:
    """Row-major inputs -> component-major ``(lse, z, inv, pieces, batch)`` (differentiable)."""
    batch = broadcast_shapes(logits.shape[:-1], loc.shape[:-2], scale.shape[:-2], y.shape[:-2])
    lt = to_component_major(logits.unsqueeze(-1), batch)[:, 0]  # (K, B)
    inv = to_component_major(scale, batch).reciprocal()  # (K, C, B)
    z = (to_component_major(y, batch) - to_component_major(loc, batch)).mul_(inv)  # (K, D, B)
    # an overflowed z (a tiny sigma far from y) as the largest finite float: the same density
    # (|z|^2 is inf either way), and a finite factor in the gradient (0, the component's weight)
    big = torch.finfo(z.dtype).max
    z = z.clamp_(-big, big)
    lse, pieces = diagonal_mixture_lse(lt, z, inv)
    return lse, z, inv, pieces, batch


class DiagonalMixtureLogProb(torch.autograd.Function):
    r"""``log p(y)`` of diagonal or spherical mixtures, with a hand-written backward pass.

    ``apply(logits, loc, scale, y)`` with row-major ``logits`` ``(..., K)`` (raw), ``loc``
    ``(..., K, D)``, ``scale`` ``(..., K, D or 1)`` and ``y`` ``(..., 1, D)``, broadcasting; the
    result has the broadcast batch shape.  Computed component-major by
    :func:`diagonal_mixture_lse` and :func:`diagonal_mixture_grad` (module docstring).  Saved
    for the backward pass: the residuals, inverse scales and the shifted exponentials of the two
    log-sum-exps (about the size of the inputs), so the backward is a handful of elementwise
    products.  It is made of differentiable operations (recomputed from the inputs when a graph
    is requested), so higher derivatives work too.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, loc: Tensor, scale: Tensor, y: Tensor) -> Tensor:
        lse, z, inv, pieces, batch = _diagonal_core(logits, loc, scale, y)
        ctx.batch = batch
        ctx.shapes = (logits.shape, loc.shape, scale.shape, y.shape)
        ctx.save_for_backward(logits, loc, scale, y, z, inv, *pieces)
        return (lse - 0.5 * loc.shape[-1] * LOG_2PI).reshape(batch)

    @staticmethod
    def backward(ctx, grad: Tensor):
        logits, loc, scale, y, z, inv, *pieces = ctx.saved_tensors
        batch = ctx.batch
        if torch.is_grad_enabled():  # create_graph=True: recompute with a graph to the inputs
            _, z, inv, pieces, _ = _diagonal_core(logits, loc, scale, y)
        g = grad.expand(batch).reshape(-1)
        d_logits, rzi, d_scale = diagonal_mixture_grad(g, z, inv, tuple(pieces))
        l_shape, m_shape, s_shape, y_shape = ctx.shapes
        d_y = None
        if ctx.needs_input_grad[3]:
            d_y = from_component_major(-rzi.sum(0, keepdim=True), batch, y_shape)
        # one gradient at a time to the row-major layout, each component-major one let go as
        # soon as it is copied: the peak holds one of them twice, not all three
        d_logits = from_component_major(d_logits.unsqueeze(1), batch, l_shape + (1,))
        d_loc = from_component_major(rzi, batch, m_shape)
        del rzi
        d_scale = from_component_major(d_scale, batch, s_shape)
        return d_logits.reshape(l_shape), d_loc, d_scale, d_y


_TRIANGLES: dict[tuple, Tensor] = {}


def _triangle(k: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The ``(k, k)`` lower triangle of ones, made once per (k, dtype, device) and kept (a
    constant: two fewer operations for every draw of few rows)."""
    key = (k, dtype, device)
    tri = _TRIANGLES.get(key)
    if tri is None:
        with torch.inference_mode(False), torch.no_grad():  # a plain tensor, whatever the mode
            tri = torch.ones(k, k, dtype=dtype, device=device).tril_()
        if len(_TRIANGLES) < 64:
            _TRIANGLES[key] = tri
    return tri


def cumsum_component_major(p: Tensor, out: Tensor | None = None) -> Tensor:
    """Cumulative sums over the last (component) dimension of ``p`` ``(..., K)``, as ``(K, B)``.

    One matrix product of a triangle of ones with ``p`` flattened to ``(B, K)`` and transposed
    (a free view for BLAS): the comparisons and the count that follow then run along the long
    contiguous dimension B.  Each entry is accumulated in index order, so the result is exactly
    nondecreasing in k for nonnegative ``p`` (zero terms add exactly nothing).  ``out``: a
    buffer of at least ``p.numel()`` elements to write into.
    """
    k = p.shape[-1]
    p = p.reshape(-1, k)
    if k > 64 or p.dtype not in (torch.float32, torch.float64):
        return p.cumsum(-1).t()
    tri = _triangle(k, p.dtype, p.device)
    if out is None:
        return tri @ p.t()
    return torch.mm(tri, p.t(), out=out.view(-1)[: p.numel()].view(k, -1))


def weights_cdf(scaled: Tensor, buffers: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Cumulative unnormalised weights ``(K, C)`` of logits ``scaled`` ``(C, K)``.

    The weights are exp(a - m) with the exponent clamped at -87 (float32; -708 for float64) so
    that no weight is subnormal (subnormals make the matrix product crawl).  m is first the
    maximum over the whole block (a fast reduction); only if some row's total weight then falls
    below e^-40 are the weights redone with each row's own maximum.  So every row's largest
    weight is at least e^-40 / K, and a clamped weight (e^-87, zero-weight components included)
    is at most K e^-47 of it: it can never be drawn, since the sampling threshold is at least
    2^-24 of the row total (float32 draws) and, added to a larger cumulative sum, it rounds away.
    ``buffers``: two buffers of at least ``scaled.numel()`` elements, reused across calls.
    """
    floor = -87.0 if scaled.dtype != torch.float64 else -708.0
    top = scaled.amax().nan_to_num(0.0, 0.0, 0.0)
    if buffers is None:
        w, out = scaled - top, None
    else:  # reused across blocks: no fresh pages to fault in for every block
        w = torch.sub(scaled, top, out=buffers[0].view(-1)[: scaled.numel()].view(scaled.shape))
        out = buffers[1]
    cdf = cumsum_component_major(w.clamp_min_(floor).exp_(), out)
    if not bool(cdf[-1].amin() >= math.exp(-40.0)):
        arg = scaled - scaled.amax(-1, keepdim=True).nan_to_num_(0.0, 0.0, 0.0)
        cdf = cumsum_component_major(arg.clamp_min_(floor).exp_())
    return cdf


def shared_shift(rows: Tensor) -> float | None:
    """The shift of :func:`shifted_weights_cdf`: the largest of the first
    :data:`SHARED_SHIFT_ROWS` rows' logits (the same whatever the blocks a caller works in), or
    None when it is not finite (a NaN or infinite logit there)."""
    if rows.numel() == 0:
        return None
    top = float(rows[:SHARED_SHIFT_ROWS].amax())
    return top if math.isfinite(top) else None


def shifted_weights_cdf(
    rows: Tensor, top: float, inv_t: float, buffers: tuple[Tensor, Tensor] | None = None
) -> Tensor | None:
    r"""Cumulative unnormalised weights ``(K, C)`` of ``softmax(rows * inv_t)``, ``rows``
    ``(C, K)``, all shifted by one number ``top`` (:func:`shared_shift`); None when some row's
    total weight falls outside :math:`[e^{-40}, e^{40}]` (logits too far from ``top`` for one
    shift, or not finite: the caller then uses :func:`weights_cdf`).

    The weights are :math:`2^{(l - \mathrm{top}) \log_2 e / t}`, with ``inv_t`` = 1/t, by
    ``exp2`` (about half the cost of ``exp`` on a CPU; the difference is taken first, so the
    weights are exact to rounding for logits of any size).  No row-wise maximum, no clamp:
    every row's total lies in :math:`[e^{-40}, e^{40}]` (checked, in one pass over the totals),
    so nothing overflows and every row has weight to draw from, the guarantee
    :func:`weights_cdf` checks for.  ``buffers``: as :func:`weights_cdf`'s.
    """
    if buffers is None:
        w, out = rows - top, None
    else:
        w = torch.sub(rows, top, out=buffers[0].view(-1)[: rows.numel()].view(rows.shape))
        out = buffers[1]
    cdf = cumsum_component_major(w.mul_(inv_t * LOG2_E).exp2_(), out)
    lo, hi = torch.stack(torch.aminmax(cdf[-1])).tolist()
    if lo >= _SHARED_LOW and hi <= _SHARED_HIGH:  # (NaN compares false)
        return cdf
    return None


def draw_components(scaled: Tensor, shape: torch.Size, generator) -> Tensor:
    """Component indices of shape ``shape`` from softmax(``scaled``) ``(..., K)``, by inverse CDF.

    Row-major, in a handful of operations: the sampler of
    :class:`~mdnkit.PerDimensionMixture`, and :class:`~mdnkit.GaussianMixture`'s for few draws
    (many go by :func:`weights_cdf` in component-major blocks).  ``shape`` ends with
    ``scaled.shape[:-1]``; its leading dimensions are independent draws.  The threshold
    ``(1 - u) * total`` with ``u`` in [0, 1) lies in (0, total], so a component of zero weight
    is never drawn (its cumulative weight equals that of the one before it).
    """
    top = scaled.amax(-1, keepdim=True).nan_to_num(0.0, 0.0, 0.0)
    cdf = (scaled - top).exp_().cumsum(-1)
    total = cdf[..., -1]
    u = torch.rand(shape, dtype=cdf.dtype, device=cdf.device, generator=generator)
    thr = torch.addcmul(total, u, total, value=-1.0).unsqueeze(-1)
    if thr.shape[:-1] == cdf.shape[:-1]:  # one draw per row: a binary search, twice as fast
        idx = torch.searchsorted(cdf.contiguous(), thr).squeeze(-1)
    else:  # the index is the number of cumulative weights below the threshold
        idx = (cdf < thr).sum(-1)
    return idx.clamp_(max=scaled.shape[-1] - 1)

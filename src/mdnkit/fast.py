r"""Training without autograd: the seam :func:`~mdnkit.fit` offers models, and the MDN's step.

**The seam.**  A model may offer ``fit`` a training step that needs no autograd by defining a
method ``fast_step(*data) -> FastStep | None``: given the in-memory training tensors (the same
tuple ``model.loss(*batch)`` takes batches of), it returns an object with the
:class:`FastStep` surface, or None where its formulas do not hold (``fit`` then runs autograd
on ``model.loss``).  ``fit`` then

1. calls ``step.prepare(*data)`` once: the tensors in the form the step takes (for
   :class:`~mdnkit.MDN`, standardised), which ``fit`` shuffles and slices into batches;
2. gives the optimiser ``step.parameters`` (leaf tensors whose ``.grad`` the step writes);
3. runs every epoch inside ``with step.attached():`` (between entering and leaving, the model's
   own parameters may be views of the step's buffers; on leaving they get their storage back);
4. calls ``loss = step(*batch)`` per batch: the mean loss (a 0-dim tensor, the same value as
   ``model.loss(*batch)``), its gradient written over (not added to) ``.grad``.

**The MDN's step** (:class:`MLPFastStep`).  A training step of a small MDN on the CPU is dominated by the fixed cost of each PyTorch
operation (a few microseconds), not by arithmetic, so this module does the step in as few
operations as it can:

* **component-major layout**: the network runs transposed, :math:`H^\top = f(W H^\top + b)`,
  so the head's output is ``(P, N)`` and the means, scales and logits are contiguous row
  blocks (views, no copies), reduced over the component axis;
* **one parameter buffer**: the model's parameters become views of one flat tensor (and their
  gradients views of one flat gradient), so clipping is one norm and the optimiser updates
  one tensor;
* **gradients formed in the forward pass** from its intermediate values, written straight
  into the gradient buffer (``out=``), and back-propagated through the MLP with one kernel
  per activation derivative;
* **in NumPy on the CPU** (ReLU and tanh networks, batches up to
  :attr:`MLPFastStep.numpy_max_rows`): the same formulas on NumPy views of the flat buffers,
  into buffers kept per batch size.  On ``(10, 128)`` arrays a NumPy call costs about half a
  PyTorch call, a small matrix product a third, and a NumPy call given arrays rather than
  Python numbers less again; the course network's step takes about 60 NumPy calls and a third
  of the PyTorch step's time.  The two paths give the same loss and gradients to rounding
  (softplus scales: NumPy's is exact above 20, where PyTorch's returns its argument, 2e-9 off).

:func:`nll_component_major` is also the fused loss behind :meth:`MDN.loss` (through
:class:`FlatDiagonalNLL`), so the two paths share one implementation of the formulas.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .head import MDNHead
from .kernels import EXP_FLOOR, LOG_2PI, diagonal_mixture_grad, diagonal_mixture_lse

__all__ = [
    "FastStep",
    "FlatParameters",
    "MLPFastStep",
    "FlatDiagonalNLL",
    "flat_nll",
    "nll_component_major",
]

_aten = torch.ops.aten

# activation module type -> its (function, whether it works in place, backward kernel taking
# (grad, output, input)), built with the module's own settings.  In-place ones are written
# over their input, whose value the backward then does not need.
ACTIVATIONS: dict[type[nn.Module], Callable[[Any], tuple[Callable, bool, Callable]]] = {
    nn.ReLU: lambda m: (torch.relu_, True, lambda g, a, z: _aten.threshold_backward(g, a, 0)),
    nn.Tanh: lambda m: (torch.tanh_, True, lambda g, a, z: _aten.tanh_backward(g, a)),
    nn.Sigmoid: lambda m: (torch.sigmoid_, True, lambda g, a, z: _aten.sigmoid_backward(g, a)),
    nn.ELU: lambda m: (
        lambda z: F.elu(z, m.alpha),
        False,
        lambda g, a, z: _aten.elu_backward(g, m.alpha, 1.0, 1.0, True, a),
    ),
    nn.SiLU: lambda m: (F.silu, False, lambda g, a, z: _aten.silu_backward(g, z)),
    nn.GELU: lambda m: (
        lambda z: F.gelu(z, approximate=m.approximate),
        False,
        lambda g, a, z: _aten.gelu_backward(g, z, approximate=m.approximate),
    ),
    nn.Softplus: lambda m: (
        lambda z: F.softplus(z, m.beta, m.threshold),
        False,
        lambda g, a, z: _aten.softplus_backward(g, z, m.beta, m.threshold),
    ),
    nn.LeakyReLU: lambda m: (
        lambda z: F.leaky_relu(z, m.negative_slope),
        False,
        lambda g, a, z: _aten.leaky_relu_backward(g, z, m.negative_slope, False),
    ),
}


class FastStep(Protocol):
    """What a model's ``fast_step(*data)`` returns to :func:`~mdnkit.fit` (see the module
    docstring for the order in which ``fit`` uses it)."""

    #: the leaf tensors the optimiser updates; the step writes their ``.grad``
    parameters: list[nn.Parameter]

    def prepare(self, *data: Tensor) -> tuple[Tensor, ...]:
        """The training tensors in the form :meth:`__call__` takes batches of."""
        ...

    def attached(self) -> contextlib.AbstractContextManager:
        """A context inside which the steps run (and outside which the model is untouched)."""
        ...

    def __call__(self, *batch: Tensor) -> Tensor:
        """One batch: the mean loss (0-dim), gradients written into the parameters' ``.grad``."""
        ...


def nll_component_major(
    params: Tensor,
    z: Tensor,
    head: MDNHead,
    grad_out: Tensor | None = None,
    grad_scale: float = 1.0,
) -> Tensor:
    r"""The sum over rows of :math:`\operatorname{lse}_k(\log\pi_k + c_k)`, the log-density of
    the standardised targets *without* the constant :math:`-\tfrac D2\log 2\pi`.

    ``params`` ``(P, N)``: ``head``'s flat parameters (diagonal or spherical), one column per
    row (component-major; rows ``[means K·D | raw scales K·D or K | logits K]``), ``z``
    ``(D, N)`` (any strides).
    With :math:`u_k = (z - \mu_k)/\sigma_k`, :math:`c_k = -\sum_d\log\sigma_{kd} -
    \tfrac12\lVert u_k\rVert^2`, responsibilities :math:`r_k` and weights :math:`\pi_k`, the
    gradients of the *negative* sum are :math:`\pi_k - r_k` (logits), :math:`-r_k u_k/\sigma_k`
    (means) and :math:`-r_k(u_k^2 - 1)/\sigma_k` (scales, summed over d for spherical ones)
    times the scale transform's derivative; if ``grad_out`` ``(P, N)`` is given they are
    written into it, times ``grad_scale``.  The log-sum-exp and its gradient are the shared
    kernels :func:`~mdnkit.kernels.diagonal_mixture_lse` and
    :func:`~mdnkit.kernels.diagonal_mixture_grad` (the same as :class:`~mdnkit.GaussianMixture`'s).
    """
    lay = head.layout
    k, d, n = lay.num_components, lay.out_features, params.shape[-1]
    ds = lay.scale_width
    loc = params[lay.loc].view(k, d, n)
    raw = params[lay.scale].view(k, ds, n)
    sigma, dsigma = lay.scale_map.with_derivative(raw, grad_out is not None)
    inv = sigma.reciprocal_()
    # written into a buffer laid out like loc: `z - loc` alone would take the strides of a
    # transposed z (D innermost in memory), and every kernel after it would run strided
    u = torch.sub(z, loc, out=torch.empty_like(loc)).mul_(inv)
    # the shared diagonal log-sum-exp and its gradient (mdnkit.kernels); the logits are a
    # linear layer's output, finite (a NaN is caught by fit, which rolls the step back)
    lse, pieces = diagonal_mixture_lse(params[lay.logits], u, inv, finite_logits=True)
    total = lse.sum()
    if grad_out is None:
        return total
    # gradients of total, the logits' and means' written straight into grad_out; then times
    # -grad_scale, all at once (the gradient of -total * grad_scale)
    out = (grad_out[lay.logits], grad_out[lay.loc].view(k, d, n))
    _, _, d_sigma = diagonal_mixture_grad(1.0, u, inv, pieces, out, overwrite=True)
    assert dsigma is not None
    torch.mul(d_sigma, dsigma, out=grad_out[lay.scale].view(k, ds, n))
    grad_out.mul_(-grad_scale)
    return total


def flat_nll(
    params: Tensor, z: Tensor, head: MDNHead, need_grad: bool
) -> tuple[Tensor, Tensor | None]:
    """Mean NLL of ``z`` ``(..., D)`` under row-major head parameters ``(..., P)`` and, if
    ``need_grad``, its gradient with respect to ``params`` (same shape)."""
    shape, d = params.shape, head.out_features
    pt = params.reshape(-1, shape[-1]).t().contiguous()
    zt = z.reshape(-1, d).t()
    n = pt.shape[1]
    g = torch.empty_like(pt) if need_grad else None
    total = nll_component_major(pt, zt, head, g, 1.0 / n)
    out = 0.5 * d * LOG_2PI - total / n
    return out, (g.t().reshape(shape) if g is not None else None)


class FlatDiagonalNLL(torch.autograd.Function):
    """Mean NLL of standardised targets ``z`` ``(..., D)`` straight from the head's flat
    parameters ``(..., P)`` (diagonal or spherical components), formulas in
    :func:`nll_component_major`.  The gradient is formed in the forward pass, so the backward
    pass is one multiplication; it is not differentiable twice (use
    ``mdn_loss(model.standardized_mixture(x), z)`` for that).
    """

    @staticmethod
    def forward(ctx, params: Tensor, z: Tensor, head: MDNHead) -> Tensor:
        out, grad = flat_nll(params, z, head, need_grad=ctx.needs_input_grad[0])
        if grad is not None:
            ctx.save_for_backward(grad)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        (d_params,) = ctx.saved_tensors
        return d_params * grad, None, None


def _relu_backward(g: np.ndarray, h: np.ndarray, p: _Plan, i: int) -> None:
    np.sign(h, out=p.tmp[i])  # 1 where the unit is on (h > 0), 0 where it is off; NaN stays
    g *= p.tmp[i]


def _tanh_backward(g: np.ndarray, h: np.ndarray, p: _Plan, i: int) -> None:
    tmp = np.multiply(h, h, out=p.tmp[i])
    np.subtract(p.ones[i], tmp, out=tmp)  # 1 - tanh^2
    g *= tmp


#: the hidden activations the NumPy step runs: (in place on the pre-activation ``a``, given
#: the plan and the layer; backward: ``g`` times the derivative in place, given the output)
NUMPY_ACTIVATIONS: dict[type[nn.Module], tuple[Callable, Callable]] = {
    nn.ReLU: (lambda a, p, i: np.maximum(a, p.zeros[i], out=a), _relu_backward),
    nn.Tanh: (lambda a, p, i: np.tanh(a, out=a), _tanh_backward),
}


def _softplus(raw: np.ndarray, p: _Plan) -> tuple[np.ndarray, np.ndarray]:
    t, s, ds = p.t, p.sigma, p.dsigma
    np.negative(np.abs(raw, out=t), out=t)
    np.log1p(np.exp(t, out=t), out=t)
    np.add(np.maximum(raw, p.zero_s, out=s), t, out=s)  # log(1 + e^a) = max(a, 0) + log1p(e^-|a|)
    np.exp(np.subtract(raw, s, out=ds), out=ds)  # sigmoid(a) = e^(a - softplus(a))
    return s, ds


def _exp(raw: np.ndarray, p: _Plan) -> tuple[np.ndarray, np.ndarray]:
    np.exp(np.minimum(raw, p.exp_max, out=p.dsigma), out=p.dsigma)
    np.copyto(p.sigma, p.dsigma)
    return p.sigma, p.dsigma  # (its own derivative)


def _elu(raw: np.ndarray, p: _Plan) -> tuple[np.ndarray, np.ndarray]:
    t, s = p.t, p.sigma
    np.expm1(np.minimum(raw, p.zero_s, out=t), out=t)
    np.add(np.maximum(raw, p.zero_s, out=s), t, out=s)
    s += p.one_s  # ELU(a) + 1
    return s, np.minimum(s, p.one_s, out=p.dsigma)  # 1 above 0, e^a (= ELU(a) + 1) below


#: the scale transforms of :data:`~mdnkit.layout.TRANSFORMS` in NumPy: raw -> (sigma without
#: the floor, its derivative), written into the plan's buffers (tested equal to those)
NUMPY_SCALES: dict[str, Callable[[np.ndarray, _Plan], tuple[np.ndarray, np.ndarray]]] = {
    "softplus": _softplus,
    "exp": _exp,
    "elu": _elu,
}

#: the NumPy step runs where one batch's work, rows times parameters, is at most this; above
#: it the arithmetic, not the fixed cost of each call, dominates, and PyTorch's kernels (several
#: threads for large batches) are the faster ones
NUMPY_MAX_WORK = 4_000_000

#: and where each matrix product has at most this many multiply-adds (rows x in x out): up to
#: here OpenBLAS (NumPy's BLAS) computes it on one thread; above it, it starts threads of its
#: own, which on a busy machine wait for each other (ten times slower measured on 2 loaded cores)
BLAS_ONE_THREAD = 65536 * 4


class _Plan:
    """The buffers and constants of one batch size (NumPy arrays; ``*_t``: PyTorch views of the
    same memory).  Constants are full arrays: a NumPy call with a Python number costs more."""

    def __init__(self, step: _NumpyStep, n: int) -> None:
        dt, lay, k, d, ds = step.dtype, step.layout, step.k, step.d, step.ds
        sizes = [w.shape[0] for w, _, _, _ in step.layers]
        full = lambda shape, v: np.full(shape, v, dt)  # noqa: E731
        self.pre = [np.empty((m, n), dt) for m in sizes]  # each layer's output (in place: h)
        self.back = [np.empty((m, n), dt) for m in sizes[:-1]]  # gradients of hidden outputs
        self.tmp = [np.empty((m, n), dt) for m in sizes[:-1]]
        self.zeros, self.ones = (
            [full((m, n), 0) for m in sizes[:-1]],
            [full((m, n), 1) for m in sizes[:-1]],
        )
        self.row_ones = full(n, 1)
        theta, grad = self.pre[-1], np.empty((sizes[-1], n), dt)
        self.grad = grad
        self.loc, self.logits = theta[lay.loc].reshape(k, d, n), theta[lay.logits]
        self.raw = theta[lay.scale].reshape(k, ds, n)
        self.g_logits = grad[lay.logits]
        self.g_loc = grad[lay.loc].reshape(k, d, n)
        self.g_scale = grad[lay.scale].reshape(k, ds, n)
        self.u = np.empty((k, d, n), dt)
        self.t, self.sigma, self.dsigma, self.lg = (np.empty((k, ds, n), dt) for _ in range(4))
        self.zero_s, self.one_s = full((k, ds, n), 0), full((k, ds, n), 1)
        floor, tiny = lay.scale_map.floor, float(np.finfo(dt).tiny)
        self.floor, self.exp_max = full((k, ds, n), floor), full((k, ds, n), 80)
        self.tiny = full((k, ds, n), tiny) if floor < tiny else None
        self.zz, self.log_det = np.empty((k, n), dt), np.empty((k, n), dt)
        # the two log-sum-exps side by side (logits; logits + densities), so that each step
        # of theirs is one call: e (2, K, n), their sums s (2, n), r = [log s; max of a]
        self.e, self.s, self.r = np.empty((2, k, n), dt), np.empty((2, n), dt), np.empty((3, n), dt)
        self.e_t = torch.from_numpy(self.e)
        self.half, self.dims = full((k, n), -0.5), full((k, n), d)
        self.n_signs = np.array([[n], [-n]], dt).repeat(n, 1)  # scales pi/n and -r/n
        self.signs = np.array([-1, 1, 1], dt)  # total = -sum log s_l + sum log s_a + sum m_a


class _NumpyStep:
    """:meth:`MLPFastStep.step` on the CPU in NumPy, on NumPy views of the flat buffers: the
    same formulas (:func:`nll_component_major`, then the MLP's backward pass) in fewer and
    cheaper calls (a NumPy call on a ``(10, 128)`` array costs half a PyTorch call or less, a
    small matrix product a third), into buffers kept per batch size; the exponent floor is
    PyTorch's own (:data:`~mdnkit.kernels.EXP_FLOOR`, ``threshold_`` on a view)."""

    def __init__(self, fast: MLPFastStep, act: tuple[Callable, Callable] | None) -> None:
        self.layers = [tuple(t.numpy() for t in layer) for layer in fast.layers]
        self.dtype, self.dtype_t = self.layers[0][0].dtype, fast.flat.dtype
        self.act = act
        lay = self.layout = fast.head.layout
        self.k, self.d, self.ds = lay.num_components, lay.out_features, lay.scale_width
        self.scales = NUMPY_SCALES[lay.scale_map.name]
        self.offset = fast.offset
        self.plans: dict[int, _Plan] = {}

    def __call__(self, x: Tensor, z: Tensor) -> Tensor:
        xn, zn = x.numpy(), z.numpy()
        n = xn.shape[0]
        plan = self.plans.get(n)
        if plan is None:
            plan = self.plans[n] = _Plan(self, n)
        with np.errstate(all="ignore"):
            self._forward(xn, plan)
            total = self._loss(zn.T, plan)
            self._backward(xn, plan)
        return torch.from_numpy(np.array(self.offset - total / n, self.dtype))

    def _forward(self, xn: np.ndarray, plan: _Plan) -> None:
        h = xn.T
        last = len(self.layers) - 1
        for i, (w, b, _, _) in enumerate(self.layers):
            out = np.dot(w, h, out=plan.pre[i])
            out += b
            if i < last:
                self.act[0](out, plan, i)  # type: ignore[index]
            h = out

    def _backward(self, xn: np.ndarray, plan: _Plan) -> None:
        g = plan.grad
        for i in range(len(self.layers) - 1, -1, -1):
            w, _, gw, gb = self.layers[i]
            np.dot(g, xn if i == 0 else plan.pre[i - 1].T, out=gw)
            np.dot(g, plan.row_ones, out=gb)
            if i > 0:
                back = np.dot(w.T, g, out=plan.back[i - 1])
                self.act[1](back, plan.pre[i - 1], plan, i - 1)  # type: ignore[index]
                g = back

    def _loss(self, z: np.ndarray, p: _Plan) -> float:
        """The sum of :func:`nll_component_major` (the same formulas, in the same order), its
        gradient times ``-1/n`` written into ``p.grad``."""
        d, ds = self.d, self.ds
        sigma, dsigma = self.scales(p.raw, p)
        u, lg, e = p.u, p.lg, p.e
        el, a = e
        np.add(sigma, p.floor, out=sigma)
        if p.tiny is not None:  # a floor below the smallest normal float: ScaleMap.forward's rule
            np.maximum(sigma, p.tiny, out=sigma)
        inv = np.reciprocal(sigma, out=sigma)
        np.multiply(np.subtract(z, p.loc, out=u), inv, out=u)
        np.log(inv, out=lg)
        if ds == d:
            log_det = lg[:, 0] if d == 1 else np.add.reduce(lg, 1, out=p.log_det)
        else:
            log_det = np.multiply(lg[:, 0], p.dims, out=p.log_det)
        zz = np.square(u[:, 0], out=p.zz) if d == 1 else np.add.reduce(u * u, 1, out=p.zz)
        m_l = np.maximum.reduce(p.logits, 0)
        np.subtract(p.logits, m_l, out=el)
        np.add(np.multiply(zz, p.half, out=a), log_det, out=a)
        a += el  # a = (l - m_l) + c, as in diagonal_mixture_lse
        a -= np.maximum.reduce(a, 0, out=p.r[2])
        F.threshold_(p.e_t, EXP_FLOOR, -math.inf)  # (so e^-60 and below are exactly 0)
        s = np.add.reduce(np.exp(e, out=e), 1, out=p.s)  # s_l, s_a
        np.log(s, out=p.r[:2])
        total = float(np.dot(p.signs, np.dot(p.r, p.row_ones)))
        # gradients of -total / n: pi/n - r/n (logits), -r u / (n sigma) (means),
        # -r (u^2 - 1) / (n sigma) (scales; spherical: -r (|u|^2 - D) / (n sigma))
        np.divide(e, np.multiply(s, p.n_signs, out=s)[:, None], out=e)  # pi/n, -r/n
        np.add(el, a, out=p.g_logits)
        qi = np.multiply(a[:, None], inv, out=lg)  # -r / (n sigma), with a = -r / n
        np.multiply(u, qi, out=p.g_loc)
        if ds == d:
            np.subtract(np.multiply(u, p.g_loc, out=u), qi, out=u)
            np.multiply(u, dsigma, out=p.g_scale)
        else:
            np.multiply(np.subtract(zz, p.dims, out=zz), qi[:, 0], out=zz)
            np.multiply(zz[:, None], dsigma, out=p.g_scale)
        return total


class FlatParameters:
    """Parameters made views of one flat leaf tensor :attr:`flat` (and their gradients views
    of ``flat.grad``) between :meth:`attach` and :meth:`release`, in the order given: the
    storage every autograd-free step writes its gradient into (:attr:`parameters` is
    ``[flat]``, what the optimiser steps)."""

    def __init__(self, params: list[nn.Parameter]) -> None:
        first = params[0]
        total = sum(p.numel() for p in params)
        self.params = params
        self.flat = nn.Parameter(torch.empty(total, dtype=first.dtype, device=first.device))
        self.flat.grad = torch.zeros_like(self.flat)
        self.parameters = [self.flat]
        #: views of ``flat.data`` and of ``flat.grad`` shaped as the parameters
        self.values = self.shaped(self.flat.data)
        self.grads = self.shaped(self.flat.grad)
        self.is_attached = False

    def shaped(self, buffer: Tensor) -> list[Tensor]:
        """Views of ``buffer`` (laid out as :attr:`flat`) shaped as the parameters."""
        views, o = [], 0
        for p in self.params:
            views.append(buffer[o : o + p.numel()].view_as(p))
            o += p.numel()
        return views

    def joined(self, buffer: Tensor, first: int, count: int, shape: tuple[int, ...]) -> Tensor:
        """The part of ``buffer`` (laid out as :attr:`flat`: ``flat.data``, ``flat.grad`` or
        another) that holds ``count`` consecutive parameters from index ``first``, as one
        tensor of ``shape`` (their elements, in order)."""
        start = sum(p.numel() for p in self.params[:first])
        m = sum(p.numel() for p in self.params[first : first + count])
        return buffer[start : start + m].view(shape)

    def attach(self) -> None:
        """Copy the parameters into :attr:`flat` and make them views of it."""
        with torch.no_grad():
            for p, v in zip(self.params, self.values):
                v.copy_(p)
                p.data = v
        self.is_attached = True

    def release(self) -> None:
        """Give each parameter its own storage (and no gradient) again, if attached."""
        if not self.is_attached:
            return
        with torch.no_grad():
            for p in self.params:
                p.data = p.data.clone()
                p.grad = None
        self.is_attached = False

    @contextlib.contextmanager
    def attached(self) -> Iterator[Any]:
        """:meth:`attach` on entry, :meth:`release` on exit (whatever raised in between);
        yields ``self``."""
        self.attach()
        try:
            yield self
        finally:
            self.release()


class MLPFastStep(FlatParameters):
    r"""The :class:`FastStep` of an MLP-with-head MDN (:meth:`MDN.fast_step`, module docstring).

    Inside :meth:`attached` (or between :meth:`attach` and :meth:`release`) the model's
    parameters are views of :attr:`flat` (a leaf ``nn.Parameter`` whose ``.grad`` holds every
    gradient; :attr:`parameters` is ``[flat]``).  Anything that changes the parameters in place
    (``load_state_dict``, the optimiser) then changes :attr:`flat`.  Leaving the context (or
    :meth:`release`) gives every parameter its own storage back.

    With :math:`h_0 = \tilde x`, :math:`h_l = f(W_l h_{l-1} + b_l)` and the head's
    :math:`\theta = W h_L + b`, the gradient :math:`G = \partial L/\partial\theta` comes from
    :func:`nll_component_major`; then :math:`\partial W = G h^\top`, :math:`\partial b = G1`,
    :math:`G \leftarrow f'(h) \odot W^\top G` layer by layer.
    """

    def __init__(
        self, model: nn.Module, linears: list[nn.Linear], numpy: bool | None = None
    ) -> None:
        self.model = model
        params: list[nn.Parameter] = []
        for lin in linears:
            params += [lin.weight, lin.bias]
        super().__init__(params)
        first = params[0]
        total = self.flat.numel()
        self.layers: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
        for i in range(0, len(params), 2):
            w, b = self.values[i], self.values[i + 1]
            self.layers.append((w, b.unsqueeze(1), self.grads[i], self.grads[i + 1]))
        self.head = model.head
        # the hidden layers' activation module (none without hidden layers)
        act = next((m for m in model.body if not isinstance(m, nn.Linear)), nn.Identity())
        self.act, self.in_place, self.act_backward = (
            ACTIVATIONS[type(act)](act) if len(linears) > 1 else (None, True, None)
        )
        self.offset = 0.5 * self.head.out_features * LOG_2PI + float(model.y_std.log().sum())
        # the NumPy step: on the CPU, for the activations it knows (see NUMPY_MAX_WORK)
        np_act = NUMPY_ACTIVATIONS.get(type(act)) if len(linears) > 1 else (None, None)
        use = (
            first.device.type == "cpu"
            and np_act is not None
            and self.head.layout.scale_map.name in NUMPY_SCALES
            and numpy is not False
        )
        self.numpy_step = _NumpyStep(self, np_act) if use else None
        #: the largest batch the NumPy step takes (all of them when asked for with numpy=True)
        self.numpy_max_rows = sys.maxsize
        if numpy is None:
            biggest = max(w.numel() for w, _, _, _ in self.layers)  # the largest out x in
            self.numpy_max_rows = min(NUMPY_MAX_WORK // total, BLAS_ONE_THREAD // biggest)

    def prepare(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Inputs ``(N, in)`` and targets ``(N, D)`` in the network's standardised units
        (checked and converted as :meth:`MDN.loss` does)."""
        x, z = self.model.standardize(x, y)
        if x.dim() != 2 or z.shape[:-1] != x.shape[:-1]:
            raise ValueError(
                f"the fast training step needs rows of x (N, in) and y (N, D), found shapes "
                f"{tuple(x.shape)} and {tuple(z.shape)}"
            )
        return x, z

    def __call__(self, x: Tensor, z: Tensor) -> Tensor:
        return self.step(x, z)

    def step(self, x: Tensor, z: Tensor) -> Tensor:
        """Mean NLL (data units, a 0-dim tensor) of one batch of standardised inputs ``x``
        ``(N, in)`` and targets ``z`` ``(N, D)``; its gradient is written into ``flat.grad``.
        On the CPU, for ReLU and tanh networks and batches up to :attr:`numpy_max_rows`, the
        step runs in NumPy (the same formulas; equal to the PyTorch path to rounding)."""
        np_step = self.numpy_step
        if (
            np_step is not None
            and x.shape[0] <= self.numpy_max_rows
            and x.dtype == z.dtype == np_step.dtype_t
            and not (x.requires_grad or z.requires_grad)
        ):
            return np_step(x, z)
        return self.torch_step(x, z)

    @torch.no_grad()
    def torch_step(self, x: Tensor, z: Tensor) -> Tensor:
        """:meth:`step` in PyTorch (any device, any activation of :data:`ACTIVATIONS`)."""
        n = x.shape[0]
        h = x.t()
        hs = [h]  # each layer's input
        pres: list[Tensor | None] = [None]  # and, for activations not in place, its pre-activation
        act = self.act
        last = len(self.layers) - 1
        for i, (w, b, _, _) in enumerate(self.layers):
            pre = torch.addmm(b, w, h)
            if i < last:
                h = act(pre)
                hs.append(h)
                pres.append(None if self.in_place else pre)
            else:
                h = pre
        g = torch.empty_like(h)
        total = nll_component_major(h, z.t(), self.head, g, 1.0 / n)
        for i in range(last, -1, -1):
            w, _, gw, gb = self.layers[i]
            torch.mm(g, hs[i].t(), out=gw)
            torch.sum(g, 1, out=gb)
            if i > 0:
                g = self.act_backward(torch.mm(w.t(), g), hs[i], pres[i])
        return total.mul_(-1.0 / n).add_(self.offset)

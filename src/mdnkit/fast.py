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
  per activation derivative.

:func:`nll_component_major` is also the fused loss behind :meth:`MDN.loss` (through
:class:`FlatDiagonalNLL`), so the two paths share one implementation of the formulas.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .head import MDNHead
from .kernels import LOG_2PI, diagonal_mixture_grad, diagonal_mixture_lse

__all__ = ["FastStep", "MLPFastStep", "FlatDiagonalNLL", "flat_nll", "nll_component_major"]

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


class MLPFastStep:
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

    def __init__(self, model: nn.Module, linears: list[nn.Linear]) -> None:
        self.model = model
        params: list[nn.Parameter] = []
        for lin in linears:
            params += [lin.weight, lin.bias]
        self.params = params
        first = params[0]
        total = sum(p.numel() for p in params)
        self.flat = nn.Parameter(torch.empty(total, dtype=first.dtype, device=first.device))
        self.flat.grad = torch.zeros_like(self.flat)
        self.layers: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
        o = 0
        views = []
        for p in params:
            m = p.numel()
            views.append((self.flat.data[o : o + m].view_as(p), self.flat.grad[o : o + m]))
            o += m
        self._views = [v for v, _ in views]
        self.parameters = [self.flat]
        self.is_attached = False
        for i in range(0, len(views), 2):
            (w, gw), (b, gb) = views[i], views[i + 1]
            self.layers.append((w, b.unsqueeze(1), gw.view_as(w), gb))
        self.head = model.head
        # the hidden layers' activation module (none without hidden layers)
        act = next((m for m in model.body if not isinstance(m, nn.Linear)), nn.Identity())
        self.act, self.in_place, self.act_backward = (
            ACTIVATIONS[type(act)](act) if len(linears) > 1 else (None, True, None)
        )
        self.offset = 0.5 * self.head.out_features * LOG_2PI + float(model.y_std.log().sum())

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

    @torch.no_grad()
    def step(self, x: Tensor, z: Tensor) -> Tensor:
        """Mean NLL (data units, a 0-dim tensor) of one batch of standardised inputs ``x``
        ``(N, in)`` and targets ``z`` ``(N, D)``; its gradient is written into ``flat.grad``."""
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

    def attach(self) -> None:
        """Copy the parameters into :attr:`flat` and make them views of it."""
        with torch.no_grad():
            for p, v in zip(self.params, self._views):
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
    def attached(self) -> Iterator[MLPFastStep]:
        """:meth:`attach` on entry, :meth:`release` on exit (whatever raised in between)."""
        self.attach()
        try:
            yield self
        finally:
            self.release()

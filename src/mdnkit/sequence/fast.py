r"""The MDN-RNN's autograd-free training step: an LSTM unrolled by hand, its head and loss fused.

:meth:`MDNRNN.fast_step <mdnkit.MDNRNN.fast_step>` returns an :class:`LSTMFastStep` (the
:class:`~mdnkit.fast.FastStep` seam of :func:`~mdnkit.fit`) for the models its formulas cover.
A training step of an MDN-RNN on the CPU is dominated by the recurrent matrix products (about
0.9 MFLOP per event for an LSTM of 192 units, forward and backward); the step does those and
as little else as it can:

* **packed, time-major events**: a batch's sequences are sorted by length and packed (as
  :func:`torch.nn.utils.rnn.pack_padded_sequence` does), so step :math:`t` works on the
  :math:`n_t` sequences still running, as one contiguous block of rows, and no work is spent
  on padding;
* **one matrix product per step each way**: the rows :math:`[h_{t-1} \mid x_t \mid 1]` times
  :math:`[W_{hh}^\top; W_{ih}^\top; b]` give the gates (the input projection and the biases
  inside the recurrent product), :math:`\bar a_t W_{hh}` the recurrent gradient, and one
  product over all events every weight and bias gradient of a layer;
* **few elementwise kernels**: one sigmoid for all four gates (the ``g`` gate's weights times
  :math:`-2`, :math:`\tanh x = 1 - 2\sigma(-2x)`: ``torch.tanh`` is several times slower than
  ``torch.sigmoid`` on the CPU) and the cell kept as :math:`C = -2c`, so that a step's cell,
  :math:`\tanh c` and output take five more kernels, one of them a sigmoid (none with a
  Python number wrapped into a tensor, which costs as much as the kernel at these sizes); in
  the backward pass one sigmoid derivative for all four gates, the constants of the scaled
  cell and gate left out of the per-step kernels and put into the weights the gradient is
  multiplied by (:data:`GRADIENT_SHORTFALL`);
* **the head and the loss fused**: the mixture head and the pen logits are one product
  ``(P, N)`` in the component-major layout of :func:`~mdnkit.fast.nll_component_major`, which
  forms the loss and its gradient in one pass (the pen cross-entropy's gradient is
  :math:`\operatorname{softmax} - \text{one-hot}`);
* **one parameter buffer, reused work buffers**: the model's parameters are views of one flat
  tensor while ``fit`` runs (clipping is one norm, Adam one fused update), and the step's
  buffers are kept from batch to batch.

With gates :math:`[i, f, g, o]` (sigmoid, sigmoid, tanh, sigmoid of the pre-activations),
:math:`c_t = f c_{t-1} + i g` and :math:`h_t = o \tanh c_t`, the backward recurrence is
:math:`\bar c_t = \bar c_{t+1} f_{t+1} + \bar h_t\, o (1 - \tanh^2 c_t)` and the
pre-activation gradients :math:`\bar c\, g\, i(1-i)`, :math:`\bar c\, c_{t-1} f(1-f)`,
:math:`\bar c\, i (1-g^2)`, :math:`\bar h \tanh c_t\; o(1-o)`, with
:math:`\bar h_{t-1} \mathrel{+}= \bar a_t W_{hh}` (:func:`lstm_forward` and
:func:`lstm_backward` give the same in the scaled variables they keep).  The loss and every
gradient equal autograd's on :meth:`MDNRNN.loss <mdnkit.MDNRNN.loss>`: to 1e-9 in float64; in
float32 they differ by rounding (tested to 5e-5 of the gradient's norm).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from ..fast import FlatParameters, nll_component_major
from ..kernels import LOG_2PI

if TYPE_CHECKING:
    from .model import MDNRNN

__all__ = ["LSTMFastStep", "PackedBatch"]

_aten = torch.ops.aten


class PackedBatch:
    """A batch of sequences packed time-major: step ``t``'s rows are
    ``rows[offsets[t] : offsets[t] + sizes[t]]`` (the ``sizes[t]`` longest sequences, longest
    first), ``sizes`` non-increasing; ``uniform`` when every sequence has the same length."""

    def __init__(self, rows: Tensor, sizes: list[int]) -> None:
        self.rows = rows
        self.sizes = sizes
        self.offsets = [0] * len(sizes)
        for t in range(1, len(sizes)):
            self.offsets[t] = self.offsets[t - 1] + sizes[t - 1]
        self.uniform = sizes[-1] == sizes[0]

    @classmethod
    def pack(cls, features: Tensor, lengths: Tensor) -> PackedBatch:
        """Pack ``features`` ``(B, T, F)`` (batch-major, ``lengths`` ``(B,)`` real steps)."""
        t = int(lengths.max())
        if bool(lengths.min() == t):  # nothing is padding: time-major is already packed
            b = features.shape[0]
            rows = features[:, :t].transpose(0, 1).reshape(t * b, features.shape[-1])
            return cls(rows, [b] * t)
        packed = pack_padded_sequence(
            features[:, :t], lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        return cls(packed.data, packed.batch_sizes.tolist())


class Workspace:
    """Buffers kept from batch to batch: a step asks for the same ones every batch, and fresh
    allocations of several megabytes would each be paid for in page faults."""

    def __init__(self) -> None:
        self.buffers: dict[str, Tensor] = {}
        self.kept: dict[str, tuple[tuple, list]] = {}

    def take(self, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """A contiguous tensor of ``shape`` with ``like``'s dtype and device (contents
        undefined), in the memory of the last one taken under ``name`` when that is big enough."""
        numel = 1
        for k in shape:
            numel *= k
        buf = self.buffers.get(name)
        if (
            buf is None
            or buf.numel() < numel
            or (buf.dtype, buf.device) != (like.dtype, like.device)
        ):
            buf = torch.empty(numel, dtype=like.dtype, device=like.device)
            self.buffers[name] = buf
        return buf[:numel].view(shape)

    def views(self, name: str, key: tuple, build: Callable[[], list]) -> list:
        """``build()``'s list (of views of this workspace's buffers: slicing a tensor costs
        about a microsecond, and a step takes a dozen slices), made again when ``key`` (the
        buffers' addresses and the batch's sizes) is not the last one seen under ``name``."""
        kept = self.kept.get(name)
        if kept is None or kept[0] != key:
            kept = self.kept[name] = (key, build())
        return kept[1]


#: per gate block ``[i, f, g, o]``: the factor :func:`lstm_weights` puts on the columns of
#: ``wcat`` (the ``g`` gate's pre-activation is :math:`z = -2 x_g`), and the factor by which
#: :func:`lstm_backward`'s gradients of the pre-activations are short of the true ones
COLUMN_SCALE = (1.0, 1.0, -2.0, 1.0)
GRADIENT_SHORTFALL = (-2.0, 1.0, 4.0, 1.0)


def lstm_weights(w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor, out: Tensor) -> Tensor:
    r"""``out`` ``(H + I + 1, 4H)`` :math:`= [W_{hh}^\top; W_{ih}^\top; b_{ih} + b_{hh}]`, the
    ``g`` gate's columns times :math:`-2` (:data:`COLUMN_SCALE`): the ``wcat`` of
    :func:`lstm_forward`."""
    hs = w_hh.shape[1]
    out[:hs].copy_(w_hh.t())
    out[hs:-1].copy_(w_ih.t())
    torch.add(b_ih, b_hh, out=out[-1])
    out[:, 2 * hs : 3 * hs].mul_(COLUMN_SCALE[2])
    return out


def lstm_forward(
    hx: Tensor, wcat: Tensor, batch: PackedBatch, space: Workspace, layer: int = 0
) -> tuple[tuple[Tensor, Tensor, Tensor], Tensor]:
    r"""Run one LSTM layer over packed rows from a zero state.

    ``hx`` ``(N + n_0, H + I + 1)``: row block :math:`t` (``batch``'s offsets and sizes) is
    :math:`[h_{t-1} \mid x_t \mid 1]`, the inputs and ones filled in and :math:`h_{-1} = 0`;
    the outputs :math:`h_t` are written into its first ``H`` columns as the steps run.
    ``wcat`` (:func:`lstm_weights`) gives in one product per step the pre-activations
    :math:`(x_i, x_f, z, x_o)` with :math:`z = -2 x_g`, and one sigmoid their values
    :math:`(i, f, s, o)`: :math:`g = \tanh x_g = 1 - 2s`.  The cell is kept as
    :math:`C = -2c`, so that

    .. math::

        C_t = f\, C_{t-1} + 4 i s - 2 i, \qquad u_t = \sigma(C_t), \qquad
        h_t = o \tanh c_t = o - 2 o u_t

    (:math:`\tanh c = 1 - 2\sigma(-2c)`): six elementwise kernels per step, two of them
    sigmoids, none with a Python number that would be wrapped into a tensor.

    Returns ``state`` (``space``'s buffers for ``layer``): the sigmoids ``(N, 4H)``, the cells
    ``(N + n_0, H)`` (row block :math:`t` holds :math:`C_{t-1}`) and :math:`u` ``(N, H)``; and
    the outputs :math:`h` ``(N, H)`` (a view of ``hx`` when every sequence is as long as the
    longest)."""
    hs, n_all, first = wcat.shape[1] // 4, hx.shape[0] - batch.sizes[0], batch.sizes[0]
    gates = space.take(f"gates{layer}", (n_all, 4 * hs), hx)
    cells = space.take(f"cells{layer}", (n_all + first, hs), hx)
    us = space.take(f"u{layer}", (n_all, hs), hx)
    # every sequence as long as the longest: h_t is the next block's first columns already
    out = hx[first:, :hs] if batch.uniform else space.take(f"h{layer}", (n_all, hs), hx)
    cells[:first].zero_()  # C_{-1}
    buffers = (hx, gates, cells, us, out)
    key = tuple(v.data_ptr() for v in buffers) + tuple(batch.sizes)
    steps = space.views(f"forward{layer}", key, lambda: [
        _forward_views(t, buffers, batch) for t in range(len(batch.sizes))
    ])  # fmt: skip
    mm, mul, addcmul, sigmoid = torch.mm, torch.mul, torch.addcmul, torch.sigmoid
    for x, a, i, f, s, o, c_prev, c, u, h, copy_to in steps:
        mm(x, wcat, out=a)
        a.sigmoid_()
        # C_t goes where step t + 1 reads C_{t-1}: rows past that block's (sequences that
        # have ended) spill into the next blocks, which are written again before being read
        mul(f, c_prev, out=c).addcmul_(i, s, value=4.0).add_(i, alpha=-2.0)
        sigmoid(c, out=u)
        addcmul(o, o, u, value=-2.0, out=h)
        if copy_to is not None:
            copy_to.copy_(h[: copy_to.shape[0]])
    return (gates, cells, us), out


def _forward_views(t: int, buffers: tuple[Tensor, ...], batch: PackedBatch) -> tuple:
    """The views :func:`lstm_forward`'s step ``t`` works on (made once per batch shape)."""
    hx, gates, cells, us, out = buffers
    hs = us.shape[1]
    o, n = batch.offsets[t], batch.sizes[t]
    a = gates[o : o + n]
    copy_to = None
    if not batch.uniform and t + 1 < len(batch.sizes):
        nxt, n_next = batch.offsets[t + 1], batch.sizes[t + 1]
        copy_to = hx[nxt : nxt + n_next, :hs]
    return (
        hx[o : o + n], a, a[:, :hs], a[:, hs : 2 * hs], a[:, 2 * hs : 3 * hs], a[:, 3 * hs :],
        cells[o : o + n], cells[o + n : o + 2 * n], us[o : o + n], out[o : o + n], copy_to,
    )  # fmt: skip


def lstm_backward(
    state: tuple[Tensor, Tensor, Tensor],
    d_out: Tensor,
    w_back: Tensor,
    batch: PackedBatch,
    space: Workspace,
    layer: int = 0,
) -> Tensor:
    r"""Back-propagate through one LSTM layer (:func:`lstm_forward`'s ``state``): ``d_out``
    ``(N, H)``, the loss's gradient with respect to every output from above, gets the
    recurrent contributions added in place.  ``w_back`` ``(4H, H)`` is ``wcat``'s first ``H``
    rows transposed, each gate's rows times its :data:`GRADIENT_SHORTFALL`.  Returns the
    gradients of the pre-activations :math:`(x_i, x_f, z, x_o)` ``(N, 4H)``, each gate's
    :data:`GRADIENT_SHORTFALL` times too small, written over the sigmoids of ``state`` (read
    for the last time as they are overwritten: a smaller working set than a buffer of their
    own).

    With :math:`e = \partial L/\partial C` (:math:`C = -2c`) carried back as
    :math:`e_t = f_{t+1} e_{t+1} - 2 \bar h_t\, o\, u (1 - u)`, the sigmoids' gradients are
    :math:`-2 e g`, :math:`e\, C_{t-1}`, :math:`4 e\, i` and :math:`\bar h (1 - 2u) = \bar h
    \tanh c`; one sigmoid derivative over the four, and :math:`\bar h_{t-1} \mathrel{+}= \bar
    a_t W`: eight elementwise kernels and one product per step."""
    gates, cells, us = state
    hs, first = us.shape[1], batch.sizes[0]
    carry = space.take("carry", (first, hs), gates).zero_()  # rows past a step's stay 0
    work = space.take("work", (first, 5 * hs), gates)
    buffers = (gates, cells, us, d_out, carry, work)
    key = tuple(v.data_ptr() for v in buffers) + tuple(batch.sizes)
    steps = space.views(f"backward{layer}", key, lambda: [
        _backward_views(t, buffers, batch) for t in range(len(batch.sizes) - 1, -1, -1)
    ])  # fmt: skip
    mul, addcmul = torch.mul, torch.addcmul
    sig_back = _aten.sigmoid_backward.grad_input
    for dh, e, a, i, f, s, o, u, c_prev, x, da, da_i, da_f, da_g, da_o, dh_prev in steps:
        e.addcmul_(sig_back(dh, u, grad_input=x), o, value=-2.0)
        addcmul(e, e, s, value=-2.0, out=da_i)
        mul(e, c_prev, out=da_f)
        mul(e, i, out=da_g)
        addcmul(dh, dh, u, value=-2.0, out=da_o)
        if dh_prev is not None:
            e.mul_(f)
        # the step's sigmoids are read for the last time: their gradients take their place
        sig_back(da, a, grad_input=a)
        if dh_prev is not None:
            dh_prev.addmm_(a, w_back)
    return gates


def _backward_views(t: int, buffers: tuple[Tensor, ...], batch: PackedBatch) -> tuple:
    """The views :func:`lstm_backward`'s step ``t`` works on (made once per batch shape)."""
    gates, cells, us, d_out, carry, work = buffers
    hs = us.shape[1]
    o, n = batch.offsets[t], batch.sizes[t]
    a, e, w = gates[o : o + n], carry[:n], work[:n]
    prev = batch.offsets[t - 1] if t > 0 else 0
    return (
        d_out[o : o + n], e, a, a[:, :hs], a[:, hs : 2 * hs], a[:, 2 * hs : 3 * hs],
        a[:, 3 * hs :], us[o : o + n], cells[o : o + n], w[:, 4 * hs :], w[:, : 4 * hs],
        w[:, :hs], w[:, hs : 2 * hs], w[:, 2 * hs : 3 * hs], w[:, 3 * hs : 4 * hs],
        d_out[prev : prev + n] if t > 0 else None,
    )  # fmt: skip


def _one_thread() -> None:
    """A helper thread's own OpenMP setting: one thread (its products run beside the others)."""
    torch.set_num_threads(1)


class Gradients(NamedTuple):
    """One part's gradient buffer (laid out as ``flat``) and views of it: per layer
    ``[W_ih, W_hh, b_ih, b_hh]``'s, the head's and pen's weights' and biases' (joined)."""

    flat: Tensor
    layers: list[list[Tensor]]
    weights: Tensor
    biases: Tensor


class LSTMFastStep:
    """The :class:`~mdnkit.fast.FastStep` of an :class:`~mdnkit.MDNRNN` with LSTM layers
    (:meth:`MDNRNN.fast_step <mdnkit.MDNRNN.fast_step>`; the formulas in the module
    docstring).  :attr:`parameters` is ``[flat]``, the one leaf tensor whose ``.grad`` holds
    every gradient; inside :meth:`attached` the model's parameters are views of it.

    **Threads.**  With ``torch.get_num_threads()`` at ``P > 1`` when :meth:`attached` is
    entered, each batch of at least 16 sequences is split into ``min(P, max_parts)`` parts of
    about as many events (the sequences sorted by length and dealt out in turn) that run at
    once on their own Python threads, every product on one thread (``torch.set_num_threads(1)``
    inside the context, restored on leaving it): OpenMP threads inside the recurrence's small
    products stall whenever one of them waits for a core, parts on their own threads do not.
    The parts' gradients are summed in a fixed order, so a run is repeatable for a given
    thread count.
    """

    #: the most parts a batch is split into (the general code is tested with 3)
    max_parts = 2

    def __init__(self, model: MDNRNN) -> None:
        self.model = model
        rnn, head, pen = model.rnn, model.head, model.pen
        params: list[nn.Parameter] = []
        for k in range(model.num_layers):
            params += [getattr(rnn, f"{w}_l{k}") for w in ("weight_ih", "weight_hh", "bias_ih")]
            params.append(getattr(rnn, f"bias_hh_l{k}"))
        self.outs = [head.proj] + ([pen] if pen is not None else [])
        params += [m.weight for m in self.outs] + [m.bias for m in self.outs]
        self.buffers = FlatParameters(params)
        self.flat = self.buffers.flat
        self.parameters = [self.flat]
        self.layers = [self.buffers.values[4 * k : 4 * k + 4] for k in range(model.num_layers)]
        self.w_out, self.b_out = self._outputs(self.flat.data)
        self.offset: Tensor | float = 0.0
        self.parts = 1
        self.pool: ThreadPoolExecutor | None = None
        self.spaces: list[Workspace] = []
        self.grads: list[Gradients] = []

    def _outputs(self, buffer: Tensor) -> tuple[Tensor, Tensor]:
        """The head's and the pen's weights ``(P + pen states, H)`` and biases ``(P + pen
        states, 1)`` as one tensor each, in ``buffer`` (laid out as :attr:`flat`)."""
        n, first = len(self.outs), 4 * self.model.num_layers
        q = sum(m.out_features for m in self.outs)
        b = self.buffers
        weights = b.joined(buffer, first, n, (q, self.model.hidden_size))
        return weights, b.joined(buffer, first + n, n, (q, 1))

    def _part_buffers(self, part: int) -> tuple[Workspace, Gradients]:
        """Part ``part``'s workspace and gradients (the first part's are ``flat.grad``)."""
        while len(self.spaces) <= part:
            grad = self.flat.grad if not self.spaces else torch.zeros_like(self.flat)
            views = self.buffers.shaped(grad)
            layers = [views[4 * k : 4 * k + 4] for k in range(self.model.num_layers)]
            self.grads.append(Gradients(grad, layers, *self._outputs(grad)))
            self.spaces.append(Workspace())
        return self.spaces[part], self.grads[part]

    def prepare(self, *data: Tensor) -> tuple[Tensor, Tensor]:
        """The training sequences ``(x, lengths, inputs, context)`` (as :meth:`MDNRNN.loss`
        takes them, checked as it checks them) as ``(features, lengths)``: per step the
        network's input, a 1 (the biases' input), the standardised target and the pen-state
        index, ``(B, T, input_size + 1 + event_dim (+ 1))``, zeros at padding."""
        m = self.model
        seen = m.network_inputs(*data)
        z, pen = m.standardized_targets(seen.x, seen.mask)
        one = seen.mask.unsqueeze(-1).to(z.dtype)
        parts = [seen.inputs, one, z] + ([pen.to(z.dtype).unsqueeze(-1)] if pen is not None else [])
        self.offset = 0.5 * m.event_dim * LOG_2PI + m.scale.log().sum()
        return torch.cat(parts, -1), seen.lengths

    def __call__(self, features: Tensor, lengths: Tensor) -> Tensor:
        return self.step(features, lengths)

    @torch.no_grad()
    def step(self, features: Tensor, lengths: Tensor) -> Tensor:
        """Mean NLL per event (data units, 0-dim) of one batch of :meth:`prepare`'s
        ``(features, lengths)``; its gradient is written into ``flat.grad``."""
        events = int(lengths.sum())
        parts = self._split(features, lengths)
        if len(parts) == 1:
            return self._part(0, features, lengths, events)
        self._part_buffers(len(parts) - 1)  # made here, not by the threads at once
        assert self.pool is not None
        later = [
            self.pool.submit(self._part, j, f, n, events) for j, (f, n) in enumerate(parts[1:], 1)
        ]
        try:
            loss = self._part(0, *parts[0], events)
        finally:
            losses = [f.result() for f in later]  # (never left writing into the buffers)
        for j, extra in enumerate(losses, 1):
            self.flat.grad.add_(self.grads[j].flat)
            loss = loss + extra
        return loss

    def _split(self, features: Tensor, lengths: Tensor) -> list[tuple[Tensor, Tensor]]:
        """The batch in :attr:`parts` parts of about as many events (one when it is small)."""
        b = features.shape[0]
        p = min(self.parts, b // 8) if self.pool is not None else 1
        if p <= 1:
            return [(features, lengths)]
        if bool(lengths.min() == lengths.max()):
            cut = [b * j // p for j in range(p + 1)]
            return [(features[cut[j] : cut[j + 1]], lengths[cut[j] : cut[j + 1]]) for j in range(p)]
        order = torch.argsort(lengths, descending=True, stable=True)
        return [(features[order[j::p]], lengths[order[j::p]]) for j in range(p)]

    @torch.no_grad()  # (on the helper threads too: grad mode is per thread)
    def _part(self, part: int, features: Tensor, lengths: Tensor, events: int) -> Tensor:
        """Forward and backward passes over some of a batch's sequences (of its ``events``):
        their share of the mean loss; their gradient written into part ``part``'s buffer."""
        space, grads = self._part_buffers(part)
        batch = PackedBatch.pack(features, lengths)
        rows, width = batch.rows, self.model.input_size
        inp = rows[:, : width + 1]  # the inputs and a column of ones
        saved = []
        for k in range(len(self.layers)):
            hx, wcat = self._layer_inputs(space, k, inp, batch), self._weights(space, k)
            state, out = lstm_forward(hx, wcat, batch, space, k)
            saved.append((hx, wcat, state))
            inp = out
        d_out, loss = self._head(space, grads, inp, rows[:, width + 1 :], events)
        for k in range(len(self.layers) - 1, -1, -1):
            d_out = self._layer_backward(space, grads.layers[k], k, saved[k], d_out, batch)
        return loss

    def _layer_inputs(self, space: Workspace, k: int, x: Tensor, batch: PackedBatch) -> Tensor:
        """Layer ``k``'s ``hx`` (:func:`lstm_forward`) for inputs ``x`` (the first layer's
        with their column of ones)."""
        hs, n, first = self.model.hidden_size, x.shape[0], batch.sizes[0]
        width = self.layers[k][0].shape[1]
        hx = space.take(f"hx{k}", (n + first, hs + width + 1), x)
        hx[:first, :hs].zero_()
        if k == 0:
            hx[:n, hs:].copy_(x)
        else:
            hx[:n, hs:-1].copy_(x)
            hx[:n, -1].fill_(1.0)
        return hx

    def _weights(self, space: Workspace, k: int) -> Tensor:
        """Layer ``k``'s ``wcat`` (:func:`lstm_weights`) from the current weights."""
        w_ih, w_hh, _, _ = self.layers[k]
        hs, width = w_hh.shape[1], w_ih.shape[1]
        wcat = space.take(f"wcat{k}", (hs + width + 1, 4 * hs), w_hh)
        return lstm_weights(*self.layers[k], out=wcat)

    def _gate_factors(self, space: Workspace, like: Tensor) -> tuple[Tensor, Tensor]:
        """Per column of ``wcat``: the :data:`GRADIENT_SHORTFALL` ``(4H,)``, and the factor
        ``(4H,)`` from the product of :func:`lstm_backward`'s gradients and the layer's inputs
        to the gradient of ``[W_hh, W_ih, b]`` (the shortfall times :data:`COLUMN_SCALE`)."""
        hs = self.model.hidden_size

        def per_column(factors: tuple[float, ...]) -> Tensor:
            return torch.tensor(factors, dtype=like.dtype, device=like.device).repeat_interleave(hs)

        return space.views("gate factors", (like.dtype, like.device), lambda: [
            per_column(GRADIENT_SHORTFALL),
            per_column(tuple(a * b for a, b in zip(GRADIENT_SHORTFALL, COLUMN_SCALE))),
        ])  # fmt: skip

    def _layer_backward(
        self,
        space: Workspace,
        grads: list[Tensor],
        k: int,
        saved: tuple[Tensor, ...],
        d_out: Tensor,
        batch: PackedBatch,
    ) -> Tensor | None:
        """Layer ``k``'s weight gradients (into ``grads``, ``[W_ih, W_hh, b_ih, b_hh]``'s)
        from the gradient ``d_out`` of its outputs and its saved forward values; the gradient
        of its inputs (None for the first layer)."""
        gw_ih, gw_hh, gb_ih, gb_hh = grads
        hx, wcat, state = saved
        hs, n = self.model.hidden_size, d_out.shape[0]
        shortfall, to_weights = self._gate_factors(space, wcat)
        w_back = space.take(f"w_back{k}", (4 * hs, hs), wcat)
        torch.mul(wcat[:hs].t(), shortfall.unsqueeze(1), out=w_back)
        d_gates = lstm_backward(state, d_out, w_back, batch, space, k)
        # (H + I + 1, 4H): [W_hh's; W_ih's; the biases'], transposed (MKL runs this
        # orientation faster for these shapes)
        both = space.take(f"both{k}", tuple(wcat.shape), wcat)
        torch.mm(hx[:n].t(), d_gates, out=both).mul_(to_weights)
        gw_hh.copy_(both[:hs].t())
        gw_ih.copy_(both[hs:-1].t())
        gb_ih.copy_(both[-1])
        gb_hh.copy_(gb_ih)
        if k == 0:
            return None
        w_in = torch.mul(wcat[hs:-1], shortfall, out=space.take(f"w_in{k}", (hs, 4 * hs), wcat))
        return torch.mm(d_gates, w_in.t(), out=d_out)

    def _head(
        self, space: Workspace, grads: Gradients, h: Tensor, targets: Tensor, events: int
    ) -> tuple[Tensor, Tensor]:
        """The head and the pen logits on the last layer's outputs ``h`` ``(n, H)`` with
        ``targets`` ``(n, D (+ 1))`` (standardised values, pen index), ``n`` of the batch's
        ``events``: these events' share of the mean loss, and its gradient with respect to
        ``h`` (the head's written into ``grads``)."""
        m, n = self.model, h.shape[0]
        lay = m.head.layout
        k, d = lay.num_params, lay.out_features
        q = self.w_out.shape[0]
        params = torch.addmm(self.b_out, self.w_out, h.t(), out=space.take("head", (q, n), h))
        grad = space.take("d_head", (q, n), h)
        total = nll_component_major(params[:k], targets[:, :d].t(), m.head, grad[:k], 1 / events)
        if m.pen_states:
            idx = targets[:, d].long().unsqueeze(0)
            logp = torch.log_softmax(params[k:], 0)
            total = total + logp.gather(0, idx).sum()
            g = grad[k:]
            torch.exp(logp, out=g)
            g.scatter_add_(0, idx, torch.full_like(idx, -1, dtype=g.dtype)).mul_(1 / events)
        torch.mm(grad, h, out=grads.weights)
        torch.sum(grad, 1, keepdim=True, out=grads.biases)
        d_out = torch.mm(grad.t(), self.w_out, out=space.take("d_h", tuple(h.shape), h))
        return d_out, (self.offset * n - total) / events

    @contextlib.contextmanager
    def attached(self) -> Iterator[LSTMFastStep]:
        """The parameters are views of :attr:`flat` on entry, their own again on exit; with
        more than one thread, the batches' parts run on their own threads in between (see
        the class docstring)."""
        threads = torch.get_num_threads()
        self.parts = min(threads, self.max_parts)
        self.buffers.attach()
        try:
            if self.parts > 1:
                torch.set_num_threads(1)
                self.pool = ThreadPoolExecutor(
                    self.parts - 1, "mdnkit-lstm", initializer=_one_thread
                )
            yield self
        finally:
            if self.pool is not None:
                self.pool.shutdown()
                self.pool = None
            torch.set_num_threads(threads)
            self.buffers.release()

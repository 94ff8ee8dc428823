r"""Sequences: the MDN-RNN, its training loss on padded batches, real-time generation and export.

An MDN-RNN reads a sequence of events :math:`x_1, x_2, \dots` and at every step predicts the
distribution of the **next** event,

.. math::

    p(x_{t+1} \mid x_{\le t}) = \underbrace{\sum_{k=1}^K \pi_k(h_t)\,
        \mathcal{N}\big(u_{t+1} \mid \mu_k(h_t), \Sigma_k(h_t)\big)}_{\text{continuous part}}
        \;\cdot\; \underbrace{\operatorname{softmax}(q(h_t))_{s_{t+1}}}_{\text{pen state}},
    \qquad h_t = \operatorname{RNN}(h_{t-1}, x_t),

where :math:`u` is the continuous part of an event and :math:`s` its optional discrete pen state.

Event layout
    An event is a row of ``event_dim`` continuous numbers, followed, when ``pen_states > 0``, by
    one more column holding the pen state **index** (0 .. pen_states-1, stored as a float).  For
    sketch-rnn "stroke-3" data ``(dx, dy, pen_lifted)`` use ``event_dim=2, pen_states=2``:
    state 0 = the pen stays on the paper after this point, 1 = the pen is lifted.  With
    ``pen_states=3`` the third state means "end of drawing" (stroke-5's p3).

Start token
    Every sequence is read after a fixed *start token* (an input with only a start flag
    set), so the first event is predicted too and the loss is the full sequence likelihood
    :math:`-\frac{1}{\sum_b L_b}\sum_b \log p(x^{(b)}_{1..L_b})`: a mean NLL **per event**.

Conditioning
    Per-step ``inputs`` ``(B, T, input_dim)`` and a per-sequence ``context`` ``(B,
    context_dim)`` join the recurrent input; ``inputs[:, t]`` is read by the step that
    *predicts* event ``t`` (a world model: the action taken after observation ``t - 1``).  With
    ``context_init`` the context also sets the initial state (sketch-rnn's decoder).

Extra heads
    ``reward=True`` adds a reward column (after the pen state) predicted by a Gaussian,
    ``done=True`` a last done column (0/1) predicted by a Bernoulli logit; both are targets
    only (not fed back into the network).

Units
    The continuous part is standardised inside the model (:meth:`MDNRNN.prepare`), but every
    density, NLL and sample is in data units (the NLL includes :math:`\sum_d \log s_d`).

Generation
    :meth:`MDNRNN.generator` returns a :class:`StepGenerator`, a stateful object whose
    ``step(previous_event)`` returns a sample of the next event, for live use.  It runs the
    recurrent cells and the sampling on NumPy copies of the weights (measured faster per step on a
    CPU than any PyTorch call path for the small networks used live: see
    ``benchmarks/bench_realtime.py``).  :func:`export_onnx` writes the one-step function to ONNX;
    :class:`OnnxGenerator` runs it on onnxruntime with the same interface.

Temperatures follow the project convention: ``temperature`` divides the mixture logits,
``sigma_temperature`` multiplies the covariances, ``pen_temperature`` divides the pen logits;
0 means greedy (most likely component / its mean / most likely pen state).  The three, the
number of streams and the random source make one :class:`Sampling`.

The package's modules:

- :mod:`~mdnkit.sequence.data`: :func:`pad_sequences`, :func:`windows`;
- :mod:`~mdnkit.sequence.model`: :class:`MDNRNN`;
- :mod:`~mdnkit.sequence.runtime`: the NumPy step runtime, :class:`Sampling`,
  :class:`StepGenerator`;
- :mod:`~mdnkit.sequence.onnx`: :func:`export_onnx`, :class:`OnnxGenerator`;
- :mod:`~mdnkit.sequence.fast`: :class:`~mdnkit.sequence.fast.LSTMFastStep`, the autograd-free
  training step ``fit`` uses for the models its formulas cover (``MDNRNN.fast_step``);
- :mod:`~mdnkit.sequence.vae`: :class:`SketchVAE`.

Example:
    >>> model = MDNRNN(event_dim=2, hidden_size=16, num_layers=1, pen_states=2)
    >>> x, lengths = pad_sequences([np.zeros((5, 3)), np.ones((3, 3))])
    >>> _ = model.prepare(x, lengths)
    >>> model.generate(4, generator=0, batch=2).shape
    torch.Size([2, 4, 3])
"""

from __future__ import annotations

import numpy as np  # noqa: F401  (used by the docstring example)

from ..options import CellType, MixtureType, Standardize
from .data import ArrayLike, pad_sequences, windows
from .model import MDNRNN, SequenceOutput
from .onnx import OnnxGenerator, export_onnx
from .runtime import GeneratorBase, Sampling, StepGenerator, StepParams
from .vae import SketchVAE

__all__ = [
    "MDNRNN",
    "SequenceOutput",
    "SketchVAE",
    "StepGenerator",
    "StepParams",
    "OnnxGenerator",
    "export_onnx",
    "pad_sequences",
    "windows",
    "Sampling",
    "GeneratorBase",
    "ArrayLike",
    "CellType",
    "MixtureType",
    "Standardize",
]

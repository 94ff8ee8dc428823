"""ONNX export of an MDN-RNN's one-step function, and generation from it on onnxruntime.

:func:`export_onnx` writes one step of an :class:`~mdnkit.MDNRNN` (read an event, advance the
recurrent state, output the next event's mixture in data units) to an ONNX file;
:class:`OnnxGenerator` runs that file with the interface and the sampling code of
:class:`~mdnkit.sequence.StepGenerator`, so the same seed gives the same events.  The ``onnx``
and ``onnxruntime`` packages are imported only when these are used (``pip install
mdnkit[onnx]``).

Example:
    >>> from mdnkit.sequence import MDNRNN
    >>> export_onnx(MDNRNN(2, hidden_size=16), "step.onnx")               # doctest: +SKIP
    >>> OnnxGenerator("step.onnx", generator=0).generate(20).shape         # doctest: +SKIP
    (1, 20, 2)
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .. import checks
from ..files import atomic_path
from .model import MDNRNN
from .runtime import GeneratorBase, Sampling, StepParams

__all__ = ["export_onnx", "OnnxGenerator"]


class _OnnxStep(nn.Module):
    """One step of an MDNRNN as plain tensor maths, for export: (event, start, state, [inputs],
    [context]) → (logits, loc, scale | scale_tril, [pen_logits], [done_logits], [reward_loc,
    reward_scale], new state)."""

    def __init__(self, model: MDNRNN) -> None:
        super().__init__()
        self.m = model
        self.in_names = _onnx_names(model.config())[0]

    def _decode(self, p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The head's raw output → normalised logits, loc and scale (or scale_tril), data units."""
        m = self.m
        logits, loc, scale, tril = m.head.layout.decode(p)
        logits = torch.log_softmax(logits, -1)
        if m.head.layout.per_dimension:  # (B, D, K) blocks
            return logits, loc * m.scale[:, None] + m.shift[:, None], scale * m.scale[:, None]
        loc = loc * m.scale + m.shift
        if tril is None:
            return logits, loc, scale * m.scale
        return logits, loc, tril * m.scale[:, None]

    def _extras(self, x: Tensor) -> list[Tensor]:
        """The pen logits, the done logit and the reward's mean and scale (data units)."""
        m, out = self.m, []
        if m.pen is not None:
            out.append(m.pen(x))
        if m.done_head is not None:
            out.append(m.done_head(x)[:, 0])
        if m.reward_head is not None:
            raw = m.reward_head(x)
            out.append(raw[:, 0] * m.reward_scale + m.reward_shift)
            out.append(m.head.layout.scale_map.forward(raw[:, 1]) * m.reward_scale)
        return out

    def _cells(self, x: Tensor, h: Tensor, c: Tensor | None) -> tuple[Tensor, list, list]:
        """The recurrent layers, written out: the top layer's output and the new states."""
        m, hd = self.m, self.m.hidden_size
        new_h, new_c = [], []
        for layer in range(m.num_layers):
            w_ih, w_hh, b_ih, b_hh = (
                getattr(m.rnn, f"{name}_l{layer}")
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
            )
            h_l = h[layer]
            if m.cell == "lstm":
                g = x @ w_ih.t() + b_ih + h_l @ w_hh.t() + b_hh
                i_g = torch.sigmoid(g[:, :hd])
                f_g = torch.sigmoid(g[:, hd : 2 * hd])
                g_g = torch.tanh(g[:, 2 * hd : 3 * hd])
                o_g = torch.sigmoid(g[:, 3 * hd :])
                c_l = f_g * c[layer] + i_g * g_g
                x = o_g * torch.tanh(c_l)
                new_c.append(c_l)
            else:
                gi = x @ w_ih.t() + b_ih
                gh = h_l @ w_hh.t() + b_hh
                r = torch.sigmoid(gi[:, :hd] + gh[:, :hd])
                z = torch.sigmoid(gi[:, hd : 2 * hd] + gh[:, hd : 2 * hd])
                n = torch.tanh(gi[:, 2 * hd :] + r * gh[:, 2 * hd :])
                x = (1.0 - z) * n + z * h_l
            new_h.append(x)
        return x, new_h, new_c

    def _begin(self, start: Tensor, h: Tensor, c: Tensor | None, context: Tensor):
        """With ``context_init``: where ``start`` is 1, the state becomes tanh(W context + b)."""
        m = self.m
        s = torch.tanh(m.state_init(context))
        per = 2 if m.cell == "lstm" else 1
        s = s.reshape(-1, m.num_layers, per, m.hidden_size).transpose(0, 1)  # (L, B, per, H)
        keep = 1.0 - start
        h = h * keep + s[:, :, 0] * start
        if c is not None:
            c = c * keep + s[:, :, 1] * start
        return h, c

    def forward(self, *args: Tensor):
        m = self.m
        named = dict(zip(self.in_names, args))
        event, start, h, c = named["event"], named["start"], named["h"], named.get("c")
        d = m.event_dim
        u = (event[:, :d] - m.shift) / m.scale
        keep = 1.0 - start
        parts = [u * keep]
        if m.pen_states:
            states = torch.arange(m.pen_states, dtype=event.dtype, device=event.device)
            onehot = (torch.round(event[:, d : d + 1]) == states).to(event.dtype)
            parts.append(onehot * keep)
        parts.append(start)
        parts += [named[n] for n in ("inputs", "context") if n in named]
        if m.state_init is not None:
            h, c = self._begin(start, h, c, named["context"])
        x, new_h, new_c = self._cells(torch.cat(parts, -1), h, c)
        out = list(self._decode(m.head.proj(x))) + self._extras(x)
        out.append(torch.stack(new_h))
        if m.cell == "lstm":
            out.append(torch.stack(new_c))
        return tuple(out)


def _onnx_names(cfg: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The input and output names of the step file of a model with config ``cfg``."""
    lstm = cfg["cell"] == "lstm"
    inputs = ["event", "start", "h"] + (["c"] if lstm else [])
    inputs += ["inputs"] if cfg.get("input_dim", 0) else []
    inputs += ["context"] if cfg.get("context_dim", 0) else []
    outputs = ["logits", "loc", "scale_tril" if cfg["covariance"] == "full" else "scale"]
    if cfg["pen_states"]:
        outputs.append("pen_logits")
    outputs += ["done_logits"] if cfg.get("done", False) else []
    outputs += ["reward_loc", "reward_scale"] if cfg.get("reward", False) else []
    outputs += ["h_out"] + (["c_out"] if lstm else [])
    return inputs, outputs


def _write(step: _OnnxStep, args: list[Tensor], path: str, opset: int) -> None:
    """``torch.onnx.export`` of ``step`` to ``path``, the batch dimension dynamic."""
    in_names, out_names = _onnx_names(step.m.config())
    states = {"h", "c", "h_out", "c_out"}
    dyn_axes = {n: {1 if n in states else 0: "batch"} for n in in_names + out_names}
    kwargs = dict(input_names=in_names, output_names=out_names, opset_version=opset)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            # The TorchScript exporter: offline, fast (0.2 s against ~10 s for dynamo).
            torch.onnx.export(
                step, tuple(args), path, dynamo=False, dynamic_axes=dyn_axes, **kwargs
            )
        except Exception:  # a torch without it: the dynamo exporter (needs onnxscript)
            batch = torch.export.Dim("batch")
            shapes = [{1 if n in states else 0: batch} for n in in_names]
            torch.onnx.export(
                step,
                tuple(args),
                path,
                dynamo=True,
                dynamic_shapes=tuple(shapes),
                verbose=False,
                **kwargs,
            )


def export_onnx(model: MDNRNN, path: str | os.PathLike, opset: int = 18) -> None:
    """Export the one-step function of ``model`` to an ONNX file (written atomically).

    Inputs: ``event`` ``(B, columns)`` float32 (the previous event, data units), ``start``
    ``(B, 1)`` (1.0: read the start token instead of the event, which begins a sequence: with
    ``context_init`` the state becomes the context's initial state), ``h`` (and ``c`` for an
    LSTM) ``(num_layers, B, hidden_size)``, ``inputs`` ``(B, input_dim)`` and ``context``
    ``(B, context_dim)`` for a conditioned model.  Outputs: ``logits`` ``(B, K)`` (normalised
    log-weights), ``loc`` ``(B, K, D)``, ``scale`` ``(B, K, D)`` (or ``scale_tril`` ``(B, K, D,
    D)``; per dimension ``(B, D, K)`` each), ``pen_logits`` ``(B, P)`` with pen states,
    ``done_logits`` ``(B,)``, ``reward_loc`` and ``reward_scale`` ``(B,)`` with those heads,
    ``h_out`` (and ``c_out``), all in data units.
    ``B`` is dynamic.  The model's ``config()`` is stored in the metadata under ``"mdnkit"``.
    Written by ``torch.onnx.export`` with the TorchScript exporter (``dynamo=False``: offline and
    fast), or the dynamo exporter (``onnxscript``) where that one is missing.
    Run it with :class:`OnnxGenerator`.

    Example:
        >>> export_onnx(MDNRNN(2, hidden_size=16), "step.onnx")   # doctest: +SKIP
        >>> OnnxGenerator("step.onnx").generate(20).shape           # doctest: +SKIP
        (1, 20, 2)
    """
    if not isinstance(model, MDNRNN):
        raise TypeError(f"model must be an MDNRNN, found {type(model).__name__}")
    opset = checks.positive_int("opset", opset)
    try:
        import onnx  # the package, not this module: imports are absolute
    except ImportError as err:  # pragma: no cover
        raise ImportError("export_onnx needs the 'onnx' package: pip install mdnkit[onnx]") from err

    m = copy.deepcopy(model).to("cpu", torch.float32).eval()
    step = _OnnxStep(m).eval()
    b = 2
    shape = (m.num_layers, b, m.hidden_size)
    args = [torch.zeros(b, m.columns), torch.zeros(b, 1), torch.zeros(shape)]
    if m.cell == "lstm":
        args.append(torch.zeros(shape))
    args += [torch.zeros(b, n) for n in (m.input_dim, m.context_dim) if n]
    with atomic_path(path, suffix=".onnx") as tmp:
        _write(step, args, tmp, opset)
        proto = onnx.load(tmp)
        entry = proto.metadata_props.add()
        entry.key, entry.value = "mdnkit", json.dumps(m.config())
        onnx.save(proto, tmp)


class OnnxGenerator(GeneratorBase):
    """Step-by-step generation from an ONNX file written by :func:`export_onnx`, on onnxruntime.

    Same interface as :class:`~mdnkit.sequence.StepGenerator` (``step``, ``predict``,
    ``reset``, ``generate``) and the same keyword arguments (those of
    :class:`~mdnkit.sequence.Sampling`, the streams' ``context``, plus onnxruntime's
    ``threads``), the sampling done in
    NumPy with the same code, so the same seed gives the same events (up to float32 rounding
    differences between the two runtimes).

    Example:
        >>> g = OnnxGenerator("step.onnx", temperature=0.8, generator=0)   # doctest: +SKIP
        >>> e = g.step(); e = g.step(e)                                    # doctest: +SKIP
    """

    def __init__(
        self,
        path: str | os.PathLike,
        batch: int = 1,
        temperature: float = 1.0,
        sigma_temperature: float = 1.0,
        pen_temperature: float = 1.0,
        generator: Any = None,
        threads: int = 1,
        context: Any = None,
    ) -> None:
        sampling = Sampling(
            temperature=temperature,
            sigma_temperature=sigma_temperature,
            pen_temperature=pen_temperature,
            batch=batch,
            generator=generator,
        )
        self.session = _session(path, checks.positive_int("threads", threads))
        meta = self.session.get_modelmeta().custom_metadata_map
        if "mdnkit" not in meta:
            raise ValueError(
                f"{os.fspath(path)!r} has no 'mdnkit' metadata: expected a file from export_onnx"
            )
        #: the exported model's ``config()``
        self.config = cfg = json.loads(meta["mdnkit"])
        super().__init__(
            cfg["event_dim"],
            cfg["pen_states"],
            sampling,
            input_dim=cfg.get("input_dim", 0),
            context_dim=cfg.get("context_dim", 0),
            reward=cfg.get("reward", False),
            done=cfg.get("done", False),
            per_dimension=cfg.get("mixture", "joint") == "per_dimension",
        )
        self.context = self._as_context(context)
        self._out_names = _onnx_names(cfg)[1]
        self._lstm = cfg["cell"] == "lstm"
        self._full = cfg["covariance"] == "full"
        self._shape = (int(cfg["num_layers"]), self.batch, int(cfg["hidden_size"]))
        self._zero_event = np.zeros((self.batch, self.columns), np.float32)
        self._start1 = np.ones((self.batch, 1), np.float32)
        self._start0 = np.zeros((self.batch, 1), np.float32)
        self.reset()

    def _reset_state(self) -> None:
        self.h = np.zeros(self._shape, np.float32)
        self.c = np.zeros(self._shape, np.float32)

    def _advance(self, event: np.ndarray | None, inputs: np.ndarray | None) -> StepParams:
        feed = {
            "event": self._zero_event if event is None else event,
            "start": self._start1 if event is None else self._start0,
            "h": self.h,
        }
        if self._lstm:
            feed["c"] = self.c
        if inputs is not None:
            feed["inputs"] = inputs
        if self.context is not None:
            feed["context"] = self.context
        out = dict(zip(self._out_names, self.session.run(None, feed)))
        self.h = out.pop("h_out")
        if self._lstm:
            self.c = out.pop("c_out")
        sc = out.pop("scale_tril" if self._full else "scale")
        return StepParams(
            scale=None if self._full else sc, scale_tril=sc if self._full else None, **out
        )


def _session(path: str | os.PathLike, threads: int) -> Any:
    """An onnxruntime CPU session over the file at ``path``."""
    try:
        import onnxruntime as ort
    except ImportError as err:  # pragma: no cover
        raise ImportError(
            "OnnxGenerator needs the 'onnxruntime' package: pip install mdnkit[onnx]"
        ) from err
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"expected an ONNX file written by export_onnx, found no file at {path!r}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])

"""The training loop: :func:`fit`, the run it builds, and its :class:`History`.

:func:`fit` trains any model whose ``loss(*batch)`` returns a scalar mean negative
log-likelihood (:class:`~mdnkit.MDN`, :class:`~mdnkit.MDNRNN`, your own): standardisation through
the model's ``prepare``, a validation split, early stopping that restores the best weights, a
learning-rate schedule, gradient clipping, weight decay, a progress bar, seeds, devices,
DataLoaders, checkpoints, and a guard that never lets a NaN pass silently.

**Data.**  ``x`` and ``y`` tensors or arrays with the same first dimension give batches
``(x_b, y_b)``, drawn by shuffling a permutation each epoch (indexed directly, no DataLoader);
a random ``validation_split`` of the rows is held out unless ``validation_data`` is given, and
``model.prepare(x_train, y_train)`` is called once when ``prepare`` is true and the model has it
(for :class:`~mdnkit.MDN`: the standardisation and the head's initial components).  A
:class:`~torch.utils.data.DataLoader` yielding tuples serves data that does not fit in memory;
no split is made from it, and ``prepare`` reads its ``TensorDataset`` or its first 200 000 rows.

**Monitoring.**  After each epoch the validation NLL (the training NLL without validation data;
:attr:`History.monitor` says which) is compared with the best so far; ``patience`` epochs without
improvement stop training (``None``: never) and the best weights are restored either way.
``lr_schedule="plateau"`` halves the learning rate after ``max(2, patience // 2)`` epochs without
improvement (5 when ``patience`` is None), ``"cosine"`` anneals it to 0 over ``epochs``, ``None``
keeps it constant.

**Non-finite losses.**  If an epoch's loss or gradient norm is NaN or infinite, the model and
optimiser roll back to their state at the start of the epoch, the learning rate is halved and the
epoch is repeated (in the same batch order); after 6 consecutive failures a
:class:`RuntimeError` says so.

**Speed.**  On the CPU, when the model is small (parameters x batch size <= 2e6) the loop runs
with one intra-op thread (``torch.set_num_threads(1)``, restored afterwards; the setting is
process-wide).  A model may offer an autograd-free step, ``model.fast_step(*data)`` (the seam
is described in :mod:`mdnkit.fast`); :class:`~mdnkit.MDN` does for in-memory rows without
dropout and with diagonal or spherical components: the same loss and gradients as autograd's,
in as few kernel calls as it can.  While ``fit`` runs, that model's parameters are views of one
flat buffer (so clipping is one norm and Adam updates one tensor); each gets its own storage
back when ``fit`` returns.  Hooks on its modules are not called during training.  The
validation set is evaluated in one batch and the loop synchronises with the device once per
epoch, so small problems train in seconds.

**The run.**  ``fit`` checks its arguments (:class:`FitSettings`) and builds a
:class:`TrainingRun` from parts that each hold their own state and read alone:

* :class:`TrainingData`: the training tensors or DataLoader, the validation data, the device,
  the float dtype and the generator that orders the batches;
* :class:`Optimisation`: the optimiser, the learning-rate schedule, clipping and the update;
* :class:`EpochStep`: one pass over the batches (the model's fast step, or autograd);
* :class:`NaNRollback`: the state at the start of an epoch, restored when it goes non-finite;
* :class:`Monitor`: the :class:`History`, the best weights and early stopping;
* :class:`Checkpointer` and :class:`Progress`: the checkpoint on disk, the progress bar.

These parts are the package's own seams (``fit`` is the public API).

**Checkpoints and exact resume.**  With ``checkpoint=PATH`` the whole training state is written
to ``PATH`` atomically (:func:`mdnkit.io.save_checkpoint`: safetensors tensors and a JSON
header, never pickle) at the end of every epoch and, with ``checkpoint_every=N``, every N
optimiser steps: the current weights, the optimiser and schedule state, the epoch, the step and
the position within the epoch (with the loss sums so far), the best value, the best weights and
the early-stopping counters, the NaN-rollback state, every RNG state (torch's, the generator that
orders the batches, CUDA's on a CUDA device; with a DataLoader also Python's and NumPy's) and
the :class:`History`.  The file is also a model file: :func:`mdnkit.io.load` gives the best
model so far (the current one before the first epoch ends).  ``resume=PATH`` (or ``resume=True``:
from ``checkpoint`` when that file exists) continues a run from it; a run killed at any moment
and resumed ends with the same weights as one never interrupted (bit for bit on the CPU with the
same thread count).  The settings that shape the run (batch size, optimiser, learning rate,
schedule, split, the data's size) must be the ones it was written with (ValueError otherwise);
``epochs`` and ``patience`` may change.  A mid-epoch resume from a DataLoader replays the
epoch's first batches (exact when the loader's order comes from torch's RNG or its own
generator, as a shuffling DataLoader's does).

**Signals.**  While a run with a checkpoint trains (in the main thread), SIGINT (Ctrl-C) and
SIGTERM end the current step, write the checkpoint and raise :class:`TrainingInterrupted` (a
:class:`KeyboardInterrupt`) saying where; a second signal interrupts at once.

**A loaded or trained model continues.**  ``prepare="auto"`` (the default) calls
``model.prepare`` only for a model that :func:`fit` has not prepared or trained before and that
was not loaded from a file (:func:`mdnkit.io.load` marks what it loads, see :func:`is_trained`),
so calling ``fit`` again continues from the model's weights; ``prepare=True`` re-prepares
(for :class:`~mdnkit.MDN`: re-initialises the head), ``False`` never does.

**Data-parallel training** (:mod:`mdnkit.distributed`).  Under ``torchrun`` (any launcher that
sets ``WORLD_SIZE`` > 1 and the rendezvous variables) ``fit`` joins the process group and trains
data-parallel: every rank takes its rank-strided share of the same per-epoch permutation in
batches of ``batch_size`` rows (the global batch is ``batch_size`` times the number of
processes; the learning rate is not scaled), the gradients are averaged over the global batch by
one all-reduce per step (of the fast step's one flat gradient, or of autograd's gradients in
one buffer: the model is not wrapped in DistributedDataParallel because ``fit`` calls
``model.loss``, not ``forward``), the NLLs are reduced as sums and counts, so NaN rollback, the
schedule and early stopping decide alike on every rank, and only rank 0 writes checkpoints and
shows progress.  Dropout draws from torch's RNG seeded with ``seed + rank``.  A DataLoader must
then use a :class:`~torch.utils.data.distributed.DistributedSampler` (``fit`` calls its
``set_epoch``).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .checks import choice, number, positive_int
from .distributed import DataParallel, environment_world_size
from .options import LRSchedule, Optimizer

if TYPE_CHECKING:
    from .fast import FastStep

__all__ = ["fit", "History", "TrainingInterrupted", "is_trained", "mark_trained"]

_MAX_FAILURES = 6
_PREPARE_MAX_ROWS = 200_000
_STATE_KIND = "mdnkit.fit"  # what a checkpoint's training state is, and its version
_STATE_VERSION = 1
_TRAINED = "mdnkit_trained"  # the attribute that marks a prepared, trained or loaded model
#: settings a resumed run may change (the others shape the run and must match)
_RESUME_MAY_CHANGE = ("epochs", "patience")
_VAL_CHUNK = 131_072  # validation rows evaluated in one call
_SHUFFLE_COPY_BYTES = 256 << 20  # training data up to this size is shuffled by one copy an epoch
_SMALL_WORK = 2_000_000  # parameters x batch size below which the CPU loop uses one thread

#: The NLL that :attr:`History.best_nll` holds: the validation NLL, or the training NLL when
#: there is no validation data.
Monitored = Literal["val_nll", "train_nll"]


@dataclass
class History:
    """What happened during :func:`fit`, one entry per completed epoch.

    Attributes:
        train_nll: mean training NLL (nats per element, weighted by batch size) of each epoch,
            measured during the epoch (dropout on, weights changing).
        val_nll: validation NLL after each epoch (empty when there is no validation data).
        lr: the learning rate used in each epoch.
        best_epoch: index of the epoch whose weights were kept.
        best_nll: the monitored NLL at ``best_epoch`` (``inf`` before any epoch).
        stopped_early: whether early stopping ended training before ``epochs``.
        seconds: wall-clock training time.
        nan_recoveries: how many times a non-finite loss was rolled back.
        monitor: which NLL ``best_nll`` is: ``"val_nll"``, or ``"train_nll"`` when there was
            no validation data.

    ``best_val_nll`` is a deprecated alias of ``best_nll``.

    Example:
        >>> h = History(train_nll=[2.0, 1.5], val_nll=[1.9, 1.6], lr=[3e-3, 3e-3])
        >>> h.as_dict()["val_nll"]
        [1.9, 1.6]
        >>> History.from_dict(h.as_dict()) == h
        True
    """

    train_nll: list[float] = field(default_factory=list)
    val_nll: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    best_epoch: int = -1
    best_nll: float = math.inf
    stopped_early: bool = False
    seconds: float = 0.0
    nan_recoveries: int = 0
    monitor: Monitored = "val_nll"

    @property
    def best_val_nll(self) -> float:
        """Deprecated: :attr:`best_nll` (the training NLL when there was no validation data)."""
        warnings.warn(
            "History.best_val_nll is deprecated; use History.best_nll (History.monitor says "
            "whether it is the validation or the training NLL)",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.best_nll

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every field (infinities become None)."""
        d = asdict(self)
        if not math.isfinite(d["best_nll"]):
            d["best_nll"] = None
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> History:
        """The :class:`History` of an :meth:`as_dict` dict, also of one written before
        ``best_val_nll`` became ``best_nll`` (its ``monitor`` is then ``"val_nll"`` when the dict
        has validation NLLs).  None for ``best_nll`` is ``inf``; keys that are not fields (from a
        later version) are ignored."""
        if not isinstance(d, Mapping):
            raise TypeError(f"a History dict must be a mapping, found {type(d).__name__}")
        d = _upgrade(d)
        if d.get("best_nll") is None:
            d["best_nll"] = math.inf
        choice("monitor", d["monitor"], Monitored)
        names = {f.name for f in fields(cls)}
        return cls(**{k: list(v) if isinstance(v, list) else v for k, v in d.items() if k in names})

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(_upgrade(state))  # a History pickled before the rename loads too

    def __len__(self) -> int:
        return len(self.train_nll)


def _upgrade(d: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a History's fields with the pre-rename ``best_val_nll`` as ``best_nll``."""
    d = dict(d)
    if "best_val_nll" in d:
        d.setdefault("best_nll", d.pop("best_val_nll"))
    d.setdefault("monitor", "val_nll" if d.get("val_nll") else "train_nll")
    return d


# ---------------------------------------------------------------------- helpers


def _to_tensor(name: str, v: Any, float_dtype: torch.dtype) -> Tensor:
    if isinstance(v, Tensor):
        t = v.detach()
    elif isinstance(v, np.ndarray) or isinstance(v, (list, tuple)):
        arr = np.asarray(v)
        if arr.dtype == object or not (
            np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_
        ):
            raise TypeError(f"{name} must be numeric, found an array of dtype {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    else:
        raise TypeError(
            f"{name} must be a tensor, a NumPy array or a DataLoader, found {type(v).__name__}"
        )
    if t.is_floating_point():
        t = t.to(float_dtype)
    return t


def _model_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _move(batch: Any, device: torch.device, float_dtype: torch.dtype) -> tuple:
    if isinstance(batch, Tensor):
        batch = (batch,)
    if not isinstance(batch, (tuple, list)):
        raise TypeError(
            f"a DataLoader for fit must yield tuples of tensors, found {type(batch).__name__}"
        )
    out = []
    for t in batch:
        if isinstance(t, Tensor):
            if t.is_floating_point() and t.dtype != float_dtype:
                t = t.to(float_dtype)
            t = t.to(device, non_blocking=True)
        out.append(t)
    return tuple(out)


def _batch_size(batch: tuple) -> int:
    for t in batch:
        if isinstance(t, Tensor) and t.dim() > 0:
            return int(t.shape[0])
    return 1


def _prepare_tensors_from_loader(loader: DataLoader, float_dtype: torch.dtype) -> tuple:
    ds = getattr(loader, "dataset", None)
    if isinstance(ds, torch.utils.data.TensorDataset):
        return tuple(ds.tensors)
    parts: list[tuple] = []
    rows = 0
    for batch in loader:
        b = _move(batch, torch.device("cpu"), float_dtype)
        parts.append(b)
        rows += _batch_size(b)
        if rows >= _PREPARE_MAX_ROWS:
            break
    if not parts:
        raise ValueError("the training DataLoader yielded no batches")
    try:
        return tuple(torch.cat([p[i] for p in parts]) for i in range(len(parts[0])))
    except RuntimeError as err:
        raise ValueError(
            "fit could not gather the DataLoader's batches to call model.prepare (batches of "
            f"different shapes: {err}); call model.prepare(...) yourself and pass prepare=False"
        ) from None


def _as_arrays(name: str, data: Any, float_dtype: torch.dtype) -> tuple[Tensor, ...] | DataLoader:
    if isinstance(data, DataLoader):
        return data
    if (
        isinstance(data, (tuple, list))
        and data
        and all(isinstance(t, (Tensor, np.ndarray)) for t in data)
    ):
        ts = tuple(_to_tensor(f"{name}[{i}]", t, float_dtype) for i, t in enumerate(data))
        n = {int(t.shape[0]) if t.dim() else -1 for t in ts}
        if len(n) != 1 or -1 in n:
            raise ValueError(
                f"{name} tensors must share their first dimension, found shapes "
                f"{[tuple(t.shape) for t in ts]}"
            )
        return ts
    raise TypeError(
        f"{name} must be a (x, y) tuple of tensors/arrays or a DataLoader, found {type(data).__name__}"
    )


class _Snapshot:
    """A copy of the model's tensors (parameters and buffers) and, when given, of the
    optimiser's per-parameter state, on the same device.  Plain clones, no deepcopy: this is
    taken every epoch."""

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer | None) -> None:
        self.model = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.opt: dict | None = None
        if opt is not None:
            self.opt = {
                p: {k: v.detach().clone() if isinstance(v, Tensor) else v for k, v in st.items()}
                for p, st in opt.state.items()
            }

    def restore(self, model: nn.Module, opt: torch.optim.Optimizer | None) -> None:
        """Copy the saved tensors back (the learning rates of ``opt`` are left as they are)."""
        model.load_state_dict(self.model)
        if opt is not None and self.opt is not None:
            opt.state.clear()
            for p, st in self.opt.items():
                opt.state[p] = {k: v.clone() if isinstance(v, Tensor) else v for k, v in st.items()}

    def as_state(self, opt: torch.optim.Optimizer | None) -> dict[str, Any]:
        """For a checkpoint: the model's tensors and the optimiser's state keyed by the
        parameters' positions in ``opt`` (as in its ``state_dict``)."""
        index = {id(p): i for i, p in enumerate(_optimised(opt))} if opt is not None else {}
        moments = None
        if self.opt is not None:
            moments = {index[id(p)]: st for p, st in self.opt.items()}
        return {"model": self.model, "optimizer": moments}

    @classmethod
    def from_state(
        cls, state: Mapping[str, Any], opt: torch.optim.Optimizer | None, device: torch.device
    ) -> _Snapshot:
        """The inverse of :meth:`as_state`, its tensors moved to ``device``."""
        snap = cls.__new__(cls)
        snap.model = {k: v.to(device) for k, v in state["model"].items()}
        snap.opt = None
        if state.get("optimizer") is not None and opt is not None:
            params = _optimised(opt)
            snap.opt = {
                params[int(i)]: {
                    k: v.to(device) if isinstance(v, Tensor) else v for k, v in st.items()
                }
                for i, st in state["optimizer"].items()
            }
        return snap


def _optimised(opt: torch.optim.Optimizer) -> list[Tensor]:
    """The parameters of ``opt`` in the order its ``state_dict`` numbers them."""
    return [p for g in opt.param_groups for p in g["params"]]


def is_trained(model: nn.Module) -> bool:
    """Whether :func:`fit` has prepared or trained ``model`` before, or :func:`mdnkit.io.load`
    loaded it (:func:`mark_trained`): ``fit(..., prepare="auto")`` then does not call
    ``model.prepare`` again.

    Example:
        >>> from mdnkit import MDN
        >>> model = MDN(1, 1, hidden=(4,), num_components=2)
        >>> is_trained(model), is_trained(mark_trained(model))
        (False, True)
    """
    return bool(getattr(model, _TRAINED, False))


def mark_trained(model: nn.Module) -> nn.Module:
    """Mark ``model`` as holding meaningful weights (see :func:`is_trained`); returns it."""
    object.__setattr__(model, _TRAINED, True)
    return model


def _make_optimizer(
    name: str, params: list[nn.Parameter], lr: float, weight_decay: float, device: torch.device
) -> torch.optim.Optimizer:
    # fused: one kernel for the whole update (CPU and CUDA, torch >= 2.4); else foreach: one
    # multi-tensor kernel per state update rather than one per parameter.
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[name]
    kw: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay}
    if name == "sgd":
        kw["momentum"] = 0.9
    if device.type in ("cpu", "cuda") and all(p.is_floating_point() for p in params):
        try:
            return cls(params, fused=True, **kw)
        except (RuntimeError, TypeError, ValueError):
            pass
    return cls(params, foreach=True, **kw)


def _clip_grad_norm(params: Sequence[nn.Parameter], max_norm: float) -> Tensor:
    r"""Scale the gradients by :math:`\min(1, c / (\lVert g\rVert_2 + 10^{-6}))` in place and
    return the total norm :math:`\lVert g\rVert_2` (as ``torch.nn.utils.clip_grad_norm_``, with
    less per-call overhead: every parameter is on one device here)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if len(grads) == 1:  # the fast path's one flat gradient
        g = grads[0]
        norm = torch.linalg.vector_norm(g)
        if g.device.type == "cpu":  # a CPU scalar costs no synchronisation: two ops, not four
            total = float(norm) + 1e-6
            if total > max_norm:  # (a NaN norm is not: the epoch rolls back anyway)
                g.mul_(max_norm / total)
            return norm
        g.mul_((max_norm / (norm + 1e-6)).clamp_(max=1.0))
        return norm
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    torch._foreach_mul_(grads, (max_norm / (norm + 1e-6)).clamp(max=1.0))
    return norm


def _direct_adam_step(opt: torch.optim.Optimizer) -> Callable[[], None] | None:
    """For a fused Adam or AdamW over one parameter (the fast path's flat buffer): a step that
    runs the same update kernel as ``opt.step()`` on the optimiser's own state, without the
    per-call bookkeeping around it (about 30 µs, a tenth of a small model's step).  None where
    that does not apply (other optimisers or options, or a torch without the kernel)."""
    if type(opt) not in (torch.optim.Adam, torch.optim.AdamW) or len(opt.param_groups) != 1:
        return None
    group = opt.param_groups[0]
    decoupled = bool(group.get("decoupled_weight_decay", type(opt) is torch.optim.AdamW))
    kernel = getattr(torch, "_fused_adamw_" if decoupled else "_fused_adam_", None)
    if (
        kernel is None
        or not group.get("fused")
        or len(group["params"]) != 1
        or group.get("amsgrad")
        or group.get("maximize")
        or group.get("capturable")
        or group.get("differentiable")
        or isinstance(group["lr"], Tensor)
    ):
        return None
    (p,) = group["params"]

    def step() -> None:
        # looked up on every call: load_state_dict replaces the state and the groups
        st = opt.state[p]
        if not st:  # the optimiser creates its state on its first step
            opt.step()
            return
        group = opt.param_groups[0]
        beta1, beta2 = group["betas"]
        steps = st["step"]
        steps.add_(1)
        kernel(
            [p],
            [p.grad],
            [st["exp_avg"]],
            [st["exp_avg_sq"]],
            [],
            [steps],
            amsgrad=False,
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=False,
            grad_scale=None,
            found_inf=None,
        )

    return step


def _small(model: nn.Module, batch_size: int) -> bool:
    """Whether one batch's work is too small to gain from several CPU threads (an ensemble's
    ``n_members`` networks are independent products, each counted as one network)."""
    n_params = sum(p.numel() for p in model.parameters()) // getattr(model, "n_members", 1)
    return n_params * batch_size <= _SMALL_WORK


@contextlib.contextmanager
def _few_threads(model: nn.Module, batch_size: int, device: torch.device) -> Iterator[None]:
    """One intra-op CPU thread while a small model trains (for tiny matrices, thread start-up and
    synchronisation cost more than they save); the process's setting is restored on exit."""
    threads = torch.get_num_threads()
    if device.type == "cpu" and _small(model, batch_size):
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


# ---------------------------------------------------------------------- the run's parts
@dataclass(frozen=True)
class FitSettings:
    """The checked settings of a run (what :func:`fit`'s arguments of the same names ask for;
    these defaults are ``fit``'s: its signature reads them from here).  Constructing one checks every value: a :class:`ValueError`
    names the argument, what was expected and what was found."""

    epochs: int = 200
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 0.0
    optimizer: Optimizer = "adam"
    validation_split: float = 0.1
    patience: int | None = 20
    lr_schedule: LRSchedule | None = "plateau"
    clip_grad_norm: float | None = 10.0

    def __post_init__(self) -> None:
        checked = {
            "epochs": positive_int("epochs", self.epochs),
            "batch_size": positive_int("batch_size", self.batch_size),
            "lr": number("lr", self.lr, low=0.0, low_open=True),
            "weight_decay": number("weight_decay", self.weight_decay, low=0.0),
            "optimizer": choice("optimizer", self.optimizer, Optimizer),
            "validation_split": number(
                "validation_split", self.validation_split, low=0.0, high=1.0, high_open=True
            ),
            "patience": positive_int("patience", self.patience, or_none=True),
            "lr_schedule": choice("lr_schedule", self.lr_schedule, LRSchedule | None),
            "clip_grad_norm": number(
                "clip_grad_norm", self.clip_grad_norm, low=0.0, low_open=True, or_none=True
            ),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)


class TrainingData:
    """The data of a run: the training tensors (``train``, on the device) or a DataLoader
    (``loader``), the validation data (``val``: tensors, a DataLoader or None), the ``device``
    and float ``dtype`` batches are moved to, and the ``generator`` whose state orders the
    in-memory batches (a DataLoader orders its own).  ``seed`` is the generator's seed,
    ``rows`` the training and validation rows (None for a DataLoader), ``parallel`` the
    data-parallel setting (None: one process) and ``epoch_rng`` the RNG states a DataLoader's
    epoch started from (:meth:`begin_epoch`)."""

    def __init__(
        self,
        train: tuple[Tensor, ...] | None,
        loader: DataLoader | None,
        val: tuple[Tensor, ...] | DataLoader | None,
        device: torch.device,
        dtype: torch.dtype,
        generator: torch.Generator,
    ) -> None:
        self.train, self.loader, self.val = train, loader, val
        self.device, self.dtype, self.generator = device, dtype, generator
        self.seed: int | None = None
        self.parallel: DataParallel | None = None
        self.epoch_rng: dict[str, Any] | None = None
        self.rows: list[int] | None = None
        if train is not None:
            n_val = int(val[0].shape[0]) if isinstance(val, tuple) else 0
            self.rows = [int(train[0].shape[0]), n_val]

    @classmethod
    def from_arguments(
        cls,
        x: Any,
        y: Any,
        validation_data: Any,
        validation_split: float,
        device: torch.device,
        dtype: torch.dtype,
        generator: torch.Generator,
    ) -> TrainingData:
        """Checked data from :func:`fit`'s arguments, the validation rows split off (by
        ``generator``) when there is no ``validation_data``; still where the caller had them."""
        loader: DataLoader | None = None
        train: tuple[Tensor, ...] | None = None
        val: tuple[Tensor, ...] | DataLoader | None = None
        if isinstance(x, DataLoader):
            if y is not None:
                raise ValueError("when x is a DataLoader, y must be None (batches come from x)")
            loader = x
        elif y is None:
            if not isinstance(x, (tuple, list)):
                raise ValueError("y is required when x is a tensor or an array")
            train = _as_arrays("x", x, dtype)  # type: ignore[assignment]
        else:
            train = _as_arrays("(x, y)", (x, y), dtype)  # type: ignore[assignment]
        if validation_data is not None:
            val = _as_arrays("validation_data", validation_data, dtype)
        elif train is not None and validation_split > 0:
            n = int(train[0].shape[0])
            n_val = int(round(n * validation_split))
            if n_val >= 1 and n - n_val >= 1:
                perm = torch.randperm(n, generator=generator)
                vi, ti = perm[:n_val], perm[n_val:]
                val = tuple(t[vi] for t in train)
                train = tuple(t[ti] for t in train)
        if train is not None and int(train[0].shape[0]) < 1:
            raise ValueError("no training rows")
        return cls(train, loader, val, device, dtype, generator)

    def prepare(self, model: nn.Module) -> None:
        """``model.prepare(*training tensors)`` (a loader's tensors or first batches), then the
        model moved to the device (``prepare`` may make new buffers)."""
        tensors = self.train
        if tensors is None:
            assert self.loader is not None
            tensors = _prepare_tensors_from_loader(self.loader, self.dtype)
        model.prepare(*tensors)
        model.to(self.device)

    def share(self, parallel: DataParallel | None) -> None:
        """Train data-parallel: this rank's rank-strided share of the validation rows (the
        training rows are shared out per epoch by :meth:`batches`); a DataLoader must use a
        DistributedSampler (every rank then runs the same number of steps)."""
        self.parallel = parallel
        if parallel is None:
            return
        if self.loader is not None:
            sampler = getattr(self.loader, "batch_sampler", None)
            sampler = getattr(sampler, "sampler", None) or getattr(self.loader, "sampler", None)
            if not isinstance(sampler, torch.utils.data.distributed.DistributedSampler):
                raise ValueError(
                    "data-parallel training from a DataLoader needs "
                    "sampler=torch.utils.data.distributed.DistributedSampler(dataset) (so that "
                    f"every rank runs the same number of steps), found {type(sampler).__name__}"
                )
        if isinstance(self.val, tuple):
            self.val = tuple(t[parallel.rank :: parallel.world] for t in self.val)

    def to_device(self) -> None:
        """The in-memory training and validation tensors moved to the device."""
        if self.train is not None:
            self.train = tuple(t.to(self.device) for t in self.train)
        if isinstance(self.val, tuple):
            self.val = tuple(t.to(self.device) for t in self.val)

    def order_state(self) -> Tensor:
        """The state that decides the next epoch's batch order (see :meth:`restore_order`)."""
        return self.generator.get_state()

    def restore_order(self, state: Tensor) -> None:
        """Replay an epoch's batch order from :meth:`order_state` (in-memory data only)."""
        if self.train is not None:
            self.generator.set_state(state)

    def begin_epoch(self) -> None:
        """Remember the RNG states a DataLoader's epoch starts from (a mid-epoch resume replays
        its first batches from them)."""
        if self.loader is not None:
            own = getattr(self.loader, "generator", None)
            self.epoch_rng = {
                "torch": torch.get_rng_state(),
                "loader": own.get_state() if own is not None else None,
            }

    def batches(
        self, batch_size: int, skip: int = 0, epoch: int = 0
    ) -> Iterator[tuple[Tensor, ...]]:
        """One epoch's batches, on the device, after the first ``skip`` (a resumed epoch): a
        shuffled permutation of the in-memory rows (drawn when the first batch is; data-parallel:
        this rank's rank-strided share of it, padded with empty batches to the steps of the
        largest share), or the loader's batches."""
        if self.train is None:
            yield from self._loader_batches(skip, epoch)
            return
        train = self.train
        n = int(train[0].shape[0])
        perm = torch.randperm(n, generator=self.generator).to(self.device)
        par = self.parallel
        if par is not None:
            perm = perm[par.rank :: par.world]
        m = int(perm.shape[0])
        if m <= batch_size or sum(t.nbytes for t in train) <= _SHUFFLE_COPY_BYTES:
            # one shuffled copy per epoch, then contiguous slices: the same batches as
            # indexing each one, for two kernels an epoch instead of two a batch
            shuffled = tuple(t[perm] for t in train)
            for i in range(skip * batch_size, m, batch_size):
                yield tuple(t[i : i + batch_size] for t in shuffled)
        else:
            for idx in perm.split(batch_size)[skip:]:
                yield tuple(t[idx] for t in train)
        if par is not None:
            steps = _ceil_div(_ceil_div(n, par.world), batch_size)  # the largest share's
            for _ in range(steps - max(skip, _ceil_div(m, batch_size))):
                yield tuple(t[:0] for t in train)

    def _loader_batches(self, skip: int, epoch: int) -> Iterator[tuple[Tensor, ...]]:
        assert self.loader is not None
        sampler = getattr(self.loader, "sampler", None)
        if self.parallel is not None and callable(getattr(sampler, "set_epoch", None)):
            sampler.set_epoch(epoch)
        if skip and self.epoch_rng is not None:
            # a resumed epoch: the loader's order as it was drawn at the epoch's start
            now = torch.get_rng_state()
            torch.set_rng_state(self.epoch_rng["torch"])
            own = getattr(self.loader, "generator", None)
            if own is not None and self.epoch_rng.get("loader") is not None:
                own.set_state(self.epoch_rng["loader"])
            it = iter(self.loader)
            for _ in range(skip):
                next(it, None)
            torch.set_rng_state(now)
        else:
            it = iter(self.loader)
            for _ in range(skip):
                next(it, None)
        for batch in it:
            yield _move(batch, self.device, self.dtype)

    def evaluate(self, model: nn.Module) -> float | None:
        """The model's mean NLL on the validation data, in evaluation mode (None without any;
        data-parallel: the sum over every rank's rows over their count); the model is left in
        training mode."""
        if self.val is None:
            return None
        model.eval()
        with torch.no_grad():
            if self.parallel is None:
                out = self._mean_loss(model, self.val)
            else:
                total, count = self.parallel.sum(self._loss_sum(model, self.val))
                out = total / count if count else math.nan
        model.train()
        return out

    def _mean_loss(self, model: nn.Module, val: tuple[Tensor, ...] | DataLoader) -> float:
        if isinstance(val, tuple):
            n = int(val[0].shape[0])
            if n <= _VAL_CHUNK:
                return float(model.loss(*val))  # one batch: one call, one synchronisation
        total, count = self._loss_sum(model, val)
        if count == 0:
            raise ValueError("the validation DataLoader yielded no batches")
        return total / count

    def _loss_sum(
        self, model: nn.Module, val: tuple[Tensor, ...] | DataLoader
    ) -> tuple[float, int]:
        """The NLL summed over the validation rows (chunks weighted by their rows), and the
        number of rows."""
        if isinstance(val, tuple):
            n = int(val[0].shape[0])
            total = 0.0
            for i in range(0, n, _VAL_CHUNK):
                chunk = tuple(t[i : i + _VAL_CHUNK] for t in val)
                total += float(model.loss(*chunk)) * int(chunk[0].shape[0])
            return total, n
        total, count = 0.0, 0
        for batch in val:
            b = _move(batch, self.device, self.dtype)
            rows = _batch_size(b)
            total += float(model.loss(*b)) * rows
            count += rows
        return total, count


class Optimisation:
    """How gradients become new weights: the ``optimizer``, its learning-rate ``scheduler``
    (or None), clipping to a total norm of ``clip_norm`` (None: no clipping) and ``update``,
    the call that applies one step (``optimizer.step``, or the same fused Adam kernel called
    directly, see :func:`_direct_adam_step`)."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        clip_norm: float | None,
        direct: bool = False,
    ) -> None:
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.clip_norm = clip_norm
        direct_step = _direct_adam_step(optimizer) if direct else None
        self.update: Callable[[], Any] = direct_step or optimizer.step

    @classmethod
    def build(
        cls,
        settings: FitSettings,
        parameters: list[nn.Parameter],
        device: torch.device,
        *,
        direct: bool = False,
    ) -> Optimisation:
        """The optimiser and schedule ``settings`` ask for, over ``parameters`` on ``device``;
        ``direct``: call a fused Adam's kernel directly where that applies."""
        s = settings
        opt = _make_optimizer(s.optimizer, parameters, s.lr, s.weight_decay, device)
        sched: Any = None
        if s.lr_schedule == "plateau":
            pat = max(2, s.patience // 2) if s.patience is not None else 5
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, mode="min", factor=0.5, patience=pat, threshold=1e-4, min_lr=s.lr * 1e-3
            )
        elif s.lr_schedule == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=s.epochs)
        return cls(opt, sched, s.clip_grad_norm, direct)

    @property
    def lr(self) -> float:
        """The current learning rate (of the first parameter group)."""
        return float(self.optimizer.param_groups[0]["lr"])

    def clip(self, parameters: Sequence[nn.Parameter]) -> Tensor:
        """Clip the gradients to ``clip_norm`` in place; their total norm before (a tensor)."""
        assert self.clip_norm is not None
        return _clip_grad_norm(parameters, self.clip_norm)

    def halve_lr(self) -> None:
        """Halve every group's learning rate (after a rollback)."""
        for g in self.optimizer.param_groups:
            g["lr"] *= 0.5

    def after_epoch(self, monitored: float) -> None:
        """Advance the schedule by one epoch (the plateau schedule reads ``monitored``)."""
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(monitored)
        elif self.scheduler is not None:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        """The optimiser's and the schedule's state (for a checkpoint)."""
        sched = self.scheduler.state_dict() if self.scheduler is not None else None
        return {"optimizer": self.optimizer.state_dict(), "scheduler": sched}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict`."""
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])


@dataclass
class EpochPosition:
    """How far an epoch has gone: the ``batches`` done, the loss summed over them (weighted by
    their rows, ``total``) and the sum of their gradient norms (``norms``), both 0-dim float64
    tensors on the device, and the rows seen (``count``)."""

    total: Tensor
    norms: Tensor
    count: int = 0
    batches: int = 0

    @classmethod
    def start(cls, device: torch.device) -> EpochPosition:
        """The position before an epoch's first batch."""
        zero = torch.zeros((), dtype=torch.float64, device=device)
        return cls(zero, zero.clone())


#: Called after every step with the position and whether the ranks asked to stop; True stops
#: the epoch there.
AfterStep = Callable[[EpochPosition, bool], bool]
#: Averages the gradients of the data-parallel ranks (parameters, this rank's rows); returns
#: whether any rank asked to stop.
GradientSync = Callable[[Sequence[Tensor], int], bool]


class EpochStep:
    """One pass over the training batches: per batch the loss and its gradients (``fast``, the
    model's :class:`~mdnkit.fast.FastStep`, or autograd on ``model.loss``), clipping and the
    update.  ``parameters`` are what the optimiser updates: the fast step's, or the model's
    trainable ones."""

    def __init__(self, model: nn.Module, fast: FastStep | None = None) -> None:
        self.model = model
        self.fast = fast
        if fast is not None:
            self.parameters = list(fast.parameters)
        else:
            self.parameters = [p for p in model.parameters() if p.requires_grad]
        if not self.parameters:
            raise ValueError("the model has no trainable parameters")

    @classmethod
    def for_model(cls, model: nn.Module, train: tuple[Tensor, ...] | None) -> EpochStep:
        """The model's fast step for in-memory ``train`` tensors where it offers one
        (``model.fast_step(*train)``), else autograd."""
        make = getattr(model, "fast_step", None)
        fast = make(*train) if train is not None and callable(make) else None
        return cls(model, fast)

    def attached(self) -> contextlib.AbstractContextManager:
        """The context the epochs run in (the fast step's :meth:`attached`)."""
        return self.fast.attached() if self.fast is not None else contextlib.nullcontext()

    def prepare(self, train: tuple[Tensor, ...] | None) -> tuple[Tensor, ...] | None:
        """The training tensors in the form the step takes batches of (once, not per batch)."""
        if self.fast is None or train is None:
            return train
        return tuple(self.fast.prepare(*train))

    def run(
        self,
        batches: Iterator[tuple[Tensor, ...]],
        optim: Optimisation,
        device: torch.device,
        position: EpochPosition | None = None,
        sync: GradientSync | None = None,
        after_step: AfterStep | None = None,
    ) -> tuple[EpochPosition, bool]:
        """Train on ``batches`` from ``position`` (default: the epoch's start): where the epoch
        got to, and whether ``after_step`` stopped it early.  ``sync`` (data-parallel) averages
        the gradients over the ranks before clipping; a batch without rows (a rank whose share
        has run out) then contributes zeros."""
        fast, model, params = self.fast, self.model, self.parameters
        opt, update = optim.optimizer, optim.update
        clip = optim.clip if optim.clip_norm is not None else None
        pos = position if position is not None else EpochPosition.start(device)
        # Accumulated on the device and read once per epoch: no per-step synchronisation.
        # A NaN/inf loss or gradient norm anywhere makes its sum non-finite.
        total, norms, count, done = pos.total, pos.norms, pos.count, pos.batches
        stop = False
        for batch in batches:
            n = _batch_size(batch)
            if sync is not None and n == 0:
                loss = self._no_rows(device)
            elif fast is not None:
                # same loss, hand-written gradients (written over, so no zero_grad is needed)
                loss = fast(*batch)
            else:
                opt.zero_grad(set_to_none=True)
                loss = model.loss(*batch)
                loss.backward()
            if sync is not None:
                stop = sync(params, n)
            if clip is not None:
                norms.add_(clip(params))
            total.add_(loss.detach(), alpha=n)
            count += n
            update()
            if after_step is not None:
                done += 1
                pos.count, pos.batches = count, done
                if after_step(pos, stop):
                    return pos, True
        pos.count = count
        return pos, False

    def _no_rows(self, device: torch.device) -> Tensor:
        """A step on no rows: zero gradients (a 0 loss)."""
        for p in self.parameters:
            if p.grad is not None:
                p.grad.zero_()
        return torch.zeros((), device=device)

    @staticmethod
    def result(position: EpochPosition, parallel: DataParallel | None) -> tuple[float, bool]:
        """An epoch's mean loss (weighted by batch size; data-parallel: over every rank's rows)
        and whether it and every gradient norm were finite."""
        total, norms, count = float(position.total), float(position.norms), position.count
        if parallel is not None:
            total, count, norms = parallel.sum([total, float(count), norms])
        if count == 0:
            raise ValueError("the training data yielded no batches")
        nll = total / count
        return nll, math.isfinite(nll) and math.isfinite(norms)


class NaNRollback:
    """The guard against non-finite epochs: the model's and optimiser's state and the batch
    order at the start of each epoch (:meth:`begin`), restored with the learning rate halved
    when the epoch's loss or a gradient norm was not finite (:meth:`recover`); ``failures``
    counts them in a row, and reaching ``max_failures`` raises :class:`RuntimeError`."""

    def __init__(self, max_failures: int | None = None) -> None:
        self.max_failures = _MAX_FAILURES if max_failures is None else max_failures
        self.failures = 0
        self._good: _Snapshot | None = None
        self._order: Tensor | None = None

    def begin(self, model: nn.Module, optim: Optimisation, data: TrainingData) -> None:
        """Remember the state an epoch starts from."""
        self._good = _Snapshot(model, optim.optimizer)
        self._order = data.order_state()

    @property
    def epoch_order(self) -> Tensor | None:
        """The batch-order state the current epoch started from."""
        return self._order

    def succeeded(self) -> None:
        """The epoch was finite."""
        self.failures = 0

    def recover(
        self, model: nn.Module, optim: Optimisation, data: TrainingData, epoch: int
    ) -> None:
        """Roll back to the start of ``epoch`` (which is then repeated) at half the rate."""
        assert self._good is not None and self._order is not None
        self.failures += 1
        self._good.restore(model, optim.optimizer)
        optim.halve_lr()
        if self.failures >= self.max_failures:
            raise RuntimeError(
                f"training failed: the loss or its gradient was NaN/inf in epoch {epoch} "
                f"{self.failures} times in a row, even after rolling back and halving the "
                f"learning rate to {optim.lr:.3g}; check the data for NaN/inf or extreme "
                "values, or lower lr"
            )
        data.restore_order(self._order)

    def state_dict(self, optim: Optimisation, mid_epoch: bool) -> dict[str, Any]:
        """The failures in a row and, in the middle of an epoch, the state it started from."""
        start = None
        if mid_epoch and self._good is not None:
            start = self._good.as_state(optim.optimizer)
        return {"failures": self.failures, "start": start, "order": self._order}

    def load_state_dict(
        self, state: Mapping[str, Any], optim: Optimisation, device: torch.device
    ) -> None:
        """Continue from :meth:`state_dict`."""
        self.failures = int(state["failures"])
        if state.get("start") is not None:
            self._good = _Snapshot.from_state(state["start"], optim.optimizer, device)
            self._order = state["order"]


class Monitor:
    """What the run watches: the :class:`History` (``history``), the best monitored NLL
    (``best``) and the weights that reached it (``best_state``), and early stopping after
    ``patience`` epochs without improvement (``since_best`` counts them; None: never)."""

    def __init__(self, monitor: Monitored, patience: int | None) -> None:
        self.history = History(monitor=monitor)
        self.patience = patience
        self.best = math.inf
        self.since_best = 0
        self.best_state: _Snapshot | None = None

    def record(
        self,
        model: nn.Module,
        epoch: int,
        train_nll: float,
        val_nll: float | None,
        lr: float,
    ) -> tuple[float, bool]:
        """Add an epoch to the history and keep the model's weights if they are the best so
        far; the monitored NLL (non-finite: ``inf``) and whether it improved."""
        h = self.history
        h.train_nll.append(train_nll)
        h.lr.append(lr)
        monitored = train_nll
        if val_nll is not None:
            h.val_nll.append(val_nll)
            monitored = val_nll
        if not math.isfinite(monitored):
            monitored = math.inf
        if monitored >= self.best:
            self.since_best += 1
            return monitored, False
        self.best = monitored
        self.best_state = _Snapshot(model, None)
        h.best_epoch = epoch
        h.best_nll = monitored
        self.since_best = 0
        return monitored, True

    def out_of_patience(self) -> bool:
        """Whether early stopping ends training now."""
        return self.patience is not None and self.since_best >= self.patience

    def restore_best(self, model: nn.Module) -> None:
        """Put the best weights back into ``model`` (if any epoch completed)."""
        if self.best_state is not None:
            self.best_state.restore(model, None)

    def state_dict(self) -> dict[str, Any]:
        """The history and the counters (the best weights go into the checkpoint's model)."""
        return {
            "history": self.history.as_dict(),
            "best": self.best,
            "since_best": self.since_best,
            "has_best": self.best_state is not None,
        }

    def load_state_dict(
        self, state: Mapping[str, Any], best_weights: Mapping[str, Tensor], device: torch.device
    ) -> None:
        """Continue from :meth:`state_dict` and the best weights."""
        self.history = History.from_dict(state["history"])
        self.best = float(state["best"])
        self.since_best = int(state["since_best"])
        self.best_state = None
        if state["has_best"]:
            self.best_state = _Snapshot.from_state({"model": dict(best_weights)}, None, device)


class TrainingInterrupted(KeyboardInterrupt):
    """:func:`fit` stopped by SIGINT (Ctrl-C) or SIGTERM: the current step was finished and the
    whole training state written to ``checkpoint`` (resume with ``fit(..., resume=...)``).  A
    :class:`KeyboardInterrupt`, so ``except KeyboardInterrupt`` catches it; ``signal`` is the
    signal's number, ``epoch`` the completed epochs and ``step`` the optimiser steps taken."""

    def __init__(self, signum: int, checkpoint: str | os.PathLike | None, epoch: int, step: int):
        self.signal, self.checkpoint, self.epoch, self.step = signum, checkpoint, epoch, step
        name = signal.Signals(signum).name
        where = f"; checkpoint written to {os.fspath(checkpoint)}" if checkpoint else ""
        super().__init__(f"training stopped by {name} in epoch {epoch + 1}, step {step}{where}")


class StopSignals:
    """While entered (in the main thread, when ``enabled``): SIGINT and SIGTERM set
    ``received`` (the run stops after its current step); a second signal raises
    :class:`KeyboardInterrupt` at once.  The previous handlers come back on exit."""

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum

    def __enter__(self) -> StopSignals:
        if self.enabled and threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                num = getattr(signal, name, None)
                if num is not None:
                    self._previous[num] = signal.signal(num, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for num, handler in self._previous.items():
            signal.signal(num, handler)
        self._previous.clear()


class Checkpointer:
    """The run's checkpoint at ``path`` (None: none): the whole training state, written with
    :func:`mdnkit.io.save_checkpoint` (atomic) at the end of every epoch and every ``every``
    optimiser steps (None: only at epoch ends), by rank 0 only (``writes``); its model is the
    best one so far."""

    def __init__(
        self, path: str | os.PathLike | None, every: int | None = None, writes: bool = True
    ) -> None:
        self.path = path
        self.every = every
        self.writes = writes

    def check(self, model: nn.Module) -> None:
        """A TypeError now, rather than after training, if ``model`` cannot be saved."""
        if self.path is not None:
            from . import io

            io.saveable_class_name(model)

    def due(self, step: int) -> bool:
        """Whether the ``step``-th optimiser step (counted from the run's start) is followed
        by a write."""
        return self.every is not None and step % self.every == 0

    def write(self, run: TrainingRun, position: EpochPosition | None = None) -> None:
        """Write ``run``'s state (``position``: in the middle of an epoch); every rank must call
        this (the RNG states are gathered from all of them)."""
        if self.path is None:
            return
        rng = run.rng_states()
        if not self.writes:
            return
        from . import io

        state = run.state_dict(position, rng)
        best = run.monitor.best_state
        h = run.monitor.history.as_dict()
        meta = {
            "best_epoch": h["best_epoch"],
            "best_nll": h["best_nll"],
            "monitor": h["monitor"],
            "epoch": run.epoch,
            "step": state["steps"],
        }
        weights = best.model if best is not None else run.model.state_dict()
        io.save_checkpoint(run.model, self.path, state, weights=weights, metadata=meta)


class Progress:
    """The tqdm bar with the live NLLs (``show`` None: when stderr is a terminal), starting at
    ``initial`` epochs.  When early stopping ends the run, closing the bar writes a line under
    it that says why (the bar stops short of its total)."""

    def __init__(self, show: bool | None, epochs: int, initial: int = 0) -> None:
        if show is None:
            show = bool(getattr(sys.stderr, "isatty", lambda: False)())
        self.bar: Any = None
        if show:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=epochs, initial=initial, desc="fit", unit="epoch", leave=True)

    def update(self, train_nll: float, val_nll: float | None, best: float) -> None:
        """One epoch done."""
        if self.bar is None:
            return
        post = {"train_nll": f"{train_nll:.4f}"}
        if val_nll is not None:
            post["val_nll"] = f"{val_nll:.4f}"
        post["best"] = f"{best:.4f}"
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(1)

    def close(self, history: History | None = None) -> None:
        """Close the bar; after early stopping (``history.stopped_early``), write
        ``fit: stopped early at epoch 56: no improvement in validation NLL for 20 epochs; best
        epoch 36`` under it (epochs numbered from 1, as on the bar)."""
        if self.bar is None:
            return
        self.bar.close()
        reason = self.stop_reason(history) if history is not None else None
        if reason is not None:
            assert history is not None
            print(
                f"fit: stopped early at epoch {len(history)}: {reason}; "
                f"best epoch {history.best_epoch + 1}",
                file=sys.stderr,
                flush=True,
            )

    @staticmethod
    def stop_reason(history: History) -> str | None:
        """Why early stopping ended a run (``no improvement in validation NLL for 20
        epochs``), or None when it did not.

        Example:
            >>> h = History(train_nll=[3.0, 2.0, 2.5, 2.4], best_epoch=1, stopped_early=True,
            ...             monitor="train_nll")
            >>> Progress.stop_reason(h)
            'no improvement in training NLL for 2 epochs'
        """
        if not history.stopped_early:
            return None
        watched = "validation" if history.monitor == "val_nll" else "training"
        since = len(history) - 1 - history.best_epoch
        return f"no improvement in {watched} NLL for {since} epoch{'' if since == 1 else 's'}"


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _rng_state(device: torch.device, python_numpy: bool) -> dict[str, Any]:
    """This process's RNG states: torch's, CUDA's on a CUDA ``device`` and, when asked,
    Python's and NumPy's."""
    out: dict[str, Any] = {"torch": torch.get_rng_state(), "cuda": None}
    if device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device)
    if python_numpy:
        name, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
        out["python"] = random.getstate()
        out["numpy"] = [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]
    return out


def _set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    """The inverse of :func:`_rng_state`."""
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
    if state.get("python") is not None:
        random.setstate(state["python"])
    if state.get("numpy") is not None:
        name, keys, pos, has_gauss, cached = state["numpy"]
        state_np = (name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached)
        np.random.set_state(state_np)  # noqa: NPY002


class TrainingRun:
    """One call of :func:`fit`: its parts and the epoch loop over them.

    The run's state is in its parts and in :attr:`epoch` (completed epochs), :attr:`steps`
    (optimiser steps in them) and :attr:`stopped` (early stopping or the callback ended it):
    ``data.generator`` orders the batches, ``optim`` holds the optimiser and schedule,
    ``monitor`` the history and the best weights, ``rollback`` the failures in a row,
    ``checkpoints`` what is on disk, ``parallel`` the data-parallel setting (None: one process).
    :meth:`state_dict` gathers it for a checkpoint and :meth:`load_state` continues from one.
    Around the loop, the global RNG (dropout) is forked and seeded with ``seed`` (plus the rank)
    when given, or set from the checkpoint when resuming.
    """

    def __init__(
        self,
        model: nn.Module,
        settings: FitSettings,
        data: TrainingData,
        step: EpochStep,
        optim: Optimisation,
        *,
        seed: int | None = None,
        checkpoints: Checkpointer | None = None,
        progress: Progress | None = None,
        callback: Callable[[int, History], Any] | None = None,
        parallel: DataParallel | None = None,
    ) -> None:
        self.model = model
        self.settings = settings
        self.data = data
        self.step = step
        self.optim = optim
        self.seed = int(seed) if seed is not None else None
        self.rollback = NaNRollback()
        self.monitor = Monitor(
            "val_nll" if data.val is not None else "train_nll", settings.patience
        )
        self.checkpoints = checkpoints if checkpoints is not None else Checkpointer(None)
        self.progress = progress if progress is not None else Progress(False, settings.epochs)
        self.callback = callback
        self.parallel = parallel
        self.epoch = 0
        self.steps = 0
        self.stopped = False
        self.signals = StopSignals(self.checkpoints.path is not None)
        self.seconds_before = 0.0
        self._started: float | None = None
        self._position: EpochPosition | None = None  # where a resumed epoch continues
        self._rng: Mapping[str, Any] | None = None  # the RNG states a resumed run starts with

    @classmethod
    def build(
        cls,
        model: nn.Module,
        x: Any,
        y: Any,
        settings: FitSettings,
        *,
        validation_data: Any,
        seed: int | None,
        device: str | torch.device | None,
        checkpoint: str | os.PathLike | None,
        checkpoint_every: int | None,
        resume: str | os.PathLike | bool | None,
        prepare: bool | Literal["auto"],
        progress: bool | None,
        callback: Callable[[int, History], Any] | None,
    ) -> TrainingRun:
        """The run :func:`fit` makes of its (checked) arguments: the model moved to ``device``
        and prepared on the training split (or set from the checkpoint it resumes), the process
        group joined when the environment asks for data-parallel training, the step and the
        optimiser chosen."""
        Checkpointer(checkpoint).check(model)
        resumed = _read_resume(resume, checkpoint)
        dev = _run_device(device, model)
        model.to(dev)
        parallel = DataParallel.from_environment(dev)
        try:
            data = _run_data(model, x, y, settings, validation_data, seed, dev, parallel, resumed)
            if resumed is not None:
                _check_resume(resumed, settings, data, parallel, seed)
                _load_model(model, resumed)
            elif _should_prepare(model, prepare):
                data.prepare(model)
            mark_trained(model)
            data.share(parallel)
            data.to_device()
            if parallel is not None:
                parallel.broadcast_module(model)
            step = EpochStep.for_model(model, data.train)
            optim = Optimisation.build(settings, step.parameters, dev, direct=step.fast is not None)
            main = parallel is None or parallel.is_main
            initial = int(resumed[2]["epoch"]) if resumed is not None else 0
            run = cls(
                model, settings, data, step, optim, seed=seed, callback=callback,
                checkpoints=Checkpointer(checkpoint, checkpoint_every, writes=main),
                progress=Progress(progress if main else False, settings.epochs, initial),
                parallel=parallel,
            )  # fmt: skip
            if resumed is not None:
                run.load_state(resumed[1], resumed[2])
        except BaseException:
            if parallel is not None:
                parallel.close()
            raise
        return run

    def train(self) -> History:
        """Run the epochs; the :class:`History`.  The model is left with the best weights, in
        the training mode it had."""
        model = self.model
        was_training = model.training
        seeded = self.seed is not None
        dev = self.data.device
        start = self._started = time.perf_counter()
        try:
            with (
                _few_threads(model, self.settings.batch_size, dev),
                self.step.attached(),
                torch.random.fork_rng(
                    devices=[dev] if dev.type == "cuda" else [],
                    enabled=seeded or self._rng is not None,
                ),
                self.signals,
            ):
                self._seed_rng()
                self.data.train = self.step.prepare(self.data.train)
                self._epochs()
        finally:
            self.progress.close(self.monitor.history)
            model.train(was_training)
            self.monitor.history.seconds = self.seconds_before + time.perf_counter() - start
        return self.monitor.history

    def close(self) -> None:
        """Leave the process group if the run joined it."""
        if self.parallel is not None:
            self.parallel.close()

    def _seed_rng(self) -> None:
        rank = self.parallel.rank if self.parallel is not None else 0
        saved = self._rng
        if saved is not None and rank < len(saved["torch"]):
            cuda = saved.get("cuda")
            own = {
                "torch": saved["torch"][rank],
                "cuda": cuda[rank] if cuda is not None and rank < len(cuda) else None,
                "python": saved.get("python"),
                "numpy": saved.get("numpy"),
            }
            _set_rng_state(own, self.data.device)
        elif self.seed is not None:
            torch.manual_seed(self.seed + rank)

    def _epochs(self) -> None:
        self.model.train()
        while self.epoch < self.settings.epochs and not self.stopped:
            train_nll = self._train_epoch()
            if train_nll is not None and self._end_epoch(train_nll):
                break
        self.monitor.restore_best(self.model)

    def _train_epoch(self) -> float | None:
        """One pass over the batches (from where a resumed epoch was): its mean loss, or None
        when it was not finite and was rolled back (the epoch is then repeated)."""
        pos, self._position = self._position, None
        if pos is None:
            self.rollback.begin(self.model, self.optim, self.data)
            self.data.begin_epoch()
        skip = pos.batches if pos is not None else 0
        batches = self.data.batches(self.settings.batch_size, skip, self.epoch)
        sync = self._sync if self.parallel is not None else None
        after = self._after_step if self.checkpoints.path is not None else None
        pos, interrupted = self.step.run(batches, self.optim, self.data.device, pos, sync, after)
        if interrupted:
            self._interrupt(pos)
        nll, finite = self.step.result(pos, self.parallel)
        if finite:
            self.rollback.succeeded()
            self.steps += pos.batches
            return nll
        self.monitor.history.nan_recoveries += 1
        self.rollback.recover(self.model, self.optim, self.data, self.epoch)
        return None

    def _sync(self, params: Sequence[Tensor], rows: int) -> bool:
        """Average the gradients over the ranks; whether any rank was asked to stop."""
        assert self.parallel is not None
        flag = 1.0 if self.signals.received is not None else 0.0
        votes = self.parallel.average(params, rows, flag)
        return self.signals.enabled and float(votes) > 0

    def _after_step(self, pos: EpochPosition, stop: bool) -> bool:
        """After each step of a run with a checkpoint: whether to stop (a signal), else the
        checkpoint when it is due."""
        if stop or (self.parallel is None and self.signals.received is not None):
            return True
        if self.checkpoints.due(self.steps + pos.batches):
            self.checkpoints.write(self, pos)
        return False

    def _interrupt(self, pos: EpochPosition | None) -> None:
        """Write the checkpoint and raise :class:`TrainingInterrupted`."""
        self.checkpoints.write(self, pos)
        signum = self.signals.received or signal.SIGINT
        step = self.steps + (pos.batches if pos is not None else 0)
        raise TrainingInterrupted(signum, self.checkpoints.path, self.epoch, step)

    def _end_epoch(self, train_nll: float) -> bool:
        """Validate, record, schedule, report and checkpoint a finished epoch; whether training
        stops (the callback said so, or patience ran out)."""
        lr = self.optim.lr
        val_nll = self.data.evaluate(self.model)
        monitored, _ = self.monitor.record(self.model, self.epoch, train_nll, val_nll, lr)
        self.optim.after_epoch(monitored)
        self.progress.update(train_nll, val_nll, self.monitor.best)
        self.epoch += 1
        history = self.monitor.history
        stop = bool(self.callback is not None and self.callback(self.epoch - 1, history))
        if self.parallel is not None and self.callback is not None:
            stop = self.parallel.any(stop)  # every rank stops if one's callback says so
        if not stop and self.monitor.out_of_patience():
            history.stopped_early = self.epoch < self.settings.epochs
            stop = True
        self.stopped = stop
        if self.checkpoints.path is not None:
            self.checkpoints.write(self)
            asked = self.signals.received is not None
            if self.parallel is not None:
                asked = self.parallel.any(asked)
            if asked:
                signum = self.signals.received or signal.SIGINT
                raise TrainingInterrupted(signum, self.checkpoints.path, self.epoch, self.steps)
        return stop

    # ------------------------------------------------------------------ checkpoints
    def rng_states(self) -> dict[str, Any]:
        """Every rank's RNG states (a collective when data-parallel): torch's and CUDA's per
        rank and, for a single-process run from a DataLoader, Python's and NumPy's."""
        one = self.parallel is None
        own = _rng_state(self.data.device, python_numpy=one and self.data.loader is not None)
        if one:
            cuda = [own["cuda"]] if own["cuda"] is not None else None
            return {**own, "torch": [own["torch"]], "cuda": cuda}
        assert self.parallel is not None
        cuda = self.parallel.gather(own["cuda"]) if own["cuda"] is not None else None
        return {"torch": self.parallel.gather(own["torch"]), "cuda": cuda}

    def state_dict(self, position: EpochPosition | None, rng: Mapping[str, Any]) -> dict[str, Any]:
        """The whole training state (``position``: within the current epoch; None at an
        epoch's end) with the RNG states ``rng`` (:meth:`rng_states`), for a checkpoint."""
        mid = position is not None
        pos = None
        if position is not None:
            pos = {
                "batches": position.batches,
                "total": position.total,
                "norms": position.norms,
                "count": position.count,
                "loader_rng": self.data.epoch_rng,
            }
        elapsed = time.perf_counter() - self._started if self._started is not None else 0.0
        return {
            "kind": _STATE_KIND,
            "version": _STATE_VERSION,
            "settings": asdict(self.settings),
            "seed": self.seed,
            "data_seed": self.data.seed,
            "rows": self.data.rows,
            "world": self.parallel.world if self.parallel is not None else 1,
            "epoch": self.epoch,
            "steps": self.steps + (position.batches if position is not None else 0),
            "stopped": self.stopped,
            "seconds": self.seconds_before + elapsed,
            "model": self.model.state_dict(),
            "optim": self.optim.state_dict(),
            "monitor": self.monitor.state_dict(),
            "rollback": self.rollback.state_dict(self.optim, mid),
            "order": self.rollback.epoch_order if mid else self.data.order_state(),
            "position": pos,
            "rng": dict(rng),
        }

    def load_state(self, weights: Mapping[str, Tensor], state: Mapping[str, Any]) -> None:
        """Continue from a checkpoint's best ``weights`` and training ``state`` (the model's own
        weights are set by :meth:`build`)."""
        dev = self.data.device
        pos = state.get("position")
        self.epoch = int(state["epoch"])
        self.stopped = bool(state["stopped"])
        self.steps = int(state["steps"]) - (int(pos["batches"]) if pos is not None else 0)
        self.seconds_before = float(state["seconds"])
        self.optim.load_state_dict(state["optim"])
        self.monitor.load_state_dict(state["monitor"], weights, dev)
        self.rollback.load_state_dict(state["rollback"], self.optim, dev)
        self.data.generator.set_state(state["order"])
        if pos is not None:
            total, norms = pos["total"].to(dev), pos["norms"].to(dev)
            self._position = EpochPosition(total, norms, int(pos["count"]), int(pos["batches"]))
            self.data.epoch_rng = pos.get("loader_rng")
        self._rng = state["rng"]


# ---------------------------------------------------------------------- building a run
Resumed = tuple[str, dict[str, Tensor], dict[str, Any]]


def _read_resume(
    resume: str | os.PathLike | bool | None, checkpoint: str | os.PathLike | None
) -> Resumed | None:
    """(path, best weights, training state) of the checkpoint to resume, or None: ``resume``
    None or False, or True while ``checkpoint`` does not exist yet (a fresh start)."""
    if resume is None or resume is False:
        return None
    if resume is True:
        if checkpoint is None:
            raise ValueError("resume=True resumes from checkpoint=PATH, but checkpoint is None")
        if not os.path.exists(checkpoint):
            return None
        resume = checkpoint
    if not isinstance(resume, (str, os.PathLike)):
        raise TypeError(f"resume must be a path, True or None, found {type(resume).__name__}")
    from . import io

    path = os.fspath(resume)
    weights, state = io.load_checkpoint(path)
    if state.get("kind") != _STATE_KIND or not isinstance(state.get("version"), int):
        raise ValueError(f"{path!r} does not hold the training state of mdnkit.fit")
    if state["version"] > _STATE_VERSION:
        raise ValueError(
            f"{path!r} holds a training state of version {state['version']}, newer than this "
            f"mdnkit reads ({_STATE_VERSION}); upgrade mdnkit to resume it"
        )
    return path, weights, state


def _run_device(device: str | torch.device | None, model: nn.Module) -> torch.device:
    """The run's device: ``device``, else the model's; under a data-parallel launcher a bare
    ``"cuda"`` is this process's GPU (``LOCAL_RANK``), made the current one."""
    dev = torch.device(device) if device is not None else _model_device(model)
    if dev.type == "cuda" and environment_world_size() > 1:
        if dev.index is None:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    return dev


def _run_data(
    model: nn.Module,
    x: Any,
    y: Any,
    settings: FitSettings,
    validation_data: Any,
    seed: int | None,
    dev: torch.device,
    parallel: DataParallel | None,
    resumed: Resumed | None,
) -> TrainingData:
    """The run's data, split by a generator seeded with ``seed`` (a random one when None,
    rank 0's for every rank; a resumed run's own)."""
    if resumed is not None:
        data_seed = int(resumed[2]["data_seed"])
    else:
        data_seed = int(seed) if seed is not None else int(torch.randint(2**62, (1,)))
        if parallel is not None:
            data_seed = parallel.broadcast_int(data_seed)
    gen = torch.Generator()
    gen.manual_seed(data_seed)
    data = TrainingData.from_arguments(
        x, y, validation_data, settings.validation_split, dev, _model_dtype(model), gen
    )
    data.seed = data_seed
    return data


def _check_resume(
    resumed: Resumed,
    settings: FitSettings,
    data: TrainingData,
    parallel: DataParallel | None,
    seed: int | None,
) -> None:
    """A ValueError when ``fit``'s arguments do not continue the run that wrote ``resumed``."""
    path, _, state = resumed
    saved, now = state["settings"], asdict(settings)
    differ = [k for k in now if k not in _RESUME_MAY_CHANGE and saved.get(k) != now[k]]
    if differ:
        was = ", ".join(f"{k}={saved.get(k)!r}" for k in differ)
        is_ = ", ".join(f"{k}={now[k]!r}" for k in differ)
        raise ValueError(
            f"{path!r} was written by a run with {was}, this fit has {is_}: resume with the "
            f"settings it was written with (only {' and '.join(_RESUME_MAY_CHANGE)} may change)"
        )
    if seed is not None and state["seed"] is not None and int(seed) != state["seed"]:
        raise ValueError(f"{path!r} was written by a run with seed={state['seed']}, not {seed}")
    if data.rows != state["rows"]:
        raise ValueError(
            f"{path!r} was written by a run on other data: (training, validation) rows "
            f"{state['rows']}, this fit has {data.rows}"
        )
    world = parallel.world if parallel is not None else 1
    if state["position"] is not None and int(state["world"]) != world:
        raise ValueError(
            f"{path!r} was written in the middle of an epoch by {state['world']} process(es); "
            f"resume it with as many (this run has {world}), or from an epoch's end"
        )


def _load_model(model: nn.Module, resumed: Resumed) -> None:
    path, _, state = resumed
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"{path!r} holds the training state of a different model ({first})"
        ) from None


def _should_prepare(model: nn.Module, prepare: bool | str) -> bool:
    """Whether ``fit`` calls ``model.prepare`` (see ``prepare`` in :func:`fit`)."""
    if not callable(getattr(model, "prepare", None)):
        return False
    if prepare == "auto":
        return not is_trained(model)
    return bool(prepare)


# ---------------------------------------------------------------------- fit
def fit(
    model: nn.Module,
    x: Tensor | np.ndarray | DataLoader,
    y: Tensor | np.ndarray | None = None,
    *,
    epochs: int = FitSettings.epochs,
    batch_size: int = FitSettings.batch_size,
    lr: float = FitSettings.lr,
    weight_decay: float = FitSettings.weight_decay,
    optimizer: Optimizer = FitSettings.optimizer,
    validation_split: float = FitSettings.validation_split,
    validation_data: tuple | DataLoader | None = None,
    patience: int | None = FitSettings.patience,
    lr_schedule: LRSchedule | None = FitSettings.lr_schedule,
    clip_grad_norm: float | None = FitSettings.clip_grad_norm,
    progress: bool | None = None,
    seed: int | None = None,
    device: str | torch.device | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: str | os.PathLike | bool | None = None,
    prepare: bool | Literal["auto"] = "auto",
    callback: Callable[[int, History], Any] | None = None,
) -> History:
    r"""Train ``model`` by minimising its mean negative log-likelihood; returns a :class:`History`.

    Every batch is a tuple passed as ``model.loss(*batch)``, which must return the scalar mean
    NLL :math:`\frac1N\sum_i -\log p(y_i\mid x_i)`.  The update is the optimiser's (Adam by
    default, :math:`L_2` ``weight_decay``) on gradients clipped to a total norm of
    ``clip_grad_norm``.  The data, monitoring, NaN rollback, speed, checkpoints, signals and
    data-parallel training (under ``torchrun``) are described in :mod:`mdnkit.training`.

    Args:
        x, y: tensors or arrays with the same first dimension (batches ``(x_b, y_b)``), or
            ``x`` a tuple of them (batches of each) or a DataLoader yielding tuples (``y`` None).
        epochs, batch_size, lr, optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"`` (momentum 0.9).
        validation_split: the fraction of in-memory rows held out, unless ``validation_data``
            (a tuple of tensors or a DataLoader) is given.
        patience: epochs without improvement before stopping early (None: never).
        lr_schedule: ``"plateau"``, ``"cosine"`` or None (constant).
        progress: show a tqdm bar with the live NLLs; None shows it when stderr is a terminal.
        seed: seeds the shuffling, the validation split and (inside a forked RNG, without
            touching the global state) dropout: the same model and seed give the same history.
        device: ``"cpu"``, ``"cuda"``, ...: the model and every batch are moved there (default:
            where the model already is).
        checkpoint: the file that holds the whole training state, written (atomically) at every
            epoch's end, every ``checkpoint_every`` optimiser steps and when SIGINT/SIGTERM stop
            the run; :func:`mdnkit.io.load` reads the best model so far from it.
        resume: continue the run a checkpoint holds: its path, or True: ``checkpoint`` if that
            file exists (else start afresh: the same call starts and resumes a run).
        prepare: ``"auto"``: call ``model.prepare(*training data)`` if the model has it and was
            never prepared, trained or loaded (:func:`is_trained`); True: always (a trained
            head is re-initialised); False: never.  Not when resuming.
        callback: called as ``callback(epoch, history)`` after every epoch; returning True
            stops training.

    Example:
        >>> import torch
        >>> from mdnkit import MDN, fit
        >>> x = torch.randn(400, 2); y = x[:, :1] ** 2 + 0.1 * torch.randn(400, 1)
        >>> model = MDN(2, 1, hidden=(16,), num_components=3)
        >>> h = fit(model, x, y, epochs=10, seed=0, progress=False)
        >>> len(h.train_nll), h.best_epoch >= 0, h.monitor
        (10, True, 'val_nll')
    """
    every = _check_arguments(model, prepare, checkpoint, checkpoint_every)
    settings = FitSettings(
        epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
        optimizer=optimizer, validation_split=validation_split, patience=patience,
        lr_schedule=lr_schedule, clip_grad_norm=clip_grad_norm,
    )  # fmt: skip
    run = TrainingRun.build(
        model, x, y, settings, validation_data=validation_data, seed=seed, device=device,
        checkpoint=checkpoint, checkpoint_every=every, resume=resume, prepare=prepare,
        progress=progress, callback=callback,
    )  # fmt: skip
    try:
        return run.train()
    finally:
        run.close()


def _check_arguments(
    model: Any, prepare: Any, checkpoint: Any, checkpoint_every: Any
) -> int | None:
    """:func:`fit`'s checks of its model and of its file options; ``checkpoint_every``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, found {type(model).__name__}")
    if not callable(getattr(model, "loss", None)):
        raise TypeError(f"model must have a loss(*batch) method, {type(model).__name__} has none")
    if prepare not in (True, False, "auto"):
        raise ValueError(f"prepare must be True, False or 'auto', found {prepare!r}")
    every = positive_int("checkpoint_every", checkpoint_every, or_none=True)
    if every is not None and checkpoint is None:
        raise ValueError("checkpoint_every needs checkpoint=PATH")
    return every

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
* :class:`Checkpointer` and :class:`Progress`: the best model on disk, the progress bar.

These parts are the package's own seams (``fit`` is the public API).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
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
from .options import LRSchedule, Optimizer

if TYPE_CHECKING:
    from .fast import FastStep

__all__ = ["fit", "History"]

_MAX_FAILURES = 6
_PREPARE_MAX_ROWS = 200_000
_CHECKPOINT_INTERVAL_S = 5.0
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
        norm = torch.linalg.vector_norm(grads[0])
        grads[0].mul_((max_norm / (norm + 1e-6)).clamp_(max=1.0))
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
    """Whether one batch's work is too small to gain from several CPU threads."""
    n_params = sum(p.numel() for p in model.parameters())
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
    the defaults are ``fit``'s).  Constructing one checks every value: a :class:`ValueError`
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
    in-memory batches (a DataLoader orders its own)."""

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

    def batches(self, batch_size: int) -> Iterator[tuple[Tensor, ...]]:
        """One epoch's batches, on the device: a shuffled permutation of the in-memory rows
        (drawn when the first batch is), or the loader's batches."""
        if self.train is None:
            assert self.loader is not None
            for batch in self.loader:
                yield _move(batch, self.device, self.dtype)
            return
        train = self.train
        n = int(train[0].shape[0])
        perm = torch.randperm(n, generator=self.generator).to(self.device)
        if n <= batch_size or sum(t.nbytes for t in train) <= _SHUFFLE_COPY_BYTES:
            # one shuffled copy per epoch, then contiguous slices: the same batches as
            # indexing each one, for two kernels an epoch instead of two a batch
            shuffled = tuple(t[perm] for t in train)
            for i in range(0, n, batch_size):
                yield tuple(t[i : i + batch_size] for t in shuffled)
            return
        for idx in perm.split(batch_size):
            yield tuple(t[idx] for t in train)

    def evaluate(self, model: nn.Module) -> float | None:
        """The model's mean NLL on the validation data, in evaluation mode (None without any);
        the model is left in training mode."""
        if self.val is None:
            return None
        model.eval()
        with torch.no_grad():
            out = self._mean_loss(model, self.val)
        model.train()
        return out

    def _mean_loss(self, model: nn.Module, val: tuple[Tensor, ...] | DataLoader) -> float:
        if isinstance(val, tuple):
            n = int(val[0].shape[0])
            if n <= _VAL_CHUNK:
                return float(model.loss(*val))  # one batch: one call, one synchronisation
            total = 0.0  # very large: chunks, weighted by their rows
            for i in range(0, n, _VAL_CHUNK):
                chunk = tuple(t[i : i + _VAL_CHUNK] for t in val)
                total += float(model.loss(*chunk)) * int(chunk[0].shape[0])
            return total / n
        total, count = 0.0, 0
        for batch in val:
            b = _move(batch, self.device, self.dtype)
            rows = _batch_size(b)
            total += float(model.loss(*b)) * rows
            count += rows
        if count == 0:
            raise ValueError("the validation DataLoader yielded no batches")
        return total / count


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
        self, batches: Iterator[tuple[Tensor, ...]], optim: Optimisation, device: torch.device
    ) -> tuple[float, bool]:
        """Train on ``batches``: the epoch's mean loss (weighted by batch size) and whether it
        and every gradient norm were finite."""
        fast, model, params = self.fast, self.model, self.parameters
        opt, update = optim.optimizer, optim.update
        clip = optim.clip if optim.clip_norm is not None else None
        # Accumulated on the device and read once per epoch: no per-step synchronisation.
        # A NaN/inf loss or gradient norm anywhere makes its sum non-finite.
        total = torch.zeros((), dtype=torch.float64, device=device)
        norms = torch.zeros((), dtype=torch.float64, device=device)
        count = 0
        for batch in batches:
            if fast is not None:
                # same loss, hand-written gradients (written over, so no zero_grad is needed)
                loss = fast(*batch)
            else:
                opt.zero_grad(set_to_none=True)
                loss = model.loss(*batch)
                loss.backward()
            if clip is not None:
                norms.add_(clip(params))
            n = _batch_size(batch)
            total.add_(loss.detach(), alpha=n)
            count += n
            update()
        if count == 0:
            raise ValueError("the training data yielded no batches")
        nll = float(total) / count
        return nll, math.isfinite(nll) and math.isfinite(float(norms))


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


class Checkpointer:
    """The best model on disk at ``path`` (None: nowhere), saved with :func:`mdnkit.io.save`
    (atomic) after an improvement at most every ``interval`` seconds, and once at the end;
    ``dirty`` says an improvement is not on disk yet, ``last`` when it last wrote."""

    def __init__(
        self, path: str | os.PathLike | None, interval: float = _CHECKPOINT_INTERVAL_S
    ) -> None:
        self.path = path
        self.interval = interval
        self.last = -math.inf
        self.dirty = False

    def check(self, model: nn.Module) -> None:
        """A TypeError now, rather than after training, if ``model`` cannot be saved."""
        if self.path is not None:
            from . import io

            io.saveable_class_name(model)

    def after_epoch(self, model: nn.Module, monitor: Monitor, improved: bool) -> None:
        """Save the best weights if they changed and the last write is old enough."""
        self.dirty = self.dirty or improved
        if self.path is None or not self.dirty:
            return
        now = time.perf_counter()
        if now - self.last >= self.interval:
            _save_checkpoint(model, monitor.best_state, self.path, monitor.history)
            self.last, self.dirty = now, False

    def finish(self, model: nn.Module, monitor: Monitor) -> None:
        """The final write (``model`` holds the best weights by now)."""
        if self.path is not None and monitor.best_state is not None:
            _save_checkpoint(model, None, self.path, monitor.history)


class Progress:
    """The tqdm bar with the live NLLs (``show`` None: when stderr is a terminal)."""

    def __init__(self, show: bool | None, epochs: int) -> None:
        if show is None:
            show = bool(getattr(sys.stderr, "isatty", lambda: False)())
        self.bar: Any = None
        if show:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=epochs, desc="fit", unit="epoch", leave=True)

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

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class TrainingRun:
    """One call of :func:`fit`: its parts and the epoch loop over them.

    The run's state is in its parts and in :attr:`epoch` (completed epochs): ``data.generator``
    orders the batches, ``optim`` holds the optimiser and schedule, ``monitor`` the history and
    the best weights, ``rollback`` the failures in a row, ``checkpoints`` what is on disk.
    Around the loop, the global RNG (dropout) is forked and seeded with ``seed`` when given.
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
    ) -> None:
        self.model = model
        self.settings = settings
        self.data = data
        self.step = step
        self.optim = optim
        self.seed = seed
        self.rollback = NaNRollback()
        self.monitor = Monitor(
            "val_nll" if data.val is not None else "train_nll", settings.patience
        )
        self.checkpoints = checkpoints if checkpoints is not None else Checkpointer(None)
        self.progress = progress if progress is not None else Progress(False, settings.epochs)
        self.callback = callback
        self.epoch = 0

    @classmethod
    def build(
        cls,
        model: nn.Module,
        x: Any,
        y: Any,
        settings: FitSettings,
        *,
        validation_data: Any = None,
        seed: int | None = None,
        device: str | torch.device | None = None,
        checkpoint: str | os.PathLike | None = None,
        prepare: bool = True,
        progress: bool | None = None,
        callback: Callable[[int, History], Any] | None = None,
    ) -> TrainingRun:
        """The run :func:`fit` makes of its (checked) arguments: the model moved to ``device``
        and prepared on the training split, the step and the optimiser chosen."""
        checkpoints = Checkpointer(checkpoint)
        checkpoints.check(model)
        dev = torch.device(device) if device is not None else _model_device(model)
        model.to(dev)
        dtype = _model_dtype(model)
        gen = torch.Generator()
        gen.manual_seed(int(seed) if seed is not None else int(torch.randint(2**62, (1,))))
        data = TrainingData.from_arguments(
            x, y, validation_data, settings.validation_split, dev, dtype, gen
        )
        if prepare and callable(getattr(model, "prepare", None)):
            data.prepare(model)
        data.to_device()
        step = EpochStep.for_model(model, data.train)
        optim = Optimisation.build(settings, step.parameters, dev, direct=step.fast is not None)
        return cls(
            model,
            settings,
            data,
            step,
            optim,
            seed=seed,
            checkpoints=checkpoints,
            progress=Progress(progress, settings.epochs),
            callback=callback,
        )

    def train(self) -> History:
        """Run the epochs; the :class:`History`.  The model is left with the best weights, in
        the training mode it had."""
        model, history = self.model, self.monitor.history
        was_training = model.training
        seeded = self.seed is not None
        dev = self.data.device
        start = time.perf_counter()
        try:
            with (
                _few_threads(model, self.settings.batch_size, dev),
                self.step.attached(),
                torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else [], enabled=seeded),
            ):
                if seeded:
                    torch.manual_seed(int(self.seed))
                self.data.train = self.step.prepare(self.data.train)
                self._epochs()
        finally:
            self.progress.close()
            model.train(was_training)
            history.seconds = time.perf_counter() - start
        return history

    def _epochs(self) -> None:
        self.model.train()
        while self.epoch < self.settings.epochs:
            train_nll = self._train_epoch()
            if train_nll is not None and self._end_epoch(train_nll):
                break
        self.monitor.restore_best(self.model)
        self.checkpoints.finish(self.model, self.monitor)

    def _train_epoch(self) -> float | None:
        """One pass over the batches: its mean loss, or None when it was not finite and was
        rolled back (the epoch is then repeated)."""
        self.rollback.begin(self.model, self.optim, self.data)
        batches = self.data.batches(self.settings.batch_size)
        nll, finite = self.step.run(batches, self.optim, self.data.device)
        if finite:
            self.rollback.succeeded()
            return nll
        self.monitor.history.nan_recoveries += 1
        self.rollback.recover(self.model, self.optim, self.data, self.epoch)
        return None

    def _end_epoch(self, train_nll: float) -> bool:
        """Validate, record, schedule, report and checkpoint a finished epoch; whether training
        stops (the callback said so, or patience ran out)."""
        lr = self.optim.lr
        val_nll = self.data.evaluate(self.model)
        monitored, improved = self.monitor.record(self.model, self.epoch, train_nll, val_nll, lr)
        self.optim.after_epoch(monitored)
        self.progress.update(train_nll, val_nll, self.monitor.best)
        self.checkpoints.after_epoch(self.model, self.monitor, improved)
        self.epoch += 1
        history = self.monitor.history
        if self.callback is not None and self.callback(self.epoch - 1, history):
            return True
        if self.monitor.out_of_patience():
            history.stopped_early = self.epoch < self.settings.epochs
            return True
        return False


# ---------------------------------------------------------------------- fit
def fit(
    model: nn.Module,
    x: Tensor | np.ndarray | DataLoader,
    y: Tensor | np.ndarray | None = None,
    *,
    epochs: int = 200,
    batch_size: int = 128,
    lr: float = 3e-3,
    weight_decay: float = 0.0,
    optimizer: Optimizer = "adam",
    validation_split: float = 0.1,
    validation_data: tuple | DataLoader | None = None,
    patience: int | None = 20,
    lr_schedule: LRSchedule | None = "plateau",
    clip_grad_norm: float | None = 10.0,
    progress: bool | None = None,
    seed: int | None = None,
    device: str | torch.device | None = None,
    checkpoint: str | os.PathLike | None = None,
    prepare: bool = True,
    callback: Callable[[int, History], Any] | None = None,
) -> History:
    r"""Train ``model`` by minimising its mean negative log-likelihood; returns a :class:`History`.

    Every batch is a tuple passed as ``model.loss(*batch)``, which must return the scalar mean
    NLL :math:`\frac1N\sum_i -\log p(y_i\mid x_i)`.  The update is the optimiser's (Adam by
    default, :math:`L_2` ``weight_decay``) on gradients clipped to a total norm of
    ``clip_grad_norm``.  The data, monitoring, NaN rollback and speed are described in
    :mod:`mdnkit.training`.

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
        checkpoint: a path where the best model is saved with :func:`mdnkit.io.save` (atomic),
            written on improvement at most every 5 seconds and once at the end.
        prepare: call ``model.prepare(*training data)`` first, when the model has it.
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
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, found {type(model).__name__}")
    if not callable(getattr(model, "loss", None)):
        raise TypeError(f"model must have a loss(*batch) method, {type(model).__name__} has none")
    settings = FitSettings(
        epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
        optimizer=optimizer, validation_split=validation_split, patience=patience,
        lr_schedule=lr_schedule, clip_grad_norm=clip_grad_norm,
    )  # fmt: skip
    run = TrainingRun.build(
        model, x, y, settings, validation_data=validation_data, seed=seed, device=device,
        checkpoint=checkpoint, prepare=prepare, progress=progress, callback=callback,
    )  # fmt: skip
    return run.train()


def _save_checkpoint(
    model: nn.Module,
    state: _Snapshot | None,
    path: str | os.PathLike,
    history: History,
) -> None:
    """Save ``model`` (with the weights of ``state`` when given) to ``path``, atomically."""
    from . import io

    d = history.as_dict()
    meta = {"best_epoch": d["best_epoch"], "best_nll": d["best_nll"], "monitor": d["monitor"]}
    if state is None:
        io.save(model, path, metadata=meta)
        return
    current = {k: v.detach().clone() for k, v in model.state_dict().items()}
    was = model.training
    try:
        model.load_state_dict(state.model)
        io.save(model, path, metadata=meta)
    finally:
        model.load_state_dict(current)
        model.train(was)

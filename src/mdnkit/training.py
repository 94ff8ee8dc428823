"""The training loop: :func:`fit` and its :class:`History`.

:func:`fit` trains any model whose ``loss(*batch)`` returns a scalar mean negative
log-likelihood (:class:`~mdnkit.MDN`, :class:`~mdnkit.MDNRNN`, your own): standardisation through
the model's ``prepare``, a validation split, early stopping on the validation NLL that restores
the best weights, a learning-rate schedule, gradient clipping, weight decay, a progress bar,
seeds, devices, DataLoaders, checkpoints, and a guard that never lets a NaN pass silently.

For data held in memory the loop indexes a shuffled permutation of the tensors directly (no
DataLoader), evaluates the validation set in one batch and synchronises with the device once per
epoch, so small problems train in seconds.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

__all__ = ["fit", "History"]

LRSchedule = Literal["plateau", "cosine"] | None
_OPTIMIZERS = ("adam", "adamw", "sgd")
_SCHEDULES = ("plateau", "cosine", None)
_MAX_FAILURES = 6
_PREPARE_MAX_ROWS = 200_000
_CHECKPOINT_INTERVAL_S = 5.0
_VAL_CHUNK = 131_072  # validation rows evaluated in one call
_SHUFFLE_COPY_BYTES = 256 << 20  # training data up to this size is shuffled by one copy an epoch
_SMALL_WORK = 2_000_000  # parameters x batch size below which the CPU loop uses one thread


@dataclass
class History:
    """What happened during :func:`fit`, one entry per completed epoch.

    Attributes:
        train_nll: mean training NLL (nats per element, weighted by batch size) of each epoch,
            measured during the epoch (dropout on, weights changing).
        val_nll: validation NLL after each epoch (empty when there is no validation data).
        lr: the learning rate used in each epoch.
        best_epoch: index of the epoch whose weights were kept (by validation NLL, or training
            NLL without validation data).
        best_val_nll: the monitored NLL at ``best_epoch``.
        stopped_early: whether early stopping ended training before ``epochs``.
        seconds: wall-clock training time.
        nan_recoveries: how many times a non-finite loss was rolled back.

    Example:
        >>> h = History(train_nll=[2.0, 1.5], val_nll=[1.9, 1.6], lr=[3e-3, 3e-3])
        >>> h.as_dict()["val_nll"]
        [1.9, 1.6]
    """

    train_nll: list[float] = field(default_factory=list)
    val_nll: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    best_epoch: int = -1
    best_val_nll: float = math.inf
    stopped_early: bool = False
    seconds: float = 0.0
    nan_recoveries: int = 0

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every field (infinities become None)."""
        d = asdict(self)
        if not math.isfinite(d["best_val_nll"]):
            d["best_val_nll"] = None
        return d

    def __len__(self) -> int:
        return len(self.train_nll)


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


def _check_args(
    epochs: Any,
    batch_size: Any,
    lr: Any,
    weight_decay: Any,
    optimizer: Any,
    validation_split: Any,
    patience: Any,
    lr_schedule: Any,
    clip_grad_norm: Any,
) -> None:
    for name, v in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive integer, found {v!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (0 < lr < math.inf):
        raise ValueError(f"lr must be a positive finite number, found {lr!r}")
    if not isinstance(weight_decay, (int, float)) or not (0 <= weight_decay < math.inf):
        raise ValueError(f"weight_decay must be a finite number >= 0, found {weight_decay!r}")
    if optimizer not in _OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {_OPTIMIZERS}, found {optimizer!r}")
    if not isinstance(validation_split, (int, float)) or not (0 <= validation_split < 1):
        raise ValueError(f"validation_split must be in [0, 1), found {validation_split!r}")
    if patience is not None and (
        isinstance(patience, bool) or not isinstance(patience, (int, np.integer)) or patience < 1
    ):
        raise ValueError(f"patience must be a positive integer or None, found {patience!r}")
    if lr_schedule not in _SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {_SCHEDULES}, found {lr_schedule!r}")
    if clip_grad_norm is not None and (
        not isinstance(clip_grad_norm, (int, float)) or not (0 < clip_grad_norm < math.inf)
    ):
        raise ValueError(
            f"clip_grad_norm must be a positive finite number or None, found {clip_grad_norm!r}"
        )


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
    optimizer: Literal["adam", "adamw", "sgd"] = "adam",
    validation_split: float = 0.1,
    validation_data: tuple | DataLoader | None = None,
    patience: int | None = 20,
    lr_schedule: LRSchedule = "plateau",
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
    ``clip_grad_norm``.

    Data:
        * ``x`` and ``y`` tensors or arrays with the same first dimension: batches are
          ``(x_b, y_b)``, drawn by shuffling a permutation each epoch; a random
          ``validation_split`` of the rows is held out (unless ``validation_data=(x_v, y_v)`` is
          given), and ``model.prepare(x_train, y_train)`` is called once when ``prepare`` is true
          and the model has it (for :class:`~mdnkit.MDN`: the standardisation and the head's
          initial components).
        * ``x`` a :class:`~torch.utils.data.DataLoader` yielding tuples (``y`` None), for data that
          does not fit in memory; ``validation_data`` may be a DataLoader too.  No split is made
          from a loader.  ``prepare`` uses the loader's tensors (a ``TensorDataset``) or its first
          200 000 rows.

    Monitoring: after each epoch the validation NLL (or the training NLL when there is no
    validation data) is compared with the best so far; ``patience`` epochs without improvement
    stop training (``None``: never) and the best weights are restored either way.
    ``lr_schedule="plateau"`` halves the learning rate after ``max(2, patience // 2)`` epochs
    without improvement (5 when ``patience`` is None), ``"cosine"`` anneals it to 0 over
    ``epochs``, ``None`` keeps it constant.

    Non-finite losses: if an epoch's loss or gradient norm is NaN or infinite, the model and
    optimiser roll back to their state at the start of the epoch, the learning rate is halved and
    the epoch is repeated; after 6 consecutive failures a :class:`RuntimeError` says so.

    Speed: on the CPU, when the model is small (parameters x batch size <= 2e6) the loop runs
    with one intra-op thread (``torch.set_num_threads(1)``, restored afterwards; the setting is
    process-wide): for tiny matrices threads cost more than they save.  For an
    :class:`~mdnkit.MDN` without dropout, with diagonal or spherical components (any of its
    activations), trained from in-memory tensors, each step is
    :class:`mdnkit.fast.MLPFastStep`'s: the same loss and gradients as autograd's, without
    building a graph, in as few kernel calls as it can.  While ``fit`` runs, that model's
    parameters are views of one flat buffer (so clipping is one norm and Adam updates one
    tensor); each gets its own storage back when ``fit`` returns.  Hooks on its modules are not
    called during training.

    Args:
        progress: show a tqdm bar with the live NLLs; None shows it when stderr is a terminal.
        seed: seeds the shuffling, the validation split and (inside a forked RNG, without
            touching the global state) dropout: the same model and seed give the same history.
        device: ``"cpu"``, ``"cuda"``, ...: the model and every batch are moved there (default:
            where the model already is).
        checkpoint: a path where the best model is saved with :func:`mdnkit.io.save` (atomic),
            written on improvement at most every 5 seconds and once at the end.
        callback: called as ``callback(epoch, history)`` after every epoch; returning True
            stops training.

    Example:
        >>> import torch
        >>> from mdnkit import MDN, fit
        >>> x = torch.randn(400, 2); y = x[:, :1] ** 2 + 0.1 * torch.randn(400, 1)
        >>> model = MDN(2, 1, hidden=(16,), num_components=3)
        >>> h = fit(model, x, y, epochs=10, seed=0, progress=False)
        >>> len(h.train_nll), h.best_epoch >= 0
        (10, True)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, found {type(model).__name__}")
    if not callable(getattr(model, "loss", None)):
        raise TypeError(f"model must have a loss(*batch) method, {type(model).__name__} has none")
    _check_args(
        epochs,
        batch_size,
        lr,
        weight_decay,
        optimizer,
        validation_split,
        patience,
        lr_schedule,
        clip_grad_norm,
    )
    if checkpoint is not None:
        from . import io

        io.saveable_class_name(model)  # a TypeError now rather than after training
    dev = torch.device(device) if device is not None else _model_device(model)
    model.to(dev)
    fdt = _model_dtype(model)
    gen = torch.Generator()
    gen.manual_seed(int(seed) if seed is not None else int(torch.randint(2**62, (1,))))

    # ---- data
    loader: DataLoader | None = None
    train: tuple[Tensor, ...] | None = None
    val: tuple[Tensor, ...] | DataLoader | None = None
    if isinstance(x, DataLoader):
        if y is not None:
            raise ValueError("when x is a DataLoader, y must be None (batches come from x)")
        loader = x
    else:
        if y is None:
            data = _as_arrays("x", x, fdt) if isinstance(x, (tuple, list)) else None
            if data is None:
                raise ValueError("y is required when x is a tensor or an array")
        else:
            data = _as_arrays("(x, y)", (x, y), fdt)
        train = data  # type: ignore[assignment]
    if validation_data is not None:
        val = _as_arrays("validation_data", validation_data, fdt)
    elif train is not None and validation_split > 0:
        n = int(train[0].shape[0])
        n_val = int(round(n * validation_split))
        if n_val >= 1 and n - n_val >= 1:
            perm = torch.randperm(n, generator=gen)
            vi, ti = perm[:n_val], perm[n_val:]
            val = tuple(t[vi] for t in train)
            train = tuple(t[ti] for t in train)
    if train is not None and int(train[0].shape[0]) < 1:
        raise ValueError("no training rows")

    if prepare and callable(getattr(model, "prepare", None)):
        tensors = train if train is not None else _prepare_tensors_from_loader(loader, fdt)
        model.prepare(*tensors)
        model.to(dev)

    if train is not None:
        train = tuple(t.to(dev) for t in train)
    if isinstance(val, tuple):
        val = tuple(t.to(dev) for t in val)

    # MDN's autograd-free step (same loss and gradients, far fewer operations) when it applies;
    # while it runs (attach ... release below), the parameters are views of its flat parameter
    trainer = None
    if train is not None:
        make = getattr(model, "fast_step", None)
        trainer = make(*train) if callable(make) else None
    if trainer is not None:
        params = list(trainer.parameters)
    else:
        params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    opt = _make_optimizer(optimizer, params, float(lr), float(weight_decay), dev)
    sched: Any = None
    if lr_schedule == "plateau":
        pat = max(2, patience // 2) if patience is not None else 5
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", factor=0.5, patience=pat, threshold=1e-4, min_lr=lr * 1e-3
        )
    elif lr_schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)

    if progress is None:
        progress = bool(getattr(sys.stderr, "isatty", lambda: False)())
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs, desc="fit", unit="epoch", leave=True)

    history = History()
    was_training = model.training
    threads = torch.get_num_threads()
    if dev.type == "cpu" and _small(model, batch_size):
        # Tiny matrices: thread start-up and synchronisation cost more than they save.
        torch.set_num_threads(1)
    fork_devices = [dev] if dev.type == "cuda" else []
    start = time.perf_counter()
    try:
        if trainer is not None:
            trainer.attach()  # the parameters become views of trainer.flat, until release()
        with torch.random.fork_rng(devices=fork_devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(int(seed))
            _loop(
                model,
                opt,
                sched,
                train,
                loader,
                val,
                history,
                gen,
                epochs=int(epochs),
                batch_size=int(batch_size),
                patience=patience,
                clip=clip_grad_norm,
                params=params,
                device=dev,
                fdt=fdt,
                bar=bar,
                checkpoint=checkpoint,
                callback=callback,
                trainer=trainer,
            )
    finally:
        if trainer is not None:
            trainer.release()
        if bar is not None:
            bar.close()
        model.train(was_training)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        history.seconds = time.perf_counter() - start
    return history


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


def _evaluate(
    model: nn.Module,
    val: tuple[Tensor, ...] | DataLoader,
    device: torch.device,
    fdt: torch.dtype,
) -> float:
    model.eval()
    with torch.no_grad():
        n = int(val[0].shape[0]) if isinstance(val, tuple) else 0
        if isinstance(val, tuple) and n <= _VAL_CHUNK:
            out = float(model.loss(*val))  # one batch: one call, one synchronisation
        elif isinstance(val, tuple):  # very large: chunks, weighted by their rows
            total = 0.0
            for i in range(0, n, _VAL_CHUNK):
                chunk = tuple(t[i : i + _VAL_CHUNK] for t in val)
                total += float(model.loss(*chunk)) * int(chunk[0].shape[0])
            out = total / n
        else:
            total, count = 0.0, 0
            for batch in val:
                b = _move(batch, device, fdt)
                n = _batch_size(b)
                total += float(model.loss(*b)) * n
                count += n
            if count == 0:
                raise ValueError("the validation DataLoader yielded no batches")
            out = total / count
    model.train()
    return out


def _batches(
    train: tuple[Tensor, ...] | None,
    loader: DataLoader | None,
    gen: torch.Generator,
    batch_size: int,
    device: torch.device,
    fdt: torch.dtype,
) -> Iterable[tuple[Tensor, ...]]:
    if train is not None:
        n = int(train[0].shape[0])
        perm = torch.randperm(n, generator=gen).to(device)
        if n <= batch_size or sum(t.nbytes for t in train) <= _SHUFFLE_COPY_BYTES:
            # one shuffled copy per epoch, then contiguous slices: the same batches as
            # indexing each one, for two kernels an epoch instead of two a batch
            shuffled = tuple(t[perm] for t in train)
            for i in range(0, n, batch_size):
                yield tuple(t[i : i + batch_size] for t in shuffled)
            return
        for idx in perm.split(batch_size):
            yield tuple(t[idx] for t in train)
    else:
        assert loader is not None
        for batch in loader:
            yield _move(batch, device, fdt)


def _loop(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: Any,
    train: tuple[Tensor, ...] | None,
    loader: DataLoader | None,
    val: tuple[Tensor, ...] | DataLoader | None,
    history: History,
    gen: torch.Generator,
    *,
    epochs: int,
    batch_size: int,
    patience: int | None,
    clip: float | None,
    params: Sequence[nn.Parameter],
    device: torch.device,
    fdt: torch.dtype,
    bar: Any,
    checkpoint: str | os.PathLike | None,
    callback: Callable[[int, History], Any] | None,
    trainer: Any = None,
) -> None:
    model.train()
    opt_step = opt.step
    if trainer is not None:
        assert train is not None
        train = trainer.prepare(*train)  # once, not per batch
        opt_step = _direct_adam_step(opt) or opt.step
    best_state: _Snapshot | None = None
    best = math.inf
    since_best = 0
    failures = 0
    last_ckpt = -math.inf
    ckpt_dirty = False
    epoch = 0
    while epoch < epochs:
        good = _Snapshot(model, opt)
        gen_state = gen.get_state()
        # Accumulated on the device and read once per epoch: no per-step synchronisation.
        # A NaN/inf loss or gradient norm anywhere makes its sum non-finite.
        total = torch.zeros((), dtype=torch.float64, device=device)
        norms = torch.zeros((), dtype=torch.float64, device=device)
        count = 0
        for batch in _batches(train, loader, gen, batch_size, device, fdt):
            if trainer is not None:
                # same loss, hand-written gradients (written over, so no zero_grad is needed)
                loss = trainer(*batch)
            else:
                opt.zero_grad(set_to_none=True)
                loss = model.loss(*batch)
                loss.backward()
            if clip is not None:
                norms.add_(_clip_grad_norm(params, clip))
            n = _batch_size(batch)
            total.add_(loss.detach(), alpha=n)
            count += n
            opt_step()
        if count == 0:
            raise ValueError("the training data yielded no batches")
        train_nll = float(total) / count
        if not (math.isfinite(train_nll) and math.isfinite(float(norms))):
            failures += 1
            history.nan_recoveries += 1
            good.restore(model, opt)
            for g in opt.param_groups:
                g["lr"] *= 0.5
            if failures >= _MAX_FAILURES:
                raise RuntimeError(
                    f"training failed: the loss or its gradient was NaN/inf in epoch {epoch} "
                    f"{failures} times in a row, even after rolling back and halving the "
                    f"learning rate to {opt.param_groups[0]['lr']:.3g}; check the data for "
                    "NaN/inf or extreme values, or lower lr"
                )
            if train is not None:
                gen.set_state(gen_state)
            continue
        failures = 0
        lr_now = float(opt.param_groups[0]["lr"])
        val_nll = _evaluate(model, val, device, fdt) if val is not None else None
        history.train_nll.append(train_nll)
        history.lr.append(lr_now)
        monitored = train_nll
        if val_nll is not None:
            history.val_nll.append(val_nll)
            monitored = val_nll
        if not math.isfinite(monitored):
            monitored = math.inf
        if monitored < best:
            best = monitored
            best_state = _Snapshot(model, None)
            history.best_epoch = epoch
            history.best_val_nll = best
            since_best = 0
            ckpt_dirty = True
        else:
            since_best += 1
        if sched is not None:
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                sched.step(monitored)
            else:
                sched.step()
        if bar is not None:
            post = {"train_nll": f"{train_nll:.4f}"}
            if val_nll is not None:
                post["val_nll"] = f"{val_nll:.4f}"
            post["best"] = f"{best:.4f}"
            bar.set_postfix(post, refresh=False)
            bar.update(1)
        if checkpoint is not None and ckpt_dirty:
            now = time.perf_counter()
            if now - last_ckpt >= _CHECKPOINT_INTERVAL_S:
                _save_checkpoint(model, best_state, checkpoint, history)
                last_ckpt, ckpt_dirty = now, False
        epoch += 1
        if callback is not None and callback(epoch - 1, history):
            break
        if patience is not None and since_best >= patience:
            history.stopped_early = epoch < epochs
            break
    if best_state is not None:
        best_state.restore(model, None)
    if checkpoint is not None and best_state is not None:
        _save_checkpoint(model, None, checkpoint, history)


def _save_checkpoint(
    model: nn.Module,
    state: _Snapshot | None,
    path: str | os.PathLike,
    history: History,
) -> None:
    """Save ``model`` (with the weights of ``state`` when given) to ``path``, atomically."""
    from . import io

    meta = {"best_epoch": history.best_epoch, "best_val_nll": history.as_dict()["best_val_nll"]}
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

"""Data-parallel training on ``torch.distributed``: the process group and the collectives
:func:`mdnkit.fit` needs.

``fit`` run by ``torchrun --nproc_per_node N`` (or any launcher that sets ``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``) trains data-parallel: :meth:`DataParallel.
from_environment` joins the process group (``gloo`` on the CPU, ``nccl`` on CUDA, a timeout of
``MDNKIT_DIST_TIMEOUT`` seconds, default 300, on every collective), or uses the one the caller
already initialised.  Then every process (a *rank*) trains the same model on its own shard of
the data:

* **data**: every epoch all ranks draw the same permutation of the rows (from the shared seed)
  and rank :math:`r` of :math:`W` takes every :math:`W`-th row from position :math:`r`; its
  batches have ``batch_size`` rows, so a global batch has :math:`W \\cdot` ``batch_size``;
* **gradients**: after each backward pass (or the fast step) the ranks all-reduce
  :math:`\\sum_r n_r g_r` and :math:`\\sum_r n_r` in one buffer (:meth:`DataParallel.average`)
  and divide, so the gradient is the mean over the global batch whatever the shard sizes (a
  rank with no rows left contributes zeros);
* **metrics**: the training and validation NLL are reduced as sums and counts, so every rank
  sees the same numbers and takes the same decisions (NaN rollback, early stopping, the
  learning-rate schedule);
* **files and progress**: only rank 0 (:attr:`DataParallel.is_main`) writes and shows them.

A rank that dies makes the others' next collective fail: they raise a :class:`RuntimeError`
that says so (or, if the network stays silent, after the timeout), rather than hanging.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["DataParallel", "environment_world_size", "is_main_process"]

_DEFAULT_TIMEOUT_S = 300.0


def environment_world_size() -> int:
    """The number of processes the launcher asked for (``WORLD_SIZE``; 1 when unset).

    Example:
        >>> environment_world_size() >= 1
        True
    """
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise ValueError(
            f"WORLD_SIZE must be an integer, found {os.environ['WORLD_SIZE']!r}"
        ) from None


def is_main_process() -> bool:
    """Whether this process is rank 0 (always true outside data-parallel training): the one
    that writes files and prints.

    Example:
        >>> is_main_process()
        True
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0") or 0) == 0


def _timeout() -> datetime.timedelta:
    text = os.environ.get("MDNKIT_DIST_TIMEOUT", "")
    try:
        seconds = float(text) if text else _DEFAULT_TIMEOUT_S
    except ValueError:
        raise ValueError(f"MDNKIT_DIST_TIMEOUT must be seconds, found {text!r}") from None
    return datetime.timedelta(seconds=seconds)


class DataParallel:
    """This process's place in a data-parallel run: ``rank`` of ``world`` processes, and the
    collectives :func:`~mdnkit.fit` uses (sums, a broadcast, a gather).  ``created`` says that
    :meth:`from_environment` initialised the process group (and :meth:`close` destroys it)."""

    def __init__(self, rank: int, world: int, device: torch.device, created: bool) -> None:
        self.rank, self.world, self.device, self.created = rank, world, device, created

    @classmethod
    def from_environment(cls, device: torch.device) -> DataParallel | None:
        """The run's data-parallel setting: None for one process (no launcher, or a world of
        one), else the process group, initialised here from the environment when needed."""
        if not dist.is_available():
            return None
        created = False
        if not dist.is_initialized():
            if environment_world_size() <= 1:
                return None
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=_timeout())
            created = True
        world = dist.get_world_size()
        if world <= 1:
            return None
        return cls(dist.get_rank(), world, device, created)

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0."""
        return self.rank == 0

    def _collective(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (RuntimeError, ValueError) as err:  # DistBackendError is a RuntimeError
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise RuntimeError(
                f"data-parallel training stopped: {what} failed on rank {self.rank} of "
                f"{self.world} ({first}); another process has probably died or hung, see its "
                "output"
            ) from err

    def _buffer_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over the ranks of a few numbers (float64)."""
        t = torch.tensor(list(values), dtype=torch.float64, device=self._buffer_device())
        self._collective("a sum of metrics", dist.all_reduce, t)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank."""
        return self.sum([1.0 if flag else 0.0])[0] > 0

    def average(self, params: Sequence[Tensor], rows: int, flag: float = 0.0) -> Tensor:
        """Replace every parameter's ``.grad`` (a mean over this rank's ``rows`` rows; None:
        zeros) by the mean over all ranks' rows: one all-reduce of
        :math:`[\\,n_r g_r \\mid n_r \\mid \\text{flag}\\,]`.  Returns the summed ``flag`` (a
        0-dim tensor; positive when any rank raised it)."""
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = [p.grad.reshape(-1) for p in params]
        extra = torch.tensor([float(rows), flag], dtype=grads[0].dtype, device=grads[0].device)
        buf = torch.cat(grads + [extra])
        if rows != 1:
            buf[:-2].mul_(rows)
        self._collective("the gradient all-reduce", dist.all_reduce, buf)
        n = float(buf[-2])
        if n > 0:
            buf[:-2].div_(n)
        o = 0
        for p in params:
            m = p.grad.numel()
            p.grad.copy_(buf[o : o + m].view_as(p.grad))
            o += m
        return buf[-1]

    def broadcast_module(self, model: nn.Module) -> None:
        """Every parameter and buffer of ``model`` set to rank 0's."""
        with torch.no_grad():
            for t in list(model.parameters()) + list(model.buffers()):
                self._collective("a broadcast of the weights", dist.broadcast, t.data, 0)

    def broadcast_int(self, value: int) -> int:
        """Rank 0's ``value``."""
        t = torch.tensor([value], dtype=torch.int64, device=self._buffer_device())
        self._collective("a broadcast", dist.broadcast, t, 0)
        return int(t.item())

    def gather(self, state: Tensor) -> list[Tensor]:
        """Every rank's ``state`` (a 1-D uint8 tensor of the same length on every rank, such as
        an RNG state), in rank order, on the CPU."""
        dev = self._buffer_device()
        out = [torch.empty_like(state, device=dev) for _ in range(self.world)]
        self._collective("a gather of RNG states", dist.all_gather, out, state.to(dev))
        return [t.cpu() for t in out]

    def close(self) -> None:
        """Destroy the process group if :meth:`from_environment` created it."""
        if self.created and dist.is_initialized():
            try:
                dist.destroy_process_group()
            except (RuntimeError, ValueError):  # pragma: no cover - a group already broken
                pass

"""Argument checks of the core, each wording in one place.

Every public function and constructor of the core checks its arguments with these helpers, so
a bad argument gets the same kind of message everywhere: a :class:`ValueError` (or
:class:`TypeError` for a value of the wrong kind) naming the argument, what was expected and
what was found.  (The Keras front, :mod:`mdnkit.keras`, stays standalone and has its own.)

Example:
    >>> positive_int("num_components", 5)
    5
    >>> choice("covariance", "full", CovarianceType)
    'full'
    >>> positive_int("num_components", 0)
    Traceback (most recent call last):
    ...
    ValueError: num_components must be a positive integer, found 0
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, TypeVar, get_args

import numpy as np

from .options import CovarianceType  # noqa: F401  (used by the docstring example)

if TYPE_CHECKING:
    import torch

__all__ = [
    "positive_int",
    "nonnegative_int",
    "choice",
    "number",
    "as_generator",
    "FLOAT32_OVERFLOW",
    "FLOAT32_ROUNDING_LIMIT",
    "Float32Rounding",
    "float32_values",
    "available_memory",
    "fits_in_memory",
]

T = TypeVar("T")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def positive_int(name: str, value: Any, *, or_none: bool = False) -> int | None:
    """``value`` as an ``int`` >= 1 (``None`` passes through when ``or_none``); else ValueError."""
    if or_none and value is None:
        return None
    if not _is_int(value) or value < 1:
        tail = " or None" if or_none else ""
        raise ValueError(f"{name} must be a positive integer{tail}, found {value!r}")
    return int(value)


def nonnegative_int(name: str, value: Any) -> int:
    """``value`` as an ``int`` >= 0; else ValueError."""
    if not _is_int(value) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, found {value!r}")
    return int(value)


def _options(options: Any) -> tuple:
    """The allowed values of a ``Literal`` type (``Literal[...] | None`` included) or a tuple."""
    if isinstance(options, tuple):
        return options
    flat: list = []
    for arg in get_args(options):
        if arg is type(None):
            flat.append(None)
        elif get_args(arg):
            flat.extend(_options(arg))
        else:
            flat.append(arg)
    return tuple(flat)


def choice(name: str, value: T, options: Any) -> T:
    """``value`` if it is one of ``options`` (a ``Literal`` type or a tuple); else ValueError."""
    allowed = _options(options)
    if isinstance(value, bool) or value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, found {value!r}")
    return value


def number(
    name: str,
    value: Any,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
    finite: bool = True,
    or_none: bool = False,
) -> float | None:
    """``value`` as a float in the given range (finite unless ``finite=False``; ``None`` passes
    through when ``or_none``); else ValueError.

    The message states the range: ``lr must be a finite number > 0, found -1``.
    """
    if or_none and value is None:
        return None
    ok = (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and not math.isnan(value)
        and (math.isfinite(value) or not finite)
        and (value > low if low_open else value >= low)
        and (value < high if high_open else value <= high)
    )
    if not ok:
        parts = []
        if low > -math.inf:
            parts.append(f"{'>' if low_open else '>='} {low:g}")
        if high < math.inf:
            parts.append(f"{'<' if high_open else '<='} {high:g}")
        kind = "finite number" if finite else "number"
        rng = " and ".join(parts)
        rng = (" " + rng if rng else "") + (" or None" if or_none else "")
        raise ValueError(f"{name} must be a {kind}{rng}, found {value!r}")
    return float(value)


def as_generator(
    generator: torch.Generator | int | None, device: torch.device | str = "cpu"
) -> torch.Generator | None:
    """A ``torch.Generator`` on ``device`` from an int seed; generators and None pass through."""
    import torch  # here, not at the top: the command line reads its options without torch

    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if _is_int(generator):
        g = torch.Generator(device=device)
        g.manual_seed(int(generator))
        return g
    raise TypeError(
        f"generator must be a torch.Generator, an int seed or None, found {type(generator).__name__}"
    )


# ------------------------------------------------------------------------------ float32 data
#: Numbers of at least this magnitude round to ±inf in float32, the precision the models
#: compute in: the largest float32, 3.4028235e38, plus half a unit in its last place.
FLOAT32_OVERFLOW = 2.0**128 - 2.0**103

#: The largest rounding error that the cast to float32 may add to a column of data, as a
#: fraction of the column's spread (the standard deviation the model's standardisation divides
#: it by).  Beyond it distinct values collapse: 500 timestamps one second apart near 1.7e9 (a
#: float32 step of 128 there) become 5 values, a rounding error of 44% of their spread.
FLOAT32_ROUNDING_LIMIT = 0.01


def _where(name: str, row: int | None, column: str | int | None) -> str:
    """``name, row R, column C``: a column name quoted, a position not."""
    parts = [name] + ([f"row {row}"] if row is not None else [])
    return ", ".join(parts + ([f"column {column!r}"] if column is not None else []))


class Float32Rounding:
    """Watches columns of float64 data on their way to float32 (the models' precision), one
    block of rows at a time, and refuses a column whose rounding error exceeds
    :data:`FLOAT32_ROUNDING_LIMIT` of its spread.

    ``scales`` gives the spread of each column: a number (such as a trained model's
    standardisation scale; the check is then made on every block as it comes) or ``None``, the
    column's own standard deviation over all the blocks (the check is then made by
    :meth:`check`, after the last block).  The check is made on the values *before* the cast,
    because the cast comes first and the model standardises afterwards, in float32: what the
    cast loses, standardisation cannot bring back.  Constant columns (spread 0) pass.

    Example:
        >>> t = 1.7e9 + np.arange(500.0)[:, None]  # timestamps, one second apart
        >>> watch = Float32Rounding("t.csv", ["time"])
        >>> watch.add(t)
        >>> watch.check()
        Traceback (most recent call last):
        ...
        ValueError: t.csv, column 'time': float32, the precision the model computes in, rounds these values by up to 64, 44% of their spread 144 (at most 1% is accepted); subtract an offset such as 1.7e+09 from the column, or rescale it
    """

    def __init__(
        self, name: str, columns: list[str | int], scales: list[float | None] | None = None
    ) -> None:
        self.name, self.columns = name, list(columns)
        self.scales = list(scales) if scales is not None else [None] * len(self.columns)
        width = len(self.columns)
        self.rows = 0
        self.mean, self.m2 = np.zeros(width), np.zeros(width)
        self.error = np.zeros(width)

    def add(self, block: np.ndarray) -> None:
        """Take one block ``(rows, columns)`` of finite float64 values (a block of known-scale
        columns is checked now)."""
        block = np.asarray(block, dtype=np.float64).reshape(-1, len(self.columns))
        if not len(block):
            return
        cols = np.ascontiguousarray(block.T)  # one column a row: reductions along rows are fast
        with np.errstate(over="ignore", invalid="ignore"):
            work = np.subtract(cols, cols.astype(np.float32), dtype=np.float64)
        np.abs(work, out=work)
        self.error = np.maximum(self.error, work.max(axis=1))
        n, mean = len(block), cols.mean(axis=1)  # Chan et al.'s merge of means and M2
        np.subtract(cols, mean[:, None], out=work)
        np.square(work, out=work)
        m2 = work.sum(axis=1)
        total = self.rows + n
        delta = mean - self.mean
        self.m2 = self.m2 + m2 + delta**2 * self.rows * n / total
        self.mean = self.mean + delta * n / total
        self.rows = total
        self._refuse(known=True)

    def check(self) -> None:
        """Refuse (ValueError) a column of unknown scale whose rounding is too large: call it
        after the last block."""
        self._refuse(known=False)

    def _refuse(self, known: bool) -> None:
        for j, scale in enumerate(self.scales):
            if (scale is not None) != known:
                continue
            spread = float(scale) if known else math.sqrt(self.m2[j] / max(self.rows, 1))
            if spread > 0 and self.error[j] > FLOAT32_ROUNDING_LIMIT * spread:
                raise ValueError(
                    f"{_where(self.name, None, self.columns[j])}: float32, the precision the "
                    f"model computes in, rounds these values by up to {self.error[j]:.3g}, "
                    f"{100 * self.error[j] / spread:.0f}% of their spread {spread:.3g} "
                    f"(at most {100 * FLOAT32_ROUNDING_LIMIT:g}% is accepted); subtract an "
                    f"offset such as {self.mean[j]:.2g} from the column, or rescale it"
                )


def float32_values(name: str, values: Any, scales: list[float | None] | None = None) -> np.ndarray:
    """``values`` (numbers, 1-D or 2-D: rows by columns) as a float32 array, after checking that
    each is finite in float32 (its magnitude below :data:`FLOAT32_OVERFLOW`) and that the cast
    rounds no column by more than :data:`FLOAT32_ROUNDING_LIMIT` of its spread (see
    :class:`Float32Rounding`; ``scales`` as there); else ValueError naming the row and column
    (0-based).

    Example:
        >>> float32_values("X", [[1.0, 2.0], [3.0, 4.5]]).dtype
        dtype('float32')
        >>> float32_values("X", [[1.0, 2.0], [3.0, 1e39]])
        Traceback (most recent call last):
        ...
        ValueError: X, row 1, column 1: expected a finite float32 number (magnitude below 3.4e+38), found 1e+39
    """
    a = np.asarray(values, dtype=np.float64)
    table = a.reshape(len(a), -1) if a.ndim else a.reshape(1, 1)
    bad = ~(np.abs(table) < FLOAT32_OVERFLOW)  # NaN too
    if bad.any():
        r, c = (int(i) for i in np.argwhere(bad)[0])
        where = _where(name, r if a.ndim else None, c if a.ndim > 1 else None)
        raise ValueError(
            f"{where}: expected a finite float32 number (magnitude below "
            f"{FLOAT32_OVERFLOW:.2g}), found {table[r, c].item()!r}"
        )
    if len(table):
        watch = Float32Rounding(name, list(range(table.shape[1])), scales)
        watch.add(table)
        watch.check()
    return a.astype(np.float32)


# ------------------------------------------------------------------------------ memory
def available_memory() -> int | None:
    """Bytes of memory this process could still allocate, as far as the system tells: the
    smallest of the memory available (``MemAvailable`` plus free swap, Linux), the control
    group's limit left and the address-space limit; None where none of them is known."""
    limits: list[int] = []
    try:
        with open("/proc/meminfo") as fh:
            info = {k: int(v.split()[0]) * 1024 for k, v in (ln.split(":", 1) for ln in fh)}
        limits.append(info["MemAvailable"] + info.get("SwapFree", 0))
    except (OSError, KeyError, ValueError, IndexError):
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as fh:
            cap = fh.read().strip()
        with open("/sys/fs/cgroup/memory.current") as fh:
            used = int(fh.read().strip())
        if cap.isdigit():
            limits.append(max(0, int(cap) - used))
    except (OSError, ValueError):
        pass
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            limits.append(int(soft))
    except (ImportError, OSError, ValueError):
        pass
    return min(limits) if limits else None


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.3g} {unit}"
        n /= 1000
    raise AssertionError  # pragma: no cover


def fits_in_memory(what: str, nbytes: float) -> int:
    """``nbytes`` (an estimate of what ``what`` needs at once) as an int, when
    :func:`available_memory` could give that much (or is unknown); else ValueError with both
    numbers.

    Example:
        >>> fits_in_memory("a table of 10 rows", 80)
        80
        >>> fits_in_memory("10**20 samples", 8e20)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: 10**20 samples would need about 8e+05 PB of memory, more than the ... available
    """
    available = available_memory()
    if available is not None and nbytes > available:
        raise ValueError(
            f"{what} would need about {_size(nbytes)} of memory, more than the "
            f"{_size(available)} available"
        )
    return int(nbytes)

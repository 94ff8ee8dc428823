"""Toy problems and loaders for the standard data formats.

* :func:`inverted_sine`: the classic one-to-many problem, predict ``y`` from
  ``x = 7 sin(0.75 y) + 0.5 y + ε``, and :func:`inverted_sine_entropy`, its true conditional
  entropy :math:`H(Y \\mid X)` (the best NLL any model can reach, :data:`INVERTED_SINE_ENTROPY`).
* :func:`read_csv` / :func:`write_csv`: numeric CSV tables with a header row; every problem in a
  file is reported as a ``ValueError`` naming the file, the row and the column.
* :func:`load_uci`: the UCI regression benchmark in the layout of Gal & Ghahramani's experiments.

Only NumPy and the standard library are used.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import checks
from .files import atomic_path

__all__ = [
    "INVERTED_SINE_ENTROPY",
    "UCI_DATASETS",
    "inverted_sine",
    "inverted_sine_entropy",
    "read_csv",
    "read_csv_header",
    "resolve_columns",
    "write_csv",
    "csv_lines",
    "spreadsheet_safe",
    "separator_hint",
    "check_header",
    "OTHER_SEPARATORS",
    "float32_decimals",
    "MAX_LINE_CHARS",
    "load_uci",
    "default_data_root",
]

#: True :math:`H(Y \mid X)` of :func:`inverted_sine` with ``noise=1`` in nats (see
#: :func:`inverted_sine_entropy`): the lowest expected test NLL any model can reach.
INVERTED_SINE_ENTROPY = 1.288

#: The UCI regression sets in the standard benchmark layout.
UCI_DATASETS = ("concrete", "energy", "kin8nm", "power-plant", "yacht")

_Y_LOW, _Y_HIGH = -10.5, 10.5


def _sine(y: np.ndarray) -> np.ndarray:
    return 7.0 * np.sin(0.75 * y) + 0.5 * y


def inverted_sine(
    n: int, noise: float = 1.0, seed: int | np.random.Generator | None = 0
) -> tuple[np.ndarray, np.ndarray]:
    r"""Sample the inverted-sine problem: ``n`` pairs ``(x, y)``, each of shape ``(n, 1)`` float32.

    .. math::

        y \sim \mathcal{U}(-10.5, 10.5), \qquad
        x = 7\sin(0.75\,y) + 0.5\,y + \varepsilon,\quad \varepsilon \sim \mathcal{N}(0, \text{noise}^2)

    Predicting ``y`` from ``x`` is one-to-many (up to five branches for one ``x``): a least-squares
    regressor predicts the useless average, an MDN the modes.

    Args:
        n: number of samples (>= 1).
        noise: standard deviation of :math:`\varepsilon` (>= 0).
        seed: an int seed or a ``numpy.random.Generator``; the same seed gives the same data.

    Example:
        >>> x, y = inverted_sine(3000, seed=0)
        >>> x.shape, y.shape, x.dtype
        ((3000, 1), (3000, 1), dtype('float32'))
    """
    n = checks.positive_int("n", n)
    noise = checks.number("noise", noise, low=0.0)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    y = rng.uniform(_Y_LOW, _Y_HIGH, size=(int(n), 1))
    x = _sine(y) + noise * rng.standard_normal((int(n), 1))
    return x.astype(np.float32), y.astype(np.float32)


def inverted_sine_entropy(noise: float = 1.0, n_y: int = 4001, n_x: int = 4001) -> float:
    r"""The true conditional entropy :math:`H(Y \mid X)` of :func:`inverted_sine`, in nats.

    By Bayes' rule :math:`p(y \mid x) = p(x \mid y)\,p(y) / p(x)`, so

    .. math::

        H(Y \mid X) = H(Y) - H(X) + H(X \mid Y)
                    = \log 21 - H(X) + \tfrac12 \log(2\pi e\,\text{noise}^2),

    with :math:`p(x) = \tfrac{1}{21}\int_{-10.5}^{10.5} \mathcal{N}(x \mid f(y), \text{noise}^2)\,dy`
    and :math:`H(X) = -\int p(x)\log p(x)\,dx`, both integrated numerically (Simpson's rule on
    ``n_y`` × ``n_x`` grid points, float64).  ``noise=1`` gives 1.288 nats.

    Example:
        >>> round(inverted_sine_entropy(), 3)
        1.288
    """
    if not (isinstance(noise, (int, float)) and math.isfinite(noise) and noise > 0):
        raise ValueError(f"noise must be a finite number > 0, found {noise!r}")
    from scipy.integrate import simpson  # scipy ships with scikit-learn, a dependency

    ys = np.linspace(_Y_LOW, _Y_HIGH, n_y)
    fy = _sine(ys)
    xs = np.linspace(fy.min() - 12 * noise, fy.max() + 12 * noise, n_x)
    z = (xs[:, None] - fy[None, :]) / noise
    lik = np.exp(-0.5 * z * z) / (noise * math.sqrt(2 * math.pi))  # (n_x, n_y): p(x | y)
    px = simpson(lik, x=ys, axis=1) / (_Y_HIGH - _Y_LOW)
    with np.errstate(divide="ignore"):
        logpx = np.where(px > 0, np.log(px), 0.0)
    hx = -simpson(px * logpx, x=xs)
    hy = math.log(_Y_HIGH - _Y_LOW)
    hxy = 0.5 * math.log(2 * math.pi * math.e * noise**2)
    return float(hy - hx + hxy)


# ---------------------------------------------------------------------------------------- CSV
#: The longest line the CSV readers accept, in characters: a file without line breaks (such as
#: ``/dev/zero``, or one huge line) is refused once this many are read, never read whole.
MAX_LINE_CHARS = 1 << 24


def csv_lines(fh: Iterable[str] | io.TextIOBase, name: str) -> Iterator[str]:
    r"""The lines of a text file opened with ``newline=""``, for ``csv.reader``, each at most
    :data:`MAX_LINE_CHARS` characters: a longer line raises a ValueError naming the file and
    the line, after reading no more than that, so memory stays bounded whatever the file.

    Example:
        >>> import io
        >>> list(csv_lines(io.StringIO("a,b\n1,2\n"), "t.csv"))
        ['a,b\n', '1,2\n']
    """
    number = 0
    while True:
        line = fh.readline(MAX_LINE_CHARS + 1)
        if not line:
            return
        number += 1
        if len(line) > MAX_LINE_CHARS and not line.endswith(("\n", "\r")):
            raise ValueError(
                f"{name}, row {number}: a line longer than {MAX_LINE_CHARS} characters, "
                "expected a CSV file with one row per line"
            )
        yield line


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(cell: str) -> str:
    r"""``cell`` as a spreadsheet shows it but never runs it: a text cell that starts (after
    spaces) with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return, which spreadsheet
    programs would run as a formula, gets a leading ``'``; numbers (``-1.5``) are unchanged.

    Example:
        >>> spreadsheet_safe('=HYPERLINK("http://x","y")'), spreadsheet_safe("-1.5")
        ('\'=HYPERLINK("http://x","y")', '-1.5')
    """
    text = str(cell)
    if not text.lstrip(" ").startswith(_FORMULA_START):
        return text
    try:
        float(text)
        return text
    except ValueError:
        return "'" + text


_EXACT_POWER = 22  # 10.0 ** k is exact in float64 for k <= 22


def float32_decimals(values: Any) -> np.ndarray:
    """Float64 copies of float32 ``values`` whose ``repr`` is the shortest decimal that reads
    back as the same float32 (``24.05``, not ``24.049999237060547``), the decimal NumPy prints
    for the float32: how the command line writes float32 numbers to CSV.  Infinities, NaN and
    zeros are kept as they are.

    Vectorised: the nearest decimal of 6 significant digits is tried first (when one of 6
    digits or fewer reads back, it is that one, as float32's half-spacing is below half a unit
    in the 6th digit), then 7, 8 and 9, each computed with one rounding (the integer digits and
    a power of ten up to 1e22 are exact in float64).  Values whose decimal needs a larger power
    of ten (magnitudes from 1e28 up, or below 1e-14) are converted one by one from NumPy's
    shortest text.

    Example:
        >>> float32_decimals(np.float32([24.05, 0.1, 1e-3, 3.14159265])).tolist()
        [24.05, 0.1, 0.001, 3.1415927]
    """
    v = np.asarray(values, dtype=np.float32)
    out = v.astype(np.float64).ravel()
    flat = v.ravel()
    todo = np.flatnonzero(np.isfinite(flat) & (flat != 0))
    exponent = np.floor(np.log10(np.abs(out[todo]))).astype(np.int64)
    fast = (exponent >= 8 - _EXACT_POWER) & (exponent <= 5 + _EXACT_POWER)  # every power exact
    slow, todo, exponent = todo[~fast], todo[fast], exponent[fast]
    for digits in (6, 7, 8, 9):
        x, shift = out[todo], digits - 1 - exponent
        power = 10.0 ** np.abs(shift).astype(np.float64)
        up = shift >= 0
        m = np.round(np.where(up, x * power, x / power))
        decimal = np.where(up, m / power, m * power)
        ok = decimal.astype(np.float32) == flat[todo]
        out[todo[ok]] = decimal[ok]
        todo, exponent = todo[~ok], exponent[~ok]
    for i in (*slow, *todo):  # extreme magnitudes: NumPy's shortest text, read back
        out[i] = float(str(flat[i]))
    return out.reshape(v.shape)


def _open_rows(path: str | os.PathLike) -> tuple[str, list[str], list[tuple[int, list[str]]]]:
    """Read a CSV file: (display name, header, data rows as (line number, cells)), blank lines
    skipped.  Errors name the file."""
    name = os.fspath(path)
    if not os.path.exists(name):
        raise ValueError(f"{name}: no such file")
    if os.path.isdir(name):
        raise ValueError(f"{name}: is a directory, expected a CSV file")
    try:
        # utf-8-sig: a byte-order mark (as spreadsheet programs write) is not part of the header
        with open(name, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(csv_lines(fh, name))
            rows = [(reader.line_num, row) for row in reader if row and any(c.strip() for c in row)]
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{name}: not a text CSV file ({exc.reason} at byte {exc.start})"
        ) from None
    except csv.Error as exc:
        raise ValueError(f"{name}: malformed CSV ({exc})") from None
    if not rows:
        raise ValueError(f"{name}: empty file, expected a header row and data rows")
    header = [c.strip() for c in rows[0][1]]
    return name, header, rows[1:]


def read_csv_header(path: str | os.PathLike) -> list[str]:
    """The column names (first row) of a CSV file.

    Example:
        >>> read_csv_header("data.csv")  # doctest: +SKIP
        ['x', 'y']
    """
    return _open_rows(path)[1]


def resolve_columns(
    header: Sequence[str], columns: str | int | Iterable[str | int] | None, where: str = "CSV file"
) -> list[int]:
    """0-based positions of ``columns`` in ``header``.

    Each column is a name from the header or a 0-based position (an int, or a string of digits
    that is not itself a column name).  A string with commas is split: ``"a,b"`` = ``["a", "b"]``.
    ``None`` means every column.  A name that the header holds more than once is ambiguous and
    refused (choose such columns by position).  A header of numbers only (a file without a
    header row) is refused (:func:`check_header`); a column that is not found gets
    :func:`separator_hint` when the file is not comma-separated.

    Example:
        >>> resolve_columns(["x", "y", "z"], "z,0")
        [2, 0]
    """
    check_header(header, where)
    if columns is None:
        return list(range(len(header)))
    if isinstance(columns, str):
        columns = [c.strip() for c in columns.split(",")]
    elif isinstance(columns, (int, np.integer)) and not isinstance(columns, bool):
        columns = [int(columns)]
    columns = list(columns)
    if not columns:
        raise ValueError(f"{where}: no columns selected, expected at least one name or position")
    out: list[int] = []
    for col in columns:
        if isinstance(col, str) and col in header:
            at = [i for i, h in enumerate(header) if h == col]
            if len(at) > 1:
                raise ValueError(
                    f"{where}: the column name {col!r} is ambiguous, the header has it "
                    f"{len(at)} times (positions {', '.join(map(str, at))}); choose the column "
                    "by position"
                )
            out.append(at[0])
        elif (
            isinstance(col, (int, np.integer))
            and not isinstance(col, bool)
            or (isinstance(col, str) and col.lstrip("-").isdigit())
        ):
            i = int(col)
            if not 0 <= i < len(header):
                raise ValueError(
                    f"{where}: column position {i} out of range, the file has {len(header)} "
                    f"columns (0..{len(header) - 1}): {', '.join(header)}"
                    f"{separator_hint(header)}"
                )
            out.append(i)
        else:
            raise ValueError(
                f"{where}: no column {col!r}; the columns are: {', '.join(header)}"
                f"{separator_hint(header)}"
            )
    return out


#: Separators that spreadsheet programs write instead of commas (a header read as one column
#: that holds one of them gets :func:`separator_hint`).
OTHER_SEPARATORS = (";", "\t", "|")


def separator_hint(header: Sequence[str]) -> str:
    """A hint for a column that was not found: when the header was read as one column that
    holds ``;``, a tab or ``|`` (:data:`OTHER_SEPARATORS`), the file is not comma-separated;
    else ``""``.

    Example:
        >>> separator_hint(["a;b"])
        " (the header looks separated by ';'; expected commas: save the file as comma-separated CSV)"
        >>> separator_hint(["a", "b"])
        ''
    """
    if len(header) != 1:
        return ""
    sep = next((c for c in OTHER_SEPARATORS if c in header[0]), None)
    if sep is None:
        return ""
    return (
        f" (the header looks separated by {sep!r}; expected commas: save the file as "
        "comma-separated CSV)"
    )


def check_header(header: Sequence[str], where: str = "CSV file") -> None:
    """Refuse a first row that holds only numbers: a file without a header row, whose first
    data row would otherwise silently become the column names.

    Example:
        >>> check_header(["x", "y"])
        >>> check_header(["0.5", "1e3"], "t.csv")
        Traceback (most recent call last):
        ...
        ValueError: t.csv: the first row (0.5, 1e3) holds only numbers, expected a header row of column names: add one as the first line, such as x0,x1
    """
    for cell in header:
        try:
            float(cell)
        except ValueError:
            return
    shown = ", ".join(header[:6]) + (", ..." if len(header) > 6 else "")
    example = ",".join(f"x{i}" for i in range(min(len(header), 3)))
    example += ",..." if len(header) > 3 else ""
    raise ValueError(
        f"{where}: the first row ({shown}) holds only numbers, expected a header row of column "
        f"names: add one as the first line, such as {example}"
    )


def read_csv(
    path: str | os.PathLike,
    columns: str | int | Iterable[str | int] | None = None,
    dtype: type | np.dtype = np.float32,
) -> np.ndarray:
    """Read numeric ``columns`` of a CSV file with a header row: an array ``(rows, len(columns))``.

    Columns are names or 0-based positions (see :func:`resolve_columns`).  Every cell of the
    file must be present (no ragged rows) and every selected cell must be a finite number.
    Any problem raises a ``ValueError`` naming the file, the row (1-based line number, the header
    is line 1) and the column: a missing file, an empty file, a first row of numbers only (no
    header), a missing column, an ambiguous column name, a ragged row, a non-numeric cell, NaN
    or inf, a number beyond the range of ``dtype`` (``1e39`` in float32), a line longer than
    :data:`MAX_LINE_CHARS`.

    Example:
        >>> write_csv("t.csv", ["x", "y"], [[1, 2], [3, 4]])
        >>> read_csv("t.csv", ["y"]).ravel().tolist()
        [2.0, 4.0]
    """
    name, header, rows = _open_rows(path)
    idx = resolve_columns(header, columns, where=name)
    if not rows:
        raise ValueError(f"{name}: no data rows, only a header ({', '.join(header)})")
    out = np.empty((len(rows), len(idx)), dtype=np.float64)
    for r, (line, row) in enumerate(rows):
        if len(row) != len(header):
            raise ValueError(
                f"{name}, row {line}: {len(row)} cell{'' if len(row) == 1 else 's'}, expected {len(header)} like the header"
            )
        for j, c in enumerate(idx):
            cell = row[c].strip()
            try:
                v = float(cell)
            except ValueError:
                raise ValueError(
                    f"{name}, row {line}, column {header[c]!r}: expected a number, found {cell!r}"
                ) from None
            if not math.isfinite(v):
                raise ValueError(
                    f"{name}, row {line}, column {header[c]!r}: expected a finite number, "
                    f"found {cell!r}"
                )
            out[r, j] = v
    return _cast(out, dtype, name, header, idx, rows)


def _cast(out: np.ndarray, dtype, name: str, header, idx, rows) -> np.ndarray:
    """``out`` in ``dtype``; a value beyond the range of a floating ``dtype`` (it would become
    inf) raises a ValueError naming its row and column."""
    dtype = np.dtype(dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        res = out.astype(dtype, copy=False)
    if np.issubdtype(dtype, np.floating):
        bad = np.argwhere(~np.isfinite(res))
        if len(bad):
            r, j = (int(i) for i in bad[0])
            line, row = rows[r]
            raise ValueError(
                f"{name}, row {line}, column {header[idx[j]]!r}: expected a finite number in "
                f"{dtype.name} (magnitude below {float(np.finfo(dtype).max):.2g}), found "
                f"{row[idx[j]].strip()!r}"
            )
    return res


def write_csv(
    path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[float]]
) -> None:
    """Write a CSV file with a header row, atomically (a temporary file, then ``os.replace``).

    A failure part-way (bad row length, disk full) leaves the old file, or none, never half a
    file.  Floats are written with ``repr`` precision, so they read back exactly.  Text cells
    and column names that a spreadsheet would run as a formula get a leading ``'``
    (:func:`spreadsheet_safe`).

    Example:
        >>> write_csv("t.csv", ["x", "y"], [[1.0, 2.0]])
    """
    name = os.fspath(path)
    header = [spreadsheet_safe(h) for h in header]
    with (
        atomic_path(name, suffix=".csv") as tmp,
        open(tmp, "w", newline="", encoding="utf-8") as fh,
    ):
        writer = csv.writer(fh)
        writer.writerow(header)
        for i, row in enumerate(rows):
            row = row.ravel().tolist() if isinstance(row, np.ndarray) else list(row)
            row = [v.item() if isinstance(v, np.generic) else v for v in row]
            if len(row) != len(header):
                raise ValueError(
                    f"{name}: row {i} has {len(row)} values, expected {len(header)} "
                    f"(the header's length)"
                )
            writer.writerow(
                [
                    repr(float(v))
                    if isinstance(v, float)
                    else spreadsheet_safe(v)
                    if isinstance(v, str)
                    else v
                    for v in row
                ]
            )


# ---------------------------------------------------------------------------------------- UCI
def default_data_root() -> Path:
    """Where :func:`load_uci` looks for ``uci/``: ``$MDNKIT_DATA``, else ``../shared/data`` beside
    the repository (found from this file's location, then from the current directory)."""
    env = os.environ.get("MDNKIT_DATA")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in [*here.parents, Path.cwd(), *Path.cwd().parents]:
        cand = parent.parent / "shared" / "data"
        if (parent / "pyproject.toml").exists() and cand.is_dir():
            return cand
    return Path.cwd().parent / "shared" / "data"


def _read_indices(path: Path) -> np.ndarray:
    if not path.exists():
        raise ValueError(f"{path}: no such file")
    return np.loadtxt(path, dtype=np.int64, ndmin=1)


def load_uci(
    name: str, split: int = 0, root: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Load split ``split`` of a UCI regression set: ``(x_train, y_train, x_test, y_test)``.

    The layout (``root/uci/<name>/``) is Gal & Ghahramani's: ``data.txt`` (whitespace-separated,
    no header), ``index_features.txt``, ``index_target.txt`` and ``index_{train,test}_<i>.txt``.
    Arrays are float32; ``y`` has shape ``(n, 1)``.  NLLs must be reported in these raw units.

    Args:
        name: one of :data:`UCI_DATASETS` (or any folder in that layout).
        split: 0-based split index, ``0 <= split < n_splits`` (20 for the standard sets).
        root: the folder that holds ``uci/``; default :func:`default_data_root`.

    Example:
        >>> xtr, ytr, xte, yte = load_uci("yacht", split=0)  # doctest: +SKIP
        >>> xtr.shape, yte.shape  # doctest: +SKIP
        ((277, 6), (31, 1))
    """
    base = Path(root) if root is not None else default_data_root()
    folder = base / "uci" / name
    if not (folder / "data.txt").exists():
        available = (
            sorted(p.name for p in (base / "uci").glob("*")) if (base / "uci").is_dir() else []
        )
        raise ValueError(
            f"no UCI set {name!r} under {base / 'uci'} (expected {folder / 'data.txt'}); "
            f"available: {', '.join(available) or 'none'} (set MDNKIT_DATA or pass root=)"
        )
    n_splits_file = folder / "n_splits.txt"
    n_splits = int(np.loadtxt(n_splits_file)) if n_splits_file.exists() else None
    if (
        isinstance(split, bool)
        or not isinstance(split, (int, np.integer))
        or split < 0
        or (n_splits is not None and split >= n_splits)
    ):
        raise ValueError(f"split must be an integer in [0, {n_splits}), found {split!r}")
    data = np.loadtxt(folder / "data.txt", dtype=np.float64, ndmin=2)
    feat = _read_indices(folder / "index_features.txt")
    target = _read_indices(folder / "index_target.txt")
    train = _read_indices(folder / f"index_train_{split}.txt")
    test = _read_indices(folder / f"index_test_{split}.txt")
    x = data[:, feat].astype(np.float32)
    y = data[:, target].reshape(len(data), -1).astype(np.float32)
    return x[train], y[train], x[test], y[test]

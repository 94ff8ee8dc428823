"""Numeric columns of CSV files, read once, in chunks of a bounded number of rows.

:class:`CsvTable` opens a CSV file with a header row and streams the chosen columns as float64
arrays of :func:`chunk_rows` rows each (the last one shorter), so a command's memory does not
grow with the file.  Columns are names or 0-based positions (:func:`mdnkit.datasets.resolve_columns`).

Two readers give the same rows and the same errors:

* the columnar reader of ``pyarrow.csv`` (the optional ``csv`` extra, ``pip install
  "mdnkit[csv]"``): parses in C++ and converts only the chosen columns;
* the standard library's ``csv`` module, used when pyarrow is missing, and to report problems:
  when pyarrow refuses a cell (text, an empty cell, a ragged row, bad UTF-8) or a value is NaN,
  infinite or beyond float32's range, reading goes on with the standard reader from the first
  row not yet handed out, which raises the one ``ValueError`` naming the file, the row (1-based
  line number, the header is line 1) and the column, or reads on where pyarrow was only
  stricter (``" 1.5"``, ``1_0``).  Lines are read at most
  :data:`mdnkit.datasets.MAX_LINE_CHARS` characters at a time, so a file without line breaks is
  refused in bounded memory.

:func:`sample_rows` keeps a uniform random subset of a stream of chunks in bounded memory;
:class:`RowFile` spills rows to a temporary float32 file and reads them back in shuffled blocks.
"""

from __future__ import annotations

import csv
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from .checks import FLOAT32_OVERFLOW, Float32Rounding
from .datasets import csv_lines, resolve_columns

__all__ = ["CsvTable", "RowFile", "chunk_rows", "columnar_reader", "sample_rows", "CHUNK_ROWS_ENV"]

#: Environment variable that sets the rows per chunk (an internal setting, for tests).
CHUNK_ROWS_ENV = "MDNKIT_CSV_CHUNK_ROWS"
_DEFAULT_CHUNK_ROWS = 65_536
#: Bytes pyarrow parses at a time (at least 64 header lines' worth, so that a wide file's rows
#: fit in one).  Its reader reads up to 32 blocks ahead: 4 MiB blocks took 140 MB more memory
#: than these, and no less time.
_ARROW_BLOCK_BYTES = 64 << 10


def chunk_rows() -> int:
    """Rows per chunk: ``$MDNKIT_CSV_CHUNK_ROWS`` when set (a positive integer), else 65 536."""
    text = os.environ.get(CHUNK_ROWS_ENV, "").strip()
    if not text:
        return _DEFAULT_CHUNK_ROWS
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{CHUNK_ROWS_ENV} must be a positive integer, found {text!r}")
    return int(text)


def columnar_reader():
    """The ``pyarrow.csv`` module, or None when pyarrow is not installed."""
    try:
        import pyarrow.csv as pacsv
    except ImportError:
        return None
    return pacsv


class _Rechunk:
    """Cut a stream of arrays into arrays of exactly ``size`` rows (the last one shorter)."""

    def __init__(self, size: int) -> None:
        self.size, self.parts, self.rows = size, [], 0

    def push(self, block: np.ndarray) -> Iterator[np.ndarray]:
        self.parts.append(block)
        self.rows += len(block)
        while self.rows >= self.size:
            whole = np.concatenate(self.parts) if len(self.parts) > 1 else self.parts[0]
            yield whole[: self.size]
            rest = whole[self.size :]
            self.parts, self.rows = ([rest] if len(rest) else []), len(rest)

    def flush(self) -> Iterator[np.ndarray]:
        if self.rows:
            yield np.concatenate(self.parts) if len(self.parts) > 1 else self.parts[0]
        self.parts, self.rows = [], 0


def _values(col) -> np.ndarray:
    """A float64 pyarrow array without nulls as a NumPy view of its data buffer (its
    ``to_numpy`` may import pandas: 50 MB more for nothing)."""
    data = np.frombuffer(col.buffers()[1], dtype=np.float64)
    return data[col.offset : col.offset + len(col)]


class CsvTable:
    """A CSV file with a header row, whose numeric columns are read in chunks.

    Opening reads the header only.  Problems raise a ``ValueError`` that names the file (and the
    row and column): a missing file, a folder, an empty file, bad UTF-8, malformed CSV.

    Example:
        >>> table = CsvTable("data.csv")  # doctest: +SKIP
        >>> cols = table.resolve(["x", "y"])  # doctest: +SKIP
        >>> sum(len(c) for c in table.chunks(cols))  # doctest: +SKIP
        600
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.name = os.fspath(path)
        if not os.path.exists(self.name):
            raise ValueError(f"{self.name}: no such file")
        if os.path.isdir(self.name):
            raise ValueError(f"{self.name}: is a directory, expected a CSV file")
        header, end_line = None, 0
        with self._open() as fh:
            reader = csv.reader(csv_lines(fh, self.name))
            for row in self._guard(reader):
                if row and any(c.strip() for c in row):
                    header, end_line = row, reader.line_num
                    break
        if header is None:
            raise ValueError(f"{self.name}: empty file, expected a header row and data rows")
        self.header = [c.strip() for c in header]
        self._header_on_line_1 = end_line == 1
        self._scales: dict[int, float | None] | None = None

    def _open(self):
        # utf-8-sig: a byte-order mark (as spreadsheet programs write) is not part of the header
        return open(self.name, newline="", encoding="utf-8-sig")

    def _guard(self, reader: Iterable[list[str]]) -> Iterator[list[str]]:
        """The reader's rows, its decoding and CSV errors turned into one-line ValueErrors."""
        try:
            yield from reader
        except UnicodeDecodeError as exc:
            raise ValueError(
                f"{self.name}: not a text CSV file ({exc.reason} at byte {exc.start})"
            ) from None
        except csv.Error as exc:
            raise ValueError(f"{self.name}: malformed CSV ({exc})") from None

    def resolve(self, columns: str | int | Iterable[str | int] | None) -> list[int]:
        """0-based positions of ``columns`` (names or positions; see ``resolve_columns``)."""
        return resolve_columns(self.header, columns, where=self.name)

    def names(self, idx: Sequence[int]) -> list[str]:
        """The header names of the positions ``idx``."""
        return [self.header[i] for i in idx]

    def check_rounding(self, scales: dict[int, float | None]) -> None:
        """From now on :meth:`chunks` also refuses a column that the cast to float32 rounds by
        more than :data:`~mdnkit.checks.FLOAT32_ROUNDING_LIMIT` of its spread: ``scales`` maps
        a position to that spread (a model's standardisation scale) or to None, the column's
        own standard deviation, checked after the last chunk (also the default for positions
        not in ``scales``).  See :class:`~mdnkit.checks.Float32Rounding`."""
        self._scales = dict(scales)

    def chunks(self, idx: Sequence[int], size: int | None = None) -> Iterator[np.ndarray]:
        """The columns ``idx`` (positions, from :meth:`resolve`) as float64 arrays of ``size``
        rows (default :func:`chunk_rows`; the last chunk may be shorter), every cell a number
        that is finite in float32 (the models' precision).  Raises a ``ValueError`` naming the
        row and column of the first bad cell, or saying that the file has no data rows (and,
        after :meth:`check_rounding`, naming a column that float32 would round too much)."""
        idx = list(idx)
        if self._scales is None:
            yield from self._chunks(idx, size)
            return
        scales = [self._scales.get(i) for i in idx]
        watch = Float32Rounding(self.name, self.names(idx), scales)
        for block in self._chunks(idx, size):
            watch.add(block)
            yield block
        watch.check()

    def _chunks(self, idx: list[int], size: int | None) -> Iterator[np.ndarray]:
        """:meth:`chunks` without the rounding check."""
        size = chunk_rows() if size is None else int(size)
        idx = list(idx)
        done = [0]  # rows handed out so far
        pacsv = columnar_reader()
        if pacsv is not None and self._header_on_line_1:
            for block in self._arrow_chunks(pacsv, idx, size):
                if block is None:  # pyarrow refused something: the standard reader takes over
                    break
                done[0] += len(block)
                yield block
            else:
                if done[0] == 0:
                    self._no_rows()
                return
        yield from self._python_chunks(idx, size, skip=done[0])

    def _no_rows(self) -> None:
        raise ValueError(f"{self.name}: no data rows, only a header ({', '.join(self.header)})")

    def _arrow_chunks(self, pacsv, idx: list[int], size: int) -> Iterator[np.ndarray | None]:
        """Chunks from pyarrow; None (then nothing) at the first thing it refuses."""
        import pyarrow as pa

        wanted = sorted(set(idx))
        names = [f"c{i}" for i in range(len(self.header))]
        where = [wanted.index(i) for i in idx]
        read = pacsv.ReadOptions(
            column_names=names,
            skip_rows=1,
            block_size=max(_ARROW_BLOCK_BYTES, 64 * len(",".join(self.header).encode())),
            encoding="utf8",
        )
        convert = pacsv.ConvertOptions(
            column_types={names[i]: pa.float64() for i in wanted},
            include_columns=[names[i] for i in wanted],
            null_values=[],
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        )
        cut = _Rechunk(size)
        try:
            with pacsv.open_csv(
                self.name,
                read_options=read,
                convert_options=convert,
                memory_pool=pa.system_memory_pool(),  # 9 MB less than pyarrow's default pool
            ) as reader:
                for batch in reader:
                    if any(col.null_count for col in batch.columns):
                        yield None
                        return
                    cols = [_values(col) for col in batch.columns]
                    block = np.stack(cols, axis=1)[:, where] if cols else np.empty((0, 0))
                    if not (np.abs(block) < FLOAT32_OVERFLOW).all():  # NaN, inf, 1e39
                        yield None
                        return
                    yield from cut.push(block)
        except (pa.ArrowException, ValueError, OSError):
            yield None
            return
        yield from cut.flush()

    def _python_chunks(self, idx: list[int], size: int, skip: int) -> Iterator[np.ndarray]:
        """Chunks from the standard library's reader, after the first ``skip`` data rows."""
        width = len(self.header)
        cols = [(j, c, self.header[c]) for j, c in enumerate(idx)]
        out = np.empty((size, len(idx)), dtype=np.float64)
        filled = rows = 0
        with self._open() as fh:
            reader = csv.reader(csv_lines(fh, self.name))
            data = (r for r in self._guard(reader) if r and any(c.strip() for c in r))
            next(data, None)  # the header
            for row in data:
                rows += 1
                if rows <= skip:
                    continue
                line = reader.line_num
                if len(row) != width:
                    s = "" if len(row) == 1 else "s"
                    raise ValueError(
                        f"{self.name}, row {line}: {len(row)} cell{s}, expected {width} like the header"
                    )
                for j, c, name in cols:
                    out[filled, j] = self._number(row[c], line, name)
                filled += 1
                if filled == size:
                    yield out.copy()
                    filled = 0
        if rows == 0:
            self._no_rows()
        if filled:
            yield out[:filled].copy()

    def _number(self, text: str, line: int, column: str) -> float:
        cell = text.strip()
        try:
            v = float(cell)
        except ValueError:
            raise ValueError(
                f"{self.name}, row {line}, column {column!r}: expected a number, found {cell!r}"
            ) from None
        if not math.isfinite(v):
            raise ValueError(
                f"{self.name}, row {line}, column {column!r}: expected a finite number, "
                f"found {cell!r}"
            )
        if abs(v) >= FLOAT32_OVERFLOW:
            raise ValueError(
                f"{self.name}, row {line}, column {column!r}: expected a finite number in "
                f"float32, the precision the model computes in (magnitude below "
                f"{FLOAT32_OVERFLOW:.2g}), found {cell!r}"
            )
        return v


def sample_rows(chunks: Iterable[np.ndarray], k: int, seed: int = 0) -> tuple[np.ndarray, int]:
    """A uniform random subset of at most ``k`` rows of a stream of chunks, in their original
    order, and the total number of rows seen.

    Each row gets a uniform key from one ``numpy.random.default_rng(seed)`` stream, drawn in row
    order; the ``k`` smallest keys are kept.  So the subset depends on ``seed`` and the rows, not
    on how they were cut into chunks, and memory holds ``k`` rows plus one chunk.  With at most
    ``k`` rows, all of them are returned.

    Example:
        >>> rows, n = sample_rows([np.arange(10.0)[:, None]] * 3, k=5, seed=0)
        >>> rows.shape, n
        ((5, 1), 30)
    """
    rng = np.random.default_rng(seed)
    kept: np.ndarray | None = None
    keys = np.empty(0)
    order = np.empty(0, dtype=np.int64)
    seen = 0
    for block in chunks:
        new_keys = rng.random(len(block))
        new_order = np.arange(seen, seen + len(block), dtype=np.int64)
        seen += len(block)
        rows = block if kept is None else np.concatenate([kept, block])
        keys = np.concatenate([keys, new_keys])
        order = np.concatenate([order, new_order])
        if len(keys) > k:
            top = np.argpartition(keys, k - 1)[:k]
            rows, keys, order = rows[top], keys[top], order[top]
        kept = rows
    if kept is None:
        return np.empty((0, 0)), 0
    first = np.argsort(order, kind="stable")
    return kept[first], seen


class RowFile:
    """Rows of ``width`` float32 values in an anonymous temporary file (it has no name and is
    gone when closed, or when the process ends however it ends), read back with plain reads.

    Plain reads (not a memory map): the pages of a mapped file count in the process's resident
    memory once touched, so an epoch over a map would grow it with the file; read into buffers,
    memory stays at the buffers' size whatever the number of rows.

    Example:
        >>> f = RowFile(2)
        >>> f.append(np.arange(6.0).reshape(3, 2))
        >>> f.read(1, 3).tolist()
        [[2.0, 3.0], [4.0, 5.0]]
    """

    def __init__(self, width: int, folder: str | os.PathLike | None = None) -> None:
        self.width, self.rows = int(width), 0
        self._fh = tempfile.TemporaryFile(dir=folder)
        self._dirty = False

    def append(self, block: np.ndarray) -> None:
        """Add rows at the end (converted to float32)."""
        a = np.ascontiguousarray(block, dtype=np.float32).reshape(-1, self.width)
        self._fh.seek(0, os.SEEK_END)
        self._fh.write(a.tobytes())
        self.rows += len(a)
        self._dirty = True

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as a new (rows, width) float32 array."""
        if self._dirty:
            self._fh.flush()
            self._dirty = False
        stop = min(stop, self.rows)
        count = max(0, stop - start) * self.width
        self._fh.seek(start * self.width * 4)
        return np.fromfile(self._fh, dtype=np.float32, count=count).reshape(-1, self.width)

    def sequential(self, size: int) -> Iterator[np.ndarray]:
        """The rows in order, ``size`` at a time."""
        for i in range(0, self.rows, size):
            yield self.read(i, i + size)

    def shuffled(
        self, rng: np.random.Generator, buffer_rows: int, batch_size: int
    ) -> Iterator[np.ndarray]:
        """Every row once, in batches of ``batch_size`` (the last one shorter), shuffled in
        bounded memory: the rows are cut into 16 blocks per ``buffer_rows``; the blocks are
        visited in a random order, 16 at a time, and the rows of each 16 are shuffled together.
        """
        block = max(1, buffer_rows // 16)
        order = rng.permutation(-(-self.rows // block))
        carry = np.empty((0, self.width), dtype=np.float32)
        for g in range(0, len(order), 16):
            mixed = np.concatenate(
                [self.read(b * block, (b + 1) * block) for b in order[g : g + 16]]
            )
            buf = np.concatenate([carry, mixed[rng.permutation(len(mixed))]])
            full = len(buf) // batch_size * batch_size
            for i in range(0, full, batch_size):
                yield buf[i : i + batch_size]
            carry = buf[full:]
        if len(carry):
            yield carry

    def close(self) -> None:
        """Close (and so delete) the file."""
        self._fh.close()

"""Tests for mdnkit.datasets: the inverted sine, its entropy, CSV files and the UCI loader; and
the pieces under them: float32 checks (mdnkit.checks) and atomic writes (mdnkit.files)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from mdnkit.datasets import (
    INVERTED_SINE_ENTROPY,
    MAX_LINE_CHARS,
    csv_lines,
    inverted_sine,
    inverted_sine_entropy,
    load_uci,
    read_csv,
    read_csv_header,
    resolve_columns,
    spreadsheet_safe,
    write_csv,
)

UCI_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def test_inverted_sine_shapes_seed_and_distribution():
    x, y = inverted_sine(5000, seed=3)
    assert x.shape == y.shape == (5000, 1) and x.dtype == y.dtype == np.float32
    x2, y2 = inverted_sine(5000, seed=3)
    np.testing.assert_array_equal(x, x2)
    assert not np.array_equal(inverted_sine(5000, seed=4)[1], y)
    assert stats.kstest(y.ravel(), "uniform", args=(-10.5, 21.0)).pvalue > 0.01
    resid = x.ravel() - (7 * np.sin(0.75 * y.ravel()) + 0.5 * y.ravel())
    assert stats.kstest(resid, "norm").pvalue > 0.01
    _, y0 = inverted_sine(10, noise=0.0, seed=1)
    x0, _ = inverted_sine(10, noise=0.0, seed=1)
    np.testing.assert_allclose(x0, 7 * np.sin(0.75 * y0) + 0.5 * y0, rtol=1e-5, atol=1e-5)


def test_entropy_constant_matches_integration():
    h = inverted_sine_entropy()
    assert h == pytest.approx(INVERTED_SINE_ENTROPY, abs=0.002)


def test_entropy_matches_monte_carlo():
    # Independent estimate: H(Y|X) = E[-log p(y|x)], with p(x) from the trapezoid rule in y.
    x, y = inverted_sine(8000, seed=11)
    x, y = x.ravel().astype(np.float64), y.ravel().astype(np.float64)
    grid = np.linspace(-10.5, 10.5, 3001)
    f = 7 * np.sin(0.75 * grid) + 0.5 * grid
    lik = np.exp(-0.5 * (x[:, None] - f[None, :]) ** 2) / math.sqrt(2 * math.pi)
    log_px = np.log(np.trapezoid(lik, grid, axis=1) / 21.0)
    fy = 7 * np.sin(0.75 * y) + 0.5 * y
    log_post = -0.5 * (x - fy) ** 2 - 0.5 * math.log(2 * math.pi) - math.log(21.0) - log_px
    est, se = -log_post.mean(), log_post.std() / math.sqrt(len(x))
    assert abs(inverted_sine_entropy() - est) < 4 * se


def test_entropy_limits():
    # Large noise: x says almost nothing, H(Y|X) -> H(Y) = log 21 from below.
    h_noisy = inverted_sine_entropy(noise=200.0, n_y=801, n_x=801)
    assert h_noisy == pytest.approx(math.log(21.0), abs=0.01)
    assert h_noisy < math.log(21.0)
    assert inverted_sine_entropy(noise=0.5) < inverted_sine_entropy(noise=1.0)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_inverted_sine_bad_n(bad):
    with pytest.raises(ValueError, match="positive integer"):
        inverted_sine(bad)


def test_csv_round_trip_by_name_and_position(tmp_path):
    p = tmp_path / "d.csv"
    rows = np.array([[0.1, 2.0, -3.5], [1e-20, 5.0, 6.25]])
    write_csv(p, ["a", "b", "c"], rows)
    assert read_csv_header(p) == ["a", "b", "c"]
    np.testing.assert_array_equal(read_csv(p, ["c", 0], dtype=np.float64), rows[:, [2, 0]])
    np.testing.assert_array_equal(read_csv(p, "b,2", dtype=np.float64), rows[:, [1, 2]])
    assert read_csv(p).shape == (2, 3) and read_csv(p).dtype == np.float32
    assert resolve_columns(["x", "1"], "1") == [1]  # a name wins over a position


def _write(tmp_path, text, name="d.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "text, columns, match",
    [
        ("", None, "empty file"),
        ("a,b\n", None, "no data rows"),
        ("a,b\n1,2\n3\n", None, r"row 3: 1 cell, expected 2"),
        ("a,b\n1,2\n3,x\n", None, r"row 3, column 'b': expected a number, found 'x'"),
        ("a,b\n1,2\n\n3,4\n5,x\n", None, r"row 5, column 'b'"),  # blank lines still count
        ("a,b\n1,nan\n", None, r"row 2, column 'b': expected a finite number"),
        ("a,b\ninf,1\n", None, r"row 2, column 'a': expected a finite number"),
        ("a,b\n1,2\n", ["z"], r"no column 'z'; the columns are: a, b"),
        ("a;b\n1;2\n", ["a"], r"separated by ';'; expected commas"),
        ("a,b\n1,2\n", [5], r"position 5 out of range"),
    ],
)
def test_csv_errors_name_file_row_and_column(tmp_path, text, columns, match):
    p = _write(tmp_path, text)
    with pytest.raises(ValueError, match=match) as info:
        read_csv(p, columns)
    assert str(p) in str(info.value)


def test_csv_bad_cell_in_unselected_column_is_ignored(tmp_path):
    p = _write(tmp_path, "a,b\n1,x\n2,y\n")
    np.testing.assert_array_equal(read_csv(p, ["a"]).ravel(), [1.0, 2.0])


def test_csv_with_a_byte_order_mark_and_crlf_line_ends(tmp_path):
    p = tmp_path / "excel.csv"
    p.write_bytes(b"\xef\xbb\xbfx,y\r\n1,2\r\n3,4\r\n")
    assert read_csv_header(p) == ["x", "y"]
    assert read_csv(p, "x").ravel().tolist() == [1.0, 3.0]


def test_csv_missing_file(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        read_csv(tmp_path / "nope.csv")


def test_write_csv_is_atomic(tmp_path):
    p = tmp_path / "out.csv"
    write_csv(p, ["a"], [[1.0]])
    with pytest.raises(ValueError, match="expected 1"):
        write_csv(p, ["a"], [[2.0], [3.0, 4.0]])
    assert p.read_text().splitlines() == ["a", "1.0"]  # the old file is intact
    assert sorted(os.listdir(tmp_path)) == ["out.csv"]  # no temporary file left behind


@pytest.mark.skipif(not (UCI_ROOT / "uci" / "yacht").is_dir(), reason="shared UCI data not present")
def test_load_uci_yacht_against_raw_files():
    xtr, ytr, xte, yte = load_uci("yacht", split=1, root=UCI_ROOT)
    folder = UCI_ROOT / "uci" / "yacht"
    data = np.loadtxt(folder / "data.txt")
    train = np.loadtxt(folder / "index_train_1.txt", dtype=int)
    test = np.loadtxt(folder / "index_test_1.txt", dtype=int)
    assert xtr.shape == (len(train), 6) and ytr.shape == (len(train), 1)
    assert xte.shape == (len(test), 6) and yte.shape == (len(test), 1)
    np.testing.assert_allclose(yte[:, 0], data[test, 6], rtol=1e-6)
    np.testing.assert_allclose(xtr, data[train][:, :6], rtol=1e-6)
    assert not set(train) & set(test)


def test_load_uci_errors(tmp_path):
    with pytest.raises(ValueError, match="no UCI set 'nope'"):
        load_uci("nope", root=tmp_path)
    if (UCI_ROOT / "uci" / "yacht").is_dir():
        with pytest.raises(ValueError, match=r"split must be an integer in \[0, 20\)"):
            load_uci("yacht", split=20, root=UCI_ROOT)


def test_load_uci_env_var(tmp_path, monkeypatch):
    folder = tmp_path / "uci" / "toy"
    folder.mkdir(parents=True)
    (folder / "data.txt").write_text("1 2 3\n4 5 6\n7 8 9\n")
    (folder / "index_features.txt").write_text("0\n2\n")
    (folder / "index_target.txt").write_text("1\n")
    (folder / "index_train_0.txt").write_text("0\n2\n")
    (folder / "index_test_0.txt").write_text("1\n")
    monkeypatch.setenv("MDNKIT_DATA", str(tmp_path))
    xtr, ytr, xte, yte = load_uci("toy")
    np.testing.assert_array_equal(xtr, [[1, 3], [7, 9]])
    np.testing.assert_array_equal(ytr, [[2], [8]])
    np.testing.assert_array_equal(xte, [[4, 6]])
    np.testing.assert_array_equal(yte, [[5]])


def test_write_csv_gives_ordinary_file_permissions(tmp_path):
    p = tmp_path / "perm.csv"
    write_csv(p, ["a"], [[1.0]])
    umask = os.umask(0)
    os.umask(umask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~umask


# ------------------------------------------------------------------------------ float32 values
@pytest.mark.parametrize("cell", ["1e39", "-1e39", "1e308", "3.4028236e38"])
def test_read_csv_refuses_values_beyond_float32(tmp_path, cell):
    p = _write(tmp_path, f"a,b\n1,2\n3,{cell}\n")
    with pytest.raises(
        ValueError, match=rf"row 3, column 'b': expected a finite number in float32.*'{cell}'"
    ):
        read_csv(p)
    assert read_csv(p, dtype=np.float64)[1, 1] == float(cell)  # float64 holds it


def test_read_csv_keeps_the_largest_float32(tmp_path):
    p = _write(tmp_path, "a\n3.4028234e38\n-3.4028235e38\n")
    np.testing.assert_array_equal(
        read_csv(p)[:, 0], [np.finfo(np.float32).max, -np.finfo(np.float32).max]
    )


def test_float32_overflow_threshold_is_where_the_cast_gives_inf():
    from mdnkit.checks import FLOAT32_OVERFLOW

    below = np.nextafter(FLOAT32_OVERFLOW, 0.0)
    with np.errstate(over="ignore"):
        assert np.isinf(np.float32(FLOAT32_OVERFLOW)) and np.isfinite(np.float32(below))


def test_float32_values_names_row_and_column():
    from mdnkit.checks import float32_values

    with pytest.raises(ValueError, match=r"X, row 2, column 1: expected a finite float32"):
        float32_values("X", [[0.0, 1.0], [2.0, 3.0], [4.0, -1e39]])
    with pytest.raises(ValueError, match=r"y, row 0: .* found nan"):
        float32_values("y", [np.nan, 1.0])
    assert float32_values("y", [1.5, 2.5]).tolist() == [1.5, 2.5]


def test_float32_rounding_refuses_collapsing_timestamps():
    from mdnkit.checks import FLOAT32_ROUNDING_LIMIT, Float32Rounding, float32_values

    t = 1.7e9 + np.arange(500.0)
    # independent reference: the distinct values left after the cast
    assert len(np.unique(t.astype(np.float32))) == 5
    with pytest.raises(
        ValueError, match=r"t, column 0: float32.* by up to 64, 44% of their spread 144"
    ):
        float32_values("t", t[:, None])
    # relative to a stated scale (a model's standardisation), block by block
    watch = Float32Rounding("f.csv", ["t"], [1e6])
    watch.add(t[:, None])  # 64 is 0.0064% of 1e6: accepted
    with pytest.raises(ValueError, match="column 't'"):
        Float32Rounding("f.csv", ["t"], [100.0]).add(t[:, None])
    # the same spread with an offset the cast keeps: accepted
    float32_values("t", (t - 1.7e9)[:, None])
    # the limit: a value halfway between two float32 numbers is rounded by exactly half a step
    half = float(np.spacing(np.float32(1e5))) / 2
    tie = np.array([[1e5 + half]])
    assert abs(float(tie[0, 0]) - float(np.float32(tie[0, 0]))) == half
    Float32Rounding("f", ["v"], [half / FLOAT32_ROUNDING_LIMIT * 1.001]).add(tie)
    with pytest.raises(ValueError, match="at most 1% is accepted"):
        Float32Rounding("f", ["v"], [half / FLOAT32_ROUNDING_LIMIT * 0.999]).add(tie)


def test_float32_rounding_streams_like_one_block():
    from mdnkit.checks import Float32Rounding

    rng = np.random.default_rng(0)
    data = rng.normal(3.0, 2.0, size=(1000, 2))
    one, many = Float32Rounding("f", ["a", "b"]), Float32Rounding("f", ["a", "b"])
    one.add(data)
    for i in range(0, 1000, 77):
        many.add(data[i : i + 77])
    np.testing.assert_allclose(many.mean, data.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(many.m2 / 1000, data.var(axis=0), rtol=1e-12)
    np.testing.assert_array_equal(many.error, one.error)


def test_fits_in_memory_names_both_numbers():
    from mdnkit.checks import available_memory, fits_in_memory

    assert available_memory() is None or available_memory() > 0
    assert fits_in_memory("a little", 1000) == 1000
    with pytest.raises(
        ValueError, match=r"^much would need about 1e\+06 PB of memory, more than the .* available$"
    ):
        fits_in_memory("much", 1e21)


# ------------------------------------------------------------------------------ CSV files
def test_duplicate_column_names_refused_by_name_allowed_by_position(tmp_path):
    p = _write(tmp_path, "x,x,y\n1,2,3\n4,5,6\n")
    with pytest.raises(
        ValueError, match=r"'x' is ambiguous, the header has it 2 times \(positions 0, 1\)"
    ):
        read_csv(p, ["x"])
    np.testing.assert_array_equal(read_csv(p, [1, 0]), [[2, 1], [5, 4]])
    assert read_csv(p, ["y"]).ravel().tolist() == [3.0, 6.0]  # a unique name still works


def test_csv_without_line_breaks_is_refused_in_bounded_reads(tmp_path):
    import io

    reads = []

    class Endless(io.TextIOBase):  # "0000..." for ever: counts what it hands out
        def readline(self, size=-1):
            assert 0 < size <= MAX_LINE_CHARS + 1  # never an unbounded read
            reads.append(size)
            return "0" * size

    with pytest.raises(ValueError, match=rf"f.csv, row 1: a line longer than {MAX_LINE_CHARS}"):
        list(csv_lines(Endless(), "f.csv"))
    assert len(reads) == 1
    line = "9" * (MAX_LINE_CHARS - 1) + "\n"  # the longest line accepted
    assert list(csv_lines(io.StringIO(line + "1\n"), "f.csv")) == [line, "1\n"]
    with pytest.raises(ValueError, match="line longer than"):
        read_csv("/dev/zero")


@pytest.mark.parametrize(
    "cell, safe",
    [
        ("=1+2", "'=1+2"),
        ("+A1", "'+A1"),
        ("-A1", "'-A1"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("  =1", "'  =1"),
        ("-1.5", "-1.5"),
        ("+2e3", "+2e3"),
        ("x=1", "x=1"),
        ("temperature", "temperature"),
    ],
)
def test_spreadsheet_safe(cell, safe):
    assert spreadsheet_safe(cell) == safe


def test_write_csv_neutralises_formula_text(tmp_path):
    p = tmp_path / "f.csv"
    write_csv(p, ["=cmd|' /C calc'!A0", "y"], [["@x", -1.5], ["ok", 2.0]])
    import csv

    rows = list(csv.reader(p.open(newline="")))
    assert rows == [["'=cmd|' /C calc'!A0", "y"], ["'@x", "-1.5"], ["ok", "2.0"]]


# ------------------------------------------------------------------------------ atomic files
def test_atomic_write_keeps_the_mode_of_the_file_it_replaces(tmp_path):
    p = tmp_path / "secret.csv"
    p.write_text("old")
    os.chmod(p, 0o600)
    write_csv(p, ["a"], [[1.0]])
    assert p.stat().st_mode & 0o777 == 0o600 and p.read_text().startswith("a")
    os.chmod(p, 0o640)
    write_csv(p, ["a"], [[2.0]])
    assert p.stat().st_mode & 0o777 == 0o640


def test_atomic_write_goes_through_a_symbolic_link(tmp_path):
    real = tmp_path / "runs" / "run3.csv"
    real.parent.mkdir()
    real.write_text("old")
    link = tmp_path / "latest.csv"
    link.symlink_to(real)
    write_csv(link, ["a"], [[1.0]])
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_text().splitlines() == ["a", "1.0"]
    assert sorted(os.listdir(real.parent)) == ["run3.csv"]


def test_atomic_write_flushes_the_file_and_the_folder(tmp_path, monkeypatch):
    import stat

    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    write_csv(tmp_path / "f.csv", ["a"], [[1.0]])
    assert synced == [False, True]  # the data, then the folder after the rename


_KILLED_WRITER = """
import os, signal, sys
from mdnkit.files import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    with open(tmp, "w") as fh:
        fh.write("half a file")
        fh.flush()
    print(tmp, flush=True)
    if sys.argv[2] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    sys.stdin.readline()  # a live writer: holds its temporary file until told
"""


def test_a_killed_write_leaves_a_temporary_file_the_next_write_removes(tmp_path):
    import subprocess
    import sys

    from mdnkit.files import TEMP_MARKER

    target = tmp_path / "model.csv"
    target.write_text("old")
    run = [sys.executable, "-c", _KILLED_WRITER, str(target)]
    killed = subprocess.run([*run, "kill"], capture_output=True, text=True)
    assert killed.returncode == -9
    orphan = Path(killed.stdout.strip())
    assert orphan.exists() and TEMP_MARKER in orphan.name and target.read_text() == "old"
    live = subprocess.Popen(
        [*run, "wait"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        held = Path(live.stdout.readline().strip())
        other = tmp_path / "other.csv"  # a different target's left-over is not touched
        (tmp_path / f".other.csv{TEMP_MARKER}abcdefgh.tmp").write_text("x")
        (tmp_path / ".model.csv.backup").write_text("a user's file")
        write_csv(target, ["a"], [[1.0]])
        assert not orphan.exists()  # the killed writer's: removed
        assert held.exists()  # the live writer's: kept
        names = sorted(os.listdir(tmp_path))
        assert names == sorted(
            [".model.csv.backup", f".other.csv{TEMP_MARKER}abcdefgh.tmp", held.name, "model.csv"]
        )
        assert not other.exists()
    finally:
        live.communicate("go\n", timeout=60)
    assert live.returncode == 0 and target.read_text() == "half a file"


def test_concurrent_writes_of_one_target_all_succeed_and_leave_no_temporary_file(tmp_path):
    """Each write cleans the others' left-overs: it must never take a live one (a writer
    holds the lock of its temporary file from before anyone else can see it unlocked)."""
    import subprocess
    import sys

    code = (
        "import sys\nfrom mdnkit.datasets import write_csv\n"
        "for i in range(15):\n    write_csv(sys.argv[1], ['a'], [[float(i)]] * 2000)\n"
    )
    target = tmp_path / "t.csv"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(target)]) for _ in range(4)]
    assert [p.wait(timeout=300) for p in procs] == [0] * 4
    assert os.listdir(tmp_path) == ["t.csv"]
    assert target.read_text().splitlines() == ["a"] + ["14.0"] * 2000

"""Tests for mdnkit.datasets: the inverted sine, its entropy, CSV files and the UCI loader."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from mdnkit.datasets import (
    INVERTED_SINE_ENTROPY,
    inverted_sine,
    inverted_sine_entropy,
    load_uci,
    read_csv,
    read_csv_header,
    resolve_columns,
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

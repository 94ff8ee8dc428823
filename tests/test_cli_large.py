"""The ``mdnkit`` command on files read in chunks: small files with small chunks (the internal
settings $MDNKIT_CSV_CHUNK_ROWS and $MDNKIT_FIT_MEMORY_BYTES), so every streamed path runs over
several chunks; both CSV readers (pyarrow, and the standard library's when pyarrow is hidden)."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch

from mdnkit import cli
from mdnkit.cli import main
from mdnkit.datasets import read_csv, write_csv
from mdnkit.tables import CHUNK_ROWS_ENV, CsvTable, RowFile, columnar_reader, sample_rows

ROWS = 600


def _run(capsys, *argv):
    code = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code, err, *fragments):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for f in fragments:
        assert f in lines[0], lines[0]


@pytest.fixture
def no_pyarrow(monkeypatch):
    """Simulate an installation without pyarrow: importing it raises ImportError."""
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.csv", None)
    assert columnar_reader() is None


@pytest.fixture(params=["pyarrow", "stdlib"])
def reader(request, monkeypatch):
    if request.param == "pyarrow":
        pytest.importorskip("pyarrow.csv")
    else:
        monkeypatch.setitem(sys.modules, "pyarrow", None)
        monkeypatch.setitem(sys.modules, "pyarrow.csv", None)
    return request.param


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("large")


@pytest.fixture(scope="module")
def data(folder):
    """ROWS rows: inputs a, b; two targets y1, y2 (so metrics pool over output dimensions)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(ROWS, 2))
    y = np.column_stack([np.sin(2 * x[:, 0]), x[:, 1] ** 2]) + 0.3 * rng.normal(size=(ROWS, 2))
    path = folder / "data.csv"
    write_csv(path, ["a", "b", "y1", "y2"], np.hstack([x, y]))
    return path


@pytest.fixture(scope="module")
def model(folder, data):
    path = folder / "model.mdn"
    argv = ["fit", data, "--x", "a,b", "--y", "y1,y2", "--hidden", "8", "--components", "3"]
    assert main([*map(str, argv), "--epochs", "2", "-o", str(path)]) == 0
    return path


def _reference_metrics(model_path, data_path, coverage=0.9):
    """eval's metrics from the metrics module on the whole file in memory (float64 sums)."""
    from mdnkit import metrics
    from mdnkit.io import load

    net = load(model_path)
    x, y = read_csv(data_path, ["a", "b"]), read_csv(data_path, ["y1", "y2"])
    with torch.no_grad():
        m = net(torch.as_tensor(x))
        yt = torch.as_tensor(y)
        u = metrics.pit(m, yt)
        return {
            "nll": float(metrics.nll(m, yt, reduction="none").double().sum()) / len(y),
            "crps": float(metrics.crps(m, yt, reduction="none").sum()) / y.size,
            "rmse": math.sqrt(float((m.mean - yt).double().square().sum()) / y.size),
            "inside": int(metrics.interval_coverage(m, yt, coverage, reduction="none").sum()),
            "calibration_error": metrics.calibration_error(u),
        }


@pytest.mark.parametrize("chunk", ["64", "250", "100000"])  # 10, 3 and 1 chunks
def test_chunked_eval_equals_in_memory_metrics(capsys, monkeypatch, reader, model, data, chunk):
    monkeypatch.setenv(CHUNK_ROWS_ENV, chunk)
    code, out, err = _run(capsys, "eval", model, data, "--json")
    assert code == 0, err
    res, ref = json.loads(out), _reference_metrics(model, data)
    assert res["rows"] == ROWS
    for key in ("nll", "crps", "rmse"):
        assert res[key] == pytest.approx(ref[key], rel=1e-9, abs=0), key
    assert res["coverage"] * 2 * ROWS == pytest.approx(ref["inside"], abs=1e-9)  # a count
    assert round(res["coverage"] * 2 * ROWS) == ref["inside"]
    assert res["calibration_error"] == ref["calibration_error"]  # from counts: exactly


def test_eval_same_numbers_from_both_readers(capsys, monkeypatch, model, data):
    pytest.importorskip("pyarrow.csv")
    monkeypatch.setenv(CHUNK_ROWS_ENV, "150")
    first = _run(capsys, "eval", model, data, "--json")[1]
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.csv", None)
    assert _run(capsys, "eval", model, data, "--json")[1] == first


def test_sample_chunked_identical_reproducible(capsys, monkeypatch, tmp_path, model, folder):
    rng = np.random.default_rng(1)
    path = folder / "inputs.csv"
    write_csv(path, ["a", "b"], rng.normal(size=(2500, 2)))  # three sampling blocks of 1024
    outs = {}
    for name, chunk in (("one", "100000"), ("many", "1"), ("again", "1")):
        monkeypatch.setenv(CHUNK_ROWS_ENV, chunk)  # 1: chunks of one sampling block
        out = tmp_path / f"{name}.csv"
        code, _, err = _run(capsys, "sample", model, path, "-n", 3, "--seed", 5, "-o", out)
        assert code == 0, err
        outs[name] = out.read_text()
    assert outs["one"] == outs["many"] == outs["again"]
    table = read_csv(tmp_path / "one.csv", dtype=np.float64)
    assert table.shape == (2500 * 3, 1 + 2 + 2)
    np.testing.assert_array_equal(table[:, 0], np.repeat(np.arange(2500), 3))
    np.testing.assert_allclose(table[::3, 1:3], read_csv(path), rtol=1e-6)
    # samples follow the model: their mean matches the mixture mean on average
    from mdnkit.io import load

    with torch.no_grad():
        mean = load(model)(torch.as_tensor(read_csv(path))).mean.double().numpy()
    drawn = table[:, 3:].reshape(2500, 3, 2).mean(1)
    assert np.abs((drawn - mean).mean(0)).max() < 0.1
    other = tmp_path / "other.csv"
    _run(capsys, "sample", model, path, "-n", 3, "--seed", 6, "-o", other)
    assert other.read_text() != outs["one"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "again.csv",
        "many.csv",
        "one.csv",
        "other.csv",
    ]


def test_sample_without_pyarrow_same_file(capsys, monkeypatch, tmp_path, model, data):
    pytest.importorskip("pyarrow.csv")
    monkeypatch.setenv(CHUNK_ROWS_ENV, "100")
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    assert _run(capsys, "sample", model, data, "-n", 2, "-o", a)[0] == 0
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.csv", None)
    assert _run(capsys, "sample", model, data, "-n", 2, "-o", b)[0] == 0
    assert a.read_bytes() == b.read_bytes()


def _linear_data(path, n=1500, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 1))
    write_csv(path, ["x", "y"], np.hstack([x, 2 * x + 0.5 * rng.normal(size=(n, 1))]))


def _state(path):
    from mdnkit.io import load

    return load(path).state_dict()


def test_streamed_fit_reproducible_and_close_to_in_memory_fit(capsys, monkeypatch, tmp_path):
    data = tmp_path / "lin.csv"
    _linear_data(data)
    common = ["fit", data, "--x", "x", "--y", "y", "--hidden", "8", "--components", "2"]
    common += ["--epochs", 8, "--batch-size", 64, "--seed", 3]
    code, out, err = _run(capsys, *common, "-o", tmp_path / "memory.mdn")
    assert code == 0, err
    monkeypatch.setenv(CHUNK_ROWS_ENV, "128")  # blocks of 8 rows, 16 blocks per buffer
    monkeypatch.setenv("MDNKIT_FIT_MEMORY_BYTES", "0")  # stream whatever the size
    for name in ("streamed.mdn", "again.mdn"):
        code, out, err = _run(capsys, *common, "-o", tmp_path / name)
        assert code == 0, err
        assert "on 1500 rows" in out
    a, b = _state(tmp_path / "streamed.mdn"), _state(tmp_path / "again.mdn")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same seed, the same model
    monkeypatch.delenv(CHUNK_ROWS_ENV)
    nll = {}
    for name in ("memory.mdn", "streamed.mdn"):
        code, out, _ = _run(capsys, "eval", tmp_path / name, data, "--json")
        nll[name] = json.loads(out)["nll"]
    # different batch orders and validation rows: the same fit up to SGD noise (true NLL 0.73)
    assert abs(nll["memory.mdn"] - nll["streamed.mdn"]) < 0.05, nll
    assert nll["streamed.mdn"] < 0.9


def test_row_file_shuffles_every_row_once_in_bounded_buffers():
    rows = RowFile(2)
    values = np.arange(1000.0)
    for i in range(0, 1000, 130):
        rows.append(np.column_stack([values[i : i + 130], -values[i : i + 130]]))
    assert rows.rows == 1000
    orders = []
    for seed in (0, 1):
        batches = list(rows.shuffled(np.random.default_rng(seed), buffer_rows=64, batch_size=30))
        assert all(len(b) == 30 for b in batches[:-1]) and 0 < len(batches[-1]) <= 30
        got = np.concatenate(batches)
        np.testing.assert_array_equal(np.sort(got[:, 0]), values)
        np.testing.assert_array_equal(got[:, 1], -got[:, 0])
        orders.append(got[:, 0])
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[0], values)
    np.testing.assert_array_equal(np.concatenate(list(rows.sequential(77)))[:, 0], values)
    rows.close()


def _late_bad_file(path, bad: str, line: int = 900, n: int = 1000):
    rng = np.random.default_rng(2)
    lines = ["a,b,y1,y2"] + [",".join(f"{v:.6f}" for v in r) for r in rng.normal(size=(n, 4))]
    cells = lines[line - 1].split(",")
    cells[1] = bad  # column 'b', an input of every command
    lines[line - 1] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("bad, message", [("abc", "expected a number"), ("nan", "finite")])
@pytest.mark.parametrize("command", ["fit", "eval", "sample", "plot"])
def test_bad_cell_in_a_late_chunk(
    capsys, monkeypatch, tmp_path, reader, model, command, bad, message
):
    monkeypatch.setenv(CHUNK_ROWS_ENV, "200")  # row 900 is in the fifth chunk
    monkeypatch.setenv("MDNKIT_FIT_MEMORY_BYTES", "0")
    data = tmp_path / "late.csv"
    _late_bad_file(data, bad)
    out = tmp_path / "out"
    argv = {
        "fit": [
            "fit",
            data,
            "--x",
            "a,b",
            "--y",
            "y1",
            "--epochs",
            1,
            "-o",
            out.with_suffix(".mdn"),
        ],
        "eval": ["eval", model, data],
        "sample": ["sample", model, data, "-o", out.with_suffix(".csv")],
        "plot": ["plot", model, data, "-o", out.with_suffix(".png")],
    }[command]
    code, _, err = _run(capsys, *argv)
    _one_line_error(code, err, "late.csv", "row 900", "column 'b'", message, bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["late.csv"]  # no output, no temp file


def test_ragged_row_in_a_late_chunk(capsys, monkeypatch, tmp_path, reader, model):
    monkeypatch.setenv(CHUNK_ROWS_ENV, "200")
    data = tmp_path / "ragged.csv"
    _late_bad_file(data, "1.0,2.0", line=777)
    code, _, err = _run(capsys, "eval", model, data)
    _one_line_error(code, err, "ragged.csv", "row 777", "5 cells, expected 4")


ODD_FILES = {
    "blank lines and CRLF": "x,y\r\n1,2\r\n\r\n3,4\r\n5,6\r\n",
    "byte-order mark": "\ufeffx,y\n1,2\n3,4\n",
    "quoted numbers": 'x,y\n"1.5","2"\n3,"4e-3"\n',
    "padded cells": "x,y\n 1.5 ,2\n3, 4\n",
    "leading blank line": "\nx,y\n1,2\n3,4\n",
    "whitespace-only row": "x,y\n1,2\n , \n3,4\n",
    "no final newline": "x,y\n1,2\n3,4",
    "text in another column": "x,y,name\n1,2,first\n3,4,second\n",
}


@pytest.mark.parametrize("name", sorted(ODD_FILES))
def test_both_readers_give_the_same_rows(monkeypatch, tmp_path, name):
    pytest.importorskip("pyarrow.csv")
    path = tmp_path / "odd.csv"
    path.write_text(ODD_FILES[name], encoding="utf-8", newline="")
    table = CsvTable(path)
    idx = table.resolve(["y", "x"])
    fast = [c.tolist() for c in table.chunks(idx, size=1)]
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.csv", None)
    slow = [c.tolist() for c in table.chunks(idx, size=1)]
    assert fast == slow and len(fast) >= 2
    assert np.concatenate(fast).tolist() == read_csv(path, ["y", "x"], dtype=np.float64).tolist()


def test_reader_fallback_without_pyarrow(capsys, no_pyarrow, monkeypatch, tmp_path, model, data):
    monkeypatch.setenv(CHUNK_ROWS_ENV, "128")
    table = CsvTable(data)
    got = np.concatenate(list(table.chunks(table.resolve(["a", "y2"]))))
    np.testing.assert_array_equal(got, read_csv(data, ["a", "y2"], dtype=np.float64))
    code, out, err = _run(capsys, "eval", model, data, "--json")
    assert code == 0 and json.loads(out)["rows"] == ROWS, err
    code, _, err = _run(capsys, "plot", model, data, "--kind", "samples", "-o", tmp_path / "s.png")
    assert code == 0, err
    empty = tmp_path / "header.csv"
    empty.write_text("a,b,y1,y2\n")
    _one_line_error(*_run(capsys, "eval", model, empty)[::2], "header.csv", "no data rows")


def test_plot_reads_a_seeded_subset(capsys, monkeypatch, tmp_path, model, data):
    monkeypatch.setattr(cli, "_PLOT_ROWS", 100)
    monkeypatch.setenv(CHUNK_ROWS_ENV, "33")
    table = CsvTable(data)
    # what `plot` draws: sample_rows over the table's chunks, at most cli._PLOT_ROWS rows
    picked, _ = sample_rows(table.chunks(table.resolve(["a", "b", "y1", "y2"])), 100, seed=0)
    picked = picked.astype(np.float32)
    assert picked.shape == (100, 4)
    full = read_csv(data, ["a", "b", "y1", "y2"])
    assert all((full == row).all(1).any() for row in picked)  # real rows, in file order
    where = [int(np.flatnonzero((full == row).all(1))[0]) for row in picked]
    assert where == sorted(where)
    code, _, err = _run(capsys, "plot", model, data, "--kind", "pit", "-o", tmp_path / "p.png")
    assert code == 0, err


def test_sample_rows_does_not_depend_on_chunking():
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(1000, 3))
    ref, n = sample_rows([rows], 50, seed=4)
    assert n == 1000 and ref.shape == (50, 3)
    for size in (1, 7, 999):
        got, _ = sample_rows((rows[i : i + size] for i in range(0, 1000, size)), 50, seed=4)
        np.testing.assert_array_equal(got, ref)
    everything, _ = sample_rows([rows[:10], rows[10:20]], 50, seed=4)
    np.testing.assert_array_equal(everything, rows[:20])


def test_eval_of_a_table_larger_than_one_chunk_equals_in_memory_metrics(capsys, folder, model):
    """The default chunk (65 536 rows) and the pieces eval scores at once (8192 rows) both cut
    this table: the streamed sums and counts equal the metrics of the whole table at once."""
    from mdnkit import metrics
    from mdnkit.io import load

    rows = 70_000
    rng = np.random.default_rng(5)
    x = rng.normal(size=(rows, 2))
    y = np.column_stack([np.sin(2 * x[:, 0]), x[:, 1] ** 2]) + 0.3 * rng.normal(size=(rows, 2))
    path = folder / "larger.csv"
    # 17 significant digits read back exactly, so the file holds these very numbers
    np.savetxt(path, np.hstack([x, y]), fmt="%.17g", delimiter=",", header="a,b,y1,y2", comments="")
    code, out, err = _run(capsys, "eval", model, path, "--json")
    assert code == 0, err
    res = json.loads(out)
    with torch.no_grad():  # everything at once, as float32 like the reader's rows
        m = load(model)(torch.as_tensor(x, dtype=torch.float32))
        yt = torch.as_tensor(y, dtype=torch.float32)
        ref = {
            "nll": float(metrics.nll(m, yt, reduction="none").double().mean()),
            "crps": float(metrics.crps(m, yt)),
            "rmse": math.sqrt(float((m.mean - yt).double().square().mean())),
        }
        inside = int(metrics.interval_coverage(m, yt, 0.9, reduction="none").sum())
        calibration = metrics.calibration_error(metrics.pit(m, yt))
    assert res["rows"] == rows
    for key in ("nll", "crps", "rmse"):
        assert res[key] == pytest.approx(ref[key], rel=1e-9, abs=0), key
    assert round(res["coverage"] * 2 * rows) == inside
    assert res["calibration_error"] == calibration


def test_pyarrow_reads_rows_longer_than_its_usual_block(monkeypatch, tmp_path):
    """pyarrow refuses a row longer than its block; the block grows with the header, so a wide
    file (rows of 80 kB here) is still read by pyarrow, not by the slow standard reader."""
    pytest.importorskip("pyarrow.csv")
    rng = np.random.default_rng(2)
    values = rng.normal(size=(5, 4000)) * 1e-7  # about 20 characters a cell
    path = tmp_path / "wide.csv"
    np.savetxt(
        path,
        values,
        fmt="%.17g",
        delimiter=",",
        header=",".join(f"c{i}" for i in range(4000)),
        comments="",
    )
    assert len(path.read_text().splitlines()[1]) > 80_000

    def refuse(*_args, **_kwargs):
        raise AssertionError("the standard reader was used")

    table = CsvTable(path)
    monkeypatch.setattr(CsvTable, "_python_chunks", refuse)
    got = np.concatenate(list(table.chunks(table.resolve(["c3999", "c0"]), size=2)))
    np.testing.assert_array_equal(got, values[:, [3999, 0]])

"""Tests for the ``mdnkit`` command: in-process ``main([...])``, the installed entry point once,
every error path (exit 2, one stderr line, no output file) and a short demo run."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mdnkit.cli import main
from mdnkit.datasets import inverted_sine, read_csv, write_csv


def _run(capsys, *argv):
    code = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return code, out, err


def _assert_one_line_error(code, err, *fragments):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0], lines[0]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def data_csv(workdir):
    x, y = inverted_sine(600, seed=0)
    noise = np.random.default_rng(0).normal(size=(600, 1))
    path = workdir / "train.csv"
    write_csv(path, ["noise", "x", "y"], np.hstack([noise, x, y]).astype(np.float64))
    return path


@pytest.fixture(scope="module")
def model_file(workdir, data_csv):
    path = workdir / "model.mdn"
    code = main(
        [
            "fit",
            str(data_csv),
            "--x",
            "x",
            "--y",
            "2",
            "--ensemble",
            "1",  # one MDN: the tests below count its parameters (ensembles: test_cli_ensemble)
            "--hidden",
            "16",
            "--components",
            "3",
            "--epochs",
            "3",
            "--seed",
            "0",
            "-o",
            str(path),
        ]
    )
    assert code == 0 and path.exists()
    return path


def test_fit_stores_column_names_and_settings(model_file):
    from mdnkit.io import load, load_metadata

    meta = load_metadata(model_file)
    assert meta["x_columns"] == ["x"] and meta["y_columns"] == ["y"]
    model = load(model_file)
    assert model.config()["hidden"] == [16] and model.config()["num_components"] == 3


def test_eval_json_matches_metrics_module(capsys, model_file, data_csv):
    from mdnkit import metrics
    from mdnkit.io import load

    code, out, err = _run(capsys, "eval", model_file, data_csv, "--json")
    assert code == 0, err
    res = json.loads(out)
    model = load(model_file)
    x, y = read_csv(data_csv, ["x"]), read_csv(data_csv, ["y"])
    with torch.no_grad():
        m = model(torch.as_tensor(x))
        yt = torch.as_tensor(y)
        # independent NLL: log-sum-exp of the component densities by hand
        w, mu, sd = m.weights.double(), m.loc[..., 0].double(), m.scale[..., 0].double()
        comp = -0.5 * ((yt.double() - mu) / sd) ** 2 - sd.log() - 0.5 * math.log(2 * math.pi)
        ref_nll = -torch.logsumexp(w.log() + comp, -1).mean()
    assert res["rows"] == 600
    assert res["nll"] == pytest.approx(float(ref_nll), rel=1e-5)
    assert res["crps"] == pytest.approx(float(metrics.crps(m, yt)), rel=1e-6)
    ref_rmse = float(((m.mean.double() - yt.double()) ** 2).mean().sqrt())
    assert res["rmse"] == pytest.approx(ref_rmse, rel=1e-5)
    assert 0 <= res["calibration_error"] <= 0.5 and 0 <= res["coverage"] <= 1


def test_eval_table(capsys, model_file, data_csv):
    code, out, _ = _run(capsys, "eval", model_file, data_csv)
    assert code == 0
    for label in ("NLL (nats)", "CRPS", "RMSE", "calibration error", "90% coverage"):
        assert label in out


def test_sample_writes_n_rows_per_input_reproducibly(capsys, workdir, model_file, data_csv):
    out1, out2 = workdir / "s1.csv", workdir / "s2.csv"
    code, _, err = _run(capsys, "sample", model_file, data_csv, "-n", 4, "--seed", 3, "-o", out1)
    assert code == 0, err
    _run(capsys, "sample", model_file, data_csv, "-n", 4, "--seed", 3, "-o", out2)
    assert out1.read_text() == out2.read_text()
    header = out1.read_text().splitlines()[0].split(",")
    assert header == ["row", "x", "y"]
    table = read_csv(out1, dtype=np.float64)
    assert table.shape == (600 * 4, 3)
    np.testing.assert_array_equal(table[:, 0], np.repeat(np.arange(600), 4))
    np.testing.assert_allclose(table[::4, 1], read_csv(data_csv, ["x"])[:, 0], rtol=1e-6)
    # temperature 0 and sigma-temperature 0: the mean of the heaviest component
    out3 = workdir / "s3.csv"
    _run(
        capsys,
        "sample",
        model_file,
        data_csv,
        "--temperature",
        0,
        "--sigma-temperature",
        0,
        "-o",
        out3,
    )
    from mdnkit.io import load

    m = load(model_file)(torch.as_tensor(read_csv(data_csv, ["x"])))
    greedy = m.loc[torch.arange(600), m.logits.argmax(-1), 0].detach().numpy()
    np.testing.assert_allclose(read_csv(out3, ["y"])[:, 0], greedy, rtol=1e-5, atol=1e-6)


def test_plot_and_info(capsys, workdir, model_file, data_csv):
    for kind in ("density", "samples", "components", "pit"):
        fig = workdir / f"{kind}.png"
        code, _, err = _run(capsys, "plot", model_file, data_csv, "--kind", kind, "-o", fig)
        assert code == 0, err
        assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, _, err = _run(capsys, "plot", model_file, "-o", workdir / "nodata.png")
    assert code == 0, err
    code, out, _ = _run(capsys, "info", model_file, "--json")
    info = json.loads(out)
    assert code == 0 and info["class"] == "MDN" and info["metadata"]["y_columns"] == ["y"]
    assert info["parameters"] == (1 * 16 + 16) + (
        16 * 9 + 9
    )  # layer + head (3 means, 3 scales, 3 logits)
    code, out, _ = _run(capsys, "info", model_file)
    assert code == 0 and "MDN" in out and "x_columns" in out


def _bad_files(tmp: Path) -> dict[str, Path]:
    files = {
        "empty": "",
        "ragged": "x,y\n1,2\n3\n",
        "text": "x,y\n1,2\n3,abc\n",
        "nan": "x,y\n1,2\nnan,3\n",
        "inf": "x,y\n1,inf\n",
    }
    out = {}
    for name, text in files.items():
        p = tmp / f"{name}.csv"
        p.write_text(text)
        out[name] = p
    return out


@pytest.mark.parametrize(
    "case, fragments",
    [
        ("missing", ["nope.csv", "no such file"]),
        ("empty", ["empty.csv", "empty file"]),
        ("ragged", ["ragged.csv", "row 3"]),
        ("text", ["text.csv", "row 3", "'y'", "abc"]),
        ("nan", ["nan.csv", "row 3", "'x'"]),
        ("inf", ["inf.csv", "row 2", "'y'"]),
        ("column", ["no column 'zz'"]),
    ],
)
def test_fit_bad_data(capsys, tmp_path, case, fragments):
    files = _bad_files(tmp_path)
    data = tmp_path / "nope.csv" if case == "missing" else files.get(case, files["text"])
    ycol = "zz" if case == "column" else "y"
    if case == "column":
        data.write_text("x,y\n1,2\n")
    out = tmp_path / "m.mdn"
    code, _, err = _run(capsys, "fit", data, "--x", "x", "--y", ycol, "--epochs", 1, "-o", out)
    _assert_one_line_error(code, err, *fragments)
    assert not out.exists()


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["fit", "{data}", "--x", "x", "--y", "y", "--epochs", "0", "-o", "{out}"], "--epochs"),
        (["fit", "{data}", "--x", "x", "--y", "y", "--lr", "-1", "-o", "{out}"], "--lr"),
        (["fit", "{data}", "--x", "x", "--y", "y", "--hidden", "a,b", "-o", "{out}"], "--hidden"),
        (
            ["fit", "{data}", "--x", "x", "--y", "y", "--validation-split", "1", "-o", "{out}"],
            "--validation-split",
        ),
        (
            ["fit", "{data}", "--x", "x", "--y", "y", "--covariance", "weird", "-o", "{out}"],
            "--covariance",
        ),
        (["fit", "{data}", "--x", "x", "-o", "{out}"], "--y"),
        (["fit", "{data}", "--x", "x", "--y", "x", "-o", "{out}"], "both input"),
        (
            ["fit", "{data}", "--x", "x", "--y", "y", "-o", "{tmp}/no/such/dir/m.mdn"],
            "does not exist",
        ),
        (["sample", "{model}", "{data}", "-n", "0", "-o", "{out}"], "-n"),
        (["sample", "{model}", "{data}", "--temperature", "nan", "-o", "{out}"], "--temperature"),
        (["eval", "{data}", "{data}"], "not an mdnkit model file"),
        (["eval", "{tmp}/missing.mdn", "{data}"], "no such model file"),
        (["plot", "{model}", "-o", "{tmp}/fig.txt"], ".png"),
        (["plot", "{model}", "--kind", "pit", "-o", "{out}.png"], "needs a DATA.csv"),
        (["export", "{model}", "-o", "{out}.onnx"], "MDN-RNN"),
        (["frobnicate"], "invalid choice"),
        ([], "required"),
    ],
)
def test_bad_options_one_line_exit_2(capsys, tmp_path, model_file, data_csv, argv, fragment):
    out = tmp_path / "out"
    fmt = {"data": data_csv, "model": model_file, "out": out, "tmp": tmp_path}
    code, _, err = _run(capsys, *[a.format(**fmt) for a in argv])
    _assert_one_line_error(code, err, fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_tampered_model_file(capsys, tmp_path, model_file, data_csv):
    bad = tmp_path / "bad.mdn"
    blob = bytearray(model_file.read_bytes())
    blob[-3] ^= 0xFF
    bad.write_bytes(bytes(blob))
    out = tmp_path / "s.csv"
    code, _, err = _run(capsys, "sample", bad, data_csv, "-o", out)
    _assert_one_line_error(code, err, "bad.mdn")
    assert not out.exists()


def test_entry_point_subprocess(model_file, data_csv, tmp_path):
    exe = Path(sys.executable).with_name("mdnkit")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "mdnkit.cli"]
    ok = subprocess.run(
        [*cmd, "eval", str(model_file), str(data_csv), "--json"], capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["rows"] == 600


def test_demo_writes_every_picture(capsys, tmp_path):
    out = tmp_path / "demo"
    code, stdout, err = _run(
        capsys, "demo", "--out", out, "--seed", 1, "--epochs", 2, "--n-test", 500
    )
    assert code == 0, err
    names = {
        "density.png",
        "samples.png",
        "mixture_pdf.png",
        "temperatures.png",
        "components.png",
        "training.png",
        "pit.png",
    }
    assert {p.name for p in out.iterdir()} == names
    for p in out.iterdir():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    assert "test NLL" in stdout and "1.288" in stdout
    assert os.listdir(out) and not [n for n in os.listdir(out) if n.startswith(".")]


def test_export_mdnrnn_to_onnx(capsys, tmp_path):
    import onnx

    from mdnkit.io import save
    from mdnkit.sequence import MDNRNN

    torch.manual_seed(0)
    save(MDNRNN(2, hidden_size=8), tmp_path / "rnn.mdn")
    out = tmp_path / "rnn.onnx"
    code, _, err = _run(capsys, "export", tmp_path / "rnn.mdn", "-o", out)
    assert code == 0, err
    onnx.checker.check_model(str(out))
    names = {i.name for i in onnx.load(str(out)).graph.input}
    assert "event" in names
    # sample/eval/plot need a feed-forward MDN: a clear one-line error for an MDN-RNN
    code, _, err = _run(
        capsys, "sample", tmp_path / "rnn.mdn", tmp_path / "rnn.mdn", "-o", tmp_path / "s.csv"
    )
    _assert_one_line_error(code, err, "MDNRNN")
    assert not (tmp_path / "s.csv").exists()


def test_repeated_column_name_chosen_by_position(capsys, tmp_path):
    data = tmp_path / "aa.csv"
    x, y = inverted_sine(200, seed=1)
    write_csv(data, ["a", "a"], np.hstack([x, y]).astype(np.float64))
    out = tmp_path / "m.mdn"
    code, _, err = _run(capsys, "fit", data, "--x", 0, "--y", 1, "--epochs", 1, "-o", out)
    assert code == 0, err
    code, out_text, err = _run(capsys, "eval", out, data, "--x", 0, "--y", 1, "--json")
    assert code == 0, err
    assert json.loads(out_text)["rows"] == 200
    code, _, err = _run(capsys, "eval", out, data)  # the stored name 'a' is ambiguous here
    _assert_one_line_error(code, err, "'a' is ambiguous", "by position")


def test_warnings_are_held_back_one_line_each_after_success(capsys, monkeypatch):
    import warnings

    from mdnkit import cli

    def noisy(args):
        for _ in range(3):
            warnings.warn("overflow encountered\nin cast", RuntimeWarning, stacklevel=1)
        if args.json:
            raise ValueError("the command failed")
        return 0

    monkeypatch.setitem(cli._COMMANDS, "info", noisy)
    code, _, err = _run(capsys, "info", "m.mdn")
    assert code == 0 and err.splitlines() == ["mdnkit info: warning: overflow encountered in cast"]
    code, _, err = _run(capsys, "info", "m.mdn", "--json")
    _assert_one_line_error(code, err, "the command failed")


def test_sample_memory_grows_with_n_not_with_the_chunk(capsys, monkeypatch, tmp_path, model_file):
    """-n 70 over 2100 rows: the sampled rows per chunk stay near chunk_rows(), and the output
    is the same as with the whole file in one chunk."""
    from mdnkit import cli

    data = tmp_path / "d.csv"
    x, y = inverted_sine(2100, seed=2)
    write_csv(data, ["x", "y"], np.hstack([x, y]).astype(np.float64))
    seen = []
    real = cli._sample_chunk

    def spy(net, x, start, args):
        seen.append(len(x))
        return real(net, x, start, args)

    monkeypatch.setattr(cli, "_sample_chunk", spy)
    out1, out2 = tmp_path / "a.csv", tmp_path / "b.csv"
    code, _, err = _run(capsys, "sample", model_file, data, "-n", 70, "-o", out1)
    assert code == 0, err
    assert seen == [1024, 1024, 52]  # 65 536 // 70 rows, in whole sampling blocks of 1024
    monkeypatch.setenv("MDNKIT_CSV_CHUNK_ROWS", "5000000")
    seen.clear()
    code, _, err = _run(capsys, "sample", model_file, data, "-n", 70, "-o", out2)
    assert code == 0 and seen == [2100]  # 5e6 // 70 rows a chunk: the whole file
    assert out1.read_bytes() == out2.read_bytes()


# ---------------------------------------------------------------------- output details (issue 14)
def test_float32_decimals_are_numpys_shortest_float32_text():
    """Every float32 (random bit patterns: every exponent, subnormals; round decimals) comes
    back as the float64 whose repr is the decimal NumPy's Dragon4 prints for the float32."""
    from decimal import Decimal

    from mdnkit.datasets import float32_decimals

    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, size=200_000, dtype=np.uint64).astype(np.uint32)
    values = np.concatenate(
        [
            bits.view(np.float32),
            rng.standard_normal(100_000).astype(np.float32),
            (rng.integers(-(10**6), 10**6, 100_000) / 100).astype(np.float32),
            np.float32([24.05, 0.1, 1e-45, 3.4e38, -0.0, 16777217.0, np.inf, -np.inf]),
        ]
    )
    values = values[~np.isnan(values)]
    out = float32_decimals(values)
    assert out.dtype == np.float64 and (out.astype(np.float32) == values).all()
    for v, d in zip(values[::7], out[::7]):
        if np.isfinite(v):
            assert Decimal(repr(float(d))) == Decimal(str(v)), (v, d)
    assert repr(float(float32_decimals(np.float32(24.05)))) == "24.05"


def test_sample_writes_the_shortest_float32_decimals(capsys, tmp_path, model_file):
    """Inputs written as the shortest decimal of their float32 (the same text as the source
    when the source is written that way) and every sample as the shortest decimal that reads
    back as its float32, not 24.049999237060547."""
    from decimal import Decimal

    source = ["24.05", "0.1", "-3.7", "0.001", "1234.5", "7.0"]
    data = tmp_path / "d.csv"
    data.write_text("noise,x,y\n" + "".join(f"0,{v},1\n" for v in source))
    out = tmp_path / "s.csv"
    code, _, err = _run(capsys, "sample", model_file, data, "-n", 3, "-o", out)
    assert code == 0, err
    rows = [line.split(",") for line in out.read_text().splitlines()[1:]]
    assert [r[1] for r in rows[::3]] == source
    for r in rows:
        y = r[2]
        assert Decimal(y) == Decimal(str(np.float32(float(y)))), y  # shortest for its float32


def test_fit_and_info_number_the_best_epoch_alike(capsys, tmp_path, data_csv):
    out = tmp_path / "m.mdn"
    code, stdout, err = _run(
        capsys, "fit", data_csv, "--x", "x", "--y", "y", "--hidden", "8", "--epochs", 6, "-o", out
    )
    assert code == 0, err
    said = int(re.search(r"at epoch (\d+);", stdout).group(1))
    from mdnkit.io import load_metadata

    h = load_metadata(out)["history"]
    val = h["val_nll"]
    assert said == int(np.argmin(val)) + 1 == h["best_epoch"] + 1  # 1-based where printed
    code, text, _ = _run(capsys, "info", out)
    assert code == 0 and re.search(rf"best epoch +{said} \(validation NLL ", text)
    assert "{" not in text  # no Python dict
    code, table, _ = _run(capsys, "info", out, "--history")
    lines = table.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == ["epoch"])
    assert lines[start].split() == ["epoch", "train", "NLL", "val", "NLL", "lr"]
    body = lines[start + 1 : start + 7]
    assert [int(line.split()[0].rstrip("*")) for line in body] == [1, 2, 3, 4, 5, 6]
    assert [line.split()[0].endswith("*") for line in body].index(True) == said - 1
    np.testing.assert_allclose([float(line.split()[2]) for line in body], val, atol=5e-5)
    assert len({len(line) for line in body}) == 1  # aligned columns
    code, js, _ = _run(capsys, "info", out, "--json")
    assert json.loads(js)["metadata"]["history"]["train_nll"] == h["train_nll"]


def test_info_history_of_a_file_without_one(capsys, tmp_path):
    from mdnkit.io import save
    from mdnkit.models import MDN

    save(MDN(1, 1, hidden=(4,)), tmp_path / "py.mdn")
    code, text, _ = _run(capsys, "info", tmp_path / "py.mdn")
    assert code == 0 and "MDN" in text
    code, _, err = _run(capsys, "info", tmp_path / "py.mdn", "--history")
    _assert_one_line_error(code, err, "no per-epoch history")


def test_progress_bar_says_why_early_stopping_ended_the_run(capsys, tmp_path):
    """--progress draws the bar even off a terminal; early stopping closes it with a line that
    says why; --quiet prints nothing at all."""
    rng = np.random.default_rng(0)
    data = tmp_path / "noise.csv"
    write_csv(data, ["x", "y"], rng.normal(size=(200, 2)))  # y independent of x
    argv = ["fit", data, "--x", "x", "--y", "y", "--hidden", "8", "--patience", 2, "--seed", 0,
            "--epochs", 200]  # fmt: skip
    code, stdout, err = _run(capsys, *argv, "--progress", "-o", tmp_path / "a.mdn")
    assert code == 0, err
    from mdnkit.io import load_metadata

    h = load_metadata(tmp_path / "a.mdn")["history"]
    assert h["stopped_early"] and len(h["train_nll"]) == h["best_epoch"] + 3
    epochs, best = len(h["train_nll"]), h["best_epoch"] + 1
    assert f"{epochs}/200" in err  # the bar, stopped short of its total ...
    assert err.rstrip().splitlines()[-1] == (
        f"fit: stopped early at epoch {epochs}: no improvement in validation NLL for 2 epochs; "
        f"best epoch {best}"
    )  # ... and why
    assert "stopped early: no improvement in validation NLL for 2 epochs" in stdout
    code, stdout, err = _run(capsys, *argv, "--no-progress", "-o", tmp_path / "b.mdn")
    assert code == 0 and err == "" and stdout.startswith("trained ")
    code, stdout, err = _run(capsys, *argv, "--quiet", "-o", tmp_path / "c.mdn")
    assert code == 0 and stdout == "" and err == "" and (tmp_path / "c.mdn").exists()


# ---------------------------------------------------------------------- CSV details (issue 14)
@pytest.mark.parametrize("command", ["fit", "eval"])
def test_a_csv_without_header_row_is_refused(capsys, tmp_path, model_file, command):
    data = tmp_path / "nohead.csv"
    data.write_text("0.5,1.25,-3\n1,2,3\n")
    argv = {
        "fit": ["fit", data, "--x", 0, "--y", 1, "-o", tmp_path / "m.mdn"],
        "eval": ["eval", model_file, data, "--x", 1, "--y", 2],
    }[command]
    code, _, err = _run(capsys, *argv)
    _assert_one_line_error(
        code, err, "nohead.csv", "first row (0.5, 1.25, -3) holds only numbers", "header row"
    )
    assert not (tmp_path / "m.mdn").exists()


@pytest.mark.parametrize("sep", ["\t", ";", "|"])
@pytest.mark.parametrize("by", ["name", "position"])
def test_other_separators_get_a_hint(capsys, tmp_path, sep, by):
    data = tmp_path / "d.csv"
    data.write_text(sep.join("xy") + "\n" + "\n".join(f"{i}{sep}{2 * i}" for i in range(9)))
    cols = ["x", "y"] if by == "name" else ["0", "1"]
    code, _, err = _run(capsys, "fit", data, "--x", cols[0], "--y", cols[1], "-o", tmp_path / "m")
    _assert_one_line_error(code, err, f"the header looks separated by {sep!r}", "commas")


def test_swapped_model_and_data_are_named(capsys, tmp_path, model_file, data_csv):
    cases = [
        (["eval", data_csv, model_file], [f"{data_csv}: this looks like a CSV file", "MODEL DATA"]),
        (["eval", model_file, model_file], ["looks like an mdnkit model file, not a CSV file"]),
        (["sample", data_csv, model_file, "-o", tmp_path / "s.csv"], ["looks like a CSV file"]),
        (["plot", data_csv, "-o", tmp_path / "f.png"], ["looks like a CSV file", "MODEL DATA"]),
        (["info", data_csv], ["this looks like a CSV file, not an mdnkit model file"]),
        (
            ["fit", model_file, "--x", "x", "--y", "y", "-o", tmp_path / "m.mdn"],
            [f"{model_file}: this looks like an mdnkit model file, not a CSV file"],
        ),
    ]
    for argv, fragments in cases:
        code, _, err = _run(capsys, *argv)
        _assert_one_line_error(code, err, *fragments)
        assert "header claims" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []

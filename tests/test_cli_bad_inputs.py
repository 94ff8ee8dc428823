"""Bad inputs through the real ``mdnkit`` command, one table: for every one, exit status 2, ONE
line on stderr that names the problem, no traceback, no new file (temporary ones included) and
every file already there byte-identical (an old output file, the inputs).

Most cases run in-process through ``mdnkit.cli.main``; those marked ``subprocess`` run the
command in a child process, where a stray warning line (a NumPy ``RuntimeWarning``) would show.
Crafted model files are built here from the file format documented in ``mdnkit/io.py``: an
8-byte little-endian header length, a JSON header (tensor entries and ``__metadata__``), the
tensors' bytes, and a SHA-256 checksum that anyone can recompute, as these helpers do.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from mdnkit.cli import main
from mdnkit.datasets import MAX_LINE_CHARS, inverted_sine, write_csv

OLD = b"an old output file, which a failing command must leave as it is\n"
OUTPUTS = ("out.mdn", "out.csv", "out.png", "out.onnx")


# ------------------------------------------------------------------------------ model files
def _parts(raw: bytes) -> tuple[dict, bytes]:
    """(header JSON, tensor bytes) of a model file."""
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _assemble(header: dict | str, body: bytes, length: int | None = None) -> bytes:
    """A model file: the header (a dict, or JSON text as it is) padded to 8 bytes, its length
    (or ``length``, to lie) and ``body``."""
    text = (header if isinstance(header, str) else json.dumps(header)).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text) if length is None else length) + text + body


_TORCH_DTYPES = {"F32": "torch.float32", "F64": "torch.float64", "I64": "torch.int64"}


def _seal(header: dict, body: bytes) -> dict:
    """``header`` with the checksum of its metadata and tensors recomputed (io.py: SHA-256 of
    the JSON list [format, version, class, config, user(, training_state)], then per tensor in
    name order the JSON [name, torch dtype, shape] and its bytes)."""
    meta = header["__metadata__"]
    fields = ["mdnkit", int(meta["format_version"]), meta["class"], meta["config"], meta["user"]]
    if "training_state" in meta:
        fields.append(meta["training_state"])
    h = hashlib.sha256(json.dumps(fields, separators=(",", ":")).encode())
    for name in sorted(k for k in header if k != "__metadata__"):
        info = header[name]
        h.update(json.dumps([name, _TORCH_DTYPES[info["dtype"]], info["shape"]]).encode())
        begin, end = info["data_offsets"]
        h.update(body[begin:end])
    return {**header, "__metadata__": {**meta, "checksum": h.hexdigest()}}


def _edited(raw: bytes, meta: dict | None = None, tensors: dict | None = None) -> bytes:
    """The model file ``raw`` with metadata fields replaced (``meta``) and tensors' bytes
    rewritten (``tensors``: name -> function of a float32 array), checksum recomputed."""
    header, body = _parts(raw)
    body = bytearray(body)
    for name, change in (tensors or {}).items():
        begin, end = header[name]["data_offsets"]
        values = change(np.frombuffer(bytes(body[begin:end]), dtype="<f4").copy())
        body[begin:end] = values.astype("<f4").tobytes()
    header["__metadata__"].update(meta or {})
    return _assemble(_seal(header, bytes(body)), bytes(body))


def _nan_first(a: np.ndarray) -> np.ndarray:
    a[0] = np.nan
    return a


def _deep(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def _deep_header(raw: bytes) -> bytes:
    header, body = _parts(raw)
    text = json.dumps(header)[:-1] + ', "deep": ' + "[" * 200_000 + "]" * 200_000 + "}"
    return _assemble(text, body)


# ------------------------------------------------------------------------------ the table
@dataclass(frozen=True)
class Case:
    """``argv`` (``{dir}`` the case's folder, ``{data}`` / ``{model}`` good inputs, ``{bad}`` what
    ``make`` writes: bytes, or a function of the good model file's bytes) and the fragments the
    error line must hold (``"a|b"``: either; where a loader that refuses the file earlier would
    be right too)."""

    id: str
    argv: str
    expect: tuple[str, ...]
    make: bytes | Callable[[bytes], bytes] | None = None
    bad: str = "bad.csv"
    subprocess: bool = False
    xfail: str | None = None


FIT = "fit {data} --x x --y y --epochs 1 -o {dir}/out.mdn"
FIT_BAD = "fit {bad} --x x --y y --epochs 1 -o {dir}/out.mdn"

CSV_CASES = [
    Case(
        "data-missing",
        "fit {dir}/nope.csv --x x --y y -o {dir}/out.mdn",
        ("nope.csv", "no such file"),
    ),
    Case("data-is-a-folder", "fit {dir} --x x --y y -o {dir}/out.mdn", ("is a directory",)),
    Case("data-empty", FIT_BAD, ("bad.csv", "empty file"), b""),
    Case("data-header-only", FIT_BAD, ("no data rows",), b"x,y\n"),
    Case("data-ragged-row", FIT_BAD, ("row 3", "1 cell, expected 2"), b"x,y\n1,2\n3\n"),
    Case("data-text-cell", FIT_BAD, ("row 3", "'y'", "'abc'"), b"x,y\n1,2\n3,abc\n"),
    Case("data-nan", FIT_BAD, ("row 3", "'x'", "finite"), b"x,y\n1,2\nnan,3\n"),
    Case("data-inf", FIT_BAD, ("row 2", "'y'", "finite"), b"x,y\n1,inf\n2,3\n"),
    Case(
        "data-1e39-float32-overflow",
        FIT_BAD,
        ("row 3", "'y'", "float32", "'1e39'"),
        b"x,y\n1,2\n3,1e39\n4,5\n",
        subprocess=True,
    ),
    Case("data-1e308", FIT_BAD, ("row 2", "'x'", "float32", "'-1e308'"), b"x,y\n-1e308,2\n3,4\n"),
    Case(
        "eval-1e39",
        "eval {model} {bad}",
        ("row 4", "'y'", "float32"),
        b"noise,x,y\n0,1,2\n0,2,3\n0,3,1e39\n",
    ),
    Case(
        "sample-1e39",
        "sample {model} {bad} -o {dir}/out.csv",
        ("row 2", "'x'", "float32"),
        b"noise,x,y\n0,3.5e38,2\n",
    ),
    Case(
        "data-timestamps-collapse-in-float32",
        "fit {bad} --x t --y y --epochs 1 -o {dir}/out.mdn",
        ("column 't'", "float32", "44%", "offset"),
        ("t,y\n" + "".join(f"{1.7e9 + i:.1f},{math.sin(i):.6f}\n" for i in range(500))).encode(),
    ),
    Case(
        "data-duplicate-name-by-name",
        FIT_BAD,
        ("'x'", "ambiguous", "positions 0, 1"),
        b"x,x,y\n1,2,3\n4,5,6\n",
    ),
    Case(
        "eval-duplicate-stored-name",
        "eval {model} {bad}",
        ("'x'", "ambiguous"),
        b"noise,x,x,y\n0,1,2,3\n0,4,5,6\n",
    ),
    Case("data-no-such-column", "fit {data} --x x --y zz -o {dir}/out.mdn", ("no column 'zz'",)),
    Case("data-position-out-of-range", "fit {data} --x x --y 7 -o {dir}/out.mdn", ("position 7",)),
    Case("data-semicolons", "fit {bad} --x a --y b -o {dir}/out.mdn", ("';'",), b"a;b\n1;2\n"),
    Case("data-bad-utf8", FIT_BAD, ("not a text CSV file",), b"x,y\n1,\xff\xfe\n"),
    Case("data-is-a-model-file", "fit {model} --x x --y y -o {dir}/out.mdn", ("model.mdn",)),
    Case(
        "data-dev-zero-no-newline",
        "fit /dev/zero --x x --y y -o {dir}/out.mdn",
        ("/dev/zero", "longer than"),
        subprocess=True,
    ),
    Case(
        "data-one-huge-line",
        FIT_BAD,
        ("row 2", "longer than"),
        b"x,y\n" + b"1," * (MAX_LINE_CHARS // 2 + 8),
    ),
    Case("data-x-and-y-same-column", "fit {data} --x x --y x -o {dir}/out.mdn", ("both input",)),
    Case(
        "data-too-few-rows-for-validation",
        "fit {bad} --x x --y y --validation-split 0.9 -o {dir}/out.mdn",
        ("no training rows",),
        b"x,y\n1,2\n",
    ),
]

OUTPUT_CASES = [
    Case(
        "output-is-the-data",
        "fit {data} --x x --y y -o {data}",
        ("is also the input file",),
        subprocess=True,
    ),
    Case(
        "output-is-a-symlink-to-the-data",
        "fit {data} --x x --y y -o {dir}/link.csv",
        ("is also the input file",),
    ),
    Case(
        "checkpoint-is-the-data",
        "fit {data} --x x --y y --checkpoint {data} -o {dir}/out.mdn",
        ("is also the input file",),
    ),
    Case(
        "output-is-the-checkpoint",
        "fit {data} --x x --y y --checkpoint {dir}/out.mdn -o {dir}/out.mdn",
        ("is also the input file",),
    ),
    Case(
        "sample-output-is-the-model",
        "sample {model} {data} -o {model}",
        ("is also the input file",),
    ),
    Case(
        "sample-output-is-the-data", "sample {model} {data} -o {data}", ("is also the input file",)
    ),
    Case(
        "output-folder-missing",
        "fit {data} --x x --y y -o {dir}/no/such/m.mdn",
        ("does not exist",),
    ),
    Case("output-is-a-folder", "fit {data} --x x --y y -o {dir}", ("is a directory",)),
    Case("plot-output-not-a-picture", "plot {model} -o {dir}/out.csv", (".png",)),
    Case(
        "hidden-too-large-to-allocate",
        "fit {data} --x x --y y --hidden 1000000,1000000 -o {dir}/out.mdn",
        ("parameters", "would need about", "TB"),
    ),
    Case(
        "components-too-many-to-allocate",
        "fit {data} --x x --y y --components 1000000000 -o {dir}/out.mdn",
        ("would need about", "--components"),
    ),
    Case(
        "sample-n-too-large-to-allocate",
        "sample {model} {data} -n 1000000000 -o {dir}/out.csv",
        ("-n 1000000000", "would need about"),
    ),
]

OPTION_CASES = [
    Case("option-epochs-0", FIT.replace("--epochs 1", "--epochs 0"), ("--epochs",)),
    Case("option-lr-negative", FIT + " --lr -1", ("--lr",)),
    Case("option-hidden-not-numbers", FIT + " --hidden a,b", ("--hidden",)),
    Case("option-validation-split-1", FIT + " --validation-split 1", ("--validation-split",)),
    Case("option-covariance-unknown", FIT + " --covariance weird", ("--covariance",)),
    Case("option-resume-without-checkpoint", FIT + " --resume", ("--checkpoint",)),
    Case(
        "option-temperature-nan",
        "sample {model} {data} --temperature nan -o {dir}/out.csv",
        ("--temperature",),
    ),
    Case("option-coverage-1", "eval {model} {data} --coverage 1", ("--coverage",)),
    Case("option-unknown-command", "frobnicate {data}", ("invalid choice",)),
]

MODEL_CASES = [
    Case("model-missing", "eval {dir}/nope.mdn {data}", ("nope.mdn", "no such model file")),
    Case("model-is-a-csv-file", "eval {data} {data}", ("data.csv", "not an mdnkit model file")),
    Case("model-of-4-bytes", "info {bad}", ("bad.mdn", "4 bytes"), b"\x01\x00\x00\x00", "bad.mdn"),
    Case(
        "model-header-length-2**60",
        "info {bad}",
        ("bad.mdn", "header claims"),
        lambda raw: struct.pack("<Q", 2**60) + raw[8:],
        "bad.mdn",
    ),
    Case(
        "model-header-length-past-the-end",
        "info {bad}",
        ("bad.mdn", "header claims"),
        lambda raw: struct.pack("<Q", len(raw)) + raw[8:],
        "bad.mdn",
    ),
    Case(
        "model-header-length-too-short",
        "info {bad}",
        ("bad.mdn",),
        lambda raw: struct.pack("<Q", struct.unpack("<Q", raw[:8])[0] - 16) + raw[8:],
        "bad.mdn",
    ),
    Case(
        "model-truncated",
        "eval {bad} {data}",
        ("bad.mdn",),
        lambda raw: raw[: len(raw) - 100],
        "bad.mdn",
    ),
    Case(
        "model-one-byte-flipped",
        "sample {bad} {data} -o {dir}/out.csv",
        ("bad.mdn", "checksum"),
        lambda raw: raw[:-3] + bytes([raw[-3] ^ 0xFF]) + raw[-2:],
        "bad.mdn",
    ),
    Case(
        "model-header-nested-200000-deep",
        "info {bad}",
        ("bad.mdn",),
        _deep_header,
        "bad.mdn",
    ),
    Case(
        "model-config-nested-100000-deep",
        "info {bad}",
        ("bad.mdn", "config"),
        lambda raw: _edited(raw, {"config": _deep(100_000)}),
        "bad.mdn",
    ),
    Case(
        "model-user-nested-100000-deep",
        "eval {bad} {data}",
        ("bad.mdn", "user"),
        lambda raw: _edited(raw, {"user": _deep(100_000)}),
        "bad.mdn",
    ),
    Case(
        "model-config-not-json",
        "info {bad}",
        ("bad.mdn", "config"),
        lambda raw: _edited(raw, {"config": "hidden: [16]"}),
        "bad.mdn",
    ),
    Case(
        "model-user-metadata-a-list",
        "eval {bad} {data}",
        ("bad.mdn", "user"),
        lambda raw: _edited(raw, {"user": "[1, 2]"}),
        "bad.mdn",
    ),
    Case(
        "model-huge-config-valid-checksum",
        "info {bad}",
        ("bad.mdn",),
        lambda raw: _edited(raw, {"config": _huge_config(raw)}),
        "bad.mdn",
        subprocess=True,  # under an address-space limit: see _run_subprocess
    ),
    Case(
        "model-nan-weight",
        "eval {bad} {data}",
        ("bad.mdn", "NaN"),
        lambda raw: _edited(raw, tensors={_first_weight(raw): _nan_first}),
        "bad.mdn",
    ),
    Case(
        "model-zero-target-scale",
        "sample {bad} {data} -o {dir}/out.csv",
        ("bad.mdn", "y_std"),
        lambda raw: _edited(raw, tensors={"y_std": np.zeros_like}),
        "bad.mdn",
    ),
    Case(
        "model-class-os.system",
        "info {bad}",
        ("bad.mdn", "os.system"),
        lambda raw: _edited(raw, {"class": "os.system"}),
        "bad.mdn",
    ),
    Case(
        "model-format-version-99",
        "info {bad}",
        ("bad.mdn", "upgrade"),
        lambda raw: _edited(raw, {"format_version": "99"}),
        "bad.mdn",
    ),
    Case(
        "model-x-columns-not-names",
        "eval {bad} {data}",
        ("x_columns",),
        lambda raw: _edited(
            raw, {"user": json.dumps({"x_columns": [{"a": 1}], "y_columns": ["y"]})}
        ),
        "bad.mdn",
    ),
    Case(
        "model-x-columns-wrong-count",
        "sample {bad} {data} -o {dir}/out.csv",
        ("1 inputs", "2 columns"),
        lambda raw: _edited(raw, {"user": json.dumps({"x_columns": ["x", "noise"]})}),
        "bad.mdn",
    ),
    Case(
        "eval-metrics-overflow-float32",
        "eval {bad} {data}",
        ("crps = nan|bad.mdn", "overflowed|scale"),
        lambda raw: _edited(raw, tensors={"y_std": lambda a: np.full_like(a, 3e38)}),
        "bad.mdn",
    ),
    Case(
        "sample-draws-overflow-float32",
        "sample {bad} {data} -o {dir}/out.csv",
        ("input row|bad.mdn", "overflowed|scale"),
        lambda raw: _edited(raw, tensors={"y_std": lambda a: np.full_like(a, 3e38)}),
        "bad.mdn",
    ),
    Case("export-a-feed-forward-mdn", "export {model} -o {dir}/out.onnx", ("MDN-RNN",)),
]


def _huge_config(raw: bytes) -> str:
    config = json.loads(_parts(raw)[0]["__metadata__"]["config"])
    return json.dumps({**config, "hidden": [60000, 60000]}, sort_keys=True)


def _first_weight(raw: bytes) -> str:
    header, _ = _parts(raw)
    return sorted(k for k in header if k.endswith("weight"))[0]


CASES = CSV_CASES + OUTPUT_CASES + OPTION_CASES + MODEL_CASES


def test_the_table_has_at_least_40_distinct_bad_inputs():
    assert len({c.id for c in CASES}) == len(CASES) >= 40


# ------------------------------------------------------------------------------ running them
@pytest.fixture(scope="module")
def good(tmp_path_factory) -> dict[str, Path]:
    """A CSV file (noise, x, y) and a model trained on it (x -> y)."""
    folder = tmp_path_factory.mktemp("good")
    x, y = inverted_sine(300, seed=0)
    noise = np.random.default_rng(0).normal(size=(300, 1))
    data = folder / "data.csv"
    write_csv(data, ["noise", "x", "y"], np.hstack([noise, x, y]).astype(np.float64))
    model = folder / "model.mdn"
    # one MDN (--ensemble 1): the cases below edit its tensors by name
    argv = ["fit", str(data), "--x", "x", "--y", "y", "--hidden", "8", "--components", "2"]
    argv += ["--ensemble", "1"]
    assert main([*argv, "--epochs", "2", "-o", str(model)]) == 0
    return {"data": data, "model": model}


def _prepare(case: Case, folder: Path, good: dict[str, Path]) -> list[str]:
    """Fill ``folder`` (good inputs, old outputs, the case's bad file); the command line."""
    data, model = folder / "data.csv", folder / "model.mdn"
    data.write_bytes(good["data"].read_bytes())
    model.write_bytes(good["model"].read_bytes())
    for name in OUTPUTS:
        (folder / name).write_bytes(OLD)
    os.symlink(data, folder / "link.csv")
    bad = folder / case.bad
    if isinstance(case.make, bytes):
        bad.write_bytes(case.make)
    elif case.make is not None:
        bad.write_bytes(case.make(model.read_bytes()))
    fields = {"dir": folder, "data": data, "model": model, "bad": bad}
    return [a.format(**fields) for a in case.argv.split()]


def _snapshot(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` (hidden ones too): its name -> a digest of its bytes, or
    where a symbolic link points."""
    out = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            out[key] = "-> " + os.readlink(path)
        elif path.is_file():
            out[key] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[key] = "folder"
    return out


def _run_subprocess(argv: list[str], cwd: Path) -> tuple[int, str]:
    """The command in a child process, its address space limited to 3 GiB (a file that asked
    for more memory gets an allocation error, not the machine's memory)."""

    def limit() -> None:  # pragma: no cover - runs in the child
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    proc = subprocess.run(
        [sys.executable, "-m", "mdnkit", *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        preexec_fn=limit,
        timeout=600,
    )
    return proc.returncode, proc.stderr


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(
            c, id=c.id, marks=[pytest.mark.xfail(reason=c.xfail, strict=False)] if c.xfail else []
        )
        for c in CASES
    ],
)
def test_bad_input_exit_2_one_line_nothing_written(case, good, tmp_path, capsys):
    argv = _prepare(case, tmp_path, good)
    before = _snapshot(tmp_path)
    if case.subprocess:
        code, err = _run_subprocess(argv, tmp_path)
    else:
        code = main(argv)
        err = capsys.readouterr().err
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("mdnkit") and "Traceback" not in err, err
    for fragment in case.expect:  # "a|b": either
        assert any(f in lines[0] for f in fragment.split("|")), (fragment, lines[0])
    assert _snapshot(tmp_path) == before
    for name in OUTPUTS:
        assert (tmp_path / name).read_bytes() == OLD


# ------------------------------------------------------------------------------ output safety
def test_info_escapes_control_characters_from_the_file(good, tmp_path, capsys):
    from mdnkit.io import load, save

    evil = "\x1b]0;owned\x07\x1b[31mred\r\n\u202eexe.txt"
    path = tmp_path / "m.mdn"
    save(load(good["model"]), path, metadata={"note\x1b[2J": evil})
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert not any(c in out for c in "\x1b\x07\r\u202e")
    assert "\\x1b[31mred" in out and "\\u202e" in out
    assert main(["info", str(path), "--json"]) == 0
    text = capsys.readouterr().out
    assert "\x1b" not in text and json.loads(text)["metadata"]["note\x1b[2J"] == evil


def test_sample_neutralises_formula_column_names(good, tmp_path, capsys):
    from mdnkit.datasets import read_csv_header
    from mdnkit.io import load, save

    names = ['=HYPERLINK("http://example.com","x")', "@SUM(A1)"]
    path = tmp_path / "m.mdn"
    save(load(good["model"]), path, metadata={"x_columns": names[:1], "y_columns": names[1:]})
    data = tmp_path / "d.csv"
    data.write_text('"=HYPERLINK(""http://example.com"",""x"")",other\n-1.5,2\n0.25,3\n')
    out = tmp_path / "s.csv"
    assert main(["sample", str(path), str(data), "-n", "2", "-o", str(out)]) == 0, (
        capsys.readouterr()
    )
    header = read_csv_header(out)
    assert header == ["row", "'" + names[0], "'" + names[1]]
    rows = out.read_text().splitlines()[1:]
    assert rows[0].split(",")[:2] == ["0", "-1.5"]  # numbers are not text cells: unchanged

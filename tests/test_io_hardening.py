"""Crafted model files, written byte by byte from the format documented in mdnkit.io's docstring
(an 8-byte little-endian header length, a JSON header, the tensors' bytes) with the checksum
recomputed here: every malformed file is a ValueError that names the file and what is wrong,
a config that the file's tensors do not back allocates nothing, unusable weights are refused."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from mdnkit import io
from mdnkit.models import MDN

_CODES = {
    torch.float32: "F32",
    torch.float64: "F64",
    torch.float16: "F16",
    torch.int64: "I64",
    torch.int32: "I32",
}


def file_bytes(tensors: dict[str, torch.Tensor], metadata: dict | None) -> bytes:
    """A safetensors file: N as u64 LE, N bytes of JSON (space-padded), the tensors' bytes."""
    header: dict = {} if metadata is None else {"__metadata__": metadata}
    body = b""
    for name, t in tensors.items():
        raw = t.contiguous().numpy().tobytes()
        header[name] = {
            "dtype": _CODES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [len(body), len(body) + len(raw)],
        }
        body += raw
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


def checksum(cls: str, version: int, config: str, user: str, tensors: dict, state=None) -> str:
    """SHA-256 over ["mdnkit", version, class, config, user(, training state)] (compact JSON),
    then, by name, each tensor's JSON [name, dtype, shape] and its bytes."""
    fields = ["mdnkit", version, cls, config, user] + ([state] if state is not None else [])
    h = hashlib.sha256(json.dumps(fields, separators=(",", ":")).encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def model_file(
    path: Path,
    tensors: dict[str, torch.Tensor],
    config: str | dict,
    *,
    cls: str = "MDN",
    user: str = "{}",
    state: str | None = None,
    **override: str,
) -> Path:
    """A model file with a valid checksum (unless ``checksum=`` overrides it)."""
    config = config if isinstance(config, str) else json.dumps(config)
    version = 1 if state is None else 2
    meta = {
        "format": "mdnkit",
        "format_version": str(version),
        "class": cls,
        "config": config,
        "user": user,
        "checksum": checksum(cls, version, config, user, tensors, state),
    }
    if state is not None:
        meta["training_state"] = state
    meta.update(override)
    path.write_bytes(file_bytes(tensors, meta))
    return path


@pytest.fixture(scope="module")
def base() -> tuple[MDN, dict, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    m = MDN(2, 1, hidden=(4,), num_components=2).eval()
    with torch.no_grad():
        m.x_mean.copy_(torch.tensor([1.0, -2.0]))
        m.x_std.copy_(torch.tensor([0.5, 3.0]))
        m.y_mean.fill_(4.0)
        m.y_std.fill_(2.0)
    return m, m.config(), {k: v.clone() for k, v in m.state_dict().items()}


def test_the_documented_format_gives_the_model_back(base, tmp_path):
    m, config, tensors = base
    path = model_file(tmp_path / "m.mdn", tensors, config, user='{"columns": ["a", "b", "y"]}')
    loaded = io.load(path)
    x, y = torch.randn(6, 2), torch.randn(6, 1)
    torch.testing.assert_close(loaded(x).log_prob(y), m(x).log_prob(y), rtol=0, atol=0)
    assert io.load_metadata(path) == {"columns": ["a", "b", "y"]}
    # the checksum recomputed here from the description is the one save writes
    saved = io.load_header(io.save(m, tmp_path / "saved.mdn"))
    assert saved["checksum"] == checksum("MDN", 1, saved["config"], "{}", tensors)


# ---------------------------------------------------------------------------- crafted files
Crafter = Callable[[Path, dict, dict], Path]


def _with(**changes) -> Crafter:
    """A file of the base model with its config's ``changes`` (valid checksum)."""
    return lambda p, config, tensors: model_file(p, tensors, {**config, **changes})


def _tensors(**changes) -> Crafter:
    """A file of the base model with tensors replaced (None: removed), valid checksum."""

    def craft(p: Path, config: dict, tensors: dict) -> Path:
        new = {k: v for k, v in {**tensors, **changes}.items() if v is not None}
        return model_file(p, new, config)

    return craft


def _meta(config: str | None = None, user: str = "{}", cls: str = "MDN", **override) -> Crafter:
    """A file of the base model with the header's config, user metadata or class (the checksum
    recomputed), or other metadata fields (``override``, after the checksum), replaced."""

    def craft(p: Path, base_config: dict, tensors: dict) -> Path:
        cfg = json.dumps(base_config) if config is None else config
        return model_file(p, tensors, cfg, user=user, cls=cls, **override)

    return craft


def _raw(make: Callable[[bytes], bytes]) -> Crafter:
    """The bytes of a valid file of the base model, changed by ``make``."""

    def craft(p: Path, config: dict, tensors: dict) -> Path:
        data = model_file(p, tensors, config).read_bytes()
        p.write_bytes(make(data))
        return p

    return craft


def _header_length(data: bytes) -> int:
    return struct.unpack("<Q", data[:8])[0]


def _claim(n: int) -> Callable[[bytes], bytes]:
    return lambda data: struct.pack("<Q", n) + data[8:]


def _flood(entry: str, n: int = 300_000) -> bytes:
    """A JSON object of ``n`` entries ``entry % i``."""
    return ("{" + ",".join(entry % i for i in range(n)) + "}").encode()


def _sized(header: bytes) -> bytes:
    """A file of just ``header``, with its length field."""
    return struct.pack("<Q", len(header)) + header


def _nan_weight(tensors: dict) -> torch.Tensor:
    w = tensors["head.proj.weight"].clone()
    w[1, 2] = float("nan")
    return w


_DEEP = 200_000
_DEEP_OBJECT = '{"a":' * 100_000 + "1" + "}" * 100_000  # within _MAX_VALUES, past recursion
CASES: dict[str, tuple[Crafter, list[str]]] = {
    # the header itself
    "header nested 200 000 deep": (
        _raw(lambda d: _sized(b"[" * _DEEP + b"]" * _DEEP)),
        ["not an mdnkit model file", "unreadable header"],
    ),
    "tensor entry nested 100 000 deep": (
        _raw(lambda d: _sized(b'{"w": ' + _DEEP_OBJECT.encode() + b"}")),
        ["unreadable header"],
    ),
    "header length claims more than the file": (
        _raw(lambda d: _claim(len(d))(d)),
        ["header claims", "after the length field"],
    ),
    "header length claims 2**60": (_raw(_claim(2**60)), ["header claims 1152921504606846976"]),
    "header length claims less than the header": (
        _raw(lambda d: _claim(_header_length(d) - 40)(d)),
        ["unreadable header"],
    ),
    "truncated body": (_raw(lambda d: d[:-6]), ["unreadable header", "not fully covered"]),
    "bytes after the tensors": (_raw(lambda d: d + b"\0" * 8), ["unreadable header"]),
    "only 5 bytes": (_raw(lambda d: d[:5]), ["only 5 bytes"]),
    "300 000 tensor entries": (
        _raw(lambda d: _sized(_flood('"t%06d":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}'))),
        ["header holds more than 262144 JSON values"],
    ),
    "100 000 metadata keys": (
        _raw(lambda d: _sized(b'{"__metadata__":' + _flood('"k%06d":"v"', 100_000) + b"}")),
        ["header holds more than 262144 JSON values"],
    ),
    "format_version a JSON number": (
        _raw(lambda d: d.replace(b'"format_version": "1"', b'"format_version":   1')),
        ["unreadable header"],
    ),
    # the metadata fields
    "no metadata": (
        lambda p, c, t: (p.write_bytes(file_bytes(t, None)), p)[1],
        ["not an mdnkit model file", "expected format 'mdnkit'"],
    ),
    "format_version not a number": (_meta(format_version="one"), ["format_version", "'one'"]),
    "format_version 0": (_meta(format_version="0"), ["invalid format_version 0"]),
    "format_version 3": (_meta(format_version="3"), ["newer", "upgrade"]),
    "no checksum": (_meta(checksum=None), ["unreadable header"]),
    "wrong checksum": (_meta(checksum="0" * 64), ["checksum"]),
    "unknown class": (_meta(cls="os.system"), ["'os.system'", "cannot load"]),
    "config not JSON": (_meta(config="{hidden: [4]"), ["config is not JSON"]),
    "config a JSON string": (
        _meta(config='"MDN"'),
        ["config must be a JSON object, found a string"],
    ),
    "config null": (_meta(config="null"), ["config must be a JSON object, found null"]),
    "config nested 200 000 deep": (
        _meta(config="[" * _DEEP + "]" * _DEEP),
        ["config nests deeper than 100"],
    ),
    "config nested 150 deep": (
        _meta(config='{"a":' * 150 + "1" + "}" * 150),
        ["config nests deeper than 100"],
    ),
    "user metadata a list": (_meta(user="[1, 2]"), ["user must be a JSON object, found an array"]),
    "user metadata a number": (_meta(user="7"), ["user must be a JSON object, found a number"]),
    "user metadata not JSON": (_meta(user="columns: a"), ["user is not JSON"]),
    "user metadata nested 100 000 deep": (_meta(user=_DEEP_OBJECT), ["user nests deeper"]),
    "user metadata nested 200 000 deep": (
        _meta(user='{"a":' * _DEEP + "1" + "}" * _DEEP),
        ["header holds more than 262144 JSON values"],
    ),
    # the config against the tensors
    "hidden [60000, 60000] with tiny tensors": (
        _with(hidden=[60000, 60000]),
        ["network far larger than the 48 values of the 8 tensors the file holds"],
    ),
    "100 000 hidden layers": (
        _with(hidden=[1] * 100_000),
        ["far larger than the 48 values of the 8 tensors"],
    ),
    "10**9 components": (_with(num_components=10**9), ["network far larger"]),
    "3 components where the tensors hold 2": (
        _with(num_components=3),
        ["'head.proj.weight' has shape"],
    ),
    "in_features 10**30": (
        _with(in_features=10**30),
        ["config's in_features is 1000000000000000000000000000000, too large"],
    ),
    "10**15 outputs, full covariance": (
        _with(out_features=10**15, covariance="full"),
        ["does not describe a valid MDN"],
    ),
    "in_features a string": (
        _with(in_features="2"),
        ["in_features must be a positive integer, found '2'"],
    ),
    "hidden a string": (_with(hidden="4"), ["hidden"]),
    "activation a number": (_with(activation=5), ["activation"]),
    "min_scale a string": (_with(min_scale="small"), ["min_scale", "'small'"]),
    "unknown config key": (_with(evil=1), ["evil"]),
    "tensor named ../../etc/passwd": (
        _tensors(**{"../../etc/passwd": torch.zeros(2)}),
        ["'../../etc/passwd' is not part of the MDN"],
    ),
    "tensor name with a terminal escape": (
        _tensors(**{"\x1b[2Jx": torch.zeros(2)}),
        ["'\\x1b[2Jx' is not part"],
    ),
    "training-state tensor in a model file": (
        _tensors(**{"@state/x": torch.zeros(2)}),
        ["'@state/x' is not part"],
    ),
    "missing tensor": (_tensors(y_std=None), ["'y_std'", "lacks"]),
    "wrong shape": (
        lambda p, c, t: _tensors(**{"head.proj.weight": t["head.proj.weight"].T.clone()})(p, c, t),
        ["'head.proj.weight' has shape [4, 6], but its config describes [6, 4]"],
    ),
    "one tensor float64": (
        lambda p, c, t: _tensors(**{"head.proj.bias": t["head.proj.bias"].double()})(p, c, t),
        ["'head.proj.bias' is float64, expected float32"],
    ),
    "a weight of integers": (
        lambda p, c, t: _tensors(**{"body.0.weight": t["body.0.weight"].long()})(p, c, t),
        ["'body.0.weight' is int64, expected float32"],
    ),
    # the weights' values
    "NaN weight": (
        lambda p, c, t: _tensors(**{"head.proj.weight": _nan_weight(t)})(p, c, t),
        ["unusable weights", "'head.proj.weight' has 1 NaN or infinite value(s) of 24"],
    ),
    "infinite buffer": (
        _tensors(x_mean=torch.tensor([1.0, float("inf")])),
        ["'x_mean' has 1 NaN or infinite"],
    ),
    "zero target scale": (_tensors(y_std=torch.zeros(1)), ["'y_std' holds scales", "found 0"]),
    "negative input scale": (_tensors(x_std=torch.tensor([1.0, -2.0])), ["'x_std'", "found -2"]),
    "subnormal target scale": (_tensors(y_std=torch.tensor([1e-40])), ["'y_std' holds scales"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_crafted_file_is_a_one_line_value_error(case, base, tmp_path):
    craft, fragments = CASES[case]
    _, config, tensors = base
    path = craft(tmp_path / "crafted.mdn", config, tensors)
    with pytest.raises(ValueError) as info:
        io.load(path)
    message = str(info.value)
    assert repr(str(path)) in message  # names the file
    for fragment in fragments:
        assert fragment in message
    assert "\n" not in message and "\x1b" not in message


@pytest.mark.parametrize("case", list(CASES))
def test_crafted_file_is_one_line_and_exit_2_from_the_command(case, base, tmp_path, capsys):
    from mdnkit.cli import main

    craft, _ = CASES[case]
    path = craft(tmp_path / "crafted.mdn", base[1], base[2])
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and "Traceback" not in err


def test_a_refused_config_leaves_module_building_as_it_was(base, tmp_path):
    craft, _ = CASES["100 000 hidden layers"]
    with pytest.raises(ValueError, match="network far larger"):
        io.load(craft(tmp_path / "layers.mdn", base[1], base[2]))
    assert len(MDN(2, 1, hidden=[1] * 50).state_dict()) == 106  # no budget left behind
    before = torch.random.get_rng_state()
    with pytest.raises(ValueError):
        io.load(CASES["hidden [60000, 60000] with tiny tensors"][0](tmp_path / "h.mdn", *base[1:]))
    assert torch.equal(torch.random.get_rng_state(), before)  # refused before building


@pytest.mark.parametrize(
    "case", ["user metadata a list", "config not JSON", "header length claims 2**60"]
)
def test_header_readers_refuse_the_same_files(case, base, tmp_path):
    craft, fragments = CASES[case]
    path = craft(tmp_path / "crafted.mdn", base[1], base[2])
    for reader in (io.load_header, io.load_metadata, io.load_checkpoint):
        with pytest.raises(ValueError, match=fragments[0].replace("*", r"\*")):
            reader(path)


def test_header_readers_show_a_file_with_unusable_weights(base, tmp_path):
    """load_header and load_metadata describe the file; only building the model refuses it."""
    craft, _ = CASES["zero target scale"]
    path = craft(tmp_path / "zero.mdn", base[1], base[2])
    assert io.load_header(path)["class"] == "MDN" and io.load_metadata(path) == {}


def test_float64_and_float16_models_load_in_their_dtype(base, tmp_path):
    m, config, tensors = base
    for dtype in (torch.float64, torch.float16):
        path = model_file(tmp_path / "d.mdn", {k: v.to(dtype) for k, v in tensors.items()}, config)
        loaded = io.load(path)
        assert {v.dtype for v in loaded.state_dict().values()} == {dtype}
        torch.testing.assert_close(loaded.head.proj.weight, m.head.proj.weight.to(dtype))


# ---------------------------------------------------------------------------- other classes
def _regressor_config(model_config: dict, **changes) -> dict:
    from mdnkit import MDNRegressor

    params = MDNRegressor(hidden=(4,), num_components=2).get_params()
    params["hidden"] = [4]
    history = {"train_nll": [1.0], "val_nll": [1.1], "best_epoch": 0, "monitor": "val_nll"}
    config = {
        "params": params,
        "n_features_in": 2,
        "n_outputs": 1,
        "y_1d": True,
        "model": model_config,
        "history": history,
    }
    config.update(changes)
    return config


def test_estimator_file_is_checked_like_a_model(base, tmp_path):
    m, config, tensors = base
    good = model_file(tmp_path / "r.mdn", tensors, _regressor_config(config), cls="MDNRegressor")
    reg = io.load(good)
    x = np.random.default_rng(0).normal(size=(5, 2))
    expected = m(torch.as_tensor(x, dtype=torch.float32)).mean[:, 0].detach().numpy()
    np.testing.assert_allclose(reg.predict(x), expected, rtol=1e-6, atol=1e-6)
    bad = {
        "huge network": (
            _regressor_config({**config, "hidden": [60000, 60000]}),
            "does not describe a valid MDNRegressor",
        ),
        "history a list": (_regressor_config(config, history=[1, 2]), "History"),
        "no model": (_regressor_config(config, model=None), "MDNRegressor"),
    }
    for cfg, fragment in bad.values():
        path = model_file(tmp_path / "bad.mdn", tensors, cfg, cls="MDNRegressor")
        with pytest.raises(ValueError, match=fragment) as info:
            io.load(path)
        assert "\n" not in str(info.value)
    zero = {**tensors, "y_std": torch.zeros(1)}
    path = model_file(tmp_path / "z.mdn", zero, _regressor_config(config), cls="MDNRegressor")
    with pytest.raises(ValueError, match="'y_std' holds scales"):
        io.load(path)


def test_sequence_model_with_a_million_layers_is_refused_before_building(tmp_path):
    from mdnkit.sequence import MDNRNN

    m = MDNRNN(2, hidden_size=4, num_layers=1, num_components=2)
    tensors = {k: v.clone() for k, v in m.state_dict().items()}
    path = model_file(
        tmp_path / "r.mdn", tensors, {**m.config(), "num_layers": 10**6}, cls="MDNRNN"
    )
    with pytest.raises(ValueError, match="far larger than the .* values of the 8 tensors"):
        io.load(path)
    scaled = {**tensors, "scale": torch.tensor([1.0, 0.0])}
    path = model_file(tmp_path / "s.mdn", scaled, m.config(), cls="MDNRNN")
    with pytest.raises(ValueError, match="'scale' holds scales"):
        io.load(path)


# ---------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize(
    "state, fragment",
    [
        ("[1, 2]", "training_state must be a JSON object, found an array"),
        ("{not json", "training_state is not JSON"),
        (_DEEP_OBJECT, "training_state nests deeper than 100"),
        ('{"w": {"@tensor": "@state/missing"}}', "unreadable training state"),
        ('{"t": {"@tuple": 5}}', "unreadable training state"),
        ('{"f": {"@float": "many"}}', "unreadable training state"),
    ],
    ids=["array", "not-json", "deep", "missing-tensor", "tuple-of-int", "float-word"],
)
def test_crafted_training_state_is_a_value_error(state, fragment, base, tmp_path):
    _, config, tensors = base
    path = model_file(tmp_path / "c.ckpt", tensors, config, state=state)
    with pytest.raises(ValueError, match=fragment) as info:
        io.load_checkpoint(path)
    assert repr(str(path)) in str(info.value)
    assert isinstance(io.load(path), MDN)  # the best model stays loadable


def test_checkpoint_written_here_reads_back(base, tmp_path):
    _, config, tensors = base
    moments = torch.arange(3.0)
    state = json.dumps({"epoch": 4, "m": {"@tensor": "@state/m"}, "t": {"@tuple": [1, 2]}})
    path = model_file(tmp_path / "c.ckpt", {**tensors, "@state/m": moments}, config, state=state)
    weights, back = io.load_checkpoint(path)
    assert back["epoch"] == 4 and back["t"] == (1, 2) and torch.equal(back["m"], moments)
    assert set(weights) == set(tensors)


def test_save_refuses_metadata_that_load_would_refuse(base, tmp_path):
    m = base[0]
    deep: dict = {}
    inner = deep
    for _ in range(150):
        inner["a"] = {}
        inner = inner["a"]
    with pytest.raises(ValueError, match="nest deeper than 100"):
        io.save(m, tmp_path / "x.mdn", metadata=deep)
    very: list = []
    for _ in range(5000):
        very = [very]
    with pytest.raises(ValueError, match="nest deeper than 100"):
        io.save(m, tmp_path / "x.mdn", metadata={"v": very})
    with pytest.raises(ValueError, match="more than 262144 JSON values"):
        io.save(m, tmp_path / "x.mdn", metadata={"columns": ["c"] * 300_000})
    assert not (tmp_path / "x.mdn").exists()


# ---------------------------------------------------------------------------- memory
_PEAK = textwrap.dedent(
    """
    import json, resource, sys
    from mdnkit import io
    import mdnkit.models, mdnkit.sequence, mdnkit.estimator, mdnkit.training
    start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {}
    for path in sys.argv[1:]:
        try:
            io.load(path)
            out[path] = "loaded"
        except ValueError as err:
            out[path] = str(err)
        out[path + " peak KiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start
    print(json.dumps(out))
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss in KiB, sparse files")
def test_crafted_files_cost_no_memory_beyond_their_size(base, tmp_path):
    """In one fresh process: a 160 MB file claiming a 2**60-byte header, a 160 MB file whose
    header is 99 MB of zeros, a 1 KB file asking for a 60000 x 60000 network and one asking
    for a million LSTM layers.  Before: 2.3 GB and 14.4 GB.  The peak grows by less than the
    largest file's size plus 64 MB."""
    from mdnkit.sequence import MDNRNN

    _, config, tensors = base
    claim = tmp_path / "claim.mdn"
    with open(claim, "wb") as f:
        f.write(struct.pack("<Q", 2**60) + b"{}")
        f.truncate(160 * 2**20)  # sparse: nothing on disk
    zeros = tmp_path / "zeros.mdn"
    with open(zeros, "wb") as f:
        f.write(struct.pack("<Q", 99_000_000))
        f.truncate(160 * 2**20)
    huge = model_file(tmp_path / "huge.mdn", tensors, {**config, "hidden": [60000, 60000]})
    rnn = MDNRNN(2, hidden_size=4, num_layers=1, num_components=2)
    layers = model_file(
        tmp_path / "layers.mdn",
        dict(rnn.state_dict()),
        {**rnn.config(), "num_layers": 10**6, "hidden_size": 60000},
        cls="MDNRNN",
    )
    files = [str(p) for p in (claim, zeros, huge, layers)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run(
        [sys.executable, "-c", _PEAK, *files], capture_output=True, text=True, env=env, timeout=600
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert "header claims" in out[str(claim)]
    assert "unreadable header" in out[str(zeros)]
    assert "network far larger" in out[str(huge)]
    assert "network far larger" in out[str(layers)]
    assert out[str(layers) + " peak KiB"] < (160 + 64) * 1024
    assert out[str(huge) + " peak KiB"] < (160 + 64) * 1024
    assert out[str(claim) + " peak KiB"] < 64 * 1024

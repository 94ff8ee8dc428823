"""Tests of mdnkit.io: round trips, metadata, atomic writes and every kind of bad file."""

from __future__ import annotations

import json
import os
import struct

import pytest
import torch
from safetensors.torch import save_file

from mdnkit import io
from mdnkit.models import MDN
from mdnkit.training import fit


@pytest.fixture
def model() -> MDN:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 2, generator=g)
    y = torch.cat([x[:, :1] * 2 + 5, x[:, 1:] ** 2], dim=1) + 0.1 * torch.randn(200, 2, generator=g)
    m = MDN(2, 2, hidden=(8,), num_components=3, covariance="full", activation="relu")
    fit(m, x, y, epochs=2, seed=0, progress=False)
    return m.eval()


def _header(path) -> tuple[int, dict, bytes]:
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    return n, json.loads(data[8 : 8 + n]), data


def _rewrite_header(path, header: dict, data: bytes, n: int) -> None:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + data[8 + n :])


def test_round_trip_gives_identical_predictions(model, tmp_path):
    path = io.save(model, tmp_path / "m.mdn", metadata={"columns": ["a", "b", "y1", "y2"]})
    loaded = io.load(path)
    assert isinstance(loaded, MDN) and not loaded.training
    assert loaded.config() == model.config()
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    x = torch.randn(7, 2)
    y = torch.randn(7, 2)
    torch.testing.assert_close(loaded(x).log_prob(y), model(x).log_prob(y), rtol=0, atol=0)
    assert io.load_metadata(path) == {"columns": ["a", "b", "y1", "y2"]}


def test_float64_model_keeps_its_dtype(tmp_path):
    m = MDN(1, 1, hidden=(4,), num_components=2).double()
    loaded = io.load(io.save(m, tmp_path / "d.mdn"))
    assert loaded.head.proj.weight.dtype == torch.float64


def test_file_is_safetensors_with_json_description(model, tmp_path):
    path = io.save(model, tmp_path / "m.mdn")
    _, header, _ = _header(path)
    meta = header["__metadata__"]
    assert meta["format"] == "mdnkit" and meta["format_version"] == "1"
    assert meta["class"] == "MDN" and json.loads(meta["config"]) == model.config()
    assert "y_std" in header and "head.proj.weight" in header
    assert io.load_header(path) == meta
    assert b"pickle" not in open(path, "rb").read()[:100]


def test_sequence_model_round_trip(tmp_path):
    from mdnkit import sequence

    torch.manual_seed(0)
    m = sequence.MDNRNN(2, hidden_size=8, num_layers=1, num_components=2).eval()
    loaded = io.load(io.save(m, tmp_path / "rnn.mdn"))
    assert type(loaded).__name__ == "MDNRNN" and loaded.config() == m.config()
    for k, v in m.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_truncated_file(model, tmp_path):
    path = io.save(model, tmp_path / "m.mdn")
    data = open(path, "rb").read()
    for cut in (0, 5, 100, len(data) - 10):
        (tmp_path / "t.mdn").write_bytes(data[:cut])
        with pytest.raises(ValueError):
            io.load(tmp_path / "t.mdn")


def test_flipped_weight_byte_is_detected(model, tmp_path):
    path = io.save(model, tmp_path / "m.mdn")
    data = bytearray(open(path, "rb").read())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        io.load(path)


def test_edited_config_is_detected(model, tmp_path):
    path = io.save(model, tmp_path / "m.mdn")
    n, header, data = _header(path)
    cfg = json.loads(header["__metadata__"]["config"])
    cfg["min_scale"] = 0.5
    header["__metadata__"]["config"] = json.dumps(cfg)
    _rewrite_header(path, header, data, n)
    with pytest.raises(ValueError, match="checksum"):
        io.load(path)


def test_newer_format_version_is_refused(model, tmp_path):
    path = io.save(model, tmp_path / "m.mdn")
    n, header, data = _header(path)
    header["__metadata__"]["format_version"] = "2"
    _rewrite_header(path, header, data, n)
    with pytest.raises(ValueError, match="newer"):
        io.load(path)


def test_files_that_are_not_models(tmp_path):
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, str(plain))
    with pytest.raises(ValueError, match="not an mdnkit model"):
        io.load(plain)
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a model file at all")
    with pytest.raises(ValueError, match="not an mdnkit model"):
        io.load(text)
    pickled = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(3)}, pickled)
    with pytest.raises(ValueError):
        io.load(pickled)
    with pytest.raises(FileNotFoundError):
        io.load(tmp_path / "missing.mdn")


def test_unknown_class_is_refused_without_importing_anything(model, tmp_path):
    path = io.save(model, tmp_path / "m.mdn")
    n, header, data = _header(path)
    meta = header["__metadata__"]
    meta["class"] = "os.system"
    tensors = {k: v for k, v in model.state_dict().items()}
    meta["checksum"] = io._checksum(meta["class"], 1, meta["config"], meta["user"], tensors)
    _rewrite_header(path, header, data, n)
    with pytest.raises(ValueError, match="cannot load"):
        io.load(path)


def test_save_rejects_other_objects_and_bad_metadata(model, tmp_path):
    with pytest.raises(TypeError, match="mdnkit model"):
        io.save(torch.nn.Linear(2, 2), tmp_path / "x.mdn")
    with pytest.raises(ValueError, match="JSON"):
        io.save(model, tmp_path / "x.mdn", metadata={"bad": object()})
    with pytest.raises(ValueError, match="JSON"):
        io.save(model, tmp_path / "x.mdn", metadata={"nan": float("nan")})
    assert not (tmp_path / "x.mdn").exists()


def test_failed_write_leaves_the_old_file_and_no_temporary(model, tmp_path, monkeypatch):
    path = io.save(model, tmp_path / "m.mdn")
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    other = MDN(2, 2, hidden=(8,), num_components=3, covariance="full", activation="relu")
    with pytest.raises(OSError, match="disk full"):
        io.save(other, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.mdn"]


def test_checkpoint_during_fit_holds_the_best_model(tmp_path):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 1, generator=g)
    y = torch.sin(3 * x) + 0.1 * torch.randn(300, 1, generator=g)
    torch.manual_seed(0)
    m = MDN(1, 1, hidden=(8,), num_components=2)
    h = fit(m, x, y, epochs=8, seed=0, progress=False, checkpoint=tmp_path / "best.mdn")
    loaded = io.load(tmp_path / "best.mdn")
    xt = torch.randn(20, 1)
    torch.testing.assert_close(loaded(xt).mean, m.eval()(xt).mean)
    assert io.load_metadata(tmp_path / "best.mdn")["best_epoch"] == h.best_epoch


def test_load_with_header_matches_load_and_load_header(model, tmp_path):
    path = tmp_path / "m.mdn"
    io.save(model, path, metadata={"columns": ["x", "y"]})
    loaded, header = io.load_with_header(path)
    assert header == io.load_header(path)
    assert json.loads(header["user"]) == {"columns": ["x", "y"]}
    x = torch.randn(7, 2, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(loaded(x).log_prob(x), io.load(path)(x).log_prob(x))

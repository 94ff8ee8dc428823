"""Checkpoints and exact resume: a run killed with SIGKILL at any moment and resumed ends with the
same weights as one never interrupted; SIGINT/SIGTERM in Python and on the command line; the
checkpoint file (safetensors + JSON, the best model inside); ``prepare="auto"``."""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mdnkit import io
from mdnkit.cli import main
from mdnkit.datasets import inverted_sine, write_csv
from mdnkit.ensemble import MDNEnsemble
from mdnkit.estimator import MDNRegressor
from mdnkit.models import MDN
from mdnkit.training import TrainingInterrupted, fit, is_trained

# The child trains one of two runs with a checkpoint every few steps; the test kills it with
# SIGKILL once the first checkpoint exists, resumes, and compares with an uninterrupted run.
RUNS = textwrap.dedent(
    """
    import sys, time
    import torch
    from mdnkit.models import MDN
    from mdnkit.sequence import MDNRNN
    from mdnkit.training import fit

    def mdn():
        g = torch.Generator().manual_seed(0)
        x = torch.randn(400, 2, generator=g)
        y = torch.sin(2 * x[:, :1]) + 0.3 * x[:, 1:] + 0.1 * torch.randn(400, 1, generator=g)
        torch.manual_seed(3)
        model = MDN(2, 1, hidden=(16, 16), num_components=3, dropout=0.1)
        return model, (x, y), dict(epochs=12, batch_size=32, checkpoint_every=5)

    def mdnrnn():
        g = torch.Generator().manual_seed(1)
        t = torch.linspace(0, 6, 12)
        x = torch.stack([torch.sin(t + p) for p in torch.rand(24, generator=g) * 6])[..., None]
        x = x + 0.05 * torch.randn(x.shape, generator=g)
        lengths = torch.randint(6, 13, (24,), generator=g)
        torch.manual_seed(4)
        model = MDNRNN(event_dim=1, hidden_size=8, num_components=2, dropout=0.1, num_layers=2)
        return model, (x, lengths), dict(epochs=12, batch_size=4, checkpoint_every=3)

    def train(name, path=None, resume=None, slow=0.0):
        model, data, settings = {"mdn": mdn, "mdnrnn": mdnrnn}[name]()
        if path is None:
            del settings["checkpoint_every"]
        h = fit(model, *data, seed=5, progress=False, checkpoint=path, resume=resume,
                callback=lambda e, h: time.sleep(slow), **settings)
        return model, h

    if __name__ == "__main__":
        train(sys.argv[1], sys.argv[2], slow=0.15)
    """
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs")
    (folder / "resume_runs.py").write_text(RUNS)
    sys.path.insert(0, str(folder))
    try:
        import resume_runs

        yield folder, resume_runs
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("resume_runs", None)


def _same(a: nn.Module, b: nn.Module) -> float:
    """The largest absolute weight difference, asserting bit-identical tensors."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    diff = max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa)
    assert all(torch.equal(sa[k], sb[k]) for k in sa), (
        diff,
        [k for k in sa if not torch.equal(sa[k], sb[k])],
    )
    return diff


def test_killed_runs_resume_to_the_same_weights(runs):
    folder, module = runs
    children = {}
    for name in ("mdn", "mdnrnn"):  # both at once: the test waits for two starts, not four
        path = folder / f"{name}.ckpt"
        children[name] = (
            path,
            subprocess.Popen([sys.executable, "resume_runs.py", name, path], cwd=folder),
        )
    killed = {}
    deadline = time.monotonic() + 120
    for name, (path, proc) in children.items():
        while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1 if name == "mdn" else 0.25)  # somewhere after the first checkpoint
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL, "the child ended before it was killed"
        killed[name] = io.load_metadata(path)
    for name, (path, _) in children.items():
        assert 0 < killed[name]["step"], killed[name]
        resumed, h_resumed = module.train(name, path, resume=path)
        plain, h_plain = module.train(name)
        where = (name, killed[name], h_resumed.train_nll, h_plain.train_nll)
        assert h_resumed.train_nll == h_plain.train_nll and h_resumed.val_nll == h_plain.val_nll, (
            where
        )
        assert _same(resumed, plain) == 0.0
        assert h_resumed.best_epoch == h_plain.best_epoch


def _data(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    y = x[:, :1] * 2 + 0.3 * torch.randn(n, 1, generator=g)
    return x, y


def _signal_at(at: int, signum: int = signal.SIGINT) -> MDN:
    """An MDN (with dropout: autograd) that sends itself ``signum`` on its ``at``-th training
    loss (mid-epoch)."""
    torch.manual_seed(0)
    model = MDN(2, 1, hidden=(8,), num_components=2, dropout=0.2)
    loss, calls = model.loss, [0]

    def signalling_loss(x, y):
        if model.training:
            calls[0] += 1
            if calls[0] == at:
                os.kill(os.getpid(), signum)
        return loss(x, y)

    model.loss = signalling_loss
    return model


@pytest.mark.parametrize("loader", [False, True], ids=["tensors", "dataloader"])
def test_sigint_mid_epoch_writes_the_checkpoint_then_raises(tmp_path, loader):
    x, y = _data()
    path = tmp_path / "run.ckpt"

    def args():
        if not loader:
            return (x[:250], y[:250]), {"validation_data": (x[250:], y[250:]), "seed": 1}
        g = torch.Generator().manual_seed(2)
        train = DataLoader(
            TensorDataset(x[:250], y[:250]), batch_size=25, shuffle=True, generator=g
        )
        return (train,), {"validation_data": (x[250:], y[250:]), "seed": 1}

    common = dict(epochs=4, batch_size=25, progress=False, checkpoint=path)
    data, extra = args()
    model = _signal_at(14)  # epoch 2 of 4 (10 batches an epoch)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN where pytest runs as a background job
    with pytest.raises(KeyboardInterrupt) as info:
        fit(model, *data, **common, **extra)
    stop = info.value
    assert isinstance(stop, TrainingInterrupted) and stop.signal == signal.SIGINT
    assert (stop.epoch, stop.step) == (1, 14) and Path(stop.checkpoint) == path
    assert signal.getsignal(signal.SIGINT) is before  # the previous handler is given back
    weights, state = io.load_checkpoint(path)
    assert state["position"]["batches"] == 4 and state["epoch"] == 1
    data, extra = args()
    resumed = _signal_at(-1)
    h1 = fit(resumed, *data, **common, resume=path, **extra)
    data, extra = args()
    plain = _signal_at(-1)
    h2 = fit(plain, *data, **{**common, "checkpoint": None}, **extra)
    assert _same(resumed, plain) == 0.0 and h1.train_nll == h2.train_nll


def test_checkpoint_file_is_a_model_file_with_the_training_state(tmp_path):
    x, y = _data()
    path = tmp_path / "run.ckpt"
    torch.manual_seed(0)
    m = MDN(2, 1, hidden=(8,), num_components=2)
    h = fit(m, x, y, epochs=6, seed=0, progress=False, checkpoint=path, patience=None)
    best = io.load(path)  # what users relied on: the best model
    torch.testing.assert_close(best.state_dict(), m.state_dict())
    meta = io.load_metadata(path)
    assert meta["best_epoch"] == h.best_epoch and meta["epoch"] == 6
    weights, state = io.load_checkpoint(path)
    assert state["epoch"] == 6 and state["position"] is None and len(state["rng"]["torch"]) == 1
    assert isinstance(state["optim"]["optimizer"]["param_groups"][0]["betas"], tuple)
    assert set(state["optim"]["optimizer"]["state"]) == {0}  # integer keys come back
    assert b"pickle" not in path.read_bytes()[:8] and path.read_bytes()[8:9] == b"{"
    with pytest.raises(ValueError, match="without a training state"):
        io.save(m, tmp_path / "plain.mdn")
        io.load_checkpoint(tmp_path / "plain.mdn")
    tree = {"a": (1, 2.5), 3: [torch.arange(3)], "inf": float("-inf"), "@x": None}
    io.save_checkpoint(m, tmp_path / "t.ckpt", {"tree": tree})
    back = io.load_checkpoint(tmp_path / "t.ckpt")[1]["tree"]
    assert back["a"] == (1, 2.5) and back["inf"] == float("-inf") and back["@x"] is None
    assert torch.equal(back[3][0], torch.arange(3))


def test_resume_true_starts_or_continues_and_checks_the_settings(tmp_path):
    x, y = _data()
    path = tmp_path / "run.ckpt"

    def model():
        torch.manual_seed(0)
        return MDN(2, 1, hidden=(8,), num_components=2)

    common = dict(seed=0, progress=False, checkpoint=path, resume=True, patience=None)
    first = model()
    h3 = fit(first, x, y, epochs=3, **common)  # no file yet: a fresh start
    more = model()
    h5 = fit(more, x, y, epochs=5, **common)  # the same call, more epochs: continues
    plain = model()
    h = fit(plain, x, y, epochs=5, seed=0, progress=False, patience=None)
    assert len(h3) == 3 and h5.train_nll == h.train_nll
    _same(more, plain)
    with pytest.raises(ValueError, match="batch_size=128.*batch_size=64"):
        fit(model(), x, y, epochs=5, batch_size=64, **common)
    with pytest.raises(ValueError, match="other data"):
        fit(model(), x[:200], y[:200], epochs=5, **common)
    with pytest.raises(ValueError, match="different model"):
        fit(MDN(2, 1, hidden=(9,), num_components=2), x, y, epochs=5, **common)
    with pytest.raises(FileNotFoundError):
        fit(model(), x, y, epochs=5, progress=False, resume=tmp_path / "missing.ckpt")
    with pytest.raises(ValueError, match="checkpoint_every needs"):
        fit(model(), x, y, epochs=1, checkpoint_every=3)


def test_prepare_auto_continues_a_loaded_or_trained_model(tmp_path):
    x, y = _data()
    torch.manual_seed(0)
    m = MDN(2, 1, hidden=(8,), num_components=2)
    assert not is_trained(m)
    fit(m, x, y, epochs=5, seed=0, progress=False)
    assert is_trained(m)
    io.save(m, tmp_path / "m.mdn")
    loaded = io.load(tmp_path / "m.mdn")
    assert is_trained(loaded)
    before = {k: v.clone() for k, v in loaded.state_dict().items()}
    fit(loaded, x, y, epochs=1, lr=1e-6, seed=0, progress=False)  # continues: tiny change
    moved = max(float((loaded.state_dict()[k] - before[k]).abs().max()) for k in before)
    assert moved < 1e-4
    fit(loaded, x, y, epochs=1, lr=1e-6, seed=0, progress=False, prepare=True)  # re-initialises
    head = "head.proj.bias"
    assert float((loaded.state_dict()[head] - before[head]).abs().max()) > 1e-3
    with pytest.raises(ValueError, match="prepare must be"):
        fit(m, x, y, prepare="yes")


@pytest.fixture(scope="module")
def csv_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("signals")
    x, y = inverted_sine(2000, seed=0)
    path = folder / "data.csv"
    write_csv(path, ["x", "y"], np.hstack([x, y]).astype(np.float64))
    return path


def test_cli_sigint_and_sigterm_write_checkpoint_and_model(csv_file, capsys):
    folder = csv_file.parent
    procs = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        ckpt, out = folder / f"{signum}.ckpt", folder / f"{signum}.mdn"
        cmd = [sys.executable, "-m", "mdnkit", "fit", csv_file, "--x", "x", "--y", "y",
               "--epochs", "5000", "--patience", "5000", "--checkpoint", ckpt, "-o", out]  # fmt: skip
        proc = subprocess.Popen(list(map(str, cmd)), stderr=subprocess.PIPE, text=True)
        procs[signum] = (ckpt, out, proc)
    for signum, (ckpt, _, proc) in procs.items():
        deadline = time.monotonic() + 120
        while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signum)
    for signum, (ckpt, out, proc) in procs.items():
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 128 + signum, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and signal.Signals(signum).name in lines[0], err
        assert str(ckpt) in lines[0] and str(out) in lines[0]
        model = io.load(out)
        assert io.load_metadata(out)["x_columns"] == ["x"]
        assert io.load_checkpoint(ckpt)[1]["epoch"] >= 1
        # the command's default network: MDNRegressor's (an ensemble of its n_estimators)
        members = inspect.signature(MDNRegressor).parameters["n_estimators"].default
        assert isinstance(model, MDNEnsemble if members > 1 else MDN)
    ckpt, out, _ = procs[signal.SIGINT]
    epochs = io.load_checkpoint(ckpt)[1]["epoch"] + 2  # resume in-process, two more epochs
    argv = ["fit", csv_file, "--x", "x", "--y", "y", "--epochs", epochs, "--patience", "5000",
            "--checkpoint", ckpt, "--resume", "-o", out]  # fmt: skip
    assert main(list(map(str, argv))) == 0
    assert f"({epochs} epochs)" in capsys.readouterr().out

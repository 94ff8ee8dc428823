"""``mdnkit fit`` with MDNRegressor's defaults: a deep ensemble of MDNs (``--ensemble N``), the
number of components chosen by validation NLL (``--components auto``), the training budget from
the rows (``auto``), the discrete-target scale floor (``--target-resolution``); the ensemble's
model file through ``eval``, ``sample``, ``plot``, ``info`` and ``export``; resume."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import norm

from mdnkit.cli import main
from mdnkit.datasets import inverted_sine, read_csv, write_csv
from mdnkit.ensemble import MDNEnsemble
from mdnkit.io import load, load_metadata, save
from mdnkit.models import MDN


def _run(capsys, *argv):
    code = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code, err, *fragments):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for f in fragments:
        assert f in lines[0], lines[0]


@pytest.fixture(scope="module")
def sine_csv(tmp_path_factory):
    x, y = inverted_sine(300, seed=0)
    path = tmp_path_factory.mktemp("ens") / "sine.csv"
    write_csv(path, ["x", "y"], np.hstack([x, y]).astype(np.float64))
    return path


@pytest.fixture(scope="module")
def ensemble_file(sine_csv):
    """A fit with the defaults (the network, the ensemble, the components, the floor), three
    epochs to keep the run short."""
    out = sine_csv.parent / "ens.mdn"
    assert (
        main(["fit", str(sine_csv), "--x", "x", "--y", "y", "--epochs", "3", "-o", str(out)]) == 0
    )
    return out


def _scipy_nll(model: MDNEnsemble, x: np.ndarray, y: np.ndarray) -> float:
    """The mean NLL of the equal-weight mixture of the members' mixtures, each member taken
    out of the ensemble as a standalone MDN; densities by SciPy in float64."""
    per_member = []
    for m in range(model.n_members):
        with torch.no_grad():
            mix = model.member(m)(torch.as_tensor(x))
        w = mix.weights.double().numpy()  # (N, K)
        mu = mix.loc[..., 0].double().numpy()
        sd = mix.scale[..., 0].double().numpy()
        per_member.append(logsumexp(np.log(w) + norm.logpdf(y, mu, sd), axis=-1))  # (N,)
    lp = logsumexp(np.stack(per_member), axis=0) - np.log(model.n_members)
    return float(-lp.mean())


def test_default_fit_is_an_ensemble_whose_eval_nll_is_scipys(capsys, ensemble_file, sine_csv):
    import inspect

    from mdnkit.estimator import MDNRegressor

    model = load(ensemble_file)
    defaults = {k: p.default for k, p in inspect.signature(MDNRegressor).parameters.items()}
    assert isinstance(model, MDNEnsemble) and model.n_members == defaults["n_estimators"]
    if defaults["num_components"] != "auto":
        assert model.num_components == defaults["num_components"]
    assert load_metadata(ensemble_file)["ensemble_rows"] == "own"
    code, out, err = _run(capsys, "eval", ensemble_file, sine_csv, "--json")
    assert code == 0, err
    x, y = read_csv(sine_csv, ["x"]), read_csv(sine_csv, ["y"]).astype(np.float64)
    assert json.loads(out)["nll"] == pytest.approx(_scipy_nll(model, x, y), rel=1e-5, abs=1e-6)


def test_sample_plot_info_and_export_of_an_ensemble(capsys, ensemble_file, sine_csv, tmp_path):
    samples = tmp_path / "s.csv"
    code, _, err = _run(capsys, "sample", ensemble_file, sine_csv, "-n", 2, "-o", samples)
    assert code == 0, err
    assert read_csv(samples, dtype=np.float64).shape == (600, 3)
    for kind in ("density", "components"):
        code, _, err = _run(
            capsys, "plot", ensemble_file, sine_csv, "--kind", kind, "-o", tmp_path / "f.png"
        )
        assert code == 0, err
    code, text, _ = _run(capsys, "info", ensemble_file)
    model = load(ensemble_file)
    assert code == 0 and "MDNEnsemble" in text
    assert f"n_members        {model.n_members}" in text
    assert f"num_components   {model.num_components}" in text
    code, _, err = _run(capsys, "export", ensemble_file, "-o", tmp_path / "e.onnx")
    _one_line_error(code, err, "MDN-RNN models only", "MDNEnsemble")
    assert not (tmp_path / "e.onnx").exists()


def test_ensemble_1_is_one_mdn(capsys, sine_csv, tmp_path):
    out = tmp_path / "one.mdn"
    code, text, err = _run(
        capsys, "fit", sine_csv, "--x", "x", "--y", "y", "--ensemble", 1, "--hidden", 8,
        "--components", 3, "--epochs", 2, "-o", out,
    )  # fmt: skip
    assert code == 0, err
    assert type(load(out)) is MDN and text.startswith("trained MDN 1 -> 1")
    assert "ensemble_rows" not in load_metadata(out)


def test_components_auto_records_the_choice(capsys, sine_csv, tmp_path):
    from mdnkit.estimator import AUTO_COMPONENTS

    out = tmp_path / "auto.mdn"
    code, text, err = _run(
        capsys, "fit", sine_csv, "--x", "x", "--y", "y", "--components", "auto", "--ensemble", 2,
        "--hidden", 8, "--epochs", 3, "-o", out,
    )  # fmt: skip
    assert code == 0, err
    scores = load_metadata(out)["components_scores"]
    assert sorted(map(int, scores)) == sorted(AUTO_COMPONENTS)
    best = min(AUTO_COMPONENTS, key=lambda k: scores[str(k)])  # the first of equals
    model = load(out)
    assert model.num_components == best
    assert load_metadata(out)["history"]["best_nll"] == pytest.approx(scores[str(best)])
    assert f"K = {best} of " in text
    code, info, _ = _run(capsys, "info", out)
    assert f"K={best}: {scores[str(best)]:.4f} (chosen)" in info


def test_a_discrete_target_warns_once_after_success_and_floors_the_scales(capsys, tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 1))
    y = np.clip(np.round(3 + 1.5 * x + rng.normal(size=(400, 1))), 0, 7)  # scores 0..7
    data = tmp_path / "scores.csv"
    write_csv(data, ["x", "q"], np.hstack([x, y]))
    argv = ["fit", data, "--x", "x", "--y", "q", "--ensemble", 2, "--hidden", 8, "--epochs", 2]
    code, _, err = _run(capsys, *argv, "-o", tmp_path / "a.mdn")
    assert code == 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mdnkit fit: warning: the target looks discrete")
    assert "resolution 1" in lines[0] and "--target-resolution none" in lines[0]
    from mdnkit.estimator import RESOLUTION_FLOOR

    # the floor in standardised units: RESOLUTION_FLOOR x the step over the target's spread
    floor = RESOLUTION_FLOOR * 1.0 / np.std(y)
    assert load(tmp_path / "a.mdn").config()["min_scale"] == pytest.approx(floor, rel=1e-6)
    assert load_metadata(tmp_path / "a.mdn")["target_resolution"] == [1.0]
    code, _, err = _run(capsys, *argv, "--target-resolution", "none", "-o", tmp_path / "b.mdn")
    assert code == 0 and err == ""
    assert load(tmp_path / "b.mdn").config()["min_scale"] == 1e-3
    code, _, err = _run(capsys, *argv, "--target-resolution", 0.5, "-o", tmp_path / "c.mdn")
    assert code == 0 and err == ""  # a resolution given: no warning, the floor at its half
    half = RESOLUTION_FLOOR * 0.5 / np.std(y)
    assert load(tmp_path / "c.mdn").config()["min_scale"] == pytest.approx(half, rel=1e-6)


@pytest.mark.parametrize(
    "options, fragment",
    [
        (["--ensemble", "0"], "--ensemble: expected a positive integer, found '0'"),
        (["--ensemble", "two"], "--ensemble"),
        (["--components", "x"], "--components: expected a positive integer or auto, found 'x'"),
        (["--components", "0"], "--components"),
        (["--epochs", "auto0"], "--epochs"),
        (["--batch-size", "-4"], "--batch-size"),
        (["--patience", "never"], "--patience: expected a positive integer, auto or none"),
        (["--target-resolution", "0"], "--target-resolution"),
        (["--components", "auto", "--validation-split", "0"], "--validation-split > 0"),
    ],
)
def test_bad_values_exit_2_with_one_line(capsys, sine_csv, tmp_path, options, fragment):
    out = tmp_path / "m.mdn"
    code, _, err = _run(capsys, "fit", sine_csv, "--x", "x", "--y", "y", *options, "-o", out)
    _one_line_error(code, err, fragment)
    assert not out.exists()


def _interrupt_at(monkeypatch, step: int) -> None:
    """SIGINT at the ``step``-th optimiser step of an ensemble (mid-epoch, mid-candidate)."""
    from mdnkit.ensemble import EnsembleFastStep

    real, calls = EnsembleFastStep.step, [0]

    def step_then_signal(self, x, z):
        calls[0] += 1
        if calls[0] == step:
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, x, z)

    monkeypatch.setattr(EnsembleFastStep, "step", step_then_signal)


# 9 steps an epoch (270 training rows a member, batches of 32), 4 epochs a run: the 23rd step is
# in the 3rd epoch; with auto the 49th is in the 2nd epoch of the 2nd candidate
@pytest.mark.parametrize("components, step", [("3", 23), ("auto", 36 + 13)])
def test_an_interrupted_ensemble_fit_resumes_to_the_same_weights(
    capsys, monkeypatch, sine_csv, tmp_path, components, step
):
    """SIGINT mid-epoch (with auto: in the second candidate), then --resume: the same model,
    bit for bit, and the same choice of K as a run never interrupted."""
    argv = ["fit", sine_csv, "--x", "x", "--y", "y", "--ensemble", 3, "--hidden", 8,
            "--components", components, "--epochs", 4, "--batch-size", 32, "--seed", 2]  # fmt: skip
    ckpt = tmp_path / "run.ckpt"
    with monkeypatch.context() as patch:
        _interrupt_at(patch, step)
        code, _, err = _run(capsys, *argv, "--checkpoint", ckpt, "-o", tmp_path / "cut.mdn")
    assert code == 130 and "stopped by SIGINT" in err, err
    assert isinstance(load(tmp_path / "cut.mdn"), MDNEnsemble)  # the best model so far
    # the interrupted run's checkpoint (with auto: K=3's own file) is a model file too
    cut = ckpt if components != "auto" else tmp_path / "run.ckpt.k3"
    assert load_metadata(cut)["step"] > 0
    code, _, err = _run(capsys, "eval", cut, sine_csv)
    assert code == 0, err
    code, _, err = _run(capsys, *argv, "--checkpoint", ckpt, "--resume", "-o", tmp_path / "a.mdn")
    assert code == 0, err
    code, _, err = _run(capsys, *argv, "-o", tmp_path / "b.mdn")
    assert code == 0, err
    a, b = load(tmp_path / "a.mdn").state_dict(), load(tmp_path / "b.mdn").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = load_metadata(tmp_path / "a.mdn"), load_metadata(tmp_path / "b.mdn")
    assert ma["history"]["val_nll"] == mb["history"]["val_nll"]
    assert ma.get("components_scores") == mb.get("components_scores")


def test_a_streamed_file_trains_the_ensemble_on_shared_batches(capsys, monkeypatch, sine_csv):
    monkeypatch.setenv("MDNKIT_FIT_MEMORY_BYTES", "0")  # stream whatever the size
    out = sine_csv.parent / "streamed.mdn"
    code, _, err = _run(
        capsys, "fit", sine_csv, "--x", "x", "--y", "y", "--ensemble", 2, "--hidden", 8,
        "--components", 3, "--epochs", 2, "-o", out,
    )  # fmt: skip
    assert code == 0, err
    model = load(out)
    assert isinstance(model, MDNEnsemble) and model.n_members == 2
    assert load_metadata(out)["ensemble_rows"] == "shared"
    code, res, err = _run(capsys, "eval", out, sine_csv, "--json")
    assert code == 0, err
    x, y = read_csv(sine_csv, ["x"]), read_csv(sine_csv, ["y"]).astype(np.float64)
    assert json.loads(res)["nll"] == pytest.approx(_scipy_nll(model, x, y), rel=1e-5, abs=1e-6)


def test_a_file_of_the_previous_version_still_works(capsys, sine_csv, tmp_path):
    """One MDN with the metadata the previous ``fit`` wrote (no budget, no ensemble keys)."""
    torch.manual_seed(0)
    net = MDN(1, 1, hidden=(8,), num_components=2)
    net.prepare(torch.zeros(4, 1) + torch.arange(4.0)[:, None], torch.arange(4.0)[:, None])
    old = tmp_path / "old.mdn"
    save(net, old, metadata={"x_columns": ["x"], "y_columns": ["y"], "data": "d.csv", "rows": 4})
    for argv in (["eval", old, sine_csv], ["info", old]):
        code, _, err = _run(capsys, *argv)
        assert code == 0, err
    code, _, err = _run(capsys, "sample", old, sine_csv, "-o", tmp_path / "s.csv")
    assert code == 0, err


def test_an_ensemble_file_with_a_nan_weight_is_refused(capsys, sine_csv, tmp_path):
    torch.manual_seed(0)
    ens = MDNEnsemble(1, 1, n_members=2, hidden=(4,), num_components=2)
    with torch.no_grad():
        ens.weights[0][1, 0, 0] = float("nan")
    bad = tmp_path / "nan.mdn"
    save(ens, bad, metadata={"x_columns": ["x"], "y_columns": ["y"]})
    code, _, err = _run(capsys, "eval", bad, sine_csv)
    _one_line_error(code, err, "nan.mdn", "unusable weights", "weights.0")


@pytest.mark.slow  # two processes under torchrun: about 30 s on 2 cores
def test_data_parallel_components_auto(sine_csv, tmp_path):
    """Under torchrun the candidates of --components auto share one process group (a second
    join of the rendezvous would not return); rank 0 writes the ensemble and alone prints the
    discrete-target warning (an integer target)."""
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, 400)
    data = tmp_path / "counts.csv"
    data.write_text("x,y\n" + "".join(f"{a},{round(2 * a + rng.normal())}\n" for a in x))
    out = tmp_path / "dp.mdn"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "mdnkit", "fit", data, "--x", "x", "--y", "y", "--ensemble", 2,
           "--hidden", 8, "--components", "auto", "--epochs", 2, "-o", out]  # fmt: skip
    run = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stderr.count("the target looks discrete") == 1, run.stderr[-2000:]
    from mdnkit.estimator import AUTO_COMPONENTS

    assert isinstance(load(out), MDNEnsemble)
    assert sorted(map(int, load_metadata(out)["components_scores"])) == sorted(AUTO_COMPONENTS)


def test_resuming_another_kind_of_network_is_refused(capsys, sine_csv, tmp_path):
    ckpt, out = tmp_path / "one.ckpt", tmp_path / "m.mdn"
    argv = ["fit", sine_csv, "--x", "x", "--y", "y", "--hidden", 8, "--epochs", 1]
    code, _, err = _run(capsys, *argv, "--ensemble", 1, "--checkpoint", ckpt, "-o", out)
    assert code == 0, err
    out.unlink()
    code, _, err = _run(capsys, *argv, "--ensemble", 2, "--checkpoint", ckpt, "--resume", "-o", out)
    _one_line_error(code, err, "one.ckpt", "one MDN (--ensemble 1)", "an ensemble")
    assert not out.exists()

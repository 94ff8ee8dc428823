"""Smoke tests of the conditional MDN-RNN examples: each runs its ``--smoke`` mode (a few
seconds: a few episodes or drawings, a tiny model, one epoch) in a subprocess, as a user would,
and must exit 0, print its JSON report and write its pictures."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mdnkit.datasets import default_data_root

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
HAS_GYMNASIUM = importlib.util.find_spec("gymnasium") is not None


def run_example(script: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


def report_of(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr[-3000:]
    start = result.stdout.index("{")
    return json.loads(result.stdout[start:])


@pytest.mark.skipif(not HAS_GYMNASIUM, reason="gymnasium is not installed (pip install gymnasium)")
def test_world_model_smoke(tmp_path):
    report = report_of(run_example("world_model.py", "--smoke", "--out", str(tmp_path)))
    assert report["env"] == "CartPole-v1"
    for key in ("mdnrnn", "mdnrnn_no_actions", "memoryless_mdn", "delta_gaussian"):
        assert set(report[key]) >= {"nll", "obs_nll", "done_nll"}, key
        assert all(v == v for v in report[key].values()), key  # no NaN
    assert "actions_gain_nats_per_step" in report
    assert (tmp_path / "world_model_dreams.png").stat().st_size > 1000
    assert json.loads((tmp_path / "world_model_report.json").read_text()) == report


def test_world_model_without_gymnasium_exits_2_with_one_line(tmp_path):
    code = (
        "import runpy, sys; sys.modules['gymnasium'] = None; "
        f"sys.argv = ['world_model.py', '--smoke', '--out', {str(tmp_path)!r}]; "
        f"runpy.run_path({str(EXAMPLES / 'world_model.py')!r}, run_name='__main__')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "gymnasium" in lines[0], result.stderr


@pytest.mark.skipif(
    not (default_data_root() / "strokes" / "kanji.npz").is_file(),
    reason="the kanji data (../shared/data/strokes/kanji.npz) is not here",
)
def test_conditional_smoke(tmp_path):
    report = report_of(run_example("conditional.py", "--smoke", "--out", str(tmp_path)))
    assert report["test_nll_true_labels"] == report["test_nll_true_labels"]  # not NaN
    assert set(report["generated_mean_strokes"]) == {"1-10 strokes", "11-14 strokes", "15+ strokes"}
    for name in ("conditional_generated.png", "conditional_test.png"):
        assert (tmp_path / name).stat().st_size > 1000, name


def test_conditional_bad_data_folder_exits_2(tmp_path):
    result = run_example(
        "conditional.py", "--smoke", "--data", str(tmp_path), "--out", str(tmp_path)
    )
    assert result.returncode == 2
    assert "kanji data not found" in result.stderr

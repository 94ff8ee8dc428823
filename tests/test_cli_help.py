"""The ``mdnkit`` command's help: every option described with its default (the library's, where
the library declares one), examples for every command, no torch import for ``--help`` or an
argument error, and ``python -m mdnkit``."""

from __future__ import annotations

import argparse
import inspect
import json
import re
import subprocess
import sys

import pytest

from mdnkit.cli import build_parser, main

COMMANDS = ("demo", "fit", "eval", "sample", "plot", "info", "export")


def _help(capsys, *argv: str) -> str:
    assert main([*argv, "--help"]) == 0
    out = capsys.readouterr().out
    return " ".join(out.split())  # lines joined: a wrapped help reads as one line


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _library() -> dict[tuple[str, str], str]:
    """(command, option) -> the default the library declares, as the help should show it; read
    by importing the library (the help reads the source without importing it).  ``fit`` trains
    what ``MDNRegressor()`` trains: its defaults."""
    from mdnkit.estimator import MDNRegressor
    from mdnkit.metrics import ScoreSums
    from mdnkit.mixture import GaussianMixture

    est = {k: p.default for k, p in inspect.signature(MDNRegressor).parameters.items()}
    sample = inspect.signature(GaussianMixture.sample).parameters
    fit = {
        "--epochs": "epochs",
        "--lr": "lr",
        "--batch-size": "batch_size",
        "--patience": "patience",
        "--validation-split": "validation_split",
        "--components": "num_components",
        "--ensemble": "n_estimators",
        "--covariance": "covariance",
        "--activation": "activation",
        "--min-scale": "min_scale",
        "--target-resolution": "target_resolution",
    }
    return {
        **{("fit", option): str(est[name]) for option, name in fit.items()},
        ("fit", "--hidden"): ",".join(map(str, est["hidden"])),
        ("eval", "--coverage"): str(inspect.signature(ScoreSums).parameters["coverage"].default),
        ("sample", "--temperature"): str(sample["temperature"].default),
        ("sample", "--sigma-temperature"): str(sample["sigma_temperature"].default),
    }


@pytest.mark.parametrize("command, option", sorted(_library()))
def test_help_shows_the_library_default(capsys, command, option):
    text = _help(capsys, command).split(" options: ", 1)[1]  # not the usage line
    expected = _library()[(command, option)]
    # the option's line: its flag, metavar or choices, description, then "(default: ...)"
    found = re.search(
        rf"(?:^|\s){re.escape(option)}(?: [^-][^ ]*)? [^-].*?\(default: ([^)]*)\)", text
    )
    assert found, text
    assert found.group(1) == expected


def test_every_library_default_is_read_from_the_source(monkeypatch):
    """Each option of cli._LIBRARY_DEFAULTS: the value read from the module's source (what the
    help shows, without importing) equals the one the imported library uses."""
    from mdnkit import cli

    real = cli._imported_default
    homes = [h for options in cli._LIBRARY_DEFAULTS.values() for h in options.values()]
    expected = [real(*h) for h in homes]

    def refuse(*home):
        raise AssertionError(f"the help imported mdnkit.{home[0]} to read {home}")

    monkeypatch.setattr(cli, "_imported_default", refuse)
    assert [cli._declared_default(*h) for h in homes] == expected


def test_the_command_uses_the_defaults_its_help_shows(tmp_path, capsys):
    """A fit without options trains with the library's settings (MDNRegressor's): the model's
    configuration holds its defaults, the budget is training_budget's for the training rows,
    and the patience it resolved to is the one that stopped it."""
    import numpy as np

    from mdnkit.datasets import write_csv
    from mdnkit.estimator import MDNRegressor, training_budget
    from mdnkit.io import load, load_metadata

    rng = np.random.default_rng(0)
    write_csv(tmp_path / "d.csv", ["x", "y"], rng.normal(size=(80, 2)))  # y: pure noise
    out = tmp_path / "m.mdn"
    assert main(["fit", str(tmp_path / "d.csv"), "--x", "x", "--y", "y", "-o", str(out)]) == 0
    config = load(out).config()
    lib = _library()
    if lib[("fit", "--components")] != "auto":
        assert config["num_components"] == int(lib[("fit", "--components")])
    assert config.get("n_members", 1) == int(lib[("fit", "--ensemble")])
    assert ",".join(map(str, config["hidden"])) == lib[("fit", "--hidden")]
    assert config["activation"] == lib[("fit", "--activation")]
    assert config["min_scale"] == float(lib[("fit", "--min-scale")])  # continuous: no floor
    meta = load_metadata(out)
    n_train = 80 - round(80 * float(lib[("fit", "--validation-split")]))
    est = {k: p.default for k, p in inspect.signature(MDNRegressor).parameters.items()}
    budget = training_budget(n_train, est["epochs"], est["batch_size"], est["patience"])
    assert meta["budget"] == budget._asdict()
    h = meta["history"]
    if h["stopped_early"]:  # noise: the validation NLL stops improving long before the end
        assert len(h["train_nll"]) - 1 - h["best_epoch"] == budget.patience
    assert len(h["train_nll"]) <= budget.epochs
    capsys.readouterr()


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_a_description_examples_and_described_options(capsys, command):
    parser = _subparsers()[command]
    assert parser.description and len(parser.description) > 40
    assert parser.epilog.startswith("examples:\n") and f"mdnkit {command}" in parser.epilog
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:
            continue
        assert action.help and len(action.help) > 8, (command, action.dest)
    text = _help(capsys, command)
    assert "examples: mdnkit " + command in text
    # every option with a value (not a flag) says its default, unless it has none
    for action in parser._actions:
        takes_value = action.nargs != 0 and action.option_strings and action.required is False
        if takes_value and action.help != argparse.SUPPRESS and action.default is not None:
            assert f"(default: {action.default}" in text or "(default:" in action.help


def test_top_level_help_lists_every_command_with_examples(capsys):
    text = _help(capsys)
    for command in (*COMMANDS, "serve"):
        assert f" {command} " in text
    assert "examples: mdnkit demo" in text and "mdnkit COMMAND --help" in text


_NO_TORCH = """
import sys
from mdnkit.cli import main
codes = [main(argv) for argv in {argvs!r}]
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "matplotlib", "sklearn"))
print(json.dumps({{"codes": codes, "heavy": heavy}}))
"""


def test_help_and_argument_errors_do_not_import_torch(tmp_path):
    """--help (the command's and every subcommand's) and argument errors run without importing
    torch (nor matplotlib or scikit-learn): checked in a fresh interpreter's sys.modules."""
    argvs = [
        ["--help"],
        ["--version"],
        *([c, "--help"] for c in (*COMMANDS, "serve")),
        ["fit", "d.csv", "--x", "a", "--y", "b", "--epochs", "0", "-o", "m.mdn"],
        ["sample", "m.mdn", "d.csv", "--temperature", "nan", "-o", "s.csv"],
        ["frobnicate"],
        [],
    ]
    code = "import json\n" + _NO_TORCH.format(argvs=argvs)
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    assert result["codes"] == [0] * (3 + len(COMMANDS)) + [2, 2, 2, 2]


def test_python_dash_m_mdnkit(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "mdnkit", "--help"], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("usage: mdnkit ")
    bad = subprocess.run(
        [sys.executable, "-m", "mdnkit", "eval", str(tmp_path / "none.mdn"), "d.csv"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (
        bad.returncode == 2 and bad.stderr.count("\n") == 1 and "no such model file" in bad.stderr
    )

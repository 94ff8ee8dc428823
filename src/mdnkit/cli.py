"""The ``mdnkit`` command: train, evaluate, sample, plot and inspect MDNs on CSV files.

::

    mdnkit demo [--out DIR] [--seed N]
    mdnkit fit DATA.csv --x COLS --y COLS [--ensemble N] [--components K|auto] ... -o MODEL
    mdnkit eval MODEL DATA.csv [--json]
    mdnkit sample MODEL DATA.csv -n N [--temperature T] [--sigma-temperature S] -o OUT.csv
    mdnkit plot MODEL [DATA.csv] -o FIG.png
    mdnkit info MODEL [--history] [--json]
    mdnkit export MODEL -o FILE.onnx

``mdnkit COMMAND --help`` shows every option with its default (the library's: ``fit`` trains
what ``MDNRegressor()`` trains, with its defaults) and examples; ``--help`` and option errors never import torch (the
commands import what they need when they run).  CSV files have a header row; columns are given
by name or 0-based position (``--x a,b``, ``--y 2``).  ``fit`` stores the column names and the
training history in the model file, so ``eval``, ``sample`` and ``plot`` find the columns again
by name.  Every problem with the input (a missing file or column, a file without a header row, a
non-numeric cell, NaN or inf, a number beyond float32's range or a column float32 would round
away, an ambiguous column name, an empty file, ragged rows, a line without end, a file that is
not a model or a model given as data, an output that is an input, a size that cannot be
allocated, a bad option value) is reported as ONE line on stderr with exit status 2, and no
output file is written; output files are written atomically.  See ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

import numpy as np

from .files import atomic_path
from .options import Activation, CovarianceType

__all__ = ["main", "build_parser", "DEMO_MODEL", "DEMO_FIT"]

PROG = "mdnkit"

#: The demo's network (tuned on the inverted sine, 3000 points: see docs/cli.md).
DEMO_MODEL: dict[str, Any] = {"hidden": (64, 64), "num_components": 10, "activation": "silu"}
#: The demo's training settings.
DEMO_FIT: dict[str, Any] = {
    "epochs": 150,
    "lr": 5e-3,
    "batch_size": 256,  # one CPU thread in fit: larger batches switch to several, slower here
    "patience": None,
    "lr_schedule": "cosine",
    "validation_split": 0.0,  # all 3000 points; cosine annealing needs no early stopping
}


class CliError(Exception):
    """A problem with the user's input: printed as one line, exit status 2."""


# ------------------------------------------------------------------------------ option types
def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {text!r}")
    return v


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, found {text!r}") from None


def _float_in(lo: float, hi: float, lo_open: bool, hi_open: bool, what: str):
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, found {text!r}") from None
        ok = (
            math.isfinite(v)
            and (v > lo if lo_open else v >= lo)
            and (v < hi if hi_open else v <= hi)
        )
        if not ok:
            raise argparse.ArgumentTypeError(f"expected {what}, found {text!r}")
        return v

    return parse


_positive_float = _float_in(0.0, math.inf, True, True, "a positive number")
_nonneg_float = _float_in(0.0, math.inf, False, True, "a number >= 0")
_fraction = _float_in(0.0, 1.0, False, True, "a number in [0, 1)")
_coverage = _float_in(0.0, 1.0, True, True, "a number in (0, 1)")


def _or_words(parse, *words: str, what: str):
    """An option type: one of ``words`` (``"auto"``, ``"none"``; the command reads ``"none"``
    as None, which the parser keeps for "not given") or what ``parse`` reads; the error names
    every accepted form."""

    def read(text: str):
        word = text.strip().lower()
        if word in words:
            return word
        try:
            return parse(text)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"expected {what}, found {text!r}") from None

    return read


_int_or_auto = _or_words(_positive_int, "auto", what="a positive integer or auto")
_patience = _or_words(_positive_int, "auto", "none", what="a positive integer, auto or none")
_resolution = _or_words(_positive_float, "auto", "none", what="a positive number, auto or none")


def _hidden(text: str) -> tuple[int, ...]:
    if text.strip() in ("", "none", "0"):
        return ()
    try:
        sizes = tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated layer sizes such as 64,64, found {text!r}"
        ) from None
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"expected positive layer sizes, found {text!r}")
    return sizes


def _columns(text: str) -> list[str]:
    cols = [c.strip() for c in text.split(",")]
    if not text.strip() or any(not c for c in cols):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated column names or positions, found {text!r}"
        )
    return cols


# ------------------------------------------------------------------------------ parser
#: The options whose default is the library's, spelled once where the library declares it:
#: command -> {option (dest) -> (module, owner, parameter)}.  The parser leaves them None; the
#: help shows the value read from the module's source (:func:`_declared_default`: torch is not
#: imported), and :func:`_library_defaults` sets it before the command runs.
_LIBRARY_DEFAULTS: dict[str, dict[str, tuple[str, str, str]]] = {
    # fit trains what MDNRegressor() trains: its defaults, read from its signature
    "fit": {
        dest: ("estimator", "MDNRegressor", param)
        for dest, param in (
            ("hidden", "hidden"),
            ("components", "num_components"),
            ("covariance", "covariance"),
            ("activation", "activation"),
            ("min_scale", "min_scale"),
            ("ensemble", "n_estimators"),
            ("epochs", "epochs"),
            ("lr", "lr"),
            ("batch_size", "batch_size"),
            ("patience", "patience"),
            ("validation_split", "validation_split"),
            ("target_resolution", "target_resolution"),
        )
    },
    "eval": {"coverage": ("metrics", "ScoreSums", "coverage")},
    "sample": {
        "temperature": ("mixture", "GaussianMixture.sample", "temperature"),
        "sigma_temperature": ("mixture", "GaussianMixture.sample", "sigma_temperature"),
    },
}


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help that shows every option's default (for :data:`_LIBRARY_DEFAULTS`, the library's)
    and keeps the examples of the epilog as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help
        if not text or text == argparse.SUPPRESS or not action.option_strings:
            return text
        home = getattr(action, "library_default", None)
        value = _declared_default(*home) if home else action.default
        if value is None or isinstance(value, bool) or value == argparse.SUPPRESS:
            return text
        shown = ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)
        return f"{text} (default: {shown.replace('%', '%%')})"


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing the usage and exiting, with defaults in the
    help (every subcommand's parser is one too: ``serve``'s, made in serve.py, as well)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # type: ignore[override]
        raise CliError(f"{self.prog}: error: {message}")


def _declared_default(module: str, owner: str, name: str) -> Any:
    """The default of parameter (or dataclass field) ``name`` of ``owner`` (``"Class"``: its
    ``__init__`` or its fields; ``"Class.method"``; ``"function"``) in ``mdnkit.<module>``,
    read from the module's source text without importing it (the help must not import torch):
    a literal, or a module constant given by name (``DEFAULT_MIN_SCALE``, also one imported with
    ``from .layout import ...``).  Without the source, or where the source says something
    else, the module is imported (tests/test_cli_help.py checks that the help imports no torch,
    and that what it shows is what the library uses)."""
    tree = _module_tree(module)
    node = _owner_node(tree, owner) if tree is not None else None
    default = _default_node(node, name) if node is not None else None
    try:
        if default is not None:
            return _literal(module, default)
    except (ValueError, TypeError, SyntaxError, LookupError):  # not a literal, nor a constant
        pass
    return _imported_default(module, owner, name)


def _imported_default(module: str, owner: str, name: str) -> Any:
    """:func:`_declared_default` by importing the module: the value the library uses."""
    import importlib
    import inspect

    obj: Any = importlib.import_module(f".{module}", __package__)
    for part in owner.split("."):
        obj = getattr(obj, part)
    return inspect.signature(obj).parameters[name].default


@functools.cache
def _module_tree(module: str):
    """The parsed source of ``mdnkit.<module>`` (None without a source file), parsed once."""
    import ast
    from importlib.util import find_spec

    spec = find_spec(f"{__package__}.{module}")
    origin = spec.origin if spec is not None else None
    if not origin or not origin.endswith(".py") or not os.path.isfile(origin):
        return None
    return ast.parse(Path(origin).read_text(encoding="utf-8"))


def _owner_node(tree, owner: str):
    """The class or function definition ``owner`` (dotted: a method) in ``tree``."""
    import ast

    node = tree
    for part in owner.split("."):
        node = next(
            (
                n
                for n in node.body
                if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and n.name == part
            ),
            None,
        )
        if node is None:
            return None
    if isinstance(node, ast.ClassDef):
        init = next(
            (n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"),
            None,
        )
        return init if init is not None else node
    return node


def _default_node(node, name: str):
    """The expression of ``name``'s default in a function or a dataclass's body, or None."""
    import ast

    if isinstance(node, ast.ClassDef):  # a dataclass: ``name: type = value``
        for n in node.body:
            if isinstance(n, ast.AnnAssign) and getattr(n.target, "id", None) == name:
                return n.value
        return None
    args = node.args
    positional = [*args.posonlyargs, *args.args]
    pairs = zip(positional[len(positional) - len(args.defaults) :], args.defaults)
    for arg, value in (*pairs, *zip(args.kwonlyargs, args.kw_defaults)):
        if arg.arg == name:
            return value
    return None


def _literal(module: str, node) -> Any:
    """The value of a literal expression, or of a module constant named by ``node``."""
    import ast

    if not isinstance(node, ast.Name):
        return ast.literal_eval(node)
    tree = _module_tree(module)
    if tree is None:
        raise LookupError(f"mdnkit.{module}: no source")
    for n in tree.body:
        if isinstance(n, ast.Assign) and any(getattr(t, "id", None) == node.id for t in n.targets):
            return ast.literal_eval(n.value)
        if isinstance(n, ast.AnnAssign) and getattr(n.target, "id", None) == node.id:
            return ast.literal_eval(n.value)
        if isinstance(n, ast.ImportFrom) and n.level == 1 and n.module:
            if any((a.asname or a.name) == node.id and a.name == node.id for a in n.names):
                return _literal(n.module, node)
    raise LookupError(f"mdnkit.{module}: no constant {node.id}")


def _declared_constant(module: str, name: str) -> Any:
    """The module constant ``mdnkit.<module>.<name>``, read from the source as
    :func:`_declared_default` reads a default (imported when the source does not say)."""
    import ast

    try:
        return _literal(module, ast.Name(id=name))
    except (ValueError, TypeError, SyntaxError, LookupError):
        import importlib

        return getattr(importlib.import_module(f".{module}", __package__), name)


def _library_defaults(args: argparse.Namespace) -> None:
    """Set the options of :data:`_LIBRARY_DEFAULTS` that were not given to the library's
    defaults (importing the modules that declare them)."""
    for dest, home in _LIBRARY_DEFAULTS.get(args.command, {}).items():
        if getattr(args, dest, None) is None:
            setattr(args, dest, _imported_default(*home))


def _command(sub, name: str, summary: str, description: str, *examples: str):
    """A subcommand's parser: ``summary`` in ``mdnkit --help``, ``description`` and the
    ``examples`` in its own help."""
    import textwrap

    lines = "\n".join(f"  {PROG} {name} {e}".rstrip() for e in examples)
    return sub.add_parser(
        name,
        help=summary,
        description=textwrap.fill(description, 78),
        epilog=f"examples:\n{lines}",
    )


def _library_option(parser, command: str, *flags: str, **kwargs: Any) -> argparse.Action:
    """An option whose default is the library's (:data:`_LIBRARY_DEFAULTS`)."""
    action = parser.add_argument(*flags, default=None, **kwargs)
    action.library_default = _LIBRARY_DEFAULTS[command][action.dest]  # type: ignore[attr-defined]
    return action


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``mdnkit`` command (errors raise :class:`CliError`)."""
    from . import __version__

    p = _Parser(
        prog=PROG,
        description="Mixture density networks on CSV files: train a model that predicts the\n"
        "whole distribution of the target for every row, score it, sample from it and\n"
        f"draw it.  Every command has its own help: {PROG} COMMAND --help.",
        epilog=f"examples:\n  {PROG} demo\n  {PROG} fit data.csv --x a,b --y y -o model.mdn\n"
        f"  {PROG} eval model.mdn test.csv\n  {PROG} sample model.mdn test.csv -n 10 -o s.csv",
    )
    p.add_argument("--version", action="version", version=f"mdnkit {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _demo_parser(sub)
    _fit_parser(sub)
    _eval_parser(sub)
    _sample_parser(sub)
    _plot_arguments(
        _command(
            sub,
            "plot",
            "draw the model to a PNG (calibration for several inputs, else the density)",
            "Draw MODEL to a picture.  For a model of several inputs given DATA.csv: the "
            "calibration panel (the predicted intervals against the observed target for every "
            "row, the PIT histogram and the coverage).  Else the density of the target along "
            "one input (--x-dim), the other inputs held at --at or at their mean.",
            "model.mdn test.csv -o calibration.png",
            "model.mdn test.csv --kind density --x-dim AT --at V=50 -o density.png",
            "model.mdn -o density.png",
        )
    )
    _info_parser(sub)
    x = _command(
        sub,
        "export",
        "export an MDN-RNN's step function to ONNX",
        "Export an MDN-RNN's one-step function to ONNX (run it with onnxruntime).",
        "sketch.mdn -o sketch.onnx",
    )
    x.add_argument("model", metavar="MODEL", help="a model file of an MDN-RNN")
    x.add_argument("-o", "--output", required=True, metavar="FILE.onnx", help="the ONNX file")

    from .serve import add_serve_parser  # the live front: docs/live.md

    add_serve_parser(sub)
    return p


def _demo_parser(sub) -> None:
    from .datasets import INVERTED_SINE_ENTROPY  # NumPy only

    d = _command(
        sub,
        "demo",
        "train on the inverted sine and write the pictures",
        "Train an MDN on the inverted sine, x = 7 sin(0.75 y) + 0.5 y + noise (3000 points; "
        f"no model can reach an NLL below {INVERTED_SINE_ENTROPY} nats), print its NLL on "
        "fresh points and write pictures of it (the density, samples, the mixture, "
        "temperatures, components, training curves, PIT) into --out.",
        "",
        "--out pictures --seed 1",
    )
    d.add_argument("--out", default="mdnkit-demo", help="folder for the pictures")
    d.add_argument("--seed", type=_int, default=0, help="random seed of the data and the model")
    d.add_argument("--epochs", type=_positive_int, default=None, help=argparse.SUPPRESS)
    d.add_argument("--n-test", type=_positive_int, default=20_000, help=argparse.SUPPRESS)
    _progress_arguments(d, quiet=False)


def _fit_parser(sub) -> None:
    f = _command(
        sub,
        "fit",
        "train an MDN (by default a deep ensemble of them) on columns of a CSV file",
        "Train a mixture density network on columns of a CSV file and save it, with the "
        "column names, to MODEL: by default what MDNRegressor() trains, a deep ensemble of "
        "--ensemble MDNs, each on rows of its own, predicting their equal-weight mixture.  "
        "The file must have a header row of column names and be comma-separated.  A "
        "--validation-split of the rows is held out: training stops after --patience epochs "
        "without a better validation NLL and keeps the best epoch's weights.",
        "ccpp.csv --x AT,V,AP,RH --y PE -o ccpp.mdn",
        "data.csv --x 0,1 --y 2 --components auto --ensemble 10 -o model.mdn",
        "data.csv --x 0,1 --y 2 --ensemble 1 --components 10 --epochs 500 --patience 50 "
        "-o model.mdn",
        "big.csv --x x --y y --checkpoint run.ckpt --resume -o model.mdn",
    )
    f.add_argument("data", metavar="DATA.csv", help="a comma-separated file with a header row")
    f.add_argument(
        "--x",
        type=_columns,
        required=True,
        metavar="COLS",
        help="input columns: names or positions",
    )
    f.add_argument(
        "--y",
        type=_columns,
        required=True,
        metavar="COLS",
        help="target columns: names or positions",
    )
    _fit_library_options(functools.partial(_library_option, f, "fit"))
    f.add_argument("--seed", type=_int, default=0, help="seed of the weights, split and batches")
    f.add_argument("-o", "--output", required=True, metavar="MODEL", help="the model file")
    _checkpoint_arguments(f)
    _progress_arguments(f)


def _fit_library_options(lib) -> None:
    """``fit``'s options whose defaults are MDNRegressor's (``lib`` adds one)."""
    lib("--hidden", type=_hidden, metavar="SIZES", help="hidden layer sizes (none: no layer)")
    lib(
        "--components",
        type=_int_or_auto,
        metavar="K|auto",
        help="mixture components of each network (auto: each of "
        f"{','.join(map(str, _declared_constant('estimator', 'AUTO_COMPONENTS')))} trained, the "
        "best validation NLL kept)",
    )
    lib(
        "--ensemble",
        type=_positive_int,
        metavar="N",
        help="networks in the deep ensemble, each on rows of its own, predicting their "
        "equal-weight mixture (1: one MDN)",
    )
    lib("--covariance", choices=get_args(CovarianceType), help="each component's covariance")
    lib("--activation", choices=get_args(Activation), help="activation of the hidden layers")
    lib("--min-scale", type=_positive_float, help="floor of the component scales (standardised)")
    lib(
        "--epochs",
        type=_int_or_auto,
        metavar="N|auto",
        help="most epochs (early stopping may end sooner; auto: from the number of rows)",
    )
    lib("--lr", type=_positive_float, help="learning rate (Adam)")
    lib(
        "--batch-size",
        type=_int_or_auto,
        metavar="N|auto",
        help="rows per optimiser step (auto: from the number of rows)",
    )
    lib(
        "--patience",
        type=_patience,
        metavar="N|auto|none",
        help="epochs without a better NLL before stopping (auto: from the number of rows; "
        "none: never stop early)",
    )
    lib(
        "--validation-split",
        type=_fraction,
        help="fraction of the rows held out to watch (0: watch the training NLL)",
    )
    lib(
        "--target-resolution",
        type=_resolution,
        metavar="H|auto|none",
        help="auto: a target of few values on a grid (integers, scores) gets component "
        f"scales of at least {_declared_constant('estimator', 'RESOLUTION_FLOOR')} x its step "
        "and a warning; H: that step; none: no floor",
    )


def _progress_arguments(parser: argparse.ArgumentParser, quiet: bool = True) -> None:
    """``--progress/--no-progress`` (and ``--quiet``) of the commands that train."""
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a progress bar with the live NLLs on stderr (default: when stderr is a terminal)",
    )
    if quiet:
        parser.add_argument(
            "-q", "--quiet", action="store_true", help="no progress bar and no summary line"
        )


def _eval_parser(sub) -> None:
    e = _command(
        sub,
        "eval",
        "NLL, CRPS, RMSE, calibration and coverage on a CSV file",
        "Score MODEL on DATA.csv: the NLL (nats per row, every constant included), the CRPS, "
        "the RMSE of the predicted mean, the calibration error (of the PIT) and the share of "
        "rows inside the central --coverage interval.  The columns are the ones fit stored.",
        "model.mdn test.csv",
        "model.mdn test.csv --coverage 0.95 --json",
    )
    e.add_argument("model", metavar="MODEL", help="a model file written by mdnkit fit")
    e.add_argument("data", metavar="DATA.csv", help="a comma-separated file with a header row")
    e.add_argument("--x", type=_columns, metavar="COLS", help="override the stored input columns")
    e.add_argument("--y", type=_columns, metavar="COLS", help="override the stored target columns")
    _library_option(
        e, "eval", "--coverage", type=_coverage, help="nominal coverage of the central interval"
    )
    e.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _sample_parser(sub) -> None:
    s = _command(
        sub,
        "sample",
        "draw N samples of y for every row of a CSV file",
        "Draw -n samples of the target for every row of DATA.csv into OUT.csv: a row column "
        "(the 0-based input row), the inputs, then the targets.  Numbers are written as the "
        "shortest decimals that read back as the same float32 (the models' precision).",
        "model.mdn test.csv -n 100 -o samples.csv",
        "model.mdn test.csv -n 10 --temperature 0.5 --seed 1 -o samples.csv",
    )
    s.add_argument("model", metavar="MODEL", help="a model file written by mdnkit fit")
    s.add_argument("data", metavar="DATA.csv", help="a comma-separated file with a header row")
    s.add_argument(
        "-n", "--num-samples", type=_positive_int, default=1, help="samples per input row"
    )
    _library_option(
        s,
        "sample",
        "--temperature",
        type=_nonneg_float,
        help="divides the mixture logits (0: the most likely component)",
    )
    _library_option(
        s,
        "sample",
        "--sigma-temperature",
        type=_nonneg_float,
        help="multiplies each component's covariance (0: its mean)",
    )
    s.add_argument("--seed", type=_int, default=0, help="random seed of the samples")
    s.add_argument("--x", type=_columns, metavar="COLS", help="override the stored input columns")
    s.add_argument("-o", "--output", required=True, metavar="OUT.csv", help="the samples' file")


def _info_parser(sub) -> None:
    i = _command(
        sub,
        "info",
        "describe a model file",
        "Describe a model file: its class, settings, columns and training (epochs are "
        "numbered from 1, as fit numbers them).",
        "model.mdn",
        "model.mdn --history",
        "model.mdn --json",
    )
    i.add_argument("model", metavar="MODEL", help="a model file")
    i.add_argument(
        "--history", action="store_true", help="also the NLLs and learning rate of every epoch"
    )
    i.add_argument("--json", action="store_true", help="print everything as JSON")


def _checkpoint_arguments(f: argparse.ArgumentParser) -> None:
    """``fit``'s checkpoint options (see docs/training.md)."""
    f.add_argument(
        "--checkpoint",
        metavar="FILE",
        default=None,
        help="write the whole training state here every epoch (and on Ctrl-C / SIGTERM)",
    )
    f.add_argument(
        "--checkpoint-every",
        type=_positive_int,
        default=None,
        metavar="N",
        help="also write the checkpoint every N optimiser steps",
    )
    f.add_argument(
        "--resume",
        action="store_true",
        help="continue from --checkpoint FILE when it exists (else start afresh)",
    )


def _plot_arguments(pl: argparse.ArgumentParser) -> None:
    """``plot``'s arguments (see plotting's notes on models of several inputs)."""
    pl.add_argument("model", metavar="MODEL", help="a model file written by mdnkit fit")
    pl.add_argument("data", metavar="DATA.csv", nargs="?", help="rows to draw (a slice needs none)")
    pl.add_argument(
        "--kind",
        choices=(
            "auto",
            "calibration",
            "intervals",
            "coverage",
            "pit",
            "density",
            "samples",
            "components",
        ),
        default="auto",
        help="auto: calibration (intervals, PIT, coverage) for a model of several inputs with "
        "DATA.csv, else density; density, samples and components show a slice through the "
        "input --x-dim, the other inputs held (--at)",
    )
    pl.add_argument("--x", type=_columns, metavar="COLS", help="override the stored input columns")
    pl.add_argument("--y", type=_columns, metavar="COLS", help="override the stored target columns")
    pl.add_argument(
        "--x-dim",
        default="0",
        metavar="COLUMN",
        help="input on the horizontal axis: name or position",
    )
    pl.add_argument("--y-dim", default="0", metavar="COLUMN", help="target shown: name or position")
    pl.add_argument(
        "--at",
        type=_columns,
        default=None,
        metavar="NAME=VALUE,...",
        help="values the other inputs are held at in a slice (default: their mean over the rows)",
    )
    pl.add_argument("--seed", type=_int, default=0, help="seed of the rows and samples drawn")
    pl.add_argument(
        "-o", "--output", required=True, metavar="FIG.png", help="the picture (.png .pdf .svg .jpg)"
    )


# ------------------------------------------------------------------------------ helpers
def _check_output(
    path: str, suffixes: Sequence[str] | None = None, inputs: Sequence[str | None] = ()
) -> Path:
    """Fail early (before any work) when the output cannot be written, or is one of the
    ``inputs`` (the same file by any name: a symbolic or hard link too)."""
    out = Path(path)
    for other in inputs:
        if other is not None and _same_file(path, other):
            raise CliError(
                f"{path}: is also the input file {other}; write the output to another file"
            )
    folder = Path(os.path.realpath(out)).parent  # a symbolic link is written through
    if not folder.is_dir():
        raise CliError(f"{path}: the folder {str(folder)!r} does not exist")
    if out.is_dir():
        raise CliError(f"{path}: is a directory, expected a file name")
    if not os.access(folder, os.W_OK):
        raise CliError(f"{path}: the folder {str(folder)!r} is not writable")
    if suffixes and out.suffix.lower() not in suffixes:
        raise CliError(f"{path}: expected a file name ending in {' or '.join(suffixes)}")
    return out


def _same_file(a: str, b: str) -> bool:
    """Whether the paths ``a`` and ``b`` name the same file (or would: links resolved)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return os.path.realpath(a) == os.path.realpath(b)


#: What a command that reads a model file and a CSV file says when the two look swapped.
_ORDER = " (the order is MODEL DATA)"


def _load_model(path: str, command: str) -> tuple[Any, dict[str, Any], dict[str, str]]:
    """(model, user metadata, verified header), from one read of the file; a CSV (text) file
    given where the model goes is named as such before the loader reads it."""
    from .io import load_with_header  # never unpickles

    if not os.path.exists(path):
        raise CliError(f"{path}: no such model file")
    kind = _text_kind(path)
    if kind is not None:
        order = _ORDER if command in ("eval", "sample", "plot") else ""
        raise CliError(f"{path}: this looks like {kind}, not an mdnkit model file{order}")
    model, header = load_with_header(path)
    try:
        meta = json.loads(header["user"])
    except (ValueError, RecursionError):
        meta = None
    if not isinstance(meta, dict):
        raise CliError(f"{path}: its user metadata is not a JSON object (expected a dict)")
    return model, meta, header


def _text_kind(path: str) -> str | None:
    """``"a CSV file"`` or ``"a text file"`` when ``path`` starts as text (UTF-8 without zero
    bytes), else None.  A model file never does: its first 8 bytes, the length of its header,
    hold a zero byte."""
    import codecs

    from .datasets import OTHER_SEPARATORS

    if not os.path.isfile(path):  # (reading a pipe's start would consume it)
        return None
    try:
        with open(path, "rb") as fh:
            start = fh.read(4096)
    except OSError:
        return None
    if len(start) < 8 or b"\0" in start:  # (the loader names a file of under 8 bytes)
        return None
    try:  # an incremental decoder: a character cut at the end of the 4096 bytes is no error
        text = codecs.getincrementaldecoder("utf-8-sig")().decode(start)
    except UnicodeDecodeError:
        return None
    first = text.splitlines()[0] if text.strip() else ""
    return "a CSV file" if any(c in first for c in (",", *OTHER_SEPARATORS)) else "a text file"


def _refuse_model_file(path: str, order: str) -> None:
    """A model file given where a CSV file goes: say so (the CSV reader would read its binary
    header as column names)."""
    if not os.path.isfile(path):
        return  # the CSV reader names the problem
    try:
        with open(path, "rb") as fh:
            start = fh.read(8)
    except OSError:
        return
    if b"\0" not in start:
        return
    from .io import load_header

    try:
        load_header(path)
    except Exception:  # not a model file: the CSV reader says what is wrong with it
        return
    raise CliError(f"{path}: this looks like an mdnkit model file, not a CSV file{order}")


def _network(model: Any, path: str, command: str):
    """The network inside a loaded object (an MDN or an ensemble of them; a fitted
    MDNRegressor's network; the ensemble of a checkpoint of members on rows of their own)."""
    from .ensemble import MDNEnsemble, MemberRows
    from .models import MDN

    if isinstance(model, (MDN, MDNEnsemble)):
        return model
    inner = model.ensemble if isinstance(model, MemberRows) else getattr(model, "model_", None)
    if isinstance(inner, (MDN, MDNEnsemble)):
        return inner
    raise CliError(
        f"{path}: `{command}` needs a model made by `mdnkit fit` (an MDN or an MDNEnsemble), "
        f"found a model of class {type(model).__name__}"
    )


def _read_columns(data: str, cols: Sequence[str | int]):
    """(float32 array of the columns, their names), the whole file at once (small files)."""
    from .tables import CsvTable

    table = CsvTable(data)
    idx = table.resolve(list(cols))
    return np.concatenate(list(table.chunks(idx))).astype(np.float32), table.names(idx)


def _table_columns(data: str, *column_lists: Sequence[str | int], order: str = _ORDER):
    """(the open table, the positions of each list of columns): the header is read once.
    ``order`` ends the message for a model file given as ``data``."""
    from .tables import CsvTable

    _refuse_model_file(data, order)
    table = CsvTable(data)
    return table, *(table.resolve(list(cols)) for cols in column_lists)


def _stored_columns(meta: dict[str, Any], key: str, override, n: int, first: int) -> list:
    if override is not None:
        cols = list(override)
    elif isinstance(meta.get(key), list):
        cols = list(meta[key])
        if not all(isinstance(c, str) or type(c) is int for c in cols):
            raise CliError(
                f"the model file's {key} must be a list of column names or positions, "
                f"found {cols!r:.200}"
            )
    else:  # a model saved from Python without column names: positions
        cols = list(range(first, first + n))
    if len(cols) != n:
        raise CliError(
            f"the model has {n} {'inputs' if key.startswith('x') else 'outputs'}, "
            f"but {len(cols)} columns were given: {', '.join(map(str, cols))}"
        )
    return cols


def _savefig_atomic(fig, path: Path) -> None:
    try:
        with atomic_path(path, suffix=path.suffix) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def _predict(net, x: np.ndarray):
    import torch

    with torch.no_grad():
        return net(torch.as_tensor(x, dtype=net.x_mean.dtype))


def _model_scales(net, x_idx: Sequence[int], y_idx: Sequence[int]) -> dict[int, float]:
    """Column position -> the scale the model's standardisation divides it by."""
    return {
        **dict(zip(x_idx, net.x_std.tolist())),
        **dict(zip(y_idx, net.y_std.tolist())),
    }


def _describe(net) -> str:
    members = getattr(net, "n_members", None)
    return (
        f"{f'ensemble of {members} MDNs' if members is not None else 'MDN'} "
        f"{net.in_features} -> {net.out_features}, hidden {list(net.hidden)}, "
        f"{net.num_components} {net.covariance} components{' each' if members else ''}"
    )


# ------------------------------------------------------------------------------ large files
#: Rows of one sampling block: each block of rows of `sample` has its own generator, seeded from
#: --seed and the block's number, so the samples do not depend on how the file is chunked.
_SAMPLE_BLOCK_ROWS = 1024
#: Output rows of `sample` turned into Python lists for the CSV writer at once.
_WRITE_ROWS = 8192
#: Rows `eval` computes the metrics of at once (the CRPS holds K (K - 1) / 2 pairs per row);
#: also the blocks of the streamed fit's validation pass.
_EVAL_ROWS = 8192
#: Rows `plot` reads at most: a uniform random subset (seeded by --seed) of larger files.
_PLOT_ROWS = 20_000
#: Rows `fit` gives model.prepare (standardisation, initial components) when it streams.
_PREPARE_ROWS = 200_000
#: `fit` trains in memory when the chosen columns, as float32, take at most this many bytes
#: (an internal setting: $MDNKIT_FIT_MEMORY_BYTES); larger files are streamed from a temporary
#: float32 file in shuffled blocks, in memory that does not grow with the rows.
_FIT_MEMORY_ENV = "MDNKIT_FIT_MEMORY_BYTES"
_FIT_MEMORY_BYTES = 8 << 20


def _float32(block: np.ndarray) -> np.ndarray:
    return block.astype(np.float32)  # the precision the old whole-file reader gave


def _eval_add(net, x: np.ndarray, y: np.ndarray, sums) -> None:
    """Add one chunk's scores to ``sums`` (a :class:`~mdnkit.metrics.ScoreSums`)."""
    import torch

    m = _predict(net, x)
    sums.add(m, torch.as_tensor(y, dtype=m.loc.dtype))


def _eval_metrics_streamed(net, table, x_idx, y_idx, coverage: float) -> dict[str, float]:
    """eval's metrics over the file, chunk by chunk (sums and counts: metrics.ScoreSums).

    Chunks of at most _EVAL_ROWS rows: the metrics' temporaries (K (K - 1) / 2 pairs a row) and
    the reader's stay small (8 MB less than chunks of 65 536 rows, in the same time).  One
    intra-op thread: torch's threads, synchronised at every operation of a small chunk, made
    eval 10 to 20 times slower when other processes kept the CPUs busy (and only 1.2 times
    faster on an idle 2-core machine)."""

    from .metrics import ScoreSums
    from .tables import chunk_rows

    sums, nx = ScoreSums(coverage), len(x_idx)
    with _one_thread():
        for block in table.chunks([*x_idx, *y_idx], size=min(chunk_rows(), _EVAL_ROWS)):
            block = _float32(block)
            _eval_add(net, block[:, :nx], block[:, nx:], sums)
    return {**sums.result(), "nominal_coverage": coverage}


def _block_generator(seed: int, block: int):
    import torch

    state = np.random.SeedSequence([seed % 2**64, block]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _sample_chunk(net, x: np.ndarray, start: int, args) -> np.ndarray:
    """The CSV rows of `sample` for the input rows ``start .. start + len(x)`` (a multiple of
    the sampling block): (row, inputs, N draws each).  A float32 model's inputs and draws are
    float64 numbers whose repr is the shortest decimal of the float32 value
    (:func:`~mdnkit.datasets.float32_decimals`): ``24.05``, not ``24.049999237060547``."""
    import torch

    from .datasets import float32_decimals

    single = net.x_mean.dtype == torch.float32
    text = float32_decimals if single else functools.partial(np.asarray, dtype=np.float64)
    m = _predict(net, x)
    n, parts = args.num_samples, []
    for i in range(0, len(x), _SAMPLE_BLOCK_ROWS):
        gen = _block_generator(args.seed, (start + i) // _SAMPLE_BLOCK_ROWS)
        s = m[i : i + _SAMPLE_BLOCK_ROWS].sample(
            (n,),
            temperature=args.temperature,
            sigma_temperature=args.sigma_temperature,
            generator=gen,
        )  # (N, rows, D)
        parts.append(text(s.transpose(0, 1).numpy()).reshape(-1, s.shape[-1]))
    rows_idx = np.repeat(np.arange(start, start + len(x)), n)[:, None]
    xs = np.repeat(text(x), n, axis=0)
    return np.concatenate([rows_idx, xs, *([np.concatenate(parts)] if parts else [])], axis=1)


@contextlib.contextmanager
def _one_thread():
    """One intra-op torch thread while entered (restored after): eval and sample work in chunks
    of a few thousand rows, where a second thread gains little on an idle machine and made them
    10 to 20 times slower when other processes kept the CPUs busy."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _write_samples(net, table, x_idx, header, out: Path, args) -> int:
    """Sample chunk by chunk into a temporary file beside ``out``, renamed over it at the end."""
    import csv

    from .tables import chunk_rows

    n = args.num_samples
    # input rows per chunk: about chunk_rows() output rows, in whole sampling blocks
    size = -(-max(1, chunk_rows() // n) // _SAMPLE_BLOCK_ROWS) * _SAMPLE_BLOCK_ROWS
    written = start = 0
    with (
        _one_thread(),
        atomic_path(out, suffix=".csv") as tmp,
        open(tmp, "w", newline="", encoding="utf-8") as fh,
    ):
        writer = csv.writer(fh)  # floats as repr: the shortest decimal that reads back
        writer.writerow(header)
        for block in table.chunks(x_idx, size=size):
            if start == 0:
                _check_sample_memory(min(len(block), _SAMPLE_BLOCK_ROWS), len(header), net, n)
            rows = _sample_chunk(net, _float32(block), start, args)
            if not np.isfinite(rows).all():
                r = start + int(np.argwhere(~np.isfinite(rows))[0, 0]) // n
                raise CliError(
                    f"{args.data}: the samples of input row {r} (0-based, the output's row "
                    "column) are not finite: the model's float32 arithmetic overflowed"
                )
            for i in range(0, len(rows), _WRITE_ROWS):  # Python lists of bounded length
                part = rows[i : i + _WRITE_ROWS].tolist()
                writer.writerows([int(r[0]), *r[1:]] for r in part)
            start += len(block)
            written += len(rows)
    return written


def _check_sample_memory(rows: int, width: int, net, n: int) -> None:
    """Refuse ``-n`` when one sampling block (``rows`` input rows, ``n`` draws each) cannot be
    held in memory: the draws, their components and noise (float32) and the output rows
    (float64), about twice over while they are put together."""
    from .checks import fits_in_memory

    d = net.out_features
    per_draw = 4 * (3 * d + d * d) + 8 + 2 * 8 * width
    try:
        fits_in_memory(f"-n {n}: {rows} rows x {n} samples at once", rows * n * per_draw)
    except ValueError as err:
        raise CliError(f"{err}; use a smaller -n") from None


def _plot_rows(args, net, meta: dict[str, Any]):
    """(x, y, input names, target names) for `plot`: at most _PLOT_ROWS rows of DATA.csv (all of
    a small file, else a uniform random subset seeded by --seed, see tables.sample_rows, in file
    order) and the file's names of their columns; without DATA.csv (None, None, and the names
    the model file stores, or None)."""
    from .tables import sample_rows

    xc = _stored_columns(meta, "x_columns", args.x, net.in_features, 0)
    yc = _stored_columns(meta, "y_columns", args.y, net.out_features, net.in_features)
    if args.data is None:
        named = [None if isinstance(c[0], int) else [str(v) for v in c] for c in (xc, yc)]
        return None, None, *named
    table, x_idx, y_idx = _table_columns(args.data, xc, yc)
    table.check_rounding(_model_scales(net, x_idx, y_idx))
    rows, _ = sample_rows(table.chunks([*x_idx, *y_idx]), _PLOT_ROWS, seed=args.seed)
    rows = _float32(rows)
    nx = len(x_idx)
    return rows[:, :nx], rows[:, nx:], table.names(x_idx), table.names(y_idx)


def _fit_memory_bytes() -> int:
    text = os.environ.get(_FIT_MEMORY_ENV, "").strip()
    if not text:
        return _FIT_MEMORY_BYTES
    if not text.isdigit():
        raise CliError(f"{_FIT_MEMORY_ENV} must be an integer >= 0, found {text!r}")
    return int(text)


def _row_batches(rows, nx: int, batch_size: int | None, buffer_rows: int, seed: int):
    """A DataLoader over a tables.RowFile: shuffled (x, y) batches of ``batch_size`` rows, a new
    order each epoch drawn from (seed, epoch); or, with ``batch_size`` None, the rows in order
    (validation)."""
    import torch
    from torch.utils.data import DataLoader, IterableDataset

    class RowBatches(IterableDataset):
        epoch = 0

        def __iter__(self):
            if batch_size is None:
                source = rows.sequential(buffer_rows)
            else:
                rng = np.random.default_rng([seed % 2**64, 2, self.epoch])
                self.epoch += 1
                source = rows.shuffled(rng, buffer_rows, batch_size)
            for block in source:
                t = torch.from_numpy(block)
                yield t[:, :nx], t[:, nx:]

    return DataLoader(RowBatches(), batch_size=None)


class _TrainingRows:
    """fit's data, read once: in memory (``x`` and ``y``, float32 arrays) or streamed (``train``
    and ``val``, temporary float32 files, and ``sample``, a uniform sample of at most
    _PREPARE_ROWS training rows as (x, y) for ``prepare``); ``n`` rows in all, ``n_train`` of
    them trained on."""

    def __init__(self, n: int, n_train: int, **parts: Any) -> None:
        self.n, self.n_train = n, n_train
        self.x, self.y = parts.get("x"), parts.get("y")
        self.train, self.val, self.sample = (
            parts.get("train"),
            parts.get("val"),
            parts.get("sample"),
        )

    @property
    def streamed(self) -> bool:
        return self.train is not None

    @property
    def widths(self) -> tuple[int, int]:
        """(inputs, targets)."""
        x = self.sample[0] if self.streamed else self.x
        return int(x.shape[1]), int(self.targets().shape[1])

    def targets(self) -> np.ndarray:
        """The target rows the discrete-target check and scale floor look at: every row, or
        the sample of a streamed file."""
        return self.sample[1] if self.streamed else self.y

    def close(self) -> None:
        for f in (self.train, self.val):
            if f is not None:
                f.close()


def _streamed_rows(chunks, nx: int, args, folder: Path) -> _TrainingRows:
    """Spill the rows to two temporary float32 files (training; validation: each row with
    probability --validation-split) and keep a uniform sample of at most _PREPARE_ROWS training
    rows (for ``prepare``: the standardisation and the initial components)."""
    from .tables import RowFile, sample_rows

    width = None
    train = val = None
    rng = np.random.default_rng([args.seed % 2**64, 1])

    def spill():
        nonlocal width, train, val
        for block in chunks:
            if train is None:
                width = block.shape[1]
                train, val = RowFile(width, folder), RowFile(width, folder)
            held_out = rng.random(len(block)) < args.validation_split
            val.append(block[held_out])
            kept = block[~held_out]
            train.append(kept)
            yield kept

    try:
        sample, n_train = sample_rows(spill(), _PREPARE_ROWS, seed=args.seed)
        if n_train < 1:
            raise CliError(
                f"{args.data}: {val.rows} rows leave no training rows after the validation split"
            )
        sample = _float32(sample)
    except BaseException:
        for f in (train, val):
            if f is not None:
                f.close()
        raise
    xy = (np.ascontiguousarray(sample[:, :nx]), np.ascontiguousarray(sample[:, nx:]))
    return _TrainingRows(train.rows + val.rows, train.rows, train=train, val=val, sample=xy)


def _training_rows(table, x_idx, y_idx, args, folder: Path) -> _TrainingRows:
    """Read the file once: in memory (arrays, as fit has always trained) when the columns take
    at most _fit_memory_bytes() as float32, else streamed (see _streamed_rows)."""
    import itertools

    nx = len(x_idx)
    limit = _fit_memory_bytes() // (4 * (nx + len(y_idx)))
    chunks = table.chunks([*x_idx, *y_idx])
    held, rows = [], 0
    for block in chunks:
        held.append(block)
        rows += len(block)
        if rows > limit:
            return _streamed_rows(itertools.chain(held, chunks), nx, args, folder)
    data = _float32(np.concatenate(held))
    n = len(data)
    n_val = int(round(n * args.validation_split))
    if n - n_val < 1:
        raise CliError(f"{args.data}: {n} rows leave no training rows after the validation split")
    x, y = np.ascontiguousarray(data[:, :nx]), np.ascontiguousarray(data[:, nx:])
    return _TrainingRows(n, n - n_val if n_val >= 1 else n, x=x, y=y)


# ------------------------------------------------------------------------------ commands
def _cmd_demo(args) -> int:
    import torch

    from . import plotting
    from .datasets import INVERTED_SINE_ENTROPY, inverted_sine
    from .metrics import pit
    from .models import MDN
    from .training import fit

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {args.out}: exists and is not a folder")
    x, y = inverted_sine(3000, seed=args.seed)
    xt, yt = inverted_sine(args.n_test, seed=args.seed + 1_000_003)
    torch.manual_seed(args.seed)
    model = MDN(1, 1, **DEMO_MODEL)
    settings = dict(DEMO_FIT)
    if args.epochs is not None:
        settings["epochs"] = args.epochs
    print(
        f"inverted sine: 3000 training points; {_describe(model)}; "
        f"{settings['epochs']} epochs, batch {settings['batch_size']}, lr {settings['lr']:g}",
        flush=True,
    )
    history = fit(model, x, y, seed=args.seed, progress=args.progress, **settings)
    test_nll = model.nll(xt, yt)
    print(
        f"test NLL {test_nll:.3f} nats on {args.n_test} fresh points "
        f"(best possible H(Y|X) = {INVERTED_SINE_ENTROPY:.3f}); "
        f"trained in {history.seconds:.1f} s ({len(history)} epochs)"
    )
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    with torch.no_grad():
        u = pit(model(torch.as_tensor(xt)), torch.as_tensor(yt))
    figures = {
        "density.png": lambda: plotting.density_heatmap(model, x, y),
        "samples.png": lambda: plotting.samples_plot(model, x, y, seed=args.seed),
        "mixture_pdf.png": lambda: plotting.mixture_pdf_plot(model, 0.0),
        "temperatures.png": lambda: plotting.temperature_grid(model, x, y, seed=args.seed),
        "components.png": lambda: plotting.components_plot(model, x),
        "training.png": lambda: plotting.training_curves(history),
        "pit.png": lambda: plotting.pit_histogram(u),
    }
    for name, make in figures.items():
        _savefig_atomic(make(), out / name)
    print(f"wrote {len(figures)} pictures to {out}/: {', '.join(figures)}")
    return 0


def _cmd_fit(args) -> int:
    from .distributed import is_main_process
    from .estimator import AUTO_COMPONENTS, training_budget
    from .io import save
    from .training import TrainingInterrupted

    out = _check_output(args.output, inputs=(args.data, args.checkpoint))
    if (args.resume or args.checkpoint_every) and args.checkpoint is None:
        raise CliError("--resume and --checkpoint-every need --checkpoint FILE")
    if args.checkpoint is not None:
        _check_output(args.checkpoint, inputs=(args.data,))
    for dest in ("patience", "target_resolution"):  # "none": the library's None
        if getattr(args, dest) == "none":
            setattr(args, dest, None)
    candidates = AUTO_COMPONENTS if args.components == "auto" else (args.components,)
    if len(candidates) > 1 and not args.validation_split > 0:
        raise CliError(
            "--components auto chooses by validation NLL and needs --validation-split > 0, "
            f"found {args.validation_split:g}"
        )
    table, x_idx, y_idx = _table_columns(
        args.data, args.x, args.y, order=" (fit reads a CSV file and writes the model to -o)"
    )
    x_names, y_names = table.names(x_idx), table.names(y_idx)
    both = sorted(set(x_idx) & set(y_idx))  # positions: a repeated name is two columns
    if both:
        raise CliError(
            f"{args.data}: column(s) {', '.join(table.names(both))} "
            f"given as both input (--x) and target (--y)"
        )
    settings = {
        "hidden": args.hidden,
        "activation": args.activation,
        "covariance": args.covariance,
        "min_scale": args.min_scale,
    }
    _check_model_memory(len(x_names), len(y_names), settings, max(candidates), args.ensemble)
    table.check_rounding({})  # every column against its own spread
    rows = _training_rows(table, x_idx, y_idx, args, out.parent)  # the one read
    columns = {"x_columns": x_names, "y_columns": y_names}
    about = {**columns, "data": os.path.basename(args.data), "rows": rows.n}
    done: list[tuple[float, int, Any, Any]] = []
    try:
        resolution, settings["min_scale"] = _discrete_floor(args, rows.targets())
        budget = training_budget(rows.n_train, args.epochs, args.batch_size, args.patience)
        with _process_group(len(candidates) > 1):
            for k in candidates:
                _fit_candidate(k, rows, args, settings, budget, len(candidates) > 1, done)
    except TrainingInterrupted as stop:
        return _fit_interrupted(stop, out, about, done)
    finally:
        rows.close()
    if not is_main_process():  # data-parallel: rank 0 writes and reports
        return 0
    _, k, model, history = min(done, key=lambda r: r[0])  # the first of equals
    metadata = {
        **about,
        # History.as_dict(): best_epoch indexes the per-epoch lists (0-based, as in Python);
        # what is printed numbers epochs from 1
        "history": _history_dict(history),
        "budget": budget._asdict(),
        **({"ensemble_rows": "shared" if rows.streamed else "own"} if args.ensemble > 1 else {}),
        **({"components_scores": _scores(done)} if len(candidates) > 1 else {}),
        **({"target_resolution": resolution} if resolution is not None else {}),
    }
    save(model, out, metadata=metadata)
    if not args.quiet:
        chosen = (
            f"; K = {k} of {', '.join(map(str, candidates))} by validation NLL"
            if len(candidates) > 1
            else ""
        )
        print(
            f"trained {_describe(model)} on {rows.n} rows {_fit_summary(history)}{chosen}; "
            f"saved {out}"
        )
    return 0


@contextlib.contextmanager
def _process_group(several: bool):
    """Under a data-parallel launcher (torchrun), with ``several`` runs of fit: the process
    group joined once for all of them (each fit joins it and leaves it when it finds none, and
    a second join of the same rendezvous does not return)."""
    parallel = None
    if several:
        import torch

        from .distributed import DataParallel

        parallel = DataParallel.from_environment(torch.device("cpu"))
    try:
        yield
    finally:
        if parallel is not None:
            parallel.close()


def _fit_candidate(k: int, rows: _TrainingRows, args, settings, budget, several, done) -> None:
    """Train the network of ``k`` components (one MDN, or an ensemble of --ensemble) and append
    (best NLL, k, network, history) to ``done``.  Several candidates (--components auto) each
    checkpoint to their own file, FILE.kK (so --resume continues each, the finished ones at
    once)."""
    from .training import fit

    model, trained, data, options = _candidate(k, rows, args, settings, budget)
    checkpoint = args.checkpoint
    if checkpoint is not None and several:
        checkpoint = f"{checkpoint}.k{k}"
    if args.resume and checkpoint is not None and os.path.exists(checkpoint):
        _check_resumed_kind(checkpoint, trained)
    kwargs: dict[str, Any] = {
        "epochs": budget.epochs,
        "lr": args.lr,
        "batch_size": budget.batch_size,
        "patience": budget.patience,
        "validation_split": args.validation_split,
        # the estimator's settings that have no option: MDNRegressor's defaults
        "weight_decay": _imported_default("estimator", "MDNRegressor", "weight_decay"),
        "lr_schedule": _imported_default("estimator", "MDNRegressor", "lr_schedule"),
        "seed": args.seed,
        "checkpoint": checkpoint,
        "checkpoint_every": args.checkpoint_every,
        "resume": True if args.resume else None,
        "progress": False if args.quiet and not args.progress else args.progress,
    }
    history = fit(trained, *data, **{**kwargs, **options})
    done.append((history.best_nll, k, model, history))


#: What a checkpoint's class says fit was training.
_TRAINED_KIND = {
    "MDN": "one MDN (--ensemble 1)",
    "MemberRows": "an ensemble whose members train on rows of their own",
    "MDNEnsemble": "an ensemble on shared batches (a streamed file)",
}


def _check_resumed_kind(checkpoint: str, trained) -> None:
    """Refuse to resume a checkpoint of another kind of network (one MDN, an ensemble on its
    members' rows or on shared batches) before fit compares the details."""
    from .io import load_header, saveable_class_name

    was, now = load_header(checkpoint)["class"], saveable_class_name(trained)
    if was != now:
        raise CliError(
            f"{checkpoint}: written by a fit of {_TRAINED_KIND.get(was, was)}, this fit trains "
            f"{_TRAINED_KIND.get(now, now)}: resume with the --ensemble and data it was "
            "written with"
        )


def _candidate(k: int, rows: _TrainingRows, args, settings, budget):
    """(network, what fit trains, fit's data, fit's options) for ``k`` components, the weights
    drawn from --seed.  An ensemble in memory trains each member on rows of its own
    (:class:`~mdnkit.ensemble.MemberRows` over :func:`~mdnkit.estimator.member_rows`, as
    MDNRegressor does); a streamed ensemble on the shared batches, watching the ensemble's
    NLL."""
    import torch

    from .ensemble import MDNEnsemble, MemberRows
    from .estimator import member_rows
    from .models import MDN
    from .tables import chunk_rows

    nx, ny = rows.widths
    torch.manual_seed(args.seed)
    kw = {**settings, "num_components": k}
    if args.ensemble == 1:
        model: Any = MDN(nx, ny, **kw)
    else:
        model = MDNEnsemble(nx, ny, n_members=args.ensemble, **kw)
    if rows.streamed:
        model.prepare(*rows.sample)
        buffer = chunk_rows()
        options: dict[str, Any] = {"prepare": False}
        if rows.val.rows:
            val = _row_batches(rows.val, nx, None, min(buffer, _EVAL_ROWS), args.seed)
            options["validation_data"] = val
        loader = _row_batches(rows.train, nx, budget.batch_size, buffer, args.seed)
        return model, model, (loader,), options
    if args.ensemble == 1:
        return model, model, (rows.x, rows.y), {}
    x, y = torch.from_numpy(rows.x), torch.from_numpy(rows.y)
    train, val = member_rows(x, y, args.ensemble, args.validation_split, args.seed)
    model.prepare(x, y)  # one standardisation, from every row
    options = {"validation_data": val, "validation_split": 0.0}
    return model, MemberRows(model), train, options


def _discrete_floor(args, y: np.ndarray) -> tuple[list[float | None] | None, float]:
    """(each target's resolution, or None when the floor is not raised; the components' scale
    floor in standardised units) for --target-resolution, warning once when ``auto`` finds a
    discrete target (MDNRegressor's rule: :func:`~mdnkit.estimator.target_resolution`)."""
    from .estimator import (
        DiscreteTargetWarning,
        discrete_target_message,
        scale_floor,
        target_resolutions,
    )

    found = target_resolutions(y, args.target_resolution)
    if found is not None and args.target_resolution == "auto":
        message = discrete_target_message(found, "--target-resolution none", "a number")
        warnings.warn(message, DiscreteTargetWarning, stacklevel=2)
    return found, scale_floor(y, found, args.min_scale, args.covariance)


def _scores(done) -> dict[str, float | None]:
    """Each K's best validation NLL, for the model file (None: not finite)."""
    return {str(k): (nll if math.isfinite(nll) else None) for nll, k, _, _ in done}


def _history_dict(history) -> dict[str, Any]:
    return {**history.as_dict(), "epochs": len(history), "seconds": round(history.seconds, 3)}


def _fit_summary(history) -> str:
    """``in 5.1 s (76 epochs, stopped early: ...); best validation NLL 0.2650 at epoch 56``:
    epochs numbered from 1, as on the progress bar."""
    from .training import Progress

    best = history.as_dict()["best_nll"]
    monitor = "validation" if history.monitor == "val_nll" else "training"
    why = Progress.stop_reason(history)
    return (
        f"in {history.seconds:.1f} s ({len(history)} epochs"
        f"{f', stopped early: {why}' if why else ''}); best {monitor} NLL "
        f"{best if best is None else format(best, '.4f')} at epoch {history.best_epoch + 1}"
    )


def _check_model_memory(
    n_in: int, n_out: int, settings: dict[str, Any], components: int, members: int
) -> None:
    """Refuse a network whose training state cannot be held in memory: its parameters (each
    of ``members`` networks of ``components`` components), their gradients and Adam's two
    moments (float32), counted on the meta device (nothing allocated)."""
    import torch

    from .checks import fits_in_memory
    from .models import MDN

    with torch.device("meta"):
        net = MDN(n_in, n_out, num_components=components, **settings)
        params = members * sum(p.numel() for p in net.parameters())
    try:
        fits_in_memory(f"a network of {params} parameters (to train)", 16 * params)
    except ValueError as err:
        raise CliError(
            f"{err}; use fewer or smaller --hidden layers, fewer --components or a smaller "
            "--ensemble"
        ) from None


def _fit_interrupted(stop, out: Path, metadata: dict[str, Any], done: list) -> int:
    """SIGINT / SIGTERM stopped ``fit``, which wrote its checkpoint: the best model so far (that
    checkpoint's, or a finished candidate's of --components auto when better) goes to the
    output too, one line to stderr; 130 (SIGINT) or 143 (SIGTERM)."""
    import signal

    from .distributed import is_main_process
    from .ensemble import MemberRows
    from .io import load, load_metadata, save

    code = 128 + int(stop.signal)
    if not is_main_process():
        return code
    history: dict[str, Any] = load_metadata(stop.checkpoint)
    model = load(stop.checkpoint)
    if isinstance(model, MemberRows):  # an ensemble whose members train on their own rows
        model = model.ensemble
    so_far = history.get("best_nll")
    for nll, _, finished, h in done:
        if so_far is None or nll < so_far:
            so_far, model, history = nll, finished, _history_dict(h)
    save(model, out, metadata={**metadata, "history": history, "interrupted": True})
    print(
        f"{PROG} fit: stopped by {signal.Signals(stop.signal).name} in epoch {stop.epoch + 1} "
        f"(step {stop.step}); checkpoint {stop.checkpoint}, best model so far {out}; "
        "continue with --resume",
        file=sys.stderr,
    )
    return code


def _cmd_eval(args) -> int:
    model, meta, _ = _load_model(args.model, "eval")
    net = _network(model, args.model, "eval")
    xc = _stored_columns(meta, "x_columns", args.x, net.in_features, 0)
    yc = _stored_columns(meta, "y_columns", args.y, net.out_features, net.in_features)
    table, x_idx, y_idx = _table_columns(args.data, xc, yc)
    table.check_rounding(_model_scales(net, x_idx, y_idx))
    res = _eval_metrics_streamed(net, table, x_idx, y_idx, args.coverage)
    lost = {k: v for k, v in res.items() if isinstance(v, float) and not math.isfinite(v)}
    if lost:
        raise CliError(
            f"{args.data}: {', '.join(f'{k} = {v}' for k, v in lost.items())}: the model's "
            "float32 arithmetic overflowed on this file; rescale the columns"
        )
    if args.json:
        print(json.dumps(res))
        return 0
    pct = f"{100 * args.coverage:g}%"
    rows = [
        ("rows", f"{res['rows']}"),
        ("NLL (nats)", f"{res['nll']:.4f}"),
        ("CRPS", f"{res['crps']:.4f}"),
        ("RMSE", f"{res['rmse']:.4f}"),
        ("calibration error", f"{res['calibration_error']:.4f}"),
        (f"{pct} coverage", f"{res['coverage']:.4f}"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"{args.model} on {args.data}")
    for k, v in rows:
        print(f"  {k:<{width}}  {v:>10}")
    return 0


def _cmd_sample(args) -> int:
    from .datasets import spreadsheet_safe

    out = _check_output(args.output, inputs=(args.model, args.data))
    model, meta, _ = _load_model(args.model, "sample")
    net = _network(model, args.model, "sample")
    xc = _stored_columns(meta, "x_columns", args.x, net.in_features, 0)
    table, x_idx = _table_columns(args.data, xc)
    table.check_rounding(_model_scales(net, x_idx, ()))
    x_names = table.names(x_idx)
    y_stored = _stored_columns(meta, "y_columns", None, net.out_features, net.in_features)
    y_names = [c if isinstance(c, str) else f"y{j}" for j, c in enumerate(y_stored)]
    index_name = "row" if "row" not in (*x_names, *y_names) else "input_row"
    # column names come from files: none may run as a spreadsheet formula
    header = [spreadsheet_safe(h) for h in (index_name, *x_names, *y_names)]
    written = _write_samples(net, table, x_idx, header, out, args)
    print(f"wrote {written} samples ({args.num_samples} per row of {args.data}) to {out}")
    return 0


def _cmd_plot(args) -> int:
    """Draw one picture (see plotting's notes): by default the calibration panel for a model of
    several inputs given DATA.csv, else the density (a slice through --x-dim, others at --at)."""
    import torch

    from . import plotting
    from .metrics import pit

    out = _check_output(
        args.output, (".png", ".pdf", ".svg", ".jpg", ".jpeg"), inputs=(args.model, args.data)
    )
    model, meta, _ = _load_model(args.model, "plot")
    net = _network(model, args.model, "plot")
    x, y, x_names, y_names = _plot_rows(args, net, meta)
    dims = []
    for flag, text, names, n in (
        ("--x-dim", args.x_dim, x_names, net.in_features),
        ("--y-dim", args.y_dim, y_names, net.out_features),
    ):
        if names and text in names:
            dims.append(names.index(text))
            continue
        try:
            dims.append(int(text))
        except ValueError:
            known = f"one of {', '.join(names)} or " if names else ""
            raise CliError(f"{flag}: unknown column {text!r}, expected {known}a position") from None
        if not 0 <= dims[-1] < n:
            raise CliError(f"{flag} must be in [0, {n}), found {dims[-1]}")
    at = {}
    for item in args.at or ():
        name, _, value = (t.strip() for t in item.partition("="))
        key = name if name in (x_names or ()) or not name.isdigit() else int(name)
        try:
            at[key] = float(value)
        except ValueError:
            raise CliError(f"--at: expected NAME=VALUE, found {item!r}") from None
    kind = args.kind
    if kind == "auto":
        kind = "calibration" if net.in_features > 1 and x is not None else "density"
    if x is None and kind not in ("density", "components"):
        raise CliError(f"--kind {kind} needs a DATA.csv")
    mean, std = net.x_mean[dims[0]].item(), net.x_std[dims[0]].item()
    x_range = None if x is not None else (mean - 2.5 * std, mean + 2.5 * std)
    names = {"x_names": x_names, "y_names": y_names}
    kw = {"x_dim": dims[0], "y_dim": dims[1], "at": at or None, **names}

    def pit_values():
        with torch.no_grad():
            return pit(_predict(net, x), torch.as_tensor(y, dtype=net.x_mean.dtype))[:, dims[1]]

    draw = {
        "calibration": lambda: plotting.calibration_plot(net, x, y, y_dim=dims[1], **names),
        "intervals": lambda: plotting.interval_plot(net, x, y, y_dim=dims[1], y_names=y_names),
        "coverage": lambda: plotting.coverage_plot(pit_values()),
        "pit": lambda: plotting.pit_histogram(pit_values(), y_name=(y_names or ["y"])[dims[1]]),
        "density": lambda: plotting.density_heatmap(net, x, y, x_range=x_range, **kw),
        "samples": lambda: plotting.samples_plot(net, x, y, seed=args.seed, **kw),
        "components": lambda: plotting.components_plot(net, x, x_range=x_range, **kw),
    }
    _savefig_atomic(draw[kind](), out)
    print(f"wrote {out} ({kind})")
    return 0


def _cmd_info(args) -> int:
    model, meta, header = _load_model(args.model, "info")
    n_params = sum(p.numel() for p in model.parameters()) if hasattr(model, "parameters") else None
    if n_params is None and hasattr(getattr(model, "model_", None), "parameters"):
        n_params = sum(p.numel() for p in model.model_.parameters())
    info = {
        "file": args.model,
        "bytes": os.path.getsize(args.model),
        "class": header["class"],
        "format_version": int(header["format_version"]),
        "config": json.loads(header["config"]),
        "parameters": n_params,
        "metadata": meta,
    }
    if args.json:
        print(json.dumps(info))  # escapes control characters (ensure_ascii)
        return 0
    history = meta.get("history")
    table = _history_table(args.model, history) if args.history else []
    config = info["config"] if isinstance(info["config"], dict) else {"config": info["config"]}
    rows = [("parameters", n_params)] if n_params is not None else []
    rows += [*config.items(), *(_meta_row(k, v, config) for k, v in meta.items() if k != "history")]
    summary = _history_rows(history)
    rows += summary if summary is not None else [("history", history)] if history else []
    width = min(16, max(len(str(k)) for k, _ in rows)) if rows else 0
    print(
        _printable(
            f"{info['file']}: {info['class']} ({info['bytes']} bytes, "
            f"format v{info['format_version']})"
        )
    )
    for k, v in rows:  # text from the file: no terminal escapes
        print(_printable(f"  {str(k):<{width}}  {_info_text(v)}"))
    for line in table:
        print(line)
    return 0


def _meta_row(key: str, value: Any, config: dict[str, Any]) -> tuple[str, Any]:
    """``info``'s row for one entry of a model file's metadata: fit's training budget and the
    validation NLL of each K of --components auto in words, the others as they are."""
    number = (int, float)
    if key == "budget" and isinstance(value, dict):
        names = {"epochs": "epochs", "batch_size": "batch", "patience": "patience"}
        return key, ", ".join(f"{n} {value[k]}" for k, n in names.items() if k in value)
    if key == "components_scores" and isinstance(value, dict):
        chosen = config.get("num_components")
        scores = [
            f"K={k}: {v:.4f}{' (chosen)' if str(chosen) == k else ''}"
            if isinstance(v, number) and not isinstance(v, bool)
            else f"K={k}: {v}"
            for k, v in sorted(value.items(), key=lambda kv: (len(kv[0]), kv[0]))
        ]
        return "validation NLL", ", ".join(scores)
    if key == "target_resolution":
        return "resolution", value
    if key == "ensemble_rows":
        return "member rows", value
    return key, value


def _info_text(value: Any) -> str:
    """A value of a model file's settings or metadata as ``info`` prints it."""
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float)) for v in value):
        return ", ".join(map(str, value))
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _history_rows(h: Any) -> list[tuple[str, str]] | None:
    """``info``'s summary of the training history a model file stores (``fit``'s, or that of
    the checkpoint of an interrupted fit): epochs numbered from 1, as ``fit`` prints them; None
    when ``h`` is not such a history."""
    from .training import History, Progress

    if not isinstance(h, dict) or h.get("monitor") not in ("val_nll", "train_nll"):
        return None
    best, nll = h.get("best_epoch"), h.get("best_nll")
    if type(best) is not int:
        return None
    watched = "validation" if h["monitor"] == "val_nll" else "training"
    epochs, seconds = h.get("epochs"), h.get("seconds")
    if type(epochs) is int:
        text = f"{epochs} epoch{'' if epochs == 1 else 's'}"
    elif type(h.get("epoch")) is int:  # a checkpoint's: completed epochs and optimiser steps
        text = f"interrupted after {h['epoch']} epochs (step {h.get('step')})"
    else:
        return None
    if isinstance(seconds, (int, float)) and not isinstance(seconds, bool):
        text += f" in {seconds:.1f} s"
    try:
        why = Progress.stop_reason(History.from_dict(h))
    except (TypeError, ValueError, KeyError):
        why = None
    text += f", stopped early: {why}" if why else ""
    shown = f"{nll:.4f}" if isinstance(nll, (int, float)) and not isinstance(nll, bool) else "-"
    return [("history", text), ("best epoch", f"{best + 1} ({watched} NLL {shown})")]


def _history_table(path: str, h: Any) -> list[str]:
    """``info --history``: one aligned line per epoch (numbered from 1; ``*`` the best, whose
    weights the file holds) with the training NLL, the validation NLL and the learning rate."""
    train = h.get("train_nll") if isinstance(h, dict) else None
    if not isinstance(train, list) or not train:
        raise CliError(
            f"{path}: the file stores no per-epoch history (mdnkit fit stores one; this file "
            "was written from Python, by an interrupted fit or by an older mdnkit)"
        )
    columns = [("train NLL", train, ".4f")]
    for key, name, spec in (("val_nll", "val NLL", ".4f"), ("lr", "lr", ".3g")):
        values = h.get(key)
        if isinstance(values, list) and len(values) == len(train):
            columns.append((name, values, spec))
    best = h.get("best_epoch")
    width = max(len("epoch"), len(str(len(train))))

    def cell(v: Any, spec: str) -> str:
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        return format(v, spec) if number else _printable(str(v))

    lines = ["  " + f"{'epoch':>{width}} " + "".join(f"  {n:>10}" for n, _, _ in columns)]
    for i in range(len(train)):
        cells = "".join(f"  {cell(values[i], spec):>10}" for _, values, spec in columns)
        lines.append(f"  {i + 1:>{width}}{'*' if i == best else ' '}{cells}")
    lines.append("  * the best epoch: the file holds its weights")
    return lines


def _cmd_export(args) -> int:
    out = _check_output(args.output, (".onnx",), inputs=(args.model,))
    model, _, _ = _load_model(args.model, "export")
    try:
        from .sequence import MDNRNN, export_onnx
    except ImportError as err:
        raise CliError(f"export is not available in this installation ({err})") from None
    if not isinstance(model, MDNRNN):
        raise CliError(
            f"{args.model}: export works for MDN-RNN models only, found a model of class "
            f"{type(model).__name__}"
        )
    export_onnx(model, out)
    print(f"wrote {out}")
    return 0


def _cmd_serve(args) -> int:
    from .serve import run_serve  # imports python-osc / websockets only when run

    return run_serve(args)


_COMMANDS = {
    "demo": _cmd_demo,
    "fit": _cmd_fit,
    "eval": _cmd_eval,
    "sample": _cmd_sample,
    "plot": _cmd_plot,
    "info": _cmd_info,
    "export": _cmd_export,
    "serve": _cmd_serve,
}


def _one_line(msg: str) -> str:
    return _printable(" ".join(str(msg).split()))


def _printable(text: str) -> str:
    """``text`` safe to print on a terminal, on one line: control and format characters
    (escape sequences, line breaks, carriage returns, bidirectional overrides) written as
    Python writes them in a string literal (``\\x1b``, ``\\u202e``)."""
    import unicodedata

    def safe(c: str) -> str:
        if unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp", "Cs"):
            return c
        return c.encode("unicode_escape", "backslashreplace").decode("ascii")

    return "".join(map(safe, text))


def _run_holding_warnings(args, held: list) -> int:
    """Run the command, its Python warnings appended to ``held`` (``serve``'s are not held)."""
    if args.command == "serve":
        return _COMMANDS[args.command](args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        try:
            return _COMMANDS[args.command](args)
        finally:
            held.extend(caught)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mdnkit`` command with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    0 on success; 2 for any problem with the input (one line on stderr, no output file); 1 for an
    unexpected internal error (one line too, with the exception's type); 130 on Ctrl-C; 141,
    silently, when the reader of the output went away (``| head``).  Python warnings raised
    while a command runs are held back: after a success each is printed once, as one
    ``mdnkit COMMAND: warning: ...`` line; after a failure only the error line is.

    Example:
        >>> main(["info", "model.mdn"])  # doctest: +SKIP
        0
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except CliError as err:
        print(_one_line(str(err)), file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help / --version
        return int(exc.code or 0) if isinstance(exc.code, int) else 0
    held: list[warnings.WarningMessage] = []
    try:
        _library_defaults(args)
        code = _run_holding_warnings(args, held)
        if held:  # data-parallel: rank 0 reports, as it writes
            from .distributed import is_main_process

            if not is_main_process():
                held.clear()
        seen = set()
        for w in held:
            line = f"{PROG} {args.command}: warning: {_one_line(str(w.message))}"
            if line not in seen:
                seen.add(line)
                print(line, file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`mdnkit info M --history | head`): quietly
        try:  # no second error when Python flushes stdout at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 141  # 128 + SIGPIPE, as a shell reports a command a pipe ended
    except (CliError, ValueError, TypeError, FileNotFoundError, IsADirectoryError) as err:
        print(f"{PROG} {args.command}: error: {_one_line(str(err))}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"{PROG} {args.command}: error: {_one_line(str(err))}", file=sys.stderr)
        return 2
    except MemoryError as err:
        print(f"{PROG} {args.command}: error: out of memory {_one_line(str(err))}", file=sys.stderr)
        return 2
    except Exception as err:  # a bug: still one line, never a traceback
        print(
            f"{PROG} {args.command}: internal error ({type(err).__name__}): {_one_line(str(err))}",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

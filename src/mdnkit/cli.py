"""The ``mdnkit`` command: train, evaluate, sample, plot and inspect MDNs on CSV files.

::

    mdnkit demo [--out DIR] [--seed N]
    mdnkit fit DATA.csv --x COLS --y COLS [--hidden 64,64] [--components 5] ... -o MODEL
    mdnkit eval MODEL DATA.csv [--json]
    mdnkit sample MODEL DATA.csv -n N [--temperature T] [--sigma-temperature S] -o OUT.csv
    mdnkit plot MODEL [DATA.csv] -o FIG.png
    mdnkit info MODEL [--json]
    mdnkit export MODEL -o FILE.onnx

CSV files have a header row; columns are given by name or 0-based position (``--x a,b``,
``--y 2``).  ``fit`` stores the column names in the model file, so ``eval``, ``sample`` and
``plot`` find them again by name.  Every problem with the input (a missing file or column, a
non-numeric cell, NaN or inf, an empty file, ragged rows, a file that is not a model, a bad
option value) is reported as ONE line on stderr with exit status 2, and no output file is
written; output files are written atomically.  See ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
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


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing the usage and exiting."""

    def error(self, message: str):  # type: ignore[override]
        raise CliError(f"{self.prog}: error: {message}")


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
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``mdnkit`` command (errors raise :class:`CliError`)."""
    p = _Parser(prog=PROG, description="Mixture density networks on CSV files.")
    from . import __version__

    p.add_argument("--version", action="version", version=f"mdnkit {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    d = sub.add_parser("demo", help="train on the inverted sine and write the pictures")
    d.add_argument("--out", default="mdnkit-demo", help="folder for the PNG files")
    d.add_argument("--seed", type=_int, default=0)
    d.add_argument("--epochs", type=_positive_int, default=None, help=argparse.SUPPRESS)
    d.add_argument("--n-test", type=_positive_int, default=20_000, help=argparse.SUPPRESS)

    f = sub.add_parser("fit", help="train an MDN on columns of a CSV file")
    f.add_argument("data", metavar="DATA.csv")
    f.add_argument("--x", type=_columns, required=True, help="input columns (names or positions)")
    f.add_argument("--y", type=_columns, required=True, help="target columns (names or positions)")
    f.add_argument("--hidden", type=_hidden, default=(64, 64), help="layer sizes (default 64,64)")
    f.add_argument("--components", type=_positive_int, default=5)
    f.add_argument("--covariance", choices=get_args(CovarianceType), default="diagonal")
    f.add_argument("--activation", choices=get_args(Activation), default="tanh")
    f.add_argument("--epochs", type=_positive_int, default=200)
    f.add_argument("--lr", type=_positive_float, default=3e-3)
    f.add_argument("--batch-size", type=_positive_int, default=128)
    f.add_argument("--patience", type=_positive_int, default=20)
    f.add_argument("--validation-split", type=_fraction, default=0.1)
    f.add_argument("--seed", type=_int, default=0)
    f.add_argument("-o", "--output", required=True, metavar="MODEL")

    e = sub.add_parser("eval", help="NLL, CRPS, RMSE, calibration and coverage on a CSV file")
    e.add_argument("model", metavar="MODEL")
    e.add_argument("data", metavar="DATA.csv")
    e.add_argument("--x", type=_columns, default=None, help="override the stored input columns")
    e.add_argument("--y", type=_columns, default=None, help="override the stored target columns")
    e.add_argument("--coverage", type=_coverage, default=0.9)
    e.add_argument("--json", action="store_true", help="print JSON instead of a table")

    s = sub.add_parser("sample", help="draw N samples of y for every row of a CSV file")
    s.add_argument("model", metavar="MODEL")
    s.add_argument("data", metavar="DATA.csv")
    s.add_argument("-n", "--num-samples", type=_positive_int, default=1)
    s.add_argument("--temperature", type=_nonneg_float, default=1.0)
    s.add_argument("--sigma-temperature", type=_nonneg_float, default=1.0)
    s.add_argument("--seed", type=_int, default=0)
    s.add_argument("--x", type=_columns, default=None, help="override the stored input columns")
    s.add_argument("-o", "--output", required=True, metavar="OUT.csv")

    pl = sub.add_parser("plot", help="draw the model (density heatmap by default) to a PNG")
    pl.add_argument("model", metavar="MODEL")
    pl.add_argument("data", metavar="DATA.csv", nargs="?", default=None)
    pl.add_argument(
        "--kind", choices=("density", "samples", "components", "pit"), default="density"
    )
    pl.add_argument("--x", type=_columns, default=None, help="override the stored input columns")
    pl.add_argument("--y", type=_columns, default=None, help="override the stored target columns")
    pl.add_argument("--x-dim", type=_int, default=0, help="input column on the horizontal axis")
    pl.add_argument("--y-dim", type=_int, default=0, help="output dimension shown")
    pl.add_argument("--seed", type=_int, default=0)
    pl.add_argument("-o", "--output", required=True, metavar="FIG.png")

    i = sub.add_parser("info", help="describe a model file")
    i.add_argument("model", metavar="MODEL")
    i.add_argument("--json", action="store_true")

    x = sub.add_parser("export", help="export an MDN-RNN's step function to ONNX")
    x.add_argument("model", metavar="MODEL")
    x.add_argument("-o", "--output", required=True, metavar="FILE.onnx")
    return p


# ------------------------------------------------------------------------------ helpers
def _check_output(path: str, suffixes: Sequence[str] | None = None) -> Path:
    """Fail early (before any work) when the output cannot be written."""
    out = Path(path)
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise CliError(f"{path}: the folder {str(folder)!r} does not exist")
    if out.is_dir():
        raise CliError(f"{path}: is a directory, expected a file name")
    if not os.access(folder, os.W_OK):
        raise CliError(f"{path}: the folder {str(folder)!r} is not writable")
    if suffixes and out.suffix.lower() not in suffixes:
        raise CliError(f"{path}: expected a file name ending in {' or '.join(suffixes)}")
    return out


def _load_model(path: str) -> tuple[Any, dict[str, Any], dict[str, str]]:
    """(model, user metadata, verified header), from one read of the file."""
    from .io import load_with_header  # never unpickles

    if not os.path.exists(path):
        raise CliError(f"{path}: no such model file")
    model, header = load_with_header(path)
    return model, json.loads(header["user"]), header


def _network(model: Any, path: str, command: str):
    """The MDN inside a loaded object (an MDN, or a fitted MDNRegressor's network)."""
    from .models import MDN

    if isinstance(model, MDN):
        return model
    inner = getattr(model, "model_", None)
    if isinstance(inner, MDN):
        return inner
    raise CliError(
        f"{path}: `{command}` needs a model made by `mdnkit fit` (an MDN), "
        f"found a model of class {type(model).__name__}"
    )


def _read_columns(data: str, cols: Sequence[str | int]):
    from .datasets import read_csv, read_csv_header, resolve_columns

    header = read_csv_header(data)
    idx = resolve_columns(header, list(cols), where=data)
    return read_csv(data, idx), [header[i] for i in idx]


def _stored_columns(meta: dict[str, Any], key: str, override, n: int, first: int) -> list:
    if override is not None:
        cols = list(override)
    elif isinstance(meta.get(key), list):
        cols = list(meta[key])
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


def _describe(net) -> str:
    return (
        f"MDN {net.in_features} -> {net.out_features}, hidden {list(net.hidden)}, "
        f"{net.num_components} {net.covariance} components"
    )


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
    history = fit(model, x, y, seed=args.seed, **settings)
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
    import torch

    from .io import save
    from .models import MDN
    from .training import fit

    out = _check_output(args.output)
    x, x_names = _read_columns(args.data, args.x)
    y, y_names = _read_columns(args.data, args.y)
    if set(x_names) & set(y_names):
        raise CliError(
            f"{args.data}: column(s) {', '.join(sorted(set(x_names) & set(y_names)))} "
            f"given as both input (--x) and target (--y)"
        )
    torch.manual_seed(args.seed)
    model = MDN(
        len(x_names),
        len(y_names),
        hidden=args.hidden,
        activation=args.activation,
        num_components=args.components,
        covariance=args.covariance,
    )
    n = len(x)
    n_val = int(round(n * args.validation_split))
    if n - n_val < 1:
        raise CliError(f"{args.data}: {n} rows leave no training rows after the validation split")
    history = fit(
        model,
        x,
        y,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        patience=args.patience,
        validation_split=args.validation_split,
        seed=args.seed,
    )
    metadata = {
        "x_columns": x_names,
        "y_columns": y_names,
        "data": os.path.basename(args.data),
        "rows": n,
        "history": {
            "epochs": len(history),
            "best_epoch": history.best_epoch,
            "best_nll": history.as_dict()["best_nll"],
            "monitor": history.monitor,
            "seconds": round(history.seconds, 3),
        },
    }
    save(model, out, metadata=metadata)
    best = history.as_dict()["best_nll"]
    monitor = "validation" if history.monitor == "val_nll" else "training"
    print(
        f"trained {_describe(model)} on {n} rows in {history.seconds:.1f} s "
        f"({len(history)} epochs); best {monitor} NLL "
        f"{best if best is None else format(best, '.4f')} at epoch {history.best_epoch + 1}; "
        f"saved {out}"
    )
    return 0


def _eval_metrics(net, x: np.ndarray, y: np.ndarray, coverage: float) -> dict[str, float]:
    import torch

    from .metrics import calibration_error, crps, interval_coverage, nll, pit

    sums = {"nll": 0.0, "crps": 0.0, "se": 0.0, "cov": 0.0}
    pits = []
    chunk = 16384
    for i in range(0, len(x), chunk):
        m = _predict(net, x[i : i + chunk])
        yt = torch.as_tensor(y[i : i + chunk], dtype=m.loc.dtype)
        n = len(yt)
        sums["nll"] += float(nll(m, yt)) * n
        sums["crps"] += float(crps(m, yt)) * n
        sums["se"] += float((m.mean - yt).square().mean()) * n
        sums["cov"] += float(interval_coverage(m, yt, coverage)) * n
        pits.append(pit(m, yt))
    n = len(x)
    return {
        "rows": n,
        "nll": sums["nll"] / n,
        "crps": sums["crps"] / n,
        "rmse": math.sqrt(sums["se"] / n),
        "calibration_error": calibration_error(torch.cat(pits)),
        "coverage": sums["cov"] / n,
        "nominal_coverage": coverage,
    }


def _cmd_eval(args) -> int:
    model, meta, _ = _load_model(args.model)
    net = _network(model, args.model, "eval")
    xc = _stored_columns(meta, "x_columns", args.x, net.in_features, 0)
    yc = _stored_columns(meta, "y_columns", args.y, net.out_features, net.in_features)
    x, _ = _read_columns(args.data, xc)
    y, _ = _read_columns(args.data, yc)
    res = _eval_metrics(net, x, y, args.coverage)
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
    import torch

    from .datasets import write_csv

    out = _check_output(args.output)
    model, meta, _ = _load_model(args.model)
    net = _network(model, args.model, "sample")
    xc = _stored_columns(meta, "x_columns", args.x, net.in_features, 0)
    x, x_names = _read_columns(args.data, xc)
    y_names = meta.get("y_columns") or [f"y{j}" for j in range(net.out_features)]
    gen = torch.Generator().manual_seed(args.seed)
    m = _predict(net, x)
    s = m.sample(
        (args.num_samples,),
        temperature=args.temperature,
        sigma_temperature=args.sigma_temperature,
        generator=gen,
    )  # (N, rows, D)
    s = s.transpose(0, 1).double().numpy()  # (rows, N, D)
    rows_idx = np.repeat(np.arange(len(x)), args.num_samples)[:, None]
    xs = np.repeat(x.astype(np.float64), args.num_samples, axis=0)
    table = np.concatenate([rows_idx, xs, s.reshape(-1, s.shape[-1])], axis=1)
    index_name = "row" if "row" not in (*x_names, *y_names) else "input_row"
    header = [index_name, *x_names, *y_names]
    write_csv(out, header, ([int(r[0]), *r[1:].tolist()] for r in table))
    print(f"wrote {len(table)} samples ({args.num_samples} per row of {args.data}) to {out}")
    return 0


def _cmd_plot(args) -> int:
    import torch

    from . import plotting
    from .metrics import pit

    out = _check_output(args.output, (".png", ".pdf", ".svg", ".jpg", ".jpeg"))
    model, meta, _ = _load_model(args.model)
    net = _network(model, args.model, "plot")
    if not 0 <= args.x_dim < net.in_features:
        raise CliError(f"--x-dim must be in [0, {net.in_features}), found {args.x_dim}")
    if not 0 <= args.y_dim < net.out_features:
        raise CliError(f"--y-dim must be in [0, {net.out_features}), found {args.y_dim}")
    x = y = None
    if args.data is not None:
        xc = _stored_columns(meta, "x_columns", args.x, net.in_features, 0)
        yc = _stored_columns(meta, "y_columns", args.y, net.out_features, net.in_features)
        x, _ = _read_columns(args.data, xc)
        y, _ = _read_columns(args.data, yc)
    elif args.kind in ("samples", "pit"):
        raise CliError(f"--kind {args.kind} needs a DATA.csv")
    mean, std = net.x_mean[args.x_dim].item(), net.x_std[args.x_dim].item()
    x_range = None if x is not None else (mean - 2.5 * std, mean + 2.5 * std)
    kw = {"x_dim": args.x_dim, "y_dim": args.y_dim}
    if args.kind == "density":
        fig = plotting.density_heatmap(net, x, y, x_range=x_range, **kw)
    elif args.kind == "samples":
        fig = plotting.samples_plot(net, x, y, seed=args.seed, **kw)
    elif args.kind == "components":
        fig = plotting.components_plot(net, x, x_range=x_range, **kw)
    else:
        with torch.no_grad():
            u = pit(_predict(net, x), torch.as_tensor(y, dtype=net.x_mean.dtype))
        fig = plotting.pit_histogram(u)
    _savefig_atomic(fig, out)
    print(f"wrote {out}")
    return 0


def _cmd_info(args) -> int:
    model, meta, header = _load_model(args.model)
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
        print(json.dumps(info))
        return 0
    print(
        f"{info['file']}: {info['class']} ({info['bytes']} bytes, format v{info['format_version']})"
    )
    if n_params is not None:
        print(f"  parameters  {n_params}")
    for k, v in info["config"].items():
        print(f"  {k:<11} {v}")
    for k, v in meta.items():
        print(f"  {k:<11} {v}")
    return 0


def _cmd_export(args) -> int:
    out = _check_output(args.output, (".onnx",))
    model, _, _ = _load_model(args.model)
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


_COMMANDS = {
    "demo": _cmd_demo,
    "fit": _cmd_fit,
    "eval": _cmd_eval,
    "sample": _cmd_sample,
    "plot": _cmd_plot,
    "info": _cmd_info,
    "export": _cmd_export,
}


def _one_line(msg: str) -> str:
    return " ".join(str(msg).split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mdnkit`` command with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    0 on success; 2 for any problem with the input (one line on stderr, no output file); 1 for an
    unexpected internal error (one line too, with the exception's type); 130 on Ctrl-C.

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
    try:
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (CliError, ValueError, TypeError, FileNotFoundError, IsADirectoryError) as err:
        print(f"{PROG} {args.command}: error: {_one_line(str(err))}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"{PROG} {args.command}: error: {_one_line(str(err))}", file=sys.stderr)
        return 2
    except Exception as err:  # a bug: still one line, never a traceback
        print(
            f"{PROG} {args.command}: internal error ({type(err).__name__}): {_one_line(str(err))}",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

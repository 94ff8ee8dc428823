"""Test NLL on the standard UCI regression benchmark, beside published results.

``MDNRegressor()`` with its default settings (a deep ensemble of 5 MDNs trained together, each
two GELU layers of 64 and 10 diagonal components, each member validated on its own 10 % of the
training rows; batches, steps and patience sized from the number of rows; nothing tuned per
set) is trained on every split of the five UCI sets in the data folder (the
90 % / 10 % splits of Gal & Ghahramani's experiments, 20 per set) and scored on the split's test
rows: the mean negative log-likelihood per row in the target's original units, as the papers
score it.  Reported per set: mean ± standard error over the splits, the wall time of the set
(every split's fit and scoring), and the published figures of the methods people compare with
(see ``PUBLISHED`` and docs/benchmarks-uci.md for the sources).

    python benchmarks/bench_uci.py                 # all sets, all splits (about 7 minutes)
    python benchmarks/bench_uci.py --splits 3 --sets yacht,energy
    python benchmarks/bench_uci.py --also n_estimators=1 --also num_components=auto
    python benchmarks/bench_uci.py --json uci.json  # also write every split's figures

The data are read from ``--data``, ``$MDNKIT_DATA`` or ``../shared/data`` (``uci/<set>/``).
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path

import numpy as np

# Published test NLL (nats): mean and the ± each paper reports (PBP, MC-dropout, Deep Ensembles:
# Lakshminarayanan et al. 2017, Table 1, ± standard error; MC-dropout (grid): Gal's
# DropoutUncertaintyExps README, ± standard error; NGBoost: Duan et al. 2020, Table 1, ± standard
# deviation; WGBoost: Matsubara 2024, arXiv 2405.09536, Table 1, ± standard deviation, over its
# own 20 random 10 % test splits; Deep Evidential: Amini et al. 2020, as reprinted in WGBoost's
# Table 1, ± standard deviation).
COLUMNS = (
    "WGBoost",
    "Deep Evidential",
    "Deep Ensembles",
    "MC-dropout (grid)",
    "MC-dropout",
    "PBP",
    "NGBoost",
)
PUBLISHED: dict[str, dict[str, tuple[float, float]]] = {
    "concrete": {
        "WGBoost": (2.83, 0.11),
        "Deep Evidential": (3.01, 0.02),
        "Deep Ensembles": (3.06, 0.18),
        "MC-dropout (grid)": (2.93, 0.02),
        "MC-dropout": (3.04, 0.09),
        "PBP": (3.16, 0.02),
        "NGBoost": (3.04, 0.17),
    },
    "energy": {
        "WGBoost": (0.53, 0.08),
        "Deep Evidential": (1.39, 0.06),
        "Deep Ensembles": (1.38, 0.22),
        "MC-dropout (grid)": (1.21, 0.01),
        "MC-dropout": (1.99, 0.09),
        "PBP": (2.04, 0.02),
        "NGBoost": (0.60, 0.45),
    },
    "kin8nm": {
        "WGBoost": (-0.44, 0.03),
        "Deep Evidential": (-1.24, 0.01),
        "Deep Ensembles": (-1.20, 0.02),
        "MC-dropout (grid)": (-1.14, 0.01),
        "MC-dropout": (-0.95, 0.03),
        "PBP": (-0.90, 0.01),
        "NGBoost": (-0.49, 0.02),
    },
    "power-plant": {
        "WGBoost": (2.60, 0.04),
        "Deep Evidential": (2.81, 0.07),
        "Deep Ensembles": (2.79, 0.04),
        "MC-dropout (grid)": (2.80, 0.01),
        "MC-dropout": (2.80, 0.05),
        "PBP": (2.84, 0.01),
        "NGBoost": (2.79, 0.11),
    },
    "yacht": {
        "WGBoost": (0.16, 0.24),
        "Deep Evidential": (1.03, 0.19),
        "Deep Ensembles": (1.18, 0.21),
        "MC-dropout (grid)": (1.25, 0.01),
        "MC-dropout": (1.55, 0.12),
        "PBP": (1.63, 0.02),
        "NGBoost": (0.20, 0.26),
    },
}


def best_published(name: str) -> tuple[float, str]:
    """The lowest published NLL of a set and the method that reports it."""
    pub = PUBLISHED[name]
    method = min(pub, key=lambda c: pub[c][0])
    return pub[method][0], method


def _n_splits(root: Path, name: str) -> int:
    return int(np.loadtxt(root / "uci" / name / "n_splits.txt"))


def run_split(root: Path, name: str, split: int, settings: dict) -> dict:
    """Train and score one estimator on one split; its figures (``seconds``: the wall time of
    the fit and the scoring, ``cpu_seconds``: the CPU time of this process for them)."""
    from mdnkit import MDNRegressor
    from mdnkit.datasets import load_uci

    xtr, ytr, xte, yte = load_uci(name, split=split, root=root)
    t, c = time.perf_counter(), time.process_time()
    reg = MDNRegressor(random_state=split, **settings).fit(xtr, ytr.ravel())
    nll = -float(reg.score(xte, yte.ravel()))
    rmse = float(np.sqrt(np.mean((reg.predict(xte).reshape(-1) - yte.reshape(-1)) ** 2)))
    return {
        "split": split,
        "nll": nll,
        "rmse": rmse,
        "seconds": time.perf_counter() - t,
        "cpu_seconds": time.process_time() - c,
        "epochs": len(reg.history_),
        "num_components": int(reg.num_components_),
    }


def run_set(
    root: Path, name: str, splits: int, settings: dict, pool: Executor | None = None
) -> tuple[list[dict], float]:
    """Every split of one set (in ``pool``'s worker processes when given, else here); returns
    each split's figures and the set's wall time."""
    t = time.perf_counter()
    if pool is None:
        out = [run_split(root, name, s, settings) for s in range(splits)]
    else:
        futures = [pool.submit(run_split, root, name, s, settings) for s in range(splits)]
        out = [f.result() for f in futures]
    return out, time.perf_counter() - t


def _worker_init() -> None:
    """A worker process: one thread for PyTorch and BLAS (the workers fill the cores)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    import torch

    torch.set_num_threads(1)


def _mean_se(values: list[float]) -> tuple[float, float]:
    m = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return m, se


def _settings(text: str) -> dict:
    """``KEY=VALUE[,KEY=VALUE...]`` (values as Python literals) -> a dict of estimator settings."""
    out = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE, found {part!r}")
        try:
            out[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = value.strip()
    return out


def add_also_argument(ap: argparse.ArgumentParser) -> None:
    """``--also KEY=VALUE[,...]``: another MDNRegressor setting run beside the defaults."""
    ap.add_argument(
        "--also",
        type=_settings,
        action="append",
        default=[],
        metavar="KEY=VALUE[,...]",
        help="also run MDNRegressor with these settings (repeatable), e.g. n_estimators=1",
    )


def _label(settings: dict) -> str:
    return (
        "mdnkit " + ", ".join(f"{k}={v}" for k, v in settings.items())
        if settings
        else "mdnkit defaults"
    )


def _table(sets: list[str], results: dict, walls: dict, variants: list[dict]) -> list[str]:
    """The markdown table: each variant (mean ± s.e., the set's wall time), then the published
    columns."""
    labels = [_label(v) for v in variants]
    head = ["set", "splits"]
    for label in labels:
        head += [label, "time"]
    head += ["best published", *COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in sets:
        cells = [name, str(len(results[name][labels[0]]))]
        best, _ = best_published(name)
        for i, label in enumerate(labels):
            res = results[name][label]
            m, se = _mean_se([r["nll"] for r in res])
            cell = f"{m:.2f} ± {se:.2f}"
            cells += [f"**{cell}**" if i == 0 else cell, f"{walls[name][label]:.0f} s"]
        cells.append(f"{best:.2f}")
        pub = PUBLISHED.get(name, {})
        cells += [f"{pub[c][0]:.2f} ± {pub[c][1]:.2f}" if c in pub else "-" for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--data", default=None, help="folder holding uci/ (default: $MDNKIT_DATA or ../shared/data)"
    )
    ap.add_argument("--sets", default=",".join(PUBLISHED), help="comma-separated set names")
    ap.add_argument(
        "--splits", type=int, default=None, help="first N splits of each set (default: all)"
    )
    add_also_argument(ap)
    ap.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="fit this many splits at once, in worker processes of one thread each "
        "(default: the number of CPUs; 1: one after another in this process)",
    )
    ap.add_argument("--json", default=None, help="write every split's figures to this file")
    args = ap.parse_args(argv)

    import torch

    from mdnkit.datasets import default_data_root

    root = Path(args.data) if args.data else default_data_root()
    sets = [s for s in args.sets.split(",") if s]
    missing = [s for s in sets if not (root / "uci" / s / "data.txt").exists()]
    if missing:
        print(
            f"bench_uci: no UCI data for {', '.join(missing)} under {root / 'uci'} (use --data)",
            file=sys.stderr,
        )
        return 2
    variants = [{}, *args.also]
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    started = time.perf_counter()
    results: dict[str, dict[str, list[dict]]] = {}
    walls: dict[str, dict[str, float]] = {name: {} for name in sets}
    jobs = args.jobs or os.cpu_count() or 1
    pool = (
        ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"), initializer=_worker_init)
        if jobs > 1
        else None
    )
    for name in sets:
        n = min(args.splits or math.inf, _n_splits(root, name))
        results[name] = {}
        for v in variants:
            res, wall = run_set(root, name, n, v, pool)
            results[name][_label(v)] = res
            walls[name][_label(v)] = wall
            m, se = _mean_se([r["nll"] for r in res])
            cpu = sum(r["cpu_seconds"] for r in res)
            print(
                f"{name:12s} {_label(v):28s} {n:2d} splits  NLL {m:7.3f} ± {se:.3f}  "
                f"({wall:.0f} s wall, {cpu:.0f} CPU s)",
                flush=True,
            )
    if pool is not None:
        pool.shutdown()
    total = time.perf_counter() - started
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    print()
    print(
        f"Test NLL (nats, original units; mean ± standard error over the splits); wall time of "
        f"each set's fits and scoring, {jobs} at a time; torch {torch.__version__}, Python "
        f"{platform.python_version()}, {os.cpu_count()} CPUs; {total:.0f} s in all; load "
        f"average {load_before:.1f} before, {load_after:.1f} after"
    )
    print()
    print("\n".join(_table(sets, results, walls, variants)))
    if args.json:
        _write_json(args.json, sets, results, walls, variants)
        print(f"\nwrote {args.json}")
    return 0


def _write_json(
    path: str, sets: list[str], results: dict, walls: dict, variants: list[dict]
) -> None:
    """The figures in ``benchmarks/report.py``'s format (each set's test NLL over the splits and
    its wall time, per variant; what ``run_all.py --compare`` lines up) and every split's
    figures under ``"splits"``."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from report import Report

    report = Report("bench_uci", __doc__)
    for name in sets:
        best, method = best_published(name)
        for v in variants:
            res = results[name][_label(v)]
            report.add(
                f"{name}: test NLL, {_label(v)}",
                [r["nll"] for r in res],
                unit="nats",
                better="lower",
                competitor=f"best published {best:.2f} ({method})",
            )
            report.add(
                f"{name}: wall time, {_label(v)}",
                walls[name][_label(v)],
                unit="s",
                better="lower",
            )
    result = report.finish(None)
    result["splits"] = results
    Path(path).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())

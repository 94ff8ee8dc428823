"""Test NLL on the standard UCI regression benchmark, beside published results.

``MDNRegressor`` with its default settings (two tanh layers of 64, 5 diagonal components,
Adam, early stopping on a 10 % validation split of the training rows; nothing tuned per set)
is trained on every split of the five UCI sets in the data folder (the 90 % / 10 % splits of
Gal & Ghahramani's experiments, 20 per set) and scored on the split's test rows: the mean
negative log-likelihood per row in the target's original units, as the papers score it.  The
same estimator with one component (a heteroscedastic Gaussian network) runs beside it, to show
what the mixture adds.  Reported per set: mean ± standard error over the splits, and the
published figures of the methods people compare with (copied from the data folder's README:
Lakshminarayanan et al. 2017, "Simple and Scalable Predictive Uncertainty Estimation using
Deep Ensembles", Table 1, for PBP, MC-dropout and Deep Ensembles; Gal's repository README for
grid-searched MC-dropout; Duan et al. 2019, "NGBoost", Table 1; each as its paper reports it).

    python benchmarks/bench_uci.py                 # all sets, all splits (a few minutes)
    python benchmarks/bench_uci.py --splits 3 --sets yacht,energy
    python benchmarks/bench_uci.py --json uci.json  # also write every split's figures

The data are read from ``--data``, ``$MDNKIT_DATA`` or ``../shared/data`` (``uci/<set>/``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

# Published test NLL (nats): mean and the ± each paper reports.
PUBLISHED: dict[str, dict[str, tuple[float, float]]] = {
    "concrete": {
        "PBP": (3.16, 0.02),
        "MC-dropout": (3.04, 0.09),
        "MC-dropout (grid)": (2.93, 0.02),
        "Deep Ensembles": (3.06, 0.18),
        "NGBoost": (3.04, 0.17),
    },
    "energy": {
        "PBP": (2.04, 0.02),
        "MC-dropout": (1.99, 0.09),
        "MC-dropout (grid)": (1.21, 0.01),
        "Deep Ensembles": (1.38, 0.22),
        "NGBoost": (0.60, 0.45),
    },
    "kin8nm": {
        "PBP": (-0.90, 0.01),
        "MC-dropout": (-0.95, 0.03),
        "MC-dropout (grid)": (-1.14, 0.01),
        "Deep Ensembles": (-1.20, 0.02),
        "NGBoost": (-0.49, 0.02),
    },
    "power-plant": {
        "PBP": (2.84, 0.01),
        "MC-dropout": (2.80, 0.05),
        "MC-dropout (grid)": (2.80, 0.01),
        "Deep Ensembles": (2.79, 0.04),
        "NGBoost": (2.79, 0.11),
    },
    "yacht": {
        "PBP": (1.63, 0.02),
        "MC-dropout": (1.55, 0.12),
        "MC-dropout (grid)": (1.25, 0.01),
        "Deep Ensembles": (1.18, 0.21),
        "NGBoost": (0.20, 0.26),
    },
}


def _n_splits(root: Path, name: str) -> int:
    return int(np.loadtxt(root / "uci" / name / "n_splits.txt"))


def run_set(root: Path, name: str, splits: int, components: int) -> list[dict]:
    """Train and score one estimator per split; returns each split's figures."""
    from mdnkit import MDNRegressor
    from mdnkit.datasets import load_uci

    out = []
    for s in range(splits):
        xtr, ytr, xte, yte = load_uci(name, split=s, root=root)
        t = time.perf_counter()
        reg = MDNRegressor(num_components=components, random_state=s).fit(xtr, ytr)
        seconds = time.perf_counter() - t
        nll = -float(reg.score(xte, yte))
        rmse = float(np.sqrt(np.mean((reg.predict(xte).reshape(-1) - yte.reshape(-1)) ** 2)))
        out.append({"split": s, "nll": nll, "rmse": rmse, "seconds": seconds})
    return out


def _mean_se(values: list[float]) -> tuple[float, float]:
    m = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return m, se


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--data", default=None, help="folder holding uci/ (default: $MDNKIT_DATA or ../shared/data)"
    )
    ap.add_argument("--sets", default=",".join(PUBLISHED), help="comma-separated set names")
    ap.add_argument(
        "--splits", type=int, default=None, help="first N splits of each set (default: all)"
    )
    ap.add_argument("--components", default="5,1", help="comma-separated K values to run")
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
    ks = [int(k) for k in args.components.split(",") if k]

    results: dict[str, dict[str, list[dict]]] = {}
    for name in sets:
        n = min(args.splits or math.inf, _n_splits(root, name))
        results[name] = {}
        for k in ks:
            res = run_set(root, name, n, k)
            results[name][f"K={k}"] = res
            m, se = _mean_se([r["nll"] for r in res])
            sec = statistics.fmean(r["seconds"] for r in res)
            print(
                f"{name:12s} K={k:<2d} {n:2d} splits  NLL {m:7.3f} ± {se:.3f}  ({sec:.1f} s a split)",
                flush=True,
            )

    print()
    print(
        f"Test NLL (nats, original units; mean ± standard error over the splits); mdnkit "
        f"MDNRegressor defaults; torch {torch.__version__}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs"
    )
    print()
    cols = [f"mdnkit K={k}" for k in ks] + list(next(iter(PUBLISHED.values())))
    print("| set | splits | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for name in sets:
        cells = []
        for k in ks:
            res = results[name][f"K={k}"]
            m, se = _mean_se([r["nll"] for r in res])
            cells.append(f"**{m:.2f} ± {se:.2f}**" if k == ks[0] else f"{m:.2f} ± {se:.2f}")
        pub = PUBLISHED.get(name, {})
        cells += [
            f"{pub[c][0]:.2f} ± {pub[c][1]:.2f}" if c in pub else "-" for c in cols[len(ks) :]
        ]
        n = len(next(iter(results[name].values())))
        print(f"| {name} | {n} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

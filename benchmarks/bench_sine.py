"""``MDNRegressor()`` with its default settings on the inverted sine, seed by seed.

For each seed s: 3 000 training pairs ``inverted_sine(3000, seed=s)``, the estimator with
``random_state=s`` and nothing else set, and its NLL (nats per point) on 20 000 fresh pairs
``inverted_sine(20000, seed=s + 1_000_003)``.  The floor no model can go below is the true
conditional entropy H(Y|X) = 1.288 nats (``mdnkit.datasets.inverted_sine_entropy``); with 20 000
test points a figure's Monte Carlo standard error is about 0.01 nats, so each seed's line also
gives the true model's NLL on the same test points (``oracle``: the exact p(y|x) by Bayes' rule,
p(x) integrated numerically) and the gap to it, the part of the figure that is the model's.

    python benchmarks/bench_sine.py                 # seeds 0-4
    python benchmarks/bench_sine.py --seeds 0-9 --also n_estimators=1
    python benchmarks/bench_sine.py --json sine.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_uci import _label, add_also_argument  # noqa: E402
from report import Report, add_json_argument  # noqa: E402


def _seeds(text: str) -> list[int]:
    lo, sep, hi = text.partition("-")
    try:
        return list(range(int(lo), int(hi) + 1)) if sep else [int(s) for s in text.split(",")]
    except ValueError as e:
        raise argparse.ArgumentTypeError(
            f"expected seeds such as 0-4 or 0,3,7, found {text!r}"
        ) from e


def oracle_nll(x: np.ndarray, y: np.ndarray) -> float:
    """The true conditional NLL of the points: -mean log p(y|x), p(y|x) = p(x|y) p(y) / p(x),
    p(x) by Simpson's rule over y (noise 1, y uniform on [-10.5, 10.5])."""
    from scipy.integrate import simpson

    ys = np.linspace(-10.5, 10.5, 8001)
    f = 7 * np.sin(0.75 * ys) + 0.5 * ys
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    px = np.empty_like(x)
    for i in range(0, x.size, 500):
        block = x[i : i + 500, None]
        px[i : i + 500] = simpson(np.exp(-0.5 * (block - f) ** 2), x=ys, axis=1)
    px /= 21 * np.sqrt(2 * np.pi)
    log_pxy = -0.5 * (x - (7 * np.sin(0.75 * y) + 0.5 * y)) ** 2 - 0.5 * np.log(2 * np.pi)
    return float(-(log_pxy - np.log(21) - np.log(px)).mean())


def run(seed: int, settings: dict) -> tuple[float, float]:
    """(test NLL, seconds) of one seed."""
    from mdnkit import MDNRegressor
    from mdnkit.datasets import inverted_sine

    x, y = inverted_sine(3000, seed=seed)
    xt, yt = inverted_sine(20000, seed=seed + 1_000_003)
    t = time.perf_counter()
    reg = MDNRegressor(random_state=seed, **settings).fit(x, y.ravel())
    seconds = time.perf_counter() - t
    return -float(reg.score(xt, yt.ravel())), seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=_seeds, default=_seeds("0-4"), help="e.g. 0-4 or 0,3,7")
    add_also_argument(ap)
    add_json_argument(ap)
    args = ap.parse_args(argv)

    from mdnkit.datasets import INVERTED_SINE_ENTROPY

    report = Report("bench_sine", __doc__)
    from mdnkit.datasets import inverted_sine

    oracle = {s: oracle_nll(*inverted_sine(20000, seed=s + 1_000_003)) for s in args.seeds}
    for v in [{}, *args.also]:
        nlls, secs, gaps = [], [], []
        for s in args.seeds:
            nll, sec = run(s, v)
            nlls.append(nll)
            secs.append(sec)
            gaps.append(nll - oracle[s])
            print(
                f"{_label(v):28s} seed {s}: test NLL {nll:.4f}, oracle {oracle[s]:.4f}, gap "
                f"{nll - oracle[s]:.4f}  ({sec:.1f} s)",
                flush=True,
            )
        print(
            f"{_label(v):28s} mean {statistics.fmean(nlls):.4f}, worst {max(nlls):.4f} "
            f"(floor H(Y|X) = {INVERTED_SINE_ENTROPY:.3f})"
        )
        report.add(
            f"inverted sine: test NLL, {_label(v)}",
            nlls,
            unit="nats",
            better="lower",
            competitor=f"floor H(Y|X) = {INVERTED_SINE_ENTROPY:.3f}",
        )
        report.add(
            f"inverted sine: gap to the oracle on the same points, {_label(v)}",
            gaps,
            unit="nats",
            better="lower",
        )
        report.add(f"inverted sine: fit time, {_label(v)}", secs, unit="s", better="lower")
    report.finish(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

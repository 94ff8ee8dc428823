"""Touch-screen performances with an MDN-RNN: train on the MicroJam corpus, generate, draw.

The Tiny Performance Corpus is one long stream of touch events ``(x, y, dt)`` (``x, y`` in
[0, 1], ``dt`` the seconds since the previous touch): taps and swipes, so ``dt`` is strongly
multimodal (about 15 ms inside a swipe, up to seconds between gestures).  An MDN-RNN learns to
predict the next touch; sampling from it plays new performances, as RoboJam does.

Split (contiguous, in stream order, so no performance is cut into both sides more than once):
the first 80 % of the events train, the next 10 % validate (early stopping), the last 10 % test.
Training uses windows of 128 events every 64; validation and test use non-overlapping windows
of 128 events, each read from the start token, and the test NLL is the mean per event, in nats,
in the data's units (x, y in screen units, dt in seconds).  For reference the report also gives
the test NLL of a model without memory: one 5-component Gaussian mixture fitted (scikit-learn) to
the training events as if they were independent.

Generation: 5-second performances (events are sampled until their ``dt`` add up to 5 s; a
sampled ``dt`` is clipped at 0 and ``x, y`` to the screen before being fed back), drawn with
swipes as lines (consecutive touches less than 0.1 s and 0.15 screen widths apart) and taps as
dots.

Run (the data at ``../shared/data`` beside the checkout, or ``--data DIR`` / ``$MDNKIT_DATA``)::

    python examples/touch.py            # a few minutes on two cores
    python examples/touch.py --quick    # under a minute: a small model, a slice of the data
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mdnkit.datasets import default_data_root
from mdnkit.sequence import MDNRNN, windows
from mdnkit.training import fit

DATA_FILE = "touch/tiny_performance_corpus.npz"
SWIPE_DT = 0.1  # seconds: closer touches are drawn joined, as one swipe ...
SWIPE_JUMP = 0.15  # ... unless they are further apart than this on the screen (a new gesture)


def find_data(arg: str | None) -> Path:
    """The data folder: ``--data``, else ``$MDNKIT_DATA``, else ``../shared/data`` beside the checkout."""
    path = (Path(arg) if arg else default_data_root()) / DATA_FILE
    if not path.is_file():
        print(
            f"error: touch data not found at {path} (give --data DIR or set MDNKIT_DATA)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return path


def load_splits(path: Path, quick: bool) -> dict[str, np.ndarray]:
    """Contiguous 80/10/10 split of the event stream (``--quick``: the same split of a slice)."""
    events = np.load(path, allow_pickle=False)["events"].astype(np.float32)
    if quick:
        events = events[:40000]
    n = len(events)
    a, b = int(0.8 * n), int(0.9 * n)
    return {"train": events[:a], "valid": events[a:b], "test": events[b:]}


def iid_baseline(train: np.ndarray, test: np.ndarray, k: int = 5) -> float:
    """Test NLL per event of a model without memory: one Gaussian mixture (scikit-learn, K
    diagonal components) fitted to the training events as if they were independent."""
    from sklearn.mixture import GaussianMixture

    gm = GaussianMixture(k, covariance_type="diag", random_state=0).fit(train.astype(np.float64))
    return float(-gm.score(test.astype(np.float64)))


def performance(model: MDNRNN, seconds: float, seed: int, temperature: float, sigma: float):
    """Sample one performance of ``seconds`` seconds: events ``(n, 3)`` with absolute times."""
    g = model.generator(temperature=temperature, sigma_temperature=sigma, generator=seed)
    out, total = [], 0.0
    e = g.step()
    while total < seconds and len(out) < 5000:
        e[:2] = np.clip(e[:2], 0.0, 1.0)
        e[2] = max(float(e[2]), 0.0)
        total += float(e[2])
        out.append(e.copy())
        e = g.step(e)
    return np.array(out)


def draw(performances: list[np.ndarray], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(performances)
    fig, axes = plt.subplots(1, n, figsize=(2.2 * n, 2.6))
    for ax, p in zip(np.atleast_1d(axes), performances):
        t = np.cumsum(p[:, 2])
        jump = np.hypot(*(p[1:, :2] - p[:-1, :2]).T)
        joined = (p[1:, 2] < SWIPE_DT) & (jump < SWIPE_JUMP)
        colors = plt.cm.viridis(t / max(t[-1], 1e-9))
        for i in np.flatnonzero(joined):
            ax.plot(p[i : i + 2, 0], p[i : i + 2, 1], color=colors[i + 1], lw=1.5)
        taps = np.ones(len(p), bool)
        taps[1:] &= ~joined
        taps[:-1] &= ~joined
        ax.scatter(p[taps, 0], p[taps, 1], s=14, c=colors[taps], zorder=3)
        ax.set_xlim(0, 1)
        ax.set_ylim(1, 0)  # screen coordinates: y grows downwards
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal")
        ax.set_title(f"{len(p)} touches", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small model and data, < 1 minute")
    parser.add_argument("--out", default="touch_out", help="output folder (default: touch_out)")
    parser.add_argument("--data", default=None, help="data folder (default: ../shared/data)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest here)")
    args = parser.parse_args(argv)
    path = find_data(args.data)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    splits = load_splits(path, args.quick)
    length = 64 if args.quick else 128
    x_train = torch.from_numpy(windows(splits["train"], length, length // 2))
    x_valid = torch.from_numpy(windows(splits["valid"], length, length))
    x_test = torch.from_numpy(windows(splits["test"], length, length))
    hidden, epochs = (32, 3) if args.quick else (128, 25)
    epochs = args.epochs or epochs
    model = MDNRNN(3, hidden_size=hidden, num_layers=2, num_components=5)
    n_train = torch.full((len(x_train),), length)
    n_valid = torch.full((len(x_valid),), length)
    start = time.perf_counter()
    history = fit(
        model,
        x_train,
        n_train,
        validation_data=(x_valid, n_valid),
        epochs=epochs,
        batch_size=64,
        lr=3e-3,
        patience=5,
        seed=args.seed,
    )
    seconds = time.perf_counter() - start
    test = model.evaluate(x_test)
    report = {
        "events": {k: int(len(v)) for k, v in splits.items()},
        "windows": {"train": len(x_train), "valid": len(x_valid), "test": len(x_test)},
        "window_length": length,
        "hidden_size": hidden,
        "epochs_run": len(history.train_nll),
        "best_epoch": history.best_epoch,
        "train_seconds": round(seconds, 1),
        "valid_nll_per_event": round(history.best_nll, 4),
        "test_nll_per_event": round(test["nll"], 4),
        "test_events": test["events"],
        "iid_mixture_test_nll_per_event": round(iid_baseline(splits["train"], splits["test"]), 4),
    }
    perfs = [performance(model, 5.0, seed, 1.0, 1.0) for seed in range(5)]
    draw(perfs, out / "touch_generated.png", "generated 5-second performances (T=1, S=1)")
    starts = np.linspace(0, len(splits["test"]) - 400, 5).astype(int)
    real = [splits["test"][i : i + 400] for i in starts]
    real = [r[: max(2, int(np.searchsorted(np.cumsum(r[:, 2]), 5.0)))] for r in real]
    draw(real, out / "touch_test.png", "real test performances (first 5 s of five stretches)")
    (out / "touch_report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    try:
        main()
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)

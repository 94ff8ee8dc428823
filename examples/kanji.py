"""Kanji with an MDN-RNN: pen offsets and pen lifts learned jointly, then new characters drawn.

The data are KanjiVG characters in sketch-rnn's "stroke-3" format: each row ``(dx, dy,
pen_lifted)`` is an offset from the previous point and whether the pen leaves the paper after
this point.  The model is ``MDNRNN(event_dim=2, pen_states=2)``: a mixture of Gaussians over
``(dx, dy)`` and a 2-way categorical over the pen state (column 2: 0 = pen down, 1 = lifted),
the two trained together (loss = mixture NLL + cross-entropy, per point).  Offsets are
standardised by scale only, inside the model.

Split: the data set's own ``train`` (10000 drawings), ``valid`` (600, early stopping) and
``test`` (500).  Reported: the test NLL per point in nats, in the data's units (offsets in
KanjiVG's integer coordinate units), and its two parts; for reference, the test NLL of a model
without memory (a 10-component Gaussian mixture for the offsets and the training frequency of pen
lifts, fitted by scikit-learn as if the points were independent).  Every drawing is read from the start
token, so its first offset is predicted too.

Generation: a grid of new characters, each as many points as a length drawn from the training
drawings' lengths, sampled at temperature 0.6 (``sigma_temperature`` 0.6, pen temperature 0.6).

Run (the data at ``../shared/data`` beside the checkout, or ``--data DIR`` / ``$MDNKIT_DATA``)::

    python examples/kanji.py            # a few minutes on two cores
    python examples/kanji.py --quick    # under a minute: 1500 drawings, a small model
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
from mdnkit.sequence import MDNRNN, pad_sequences
from mdnkit.training import fit

DATA_FILE = "strokes/kanji.npz"


def find_data(arg: str | None) -> Path:
    """The data folder: ``--data``, else ``$MDNKIT_DATA``, else ``../shared/data`` beside the checkout."""
    path = (Path(arg) if arg else default_data_root()) / DATA_FILE
    if not path.is_file():
        print(
            f"error: kanji data not found at {path} (give --data DIR or set MDNKIT_DATA)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return path


def load_split(data, split: str, limit: int | None = None) -> list[np.ndarray]:
    """The drawings of one split, each ``(L, 3)`` float32 (dx, dy, pen_lifted)."""
    strokes = data[f"{split}_strokes"].astype(np.float32)
    lengths = data[f"{split}_lengths"]
    ends = np.cumsum(lengths)
    drawings = [strokes[e - n : e] for e, n in zip(ends, lengths)]
    return drawings[:limit] if limit else drawings


def iid_baseline(train: list[np.ndarray], test: list[np.ndarray], k: int = 10) -> float:
    """Test NLL per point of a model without memory: a Gaussian mixture (scikit-learn, K diagonal
    components) for the offsets and the training frequency for the pen state, as if every point
    were independent."""
    from sklearn.mixture import GaussianMixture

    tr, te = np.concatenate(train).astype(np.float64), np.concatenate(test).astype(np.float64)
    gm = GaussianMixture(k, covariance_type="diag", random_state=0).fit(tr[:, :2])
    p = tr[:, 2].mean()
    pen = -np.mean(np.where(te[:, 2] > 0.5, np.log(p), np.log1p(-p)))
    return float(-gm.score(te[:, :2]) + pen)


def draw(drawings: list[np.ndarray], path: Path, title: str, cols: int = 8) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = int(np.ceil(len(drawings) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.1 * cols, 1.1 * rows + 0.3))
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, d in zip(np.ravel(axes), drawings):
        pts = np.cumsum(d[:, :2], 0)
        start = 0
        for i in range(len(d)):  # a stroke ends at a point after which the pen is lifted
            if d[i, 2] >= 0.5 or i == len(d) - 1:
                ax.plot(pts[start : i + 1, 0], pts[start : i + 1, 1], "k-", lw=1.2)
                start = i + 1
        ax.set_aspect("equal")
        ax.invert_yaxis()  # KanjiVG's y grows downwards
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small model and data, < 1 minute")
    parser.add_argument("--out", default="kanji_out", help="output folder (default: kanji_out)")
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

    with np.load(path, allow_pickle=False) as data:
        train = load_split(data, "train", 1500 if args.quick else None)
        valid = load_split(data, "valid")
        test = load_split(data, "test")
    x_train, n_train = pad_sequences(train)
    x_valid, n_valid = pad_sequences(valid)
    x_test, n_test = pad_sequences(test)
    hidden, components, epochs = (64, 5, 4) if args.quick else (192, 10, 12)
    epochs = args.epochs or epochs
    model = MDNRNN(2, hidden_size=hidden, num_layers=1, num_components=components, pen_states=2)
    start = time.perf_counter()
    history = fit(
        model,
        x_train,
        n_train,
        validation_data=(x_valid, n_valid),
        epochs=epochs,
        batch_size=64,
        lr=3e-3,
        patience=4,
        seed=args.seed,
    )
    seconds = time.perf_counter() - start
    test_nll = model.evaluate(x_test, n_test)
    report = {
        "drawings": {"train": len(train), "valid": len(valid), "test": len(test)},
        "hidden_size": hidden,
        "num_components": components,
        "epochs_run": len(history.train_nll),
        "best_epoch": history.best_epoch,
        "train_seconds": round(seconds, 1),
        "valid_nll_per_point": round(history.best_nll, 4),
        "test_nll_per_point": round(test_nll["nll"], 4),
        "test_offset_nll_per_point": round(test_nll["mixture_nll"], 4),
        "test_pen_nll_per_point": round(test_nll["pen_nll"], 4),
        "test_points": test_nll["events"],
        "iid_mixture_test_nll_per_point": round(iid_baseline(train, test, components), 4),
    }
    rng = np.random.default_rng(args.seed)
    lengths = rng.choice(n_train.numpy(), size=24)
    gen = model.generate(
        int(lengths.max()),
        temperature=0.6,
        sigma_temperature=0.6,
        pen_temperature=0.6,
        generator=args.seed,
        batch=24,
    ).numpy()
    drawings = [g[:n] for g, n in zip(gen, lengths)]
    draw(drawings, out / "kanji_generated.png", "generated kanji (T = S = pen T = 0.6)")
    draw(test[:16], out / "kanji_test.png", "test kanji (real)")
    (out / "kanji_report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    try:
        main()
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)

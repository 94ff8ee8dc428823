"""A class-conditional MDN-RNN: kanji drawn on demand with few, some or many strokes.

The model is an MDN-RNN over sketch-rnn's stroke rows ``(dx, dy, pen state)`` whose every step
also reads a per-drawing context, a one-hot class label ``c``:

.. math::

    p(x_{1..L} \\mid c) = \\prod_t p(x_t \\mid x_{<t}, c),

with the label both setting the LSTM's initial state and fed at every step
(``MDNRNN(..., context_dim=3)``).  Generating with a chosen label draws a new character of that
class.

Data and label: KanjiVG characters (``../shared/data/strokes/kanji.npz``, the data set's own
train / valid / test split).  The set has no class labels, so the label is derived from each
drawing: its number of strokes (pen lifts), in three classes that split the training set into
about equal thirds: **1-10**, **11-14** and **15 or more** strokes.  Why this label and this set:
the number of strokes is a property of the whole drawing that an unconditional model can only
guess from the first few strokes, the label therefore carries real information about every
step (when to lift the pen, when to stop, how small each stroke is), and its effect is easy to
see and to count in the generated characters.  The touch corpus's taps vs swipes would be a
label of a window of one long stream, not of a whole sequence, and is largely visible from its
first events.

Events: ``(dx, dy, state)`` with three pen states (stroke-5's): 0 = the pen stays down, 1 = it
is lifted after this point, 2 = the drawing ends after this point (the last point of every
drawing), so the model also decides when a drawing is finished.

Reported: the test NLL per point (nats, in KanjiVG's coordinate units, pen state included) with
the true labels and with the labels shuffled among the test drawings (the same model; the
difference is what the label tells the model), and, for the generated characters, the mean
number of strokes per requested class beside the real test drawings' (the label visibly
matters when these follow the classes).

Pictures: a grid of generated characters, one row per class.

Run (the data at ``../shared/data`` beside the checkout, or ``--data DIR`` / ``$MDNKIT_DATA``)::

    python examples/conditional.py            # a few minutes on two cores
    python examples/conditional.py --quick    # under a minute: 1500 drawings, a small model
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
#: class c holds the drawings with EDGES[c] <= strokes < EDGES[c + 1]
EDGES = (1, 11, 15, 10**6)
CLASS_NAMES = ("1-10 strokes", "11-14 strokes", "15+ strokes")

# (training drawings, validation and test drawings (None: all), hidden, components, epochs)
MODES = {
    "smoke": (200, 100, 16, 2, 1),
    "quick": (1500, 500, 64, 5, 8),
    "full": (None, None, 192, 10, 12),
}


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


def load_split(data, split: str, limit: int | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """The drawings of one split as ``(L, 3)`` float32 rows ``(dx, dy, state)`` with state 2 on
    the last point, and their class labels ``(N,)``."""
    strokes = data[f"{split}_strokes"].astype(np.float32)
    lengths = data[f"{split}_lengths"]
    ends = np.cumsum(lengths)
    drawings = []
    for e, n in zip(ends, lengths):
        d = strokes[e - n : e].copy()
        d[-1, 2] = 2.0  # the end of the drawing
        drawings.append(d)
    drawings = drawings[:limit] if limit else drawings
    return drawings, np.array([label(d) for d in drawings], np.int64)


def count_strokes(d: np.ndarray) -> int:
    """Strokes of a drawing: the points after which the pen leaves the paper (state >= 1)."""
    return int(np.sum(d[:, 2] >= 0.5))


def label(d: np.ndarray) -> int:
    return int(np.searchsorted(EDGES, count_strokes(d), side="right") - 1)


def one_hot(labels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.eye(len(CLASS_NAMES), dtype=np.float32)[labels])


def cut_at_end(d: np.ndarray) -> np.ndarray:
    """A generated row sequence up to its first end-of-drawing state (inclusive)."""
    ends = np.flatnonzero(d[:, 2] >= 1.5)
    return d[: ends[0] + 1] if len(ends) else d


def draw(grid: list[list[np.ndarray]], row_names: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = len(grid), max(len(r) for r in grid)
    fig, axes = plt.subplots(rows, cols, figsize=(1.05 * cols + 0.9, 1.1 * rows + 0.35))
    axes = np.asarray(axes).reshape(rows, cols)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        for side in ax.spines.values():
            side.set_visible(False)
    for r, (drawings, name) in enumerate(zip(grid, row_names)):
        axes[r, 0].set_ylabel(name, fontsize=8)
        for ax, d in zip(axes[r], drawings):
            pts = np.cumsum(d[:, :2], 0)
            start = 0
            for i in range(len(d)):  # a stroke ends at a point after which the pen is lifted
                if d[i, 2] >= 0.5 or i == len(d) - 1:
                    ax.plot(pts[start : i + 1, 0], pts[start : i + 1, 1], "k-", lw=1.1)
                    start = i + 1
            ax.set_aspect("equal", adjustable="datalim")
            ax.invert_yaxis()  # KanjiVG's y grows downwards
            ax.set_title(f"{count_strokes(d)} strokes", fontsize=6, pad=1)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


@torch.no_grad()
def drawing_nll(model: MDNRNN, x, lengths, context, batch: int = 256) -> np.ndarray:
    """NLL of each whole drawing ``(N,)`` (nats: the sum over its points) given ``context``."""
    model.eval()
    out = [
        model.loss(
            x[i : i + batch], lengths[i : i + batch], None, context[i : i + batch], reduction="none"
        )
        .double()
        .sum(1)
        for i in range(0, len(x), batch)
    ]
    return torch.cat(out).numpy()


def label_scores(model: MDNRNN, x, lengths, labels: np.ndarray, prior: np.ndarray, seed: int):
    """Per-point test NLLs with the true labels, with shuffled labels (three seeded
    permutations among the test drawings) and with the label summed out (``-log sum_c p(c)
    p(x | c)``, the model used without a label), and the accuracy of the model's Bayes posterior
    ``p(c | x)`` as a classifier."""
    n_points = float(lengths.sum())
    classes = np.arange(len(CLASS_NAMES))
    per_class = np.stack(
        [drawing_nll(model, x, lengths, one_hot(np.full(len(x), c))) for c in classes], 1
    )  # (N, C)
    true = per_class[np.arange(len(x)), labels]
    shuffled = [
        per_class[np.arange(len(x)), np.random.default_rng(seed + 100 + k).permutation(labels)]
        for k in range(3)
    ]
    joint = np.log(prior)[None] - per_class
    top = joint.max(1, keepdims=True)
    marginal = -(top[:, 0] + np.log(np.exp(joint - top).sum(1)))
    return {
        "true": float(true.sum() / n_points),
        "shuffled": float(np.mean([s.sum() for s in shuffled]) / n_points),
        "summed_out": float(marginal.sum() / n_points),
        "posterior_accuracy": float(np.mean(joint.argmax(1) == labels)),
        "true_per_drawing": float(true.mean()),
        "summed_out_per_drawing": float(marginal.mean()),
    }


def generate(model: MDNRNN, cls: int, n: int, seed: int, max_steps: int = 120) -> list[np.ndarray]:
    """``n`` new drawings of class ``cls`` (temperatures 0.6), each cut at its end state."""
    context = one_hot(np.full(n, cls))
    rows = model.generate(
        max_steps,
        temperature=0.6,
        sigma_temperature=0.6,
        pen_temperature=0.6,
        generator=seed,
        batch=n,
        context=context,
    )
    return [cut_at_end(r) for r in rows.numpy()]


class ContextOnly(torch.nn.Module):
    """``model`` seen by :func:`~mdnkit.fit` through batches ``(x, lengths, context)``: ``fit``
    takes tuples of tensors only (no ``None`` for the absent per-step inputs), so this adapter
    puts the ``None`` back in ``MDNRNN.loss(x, lengths, inputs, context)``."""

    def __init__(self, model: MDNRNN) -> None:
        super().__init__()
        self.model = model

    def prepare(self, x, lengths, context):
        self.model.prepare(x, lengths, None, context)
        return self

    def loss(self, x, lengths, context):
        return self.model.loss(x, lengths, None, context)


def time_budget(seconds: float):
    """A ``fit`` callback that stops training when another epoch (as long as the mean so far)
    would end after ``seconds``."""
    start = time.perf_counter()

    def stop(epoch: int, history) -> bool:
        spent = time.perf_counter() - start
        return spent + spent / (epoch + 1) > seconds

    return stop


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small model and data, < 1 minute")
    mode.add_argument("--smoke", action="store_true", help="a few seconds: for the tests")
    parser.add_argument("--out", default="conditional_out", help="output folder")
    parser.add_argument("--data", default=None, help="data folder (default: ../shared/data)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--budget", type=float, default=480.0, help="training seconds at most")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest here)")
    args = parser.parse_args(argv)
    path = find_data(args.data)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "smoke" if args.smoke else "quick" if args.quick else "full"
    n_train, n_test, hidden, components, epochs = MODES[name]
    epochs = args.epochs or epochs

    with np.load(path, allow_pickle=False) as data:
        train, y_train = load_split(data, "train", n_train)
        valid, y_valid = load_split(data, "valid", n_test)
        test, y_test = load_split(data, "test", n_test)
    x_train, n_tr = pad_sequences(train)
    x_valid, n_va = pad_sequences(valid)
    x_test, n_te = pad_sequences(test)
    c_train, c_valid = one_hot(y_train), one_hot(y_valid)
    model = MDNRNN(
        2,
        hidden_size=hidden,
        num_layers=1,
        num_components=components,
        pen_states=3,
        context_dim=len(CLASS_NAMES),
    )
    start = time.perf_counter()
    history = fit(
        ContextOnly(model),
        (x_train, n_tr, c_train),
        validation_data=(x_valid, n_va, c_valid),
        epochs=epochs,
        batch_size=64,
        lr=3e-3,
        patience=4,
        seed=args.seed,
        callback=time_budget(args.budget),
    )
    seconds = time.perf_counter() - start
    prior = np.bincount(y_train, minlength=len(CLASS_NAMES)) / len(y_train)
    scores = label_scores(model, x_test, n_te, y_test, prior, args.seed)

    grid, gen_strokes = [], {}
    for c, cname in enumerate(CLASS_NAMES):
        drawings = generate(model, c, 32, seed=args.seed + c)
        gen_strokes[cname] = round(float(np.mean([count_strokes(d) for d in drawings])), 2)
        grid.append(drawings[:8])
    real_strokes = {
        cname: round(float(np.mean([count_strokes(d) for d, y in zip(test, y_test) if y == c])), 2)
        for c, cname in enumerate(CLASS_NAMES)
        if np.any(y_test == c)
    }
    draw(
        grid,
        list(CLASS_NAMES),
        out / "conditional_generated.png",
        "generated kanji, one row per requested class (temperatures 0.6)",
    )
    real_grid = [[d for d, y in zip(test, y_test) if y == c][:8] for c in range(len(CLASS_NAMES))]
    draw(real_grid, list(CLASS_NAMES), out / "conditional_test.png", "real test kanji per class")
    report = {
        "mode": name,
        "drawings": {"train": len(train), "valid": len(valid), "test": len(test)},
        "class_counts": {
            s: np.bincount(y, minlength=len(CLASS_NAMES)).tolist()
            for s, y in (("train", y_train), ("valid", y_valid), ("test", y_test))
        },
        "hidden_size": hidden,
        "num_components": components,
        "epochs_run": len(history.train_nll),
        "best_epoch": history.best_epoch,
        "train_seconds": round(seconds, 1),
        "valid_nll_per_point": round(history.best_nll, 4),
        "test_nll_true_labels": round(scores["true"], 4),
        "test_nll_shuffled_labels": round(scores["shuffled"], 4),
        "shuffled_minus_true": round(scores["shuffled"] - scores["true"], 4),
        "test_nll_label_summed_out": round(scores["summed_out"], 4),
        "summed_out_minus_true_per_drawing": round(
            scores["summed_out_per_drawing"] - scores["true_per_drawing"], 4
        ),
        "label_entropy_nats": round(float(-(prior * np.log(prior)).sum()), 4),
        "posterior_accuracy": round(scores["posterior_accuracy"], 4),
        "test_points": int(n_te.sum()),
        "generated_mean_strokes": gen_strokes,
        "real_test_mean_strokes": real_strokes,
    }
    (out / "conditional_report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    try:
        main()
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)

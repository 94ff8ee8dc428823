"""SketchRNN's VAE on kanji: encode a character into z, draw it again, walk between characters.

``mdnkit.sequence.SketchVAE`` (Ha & Eck 2017): a bidirectional LSTM reads a whole KanjiVG
character (sketch-rnn's stroke-3 rows ``(dx, dy, pen_lifted)``), gives the mean and log-variance
of a latent vector z, and an MDN-RNN conditioned on z draws the character again point by point:
a mixture of correlated bivariate Gaussians for each offset and a 3-way pen state (down, lifted,
end of drawing).  The loss is sketch-rnn's, ``L_R + w_KL * eta_step * max(L_KL, kl_min)``.

Data: the kanji set's own splits (10000 training, 600 validation for early stopping, 500 test
drawings); offsets divided by the std of all training dx and dy; N_max = the longest drawing of
all three splits (88), as sketch-rnn's loader sets it.

Printed (JSON, also written to ``--out/sketch_vae_report.json``), on the test split:
sketch-rnn's ``L_R`` and ``L_KL`` (normalised units, z drawn from q, comparable with the
paper's tables), and mdnkit's NLL per real point in the data's units given z (``nll``) and the
negative ELBO per point (``elbo_nll``, an upper bound on the NLL per point, comparable with
``examples/kanji.py``'s MDN-RNN).

Pictures in ``--out``: ``sketch_vae_reconstructions.png`` (each test input, then three
reconstructions from its mean z), ``sketch_vae_interpolation.png`` (spherical interpolation
between the latent means of two test characters, the inputs at the ends),
``sketch_vae_samples.png`` (z from the prior, one column per z, one row per temperature).

Run (the data at ``../shared/data`` beside the checkout, or ``--data DIR`` / ``$MDNKIT_DATA``)::

    python examples/sketch_vae.py --quick     # under a minute: 1500 drawings, a small model
    python examples/sketch_vae.py             # sketch-rnn's sizes (z 128, LSTMs 256/512, K 20)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kanji import draw, find_data, load_split  # noqa: E402  (the kanji example's data and drawing)

from mdnkit.io import load, save  # noqa: E402
from mdnkit.sequence import SketchVAE, pad_sequences  # noqa: E402
from mdnkit.sequence.vae import drawings_list  # noqa: E402
from mdnkit.training import fit  # noqa: E402

QUICK = dict(z_dim=16, encoder_size=48, decoder_size=96, num_components=8)
FULL = dict(z_dim=128, encoder_size=256, decoder_size=512, num_components=20)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small model and data, < 1 minute")
    p.add_argument("--out", default="sketch_vae_out", help="output folder")
    p.add_argument("--data", default=None, help="data folder (default: ../shared/data)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--z-dim", type=int, default=None)
    p.add_argument("--encoder-size", type=int, default=None)
    p.add_argument("--decoder-size", type=int, default=None)
    p.add_argument("--components", type=int, default=None)
    p.add_argument("--kl-decay", type=float, default=0.99995, help="R of the KL annealing")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--augment", action="store_true", help="sketch-rnn's 0.15 scaling, 0.1 drop")
    p.add_argument("--load", default=None, help="a saved model: skip training")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest here)")
    return p.parse_args(argv)


def build(args: argparse.Namespace, n_max: int) -> SketchVAE:
    sizes = dict(QUICK if args.quick else FULL)
    for key, value in (
        ("z_dim", args.z_dim),
        ("encoder_size", args.encoder_size),
        ("decoder_size", args.decoder_size),
        ("num_components", args.components),
    ):
        sizes[key] = value or sizes[key]
    aug = dict(scale_augment=0.15, stroke_drop=0.1) if args.augment else {}
    return SketchVAE(**sizes, kl_decay=args.kl_decay, max_len=n_max, **aug)


def pictures(model: SketchVAE, test: list[np.ndarray], out: Path, seed: int) -> None:
    """The three figures: reconstructions, a latent interpolation, samples at three temperatures."""
    x, n = pad_sequences(test)
    model.eval()
    with torch.no_grad():
        mu, _ = model.encode(x, n)
    rows = []
    for i in range(6):
        rows.append(test[i])
        for k in range(3):
            y, m = model.decode(mu[i : i + 1], temperature=0.2, generator=seed + 10 * i + k)
            rows += drawings_list(y, m)
    draw(rows, out / "sketch_vae_reconstructions.png", "input | 3 reconstructions (T=0.2)", cols=4)
    grid = []
    for r, (a, b) in enumerate(((0, 7), (11, 23), (30, 41))):
        z = model.interpolate(mu[a], mu[b], 8)
        y, m = model.decode(z, temperature=0.1, generator=seed + r)
        grid += [test[a], *drawings_list(y, m), test[b]]
    draw(grid, out / "sketch_vae_interpolation.png", "slerp between two encoded kanji", cols=10)
    z = torch.randn(8, model.z_dim, generator=torch.Generator().manual_seed(seed))
    samples = []
    for t in (0.1, 0.5, 1.0):
        samples += drawings_list(*model.decode(z, temperature=t, generator=seed))
    draw(samples, out / "sketch_vae_samples.png", "z ~ N(0, I); rows: T = 0.1, 0.5, 1.0", cols=8)


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    path = find_data(args.data)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with np.load(path, allow_pickle=False) as data:
        train = load_split(data, "train", 1500 if args.quick else None)
        valid = load_split(data, "valid", 200 if args.quick else None)
        test = load_split(data, "test")
    n_max = max(len(d) for d in train + valid + test)  # sketch-rnn: over all splits
    x_train, n_train = pad_sequences(train)
    x_valid, n_valid = pad_sequences(valid)
    x_test, n_test = pad_sequences(test)
    start = time.perf_counter()
    if args.load:
        model, history = load(args.load), None
    else:
        model = build(args, n_max)
        history = fit(
            model,
            x_train,
            n_train,
            validation_data=(x_valid, n_valid),
            epochs=args.epochs or (5 if args.quick else 10),
            batch_size=args.batch_size,
            lr=args.lr,
            patience=4,
            seed=args.seed,
        )
        save(model, out / "sketch_vae.mdn")
    seconds = time.perf_counter() - start
    scores = model.evaluate(x_test, n_test, generator=args.seed)
    report = {
        "drawings": {"train": len(train), "valid": len(valid), "test": len(test)},
        "config": model.config(),
        "N_max": n_max,
        "offset_scale": round(float(model.offset_scale), 4),
        "epochs_run": len(history.train_nll) if history else None,
        "best_epoch": history.best_epoch if history else None,
        "training_steps": int(model.step),
        "kl_weight_now": round(model.current_kl_weight(), 4),
        "train_seconds": round(seconds, 1),
        "valid_loss": round(history.best_nll, 4) if history else None,
        "test": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in scores.items()},
    }
    print(json.dumps(report, indent=2), flush=True)
    (out / "sketch_vae_report.json").write_text(json.dumps(report, indent=2))
    pictures(model, test, out, args.seed)
    return report


if __name__ == "__main__":
    try:
        main()
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)

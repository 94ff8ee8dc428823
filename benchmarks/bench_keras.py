"""Benchmark the Keras front against keras-mdn-layer 1.0.0 on the same Keras backend.

1. Training: the course's 510-parameter model (Dense 15 - Dense 15 - MDN(1, 5), rmsprop) on the
   inverted-sine task (3000 points, batch 128, 15 % validation), same data, same initial
   weights, same epochs, with ``mdnkit.keras`` and with ``keras_mdn_layer``. The two trainings
   run interleaved in chunks of epochs (A B B A ...), so a busy machine slows both alike; wall
   and process CPU time are reported. Target: no slower.
2. Sampling: classic ``sample_from_output`` row by row (a Python loop, as the course does) vs
   one vectorised ``mdnkit.keras.sample_from_output`` call over many rows. Target: >= 1000x
   faster per row.

Prints a markdown table. Runs on whatever ``KERAS_BACKEND`` is set (torch if unset)::

    python benchmarks/bench_keras.py            # 200 epochs, as the classic example
    python benchmarks/bench_keras.py --quick    # 20 epochs, fewer rows
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from report import Report, add_json_argument  # noqa: E402

from mdnkit import keras as mdn  # noqa: E402

try:
    import keras_mdn_layer as classic
except ImportError:  # pragma: no cover - optional comparison
    classic = None

N_MIXES = 5


def inverted_sine(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """y ~ U(-10.5, 10.5), x = 7 sin(0.75 y) + 0.5 y + N(0, 1); predict y from x."""
    rng = np.random.default_rng(seed)
    y = rng.uniform(-10.5, 10.5, (n, 1))
    x = 7.0 * np.sin(0.75 * y) + 0.5 * y + rng.standard_normal((n, 1))
    return x.astype("float32"), y.astype("float32")


def course_model(module) -> keras.Sequential:
    model = keras.Sequential(
        [
            keras.Input((1,)),
            keras.layers.Dense(15, activation="relu"),
            keras.layers.Dense(15, activation="relu"),
            module.MDN(1, N_MIXES),
        ]
    )
    model.compile(loss=module.get_mixture_loss_func(1, N_MIXES), optimizer="rmsprop")
    return model


def train_interleaved(impls, init_weights, data, epochs: int, rounds: int) -> dict:
    """Train one model per implementation for ``epochs`` epochs in ``rounds`` alternating
    chunks (A, B, B, A, ...), so that changes in machine load hit both alike. Returns, per
    implementation, wall seconds, process CPU seconds, the test NLL per point (the same
    SciPy-checked formula for both: mdnkit's per-sample loss) and each chunk's wall seconds."""
    (x, y), (xt, yt) = data
    models = {}
    for name, module in impls:
        keras.utils.set_random_seed(0)
        models[name] = course_model(module)
        models[name].set_weights(init_weights)
        models[name].fit(x[:256], y[:256], batch_size=128, epochs=1, verbose=0)  # warm up
        models[name].set_weights(init_weights)
    wall = dict.fromkeys(models, 0.0)
    cpu = dict.fromkeys(models, 0.0)
    chunks: dict[str, list[float]] = {name: [] for name in models}
    chunk = epochs // rounds
    for r in range(rounds):
        order = list(models) if r % 2 == 0 else list(reversed(models))
        for name in order:
            w0, c0 = time.perf_counter(), time.process_time()
            models[name].fit(x, y, batch_size=128, epochs=chunk, validation_split=0.15, verbose=0)
            chunks[name].append(time.perf_counter() - w0)
            wall[name] += chunks[name][-1]
            cpu[name] += time.process_time() - c0
        print(
            f"  round {r + 1}/{rounds}: " + ", ".join(f"{n} {wall[n]:.1f} s" for n in models),
            file=sys.stderr,
            flush=True,
        )
    nll_fn = mdn.get_mixture_loss_func(1, N_MIXES)
    return {
        name: (
            wall[name],
            cpu[name],
            float(keras.ops.mean(nll_fn.call(yt, keras.ops.convert_to_numpy(model(xt))))),
            chunks[name],
        )
        for name, model in models.items()
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Benchmark mdnkit.keras vs keras-mdn-layer.")
    parser.add_argument("--quick", action="store_true", help="20 epochs, fewer sampling rows")
    add_json_argument(parser)
    args = parser.parse_args(argv)
    if keras.backend.backend() == "torch":
        # As docs/keras.md recommends: with torch's default threads, Keras on the torch backend
        # ran 15-25x slower on a 2-core machine, erratically, for both layers alike.
        import torch

        torch.set_num_threads(1)
    epochs = 20 if args.quick else 200
    rounds = 10 if args.quick else 20
    rows_classic = 1000 if args.quick else 3000
    rows_ours = 50_000 if args.quick else 200_000

    data = (inverted_sine(3000, seed=0), inverted_sine(2000, seed=1))
    keras.utils.set_random_seed(0)
    init = course_model(mdn).get_weights()
    report = Report(f"bench_keras ({keras.backend.backend()} backend)", __doc__)

    # --- training, interleaved in chunks ------------------------------------------------
    impls = [("mdnkit.keras", mdn)] + ([("keras-mdn-layer 1.0.0", classic)] if classic else [])
    results = train_interleaved(impls, init, data, epochs, rounds)
    for name, (wall, cpu, nll, _) in results.items():
        report.add(f"train course model, {epochs} epochs ({name}): wall", wall, "s", better="lower",
                   note=f"{cpu:.2f} s CPU; test NLL {nll:.3f}")  # fmt: skip
    if classic:
        ours, theirs = results["mdnkit.keras"][3], results["keras-mdn-layer 1.0.0"][3]
        report.add(
            "training time ratio mdnkit / classic, chunk by chunk",
            [a / b for a, b in zip(ours, theirs)],
            "x",
            better="lower",
            competitor="keras-mdn-layer 1.0.0",
            target="<= 1",
        )

    # --- sampling: the same float32 predictions for both; rounds interleaved ----------------
    rng = np.random.default_rng(0)
    model = course_model(mdn)
    model.set_weights(init)
    xs = rng.uniform(-15, 15, (rows_ours, 1)).astype("float32")
    preds = keras.ops.convert_to_numpy(model.predict(xs, batch_size=8192, verbose=0))
    mdn.sample_from_output(preds[:1000], 1, N_MIXES)  # warm up
    ours, theirs = [], []
    for _ in range(5):
        start = time.perf_counter()
        mdn.sample_from_output(preds, 1, N_MIXES, temp=1.0)  # seed=None: NumPy's global state
        ours.append((time.perf_counter() - start) / rows_ours * 1e6)
        if classic:
            start = time.perf_counter()
            np.apply_along_axis(
                classic.sample_from_output, 1, preds[:rows_classic], 1, N_MIXES, temp=1.0
            )
            theirs.append((time.perf_counter() - start) / rows_classic * 1e6)
    report.add(f"sample_from_output, one call on {rows_ours} rows (mdnkit.keras)",
               [u * 1000 for u in ours], "ns/row", better="lower")  # fmt: skip
    if classic:
        report.add(
            "sample_from_output per-row speed-up, round by round",
            [b / a for a, b in zip(ours, theirs)],
            "x",
            competitor=f"keras-mdn-layer row by row (np.apply_along_axis), "
            f"{statistics.median(theirs):.1f} µs/row on {rows_classic} rows",
            target=">= 1000x",
        )
    print(f"Keras {keras.__version__}, backend {keras.backend.backend()}, "
          f"{'quick' if args.quick else 'full'} run")  # fmt: skip
    report.finish(args.json)


if __name__ == "__main__":
    main()

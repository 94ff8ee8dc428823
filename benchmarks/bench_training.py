"""Training speed and quality: mdnkit against keras-mdn-layer 1.0.0 on the course's MDN.

The course network (Dense 15 ReLU, Dense 15 ReLU, MDN with 1 output and 10 components; Adam,
batch 128, 200 epochs) is trained on 3000 points of the inverted sine
(``mdnkit.datasets.inverted_sine``) by

* mdnkit: ``MDN(1, 1, hidden=(15, 15), activation="relu", num_components=10)`` and
  ``fit(..., lr=1e-3, batch_size=128, epochs=200, validation_split=0, patience=None,
  lr_schedule=None)`` (Adam with Keras's default learning rate, no early stopping);
* keras-mdn-layer 1.0.0 with its own layer and loss, ``model.fit(batch_size=128, epochs=200,
  verbose=0)``, on the torch and the jax Keras backends.

Each contender runs in its own subprocess (``KERAS_BACKEND`` set for Keras), the rounds
interleaved so that load from other processes hits all of them alike.  Reported: the median
training time (the ``fit`` call, compilation included) and the median test NLL on 20 000 fresh
points (nats; the best possible is H(Y|X) = 1.288), and mdnkit's speed-up over the faster
Keras backend.

    python benchmarks/bench_training.py [--epochs 200] [--repeats 3] [--only mdnkit,keras-jax]
    python benchmarks/bench_training.py --baseline /tmp/base/src   # + mdnkit from another source
    python benchmarks/bench_training.py --profile     # where one mdnkit training step goes
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

from report import Report, add_json_argument

N_TRAIN, N_TEST, K = 3000, 20_000, 10


def _data(seed: int):
    from mdnkit.datasets import inverted_sine

    x, y = inverted_sine(N_TRAIN, seed=seed)
    xt, yt = inverted_sine(N_TEST, seed=seed + 1_000_003)
    return x, y, xt, yt


def _worker_mdnkit(epochs: int, seed: int) -> dict:
    t0 = time.perf_counter()
    import torch
    import torch._dynamo  # noqa: F401  imported by every torch optimiser (and by `import keras`)

    startup = time.perf_counter() - t0

    from mdnkit.models import MDN
    from mdnkit.training import fit

    x, y, xt, yt = _data(seed)
    torch.manual_seed(seed)
    model = MDN(1, 1, hidden=(15, 15), activation="relu", num_components=K)
    t = time.perf_counter()
    fit(
        model,
        x,
        y,
        epochs=epochs,
        batch_size=128,
        lr=1e-3,
        validation_split=0.0,
        patience=None,
        lr_schedule=None,
        seed=seed,
        progress=False,
    )
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "nll": model.nll(xt, yt), "import_s": startup}


def _worker_keras(epochs: int, seed: int) -> dict:
    import keras
    import keras_mdn_layer as mdn
    import numpy as np
    from scipy.special import log_softmax, logsumexp

    x, y, xt, yt = _data(seed)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((1,)),
            keras.layers.Dense(15, activation="relu"),
            keras.layers.Dense(15, activation="relu"),
            mdn.MDN(1, K),
        ]
    )
    model.compile(loss=mdn.get_mixture_loss_func(1, K), optimizer=keras.optimizers.Adam())
    t = time.perf_counter()
    model.fit(x, y, batch_size=128, epochs=epochs, verbose=0)
    seconds = time.perf_counter() - t
    p = np.asarray(model.predict(xt, batch_size=4096, verbose=0), dtype=np.float64)
    mu, sigma, logits = p[:, :K], p[:, K : 2 * K], p[:, 2 * K :]
    yv = yt.astype(np.float64)
    comp = -0.5 * math.log(2 * math.pi) - np.log(sigma) - 0.5 * ((yv - mu) / sigma) ** 2
    nll = -float(np.mean(logsumexp(log_softmax(logits, axis=1) + comp, axis=1)))
    return {"seconds": seconds, "nll": nll}


def _profile(steps: int = 300, repeats: int = 7) -> None:
    """Where one step of ``fit`` on the course network goes (batch 128, one thread): the same
    calls as its loop, through the public seam: ``model.fast_step`` (prepared and attached as
    ``fit`` does), clipping and the update of the optimiser ``fit`` builds, the loss added up.
    Times are CPU time of this thread (``time.thread_time``: what other processes on a loaded
    machine take is not counted), the fastest of ``repeats`` rounds; then the PyTorch calls
    one step makes (PyTorch's profiler; the NumPy step's NumPy calls are not among them)."""
    import torch
    import torch._dynamo  # noqa: F401

    from mdnkit.models import MDN
    from mdnkit.training import FitSettings, Optimisation

    torch.set_num_threads(1)
    x, y, _, _ = _data(0)
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    model = MDN(1, 1, hidden=(15, 15), activation="relu", num_components=K)
    model.prepare(x, y)
    step = model.fast_step(x, y)
    if step is None:
        raise SystemExit("the course network has no fast step here: nothing to profile")
    settings = FitSettings(lr=1e-3, lr_schedule=None, patience=None, validation_split=0.0)
    optim = Optimisation.build(settings, step.parameters, torch.device("cpu"), direct=True)
    names = ["batch slicing", "forward, loss, gradients", "clip_grad_norm", "Adam step", "sums"]
    clock = time.thread_time_ns
    total = torch.zeros((), dtype=torch.float64)

    def one(i: int, t: list[int]) -> None:
        t.append(clock())
        j = (i % 23) * 128
        xb, zb = xs[j : j + 128], zs[j : j + 128]
        t.append(clock())
        loss = step(xb, zb)
        t.append(clock())
        total.add_(optim.clip(step.parameters))
        t.append(clock())
        optim.update()
        t.append(clock())
        total.add_(loss.detach(), alpha=128)
        t.append(clock())

    best: list[float] | None = None
    with step.attached():
        xs, zs = step.prepare(x, y)
        for _ in range(repeats):
            acc = [0.0] * len(names)
            for i in range(steps):
                t: list[int] = []
                one(i, t)
                for j in range(len(names)):
                    acc[j] += (t[j + 1] - t[j]) / steps / 1e3
            if best is None or sum(acc) < sum(best):
                best = acc
        from torch.profiler import profile

        with profile() as prof:
            for i in range(10):
                one(i, [])
    assert best is not None
    path = "NumPy" if getattr(step, "numpy_step", None) is not None else "PyTorch"
    print(f"one training step ({path} step), CPU time, fastest of {repeats} x {steps} steps (us):")
    for n, v in zip([*names, "total"], [*best, sum(best)]):
        print(f"  {n:26s} {v:8.1f}  {100 * v / sum(best):5.1f}%")
    ops = [e for e in prof.events() if e.cpu_parent is None]
    print(f"PyTorch calls per step: {len(ops) / 10:.0f}")


def _run(kind: str, epochs: int, seed: int, baseline: str | None = None) -> dict:
    env = dict(os.environ)
    if kind == "mdnkit-baseline":
        if not baseline:
            raise SystemExit("mdnkit-baseline needs --baseline SRC (a folder holding mdnkit/)")
        env["PYTHONPATH"] = os.pathsep.join([baseline, env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        )
    elif kind != "mdnkit":
        env["KERAS_BACKEND"] = kind.split("-")[1]
    worker = "mdnkit" if kind.startswith("mdnkit") else kind
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        worker,
        "--epochs",
        str(epochs),
        "--seed",
        str(seed),
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="mdnkit,keras-torch,keras-jax")
    ap.add_argument(
        "--baseline",
        default=None,
        metavar="SRC",
        help="also run mdnkit from this source folder (contender mdnkit-baseline)",
    )
    ap.add_argument("--profile", action="store_true", help="break one mdnkit step down instead")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    add_json_argument(ap)
    args = ap.parse_args(argv)
    if args.profile:
        _profile()
        return 0
    if args.worker:
        fn = _worker_mdnkit if args.worker == "mdnkit" else _worker_keras
        print(json.dumps(fn(args.epochs, args.seed)))
        return 0

    kinds = args.only.split(",")
    if args.baseline and "mdnkit-baseline" not in kinds:
        kinds.insert(1 if "mdnkit" in kinds else 0, "mdnkit-baseline")
    results: dict[str, list[dict]] = {k: [] for k in kinds}
    for r in range(args.repeats):
        for kind in kinds:
            res = _run(kind, args.epochs, args.seed + r, args.baseline)
            results[kind].append(res)
            print(
                f"round {r + 1}/{args.repeats} {kind:12s} {res['seconds']:7.2f} s  "
                f"test NLL {res['nll']:.4f}",
                flush=True,
            )
    report = Report("bench_training", __doc__)
    for k, runs in results.items():
        report.add(f"{k}: training seconds", [x["seconds"] for x in runs], "s", better="lower")
        report.add(
            f"{k}: test NLL (H(Y|X) = 1.288)",
            [x["nll"] for x in runs],
            "nats",
            better="lower",
            note=f"{args.epochs} epochs, {N_TRAIN} points, {N_TEST} test points",
        )
    if "mdnkit" in results and "mdnkit-baseline" in results:
        report.add(
            "training speed-up over the baseline source, round by round",
            [
                b["seconds"] / m["seconds"]
                for m, b in zip(results["mdnkit"], results["mdnkit-baseline"])
            ],
            "x",
            competitor=f"mdnkit from {args.baseline}",
        )
    keras_kinds = [k for k in results if k.startswith("keras")]
    if "mdnkit" in results and keras_kinds:
        fastest = min(
            keras_kinds, key=lambda k: statistics.median(x["seconds"] for x in results[k])
        )
        report.add(
            "training speed-up over the faster Keras, round by round",
            [k["seconds"] / m["seconds"] for m, k in zip(results["mdnkit"], results[fastest])],
            "x",
            competitor=f"keras-mdn-layer 1.0.0 on {fastest}",
            target=">= 5x",
        )
    report.finish(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""MDN-RNN training speed: mdnkit's MDNRNN against the classic Keras MDN-RNN, events per second.

The network, as keras-mdn-layer's own kanji notebooks build it
(``notebooks/MDN-RNN-time-distributed-MDN-training.ipynb`` in cpmpercussion/keras-mdn-layer):
one ``LSTM(192, return_sequences=True)`` over windows of stroke-3 events ``(dx, dy, pen)``,
``TimeDistributed(mdn.MDN(3, 10))`` on every step, compiled with
``loss=mdn.get_mixture_loss_func(3, 10)`` and Adam, trained by ``model.fit`` on ``X = w[:, :-1]``,
``Y = w[:, 1:]`` (the notebook's seq-to-seq framing; one 3-D mixture models the pen as a number).
Data: the kanji training set (``../shared/data/strokes/kanji.npz``, 10 000 drawings) joined into
one stream and cut into windows of 65 rows, so every window has 64 predicted events; batch 64,
so one batch is 4 096 events.  ``dx, dy`` are divided by their standard deviation for Keras
(mdnkit standardises inside).

* ``mdnkit``: ``MDNRNN(2, hidden_size=192, num_layers=1, num_components=10, pen_states=2)``
  (10 diagonal components for ``(dx, dy)`` and a pen-state softmax: a little more head than
  Keras's) on ``w[:, 1:]`` with lengths 64, prepared as ``fit`` prepares it, trained by the step
  ``fit`` runs: ``EpochStep.for_model(model, data)`` (the model's autograd-free
  :class:`~mdnkit.sequence.fast.LSTMFastStep`), its ``prepare`` once, then
  ``.run(batches, Optimisation.build(FitSettings(), ...))`` (gradient clipping at 10, Adam);
* ``mdnkit-autograd``: the same with autograd on ``model.loss(x, lengths)`` (``EpochStep(model)``,
  ``nn.LSTM``: oneDNN's LSTM on the CPU), what ``fit`` ran before the fast step;
* ``keras-jax`` and ``keras-torch``: the Keras model above (keras-mdn-layer's ``mdn`` module),
  ``model.fit(X, Y, batch_size=64, epochs=1, shuffle=False, verbose=0)`` on the JAX and the
  torch Keras backends;
* ``mdnkit-before`` (with ``--baseline DIR``): the mdnkit worker importing ``mdnkit`` from
  ``DIR`` (another checkout's ``src``), to compare two versions in one run.

Each contender runs in its own subprocess (the Keras backend is chosen at import), the rounds
interleaved so that load from other processes hits all of them alike.  Threads are set equally:
``--threads N`` (default 1) becomes ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``,
``torch.set_num_threads`` and ``torch.set_num_interop_threads`` in every worker, and XLA's CPU
flags ``intra_op_parallelism_threads=N`` and ``--xla_cpu_multi_thread_eigen`` (false for one
thread, true for more) for JAX.  These do not hold JAX to one core: its runtime and Keras's
``fit`` loop keep about 1.5 to 1.7 cores busy at one thread (its events per CPU-second well
below its events per second), which the wall time hides and the CPU time shows; hence the
speed-up is reported both ways, and ``--pin`` binds every worker to ``N`` CPUs
(``os.sched_setaffinity``; off by default: on a machine shared with other jobs a worker bound
to a busy CPU cannot move to an idle one).  A worker
warms up (compilation, first batches), then times ``model.fit`` / the step on as many batches as
fill ``--seconds``.  Reported: events per second of wall time (median of the rounds, and their
spread) and events per CPU-second of the process (less sensitive to other jobs on the machine),
the load average, the versions.

    python benchmarks/bench_seq_training.py [--rounds 3] [--seconds 10] [--threads 1]
    python benchmarks/bench_seq_training.py --only mdnkit,mdnkit-autograd,keras-jax,keras-torch
    python benchmarks/bench_seq_training.py --baseline /tmp/before   # + an older mdnkit
    python benchmarks/bench_seq_training.py --pin   # each worker bound to --threads CPUs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from report import Report, add_json_argument

HIDDEN, K, WINDOW, BATCH = 192, 10, 64, 64
DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "strokes", "kanji.npz")


def _windows(path: str):
    """Windows ``(W, 65, 3)`` float32 of the kanji training stream (stroke-3 rows)."""
    import numpy as np

    with np.load(path) as d:
        stream = d["train_strokes"].astype(np.float32)
    n = (stream.shape[0] // (WINDOW + 1)) * (WINDOW + 1)
    return stream[:n].reshape(-1, WINDOW + 1, 3)


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:  # (already set: only possible before any parallel work)
        pass


def _timed(train, rate_batches: int, seconds: float) -> dict:
    """Warm up, calibrate, then time ``train(n)`` (n batches) over about ``seconds``."""
    train(3)  # compilation, allocation, first steps
    t = time.perf_counter()
    train(rate_batches)
    per_batch = (time.perf_counter() - t) / rate_batches
    n = max(2, int(seconds / max(per_batch, 1e-6)))
    wall, cpu = time.perf_counter(), time.process_time()
    done = train(n)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    events = done * BATCH * WINDOW
    return {"events_s": events / wall, "events_cpu_s": events / cpu, "batches": done}


def _worker_mdnkit(path: str, seconds: float, threads: int, autograd: bool = False) -> dict:
    import torch

    _threads(threads)
    from mdnkit.sequence import MDNRNN
    from mdnkit.training import EpochStep, FitSettings, Optimisation

    w = _windows(path)
    x = torch.from_numpy(w[:, 1:].copy())
    lengths = torch.full((x.shape[0],), WINDOW, dtype=torch.long)
    torch.manual_seed(0)
    model = MDNRNN(2, hidden_size=HIDDEN, num_layers=1, num_components=K, pen_states=2)
    model.prepare(x, lengths)
    model.train()
    dev = torch.device("cpu")
    # fit's choice (the model's fast step where it offers one), or autograd when asked
    step = EpochStep(model) if autograd else EpochStep.for_model(model, (x, lengths))
    optim = Optimisation.build(FitSettings(), step.parameters, dev, direct=step.fast is not None)
    nb = x.shape[0] // BATCH
    offset = [0]
    with step.attached():
        data = step.prepare((x, lengths))  # once, as fit does

        def train(n: int) -> int:
            def batches():
                for i in range(n):
                    j = ((offset[0] + i) % nb) * BATCH
                    yield tuple(t[j : j + BATCH] for t in data)

            step.run(batches(), optim, dev)
            offset[0] += n
            return n

        out = _timed(train, 3, seconds)
    out["threads"] = torch.get_num_threads()
    out["fast_step"] = type(step.fast).__name__ if step.fast is not None else None
    return out


def _worker_keras(path: str, seconds: float, threads: int) -> dict:
    if os.environ["KERAS_BACKEND"] == "torch":
        _threads(threads)
    import keras

    try:
        import keras_mdn_layer as mdn  # keras-mdn-layer's module (the notebooks' `mdn`)
    except ImportError:
        import mdn

    w = _windows(path)
    w[..., :2] /= w[..., :2].reshape(-1, 2).std(0)
    xs, ys = w[:, :-1], w[:, 1:]
    keras.utils.set_random_seed(0)
    inputs = keras.Input((WINDOW, 3))
    h = keras.layers.LSTM(HIDDEN, return_sequences=True)(inputs)
    out = keras.layers.TimeDistributed(mdn.MDN(3, K))(h)
    model = keras.Model(inputs, out)
    model.compile(loss=mdn.get_mixture_loss_func(3, K), optimizer=keras.optimizers.Adam())
    nb = xs.shape[0] // BATCH
    offset = [0]

    def train(n: int) -> int:
        n = min(n, nb)
        j = offset[0] % (nb - n + 1)
        rows = slice(j * BATCH, (j + n) * BATCH)
        model.fit(xs[rows], ys[rows], batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
        offset[0] += n
        return n

    return _timed(train, 2, seconds)


def _run(kind: str, args: argparse.Namespace) -> dict:
    env = dict(os.environ)
    n = str(args.threads)
    env.update(OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, OPENBLAS_NUM_THREADS=n)
    eigen = "false" if args.threads == 1 else "true"  # XLA's Eigen uses the N threads too
    env["XLA_FLAGS"] = f"--xla_cpu_multi_thread_eigen={eigen} intra_op_parallelism_threads={n}"
    worker = kind
    if kind.startswith("keras"):
        env["KERAS_BACKEND"] = kind.split("-")[1]
        worker = "keras"
    elif kind == "mdnkit-before":
        env["PYTHONPATH"] = os.pathsep.join([args.baseline, env.get("PYTHONPATH", "")])
        worker = "mdnkit"
    elif kind not in ("mdnkit", "mdnkit-autograd"):
        raise SystemExit(f"unknown trainer {kind!r}: expected mdnkit, mdnkit-autograd or keras-*")
    cmd = [sys.executable, __file__, "--worker", worker, "--data", args.data]
    cmd += ["--seconds", str(args.seconds), "--threads", n]
    if args.pin:
        cmd.append("--pin")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _report(results: dict[str, list[dict]], args: argparse.Namespace, loads: list) -> None:
    from importlib.metadata import version

    print()
    print(
        f"MDN-RNN training, LSTM {HIDDEN}, K={K}, batch {BATCH} x {WINDOW} events (kanji); "
        f"{args.rounds} interleaved rounds of about {args.seconds:g} s each after warm-up; "
        f"{args.threads} thread(s) per worker{' on as many CPUs' if args.pin else ''}; "
        f"torch {version('torch')}, keras {version('keras')}, "
        f"jax {version('jax')}, keras-mdn-layer {version('keras-mdn-layer')}, Python "
        f"{platform.python_version()}, {os.cpu_count()} CPUs, load average "
        f"{loads[0]:.1f} at the start, {loads[-1]:.1f} at the end"
    )
    print()
    med = {k: statistics.median(r["events_s"] for r in v) for k, v in results.items()}
    cpu = {k: statistics.median(r["events_cpu_s"] for r in v) for k, v in results.items()}
    keras_kinds = [k for k in med if k.startswith("keras")]
    best = max(keras_kinds, key=lambda k: med[k]) if keras_kinds else None
    print(
        "| trainer | events/s (median) | rounds (min-max) | events per CPU-s "
        "| vs faster Keras (wall) | (CPU) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for k, v in results.items():
        lo, hi = min(r["events_s"] for r in v), max(r["events_s"] for r in v)
        ratio = f"{med[k] / med[best]:.2f}x | {cpu[k] / cpu[best]:.2f}x" if best else " |"
        print(f"| {k} | {med[k]:,.0f} | {lo:,.0f}-{hi:,.0f} | {cpu[k]:,.0f} | {ratio} |")
    if "mdnkit-before" in med and "mdnkit" in med:
        print()
        print(f"mdnkit now / before: {med['mdnkit'] / med['mdnkit-before']:.2f}x (wall), "
              f"{cpu['mdnkit'] / cpu['mdnkit-before']:.2f}x (CPU)")  # fmt: skip
    report = Report("bench_seq_training", __doc__)
    note = f"LSTM {HIDDEN}, K={K}, batch {BATCH} x {WINDOW} kanji events, {args.threads} thread(s)"
    note += f" on {args.threads} CPU(s)" if args.pin else ""
    for k, v in results.items():
        report.add(f"{k}: events/s", [r["events_s"] for r in v], "events/s", note=note)
        report.add(f"{k}: events per CPU-second", [r["events_cpu_s"] for r in v], "events/CPU-s")
    if best and "mdnkit" in results:
        report.add(
            "mdnkit speed-up over the faster Keras route, round by round",
            [a["events_s"] / b["events_s"] for a, b in zip(results["mdnkit"], results[best])],
            "x",
            competitor=f"keras-mdn-layer 1.0.0 on {best}",
            target=">= 2.5x",
        )
        report.add(
            "mdnkit speed-up over the faster Keras route in events per CPU-second, round by round",
            [
                a["events_cpu_s"] / b["events_cpu_s"]
                for a, b in zip(results["mdnkit"], results[best])
            ],
            "x",
            competitor=f"keras-mdn-layer 1.0.0 on {best}",
        )
    report.finish(args.json)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0, help="timed seconds per worker")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="bind every worker to --threads CPUs (default: no)",
    )
    ap.add_argument("--only", default="mdnkit,mdnkit-autograd,keras-jax,keras-torch")
    ap.add_argument("--baseline", default=None, help="also time mdnkit imported from this src dir")
    ap.add_argument("--data", default=os.environ.get("MDNKIT_KANJI", DATA))
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    add_json_argument(ap)
    args = ap.parse_args(argv)
    if args.worker:
        if args.pin:  # before any library starts its threads (they inherit the CPU set)
            os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.threads])
        if args.worker.startswith("mdnkit"):
            auto = args.worker == "mdnkit-autograd"
            res = _worker_mdnkit(args.data, args.seconds, args.threads, autograd=auto)
        else:
            res = _worker_keras(args.data, args.seconds, args.threads)
        print(json.dumps(res))
        return 0
    kinds = args.only.split(",")
    if args.baseline:
        kinds.insert(1, "mdnkit-before")
    results: dict[str, list[dict]] = {k: [] for k in kinds}
    loads = [os.getloadavg()[0]]
    for r in range(args.rounds):
        for kind in kinds:
            res = _run(kind, args)
            results[kind].append(res)
            loads.append(os.getloadavg()[0])
            print(
                f"round {r + 1}/{args.rounds} {kind:14s} {res['events_s']:9,.0f} events/s  "
                f"{res['events_cpu_s']:9,.0f} per CPU-s  ({res['batches']} batches, "
                f"load {loads[-1]:.1f})",
                flush=True,
            )
    _report(results, args, loads)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Real-time generation benchmark: time per generated event of a small MDN-RNN, one stream.

The network is the size used live (RoboJam-style): a 2-layer LSTM of 64 units, 8-dimensional
events, 5 diagonal Gaussian components, batch 1.  One "event" is a full step: read the previous
event, advance the recurrent state, compute the mixture and sample the next event.  Compared,
in the same process, interleaved, medians of repeats (so that load from other processes affects
all of them alike):

1. ``mdnkit``: ``model.generator().step(event)`` (:class:`mdnkit.sequence.StepGenerator`);
   also a conditioned model of the same size (2 per-step inputs, a 4-dimensional context that
   sets the initial state): ``model.generator(context=c).step(event, inputs=a)``.
2. ``mdnkit`` on onnxruntime: :func:`mdnkit.sequence.export_onnx` then
   :class:`mdnkit.sequence.OnnxGenerator` ``.step(event)``.
3. The naive PyTorch route, for reference: ``model(x, state)`` on one step (``nn.LSTM``) then
   ``GaussianMixture.sample`` under ``torch.inference_mode``.
4. The Keras route the classic layer's users take: a stateful Keras model
   (``LSTM(64, stateful=True)`` ×2, batch size 1, ``keras_mdn_layer.MDN(8, 5)``) called once per
   step (``model(x, training=False)``, the faster of the two calls; ``predict_on_batch`` is also
   timed) and ``keras_mdn_layer.sample_from_output`` on its output.

Everything runs with one torch thread (``torch.set_num_threads(1)``: faster for batch 1).
Prints a markdown table::

    python benchmarks/bench_realtime.py            # about a minute
    python benchmarks/bench_realtime.py --quick    # a few seconds
    python benchmarks/bench_realtime.py --quick --baseline /tmp/base/src   # + old vs new

``--baseline SRC`` also times route 1 with mdnkit from another source folder against this one,
each in its own process (the same seeded network), the processes alternating round by round;
the ratio of each round is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from report import Report, add_json_argument  # noqa: E402

from mdnkit.sequence import MDNRNN, OnnxGenerator, export_onnx  # noqa: E402

__all__ = ["main"]

D, K, H, LAYERS = 8, 5, 64, 2


def _per_step(step, event, n: int) -> float:
    """Seconds per call of ``event = step(event)``, over ``n`` calls."""
    start = time.perf_counter()
    for _ in range(n):
        event = step(event)
    return (time.perf_counter() - start) / n


def mdnkit_step(model: MDNRNN):
    g = model.generator(generator=0)
    return g.step, g.step()


def mdnkit_conditioned_step():
    """The same network with per-step inputs (an action, 2 values) and a context (4 values)."""
    torch.manual_seed(0)
    model = MDNRNN(
        D, hidden_size=H, num_layers=LAYERS, num_components=K, input_dim=2, context_dim=4
    ).eval()
    model.prepare(torch.randn(64, 32, D))
    g = model.generator(generator=0, context=np.ones(4, np.float32))
    action = np.array([0.5, -0.5], np.float32)
    return (lambda event: g.step(event, action)), g.step(None, action)


def onnx_step(model: MDNRNN, folder: str):
    path = os.path.join(folder, "step.onnx")
    export_onnx(model, path)
    g = OnnxGenerator(path, generator=0)
    return g.step, g.step()


def torch_naive_step(model: MDNRNN):
    gen = torch.Generator().manual_seed(0)
    state: list = [None]

    def step(event: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            mixture, _, state[0] = model(event.view(1, 1, D), state[0])
            return mixture.sample(generator=gen).view(D)

    return step, torch.zeros(D)


def keras_steps():
    """The classic stateful Keras MDN-RNN; returns (call step, predict_on_batch step, event)."""
    try:
        import keras
        import keras_mdn_layer as classic
    except ImportError:
        return None
    inputs = keras.Input(batch_shape=(1, 1, D))
    h = keras.layers.LSTM(H, stateful=True, return_sequences=True)(inputs)
    h = keras.layers.LSTM(H, stateful=True)(h)
    model = keras.Model(inputs, classic.MDN(D, K)(h))
    np.random.seed(0)  # noqa: NPY002 - the classic sampler draws from the global state

    def call_step(event: np.ndarray) -> np.ndarray:
        params = keras.ops.convert_to_numpy(model(event.reshape(1, 1, D), training=False))
        return classic.sample_from_output(params[0], D, K, temp=1.0, sigma_temp=1.0)

    def predict_step(event: np.ndarray) -> np.ndarray:
        params = model.predict_on_batch(event.reshape(1, 1, D).astype(np.float32))
        return classic.sample_from_output(params[0], D, K, temp=1.0, sigma_temp=1.0)

    return call_step, predict_step, np.zeros(D, np.float32)


def _worker_step(n: int, repeats: int) -> dict:
    """Route 1 alone in this process (whatever mdnkit it imports): µs per event, the median of
    ``repeats`` runs of ``n`` steps."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = MDNRNN(D, hidden_size=H, num_layers=LAYERS, num_components=K).eval()
    model.prepare(torch.randn(64, 32, D))
    step, event = mdnkit_step(model)
    _per_step(step, event, n // 5)
    return {"us": statistics.median(_per_step(step, event, n) * 1e6 for _ in range(repeats))}


def _against_baseline(source: str, rounds: int, n: int) -> tuple[list[float], list[float]]:
    """Route 1 with this mdnkit and with the one in ``source``, alternating processes."""
    here: list[float] = []
    there: list[float] = []
    cmd = [sys.executable, __file__, "--worker-step", str(n)]
    for _ in range(rounds):
        for src, out in ((None, here), (source, there)):
            env = dict(os.environ)
            if src is not None:
                env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if res.returncode != 0:
                raise RuntimeError(f"worker failed:\n{res.stderr[-3000:]}")
            out.append(json.loads(res.stdout.strip().splitlines()[-1])["us"])
    return here, there


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--baseline", default=None, metavar="SRC")
    parser.add_argument("--worker-step", type=int, default=None, help=argparse.SUPPRESS)
    add_json_argument(parser)
    args = parser.parse_args(argv)
    if args.worker_step:
        print(json.dumps(_worker_step(args.worker_step, 5)))
        return {}
    torch.set_num_threads(1)
    repeats = args.repeats or (3 if args.quick else 15)
    n_fast, n_slow = (300, 30) if args.quick else (2000, 150)

    torch.manual_seed(0)
    model = MDNRNN(D, hidden_size=H, num_layers=LAYERS, num_components=K).eval()
    model.prepare(torch.randn(64, 32, D))
    with tempfile.TemporaryDirectory() as folder:
        routes: dict[str, tuple] = {
            "mdnkit StepGenerator (NumPy)": (*mdnkit_step(model), n_fast),
            "mdnkit StepGenerator, inputs + context (NumPy)": (*mdnkit_conditioned_step(), n_fast),
            "mdnkit OnnxGenerator (onnxruntime)": (*onnx_step(model, folder), n_fast),
            "PyTorch nn.LSTM step + GaussianMixture.sample": (
                *torch_naive_step(model),
                n_fast // 4,
            ),
        }
        ks = keras_steps()
        if ks is not None:
            routes["Keras stateful model(x) + sample_from_output"] = (ks[0], ks[2], n_slow)
            routes["Keras stateful predict_on_batch + sample_from_output"] = (ks[1], ks[2], n_slow)
        times: dict[str, list[float]] = {name: [] for name in routes}
        for step, event, n in routes.values():  # warm-up
            _per_step(step, event, max(20, n // 10))
        for _ in range(repeats):
            for name, (step, event, n) in routes.items():
                times[name].append(_per_step(step, event, n))
    med = {name: statistics.median(v) for name, v in times.items()}
    ours = times["mdnkit StepGenerator (NumPy)"]
    report = Report("bench_realtime", __doc__)
    for name, v in times.items():
        report.add(
            f"{name}: µs per event",
            [t * 1e6 for t in v],
            "µs",
            better="lower",
            target="<= 15 µs" if v is ours else None,
            note=f"LSTM {H}x{LAYERS}, D={D}, K={K}, 1 torch thread",
        )
    keras = [k for k in times if k.startswith("Keras")]
    if keras:
        best = min(keras, key=lambda k: med[k])
        report.add(
            "mdnkit StepGenerator speed-up over the fastest Keras route",
            [b / a for a, b in zip(ours, times[best])],
            "x",
            competitor=best,
        )
    if args.baseline:
        here, there = _against_baseline(args.baseline, max(repeats, 5), n_fast)
        note = "each in its own process, alternating; the median of 5 runs a round"
        report.add("mdnkit StepGenerator: µs per event, this source", here, "µs", better="lower",
                   note=note)  # fmt: skip
        report.add(f"mdnkit StepGenerator: µs per event, {args.baseline}", there, "µs",
                   better="lower", note=note)  # fmt: skip
        report.add(
            "mdnkit StepGenerator speed-up over the baseline source, round by round",
            [b / a for a, b in zip(here, there)],
            "x",
            competitor=f"mdnkit from {args.baseline}",
        )
    report.finish(args.json)
    return med


if __name__ == "__main__":
    main()

"""Benchmarks of the mdnkit core against its competitors, measured in the same run.

Run ``python benchmarks/bench_core.py`` (about two minutes on two cores) or
``python benchmarks/bench_core.py --quick`` (a smoke run of a few seconds).  It prints one
markdown table; every figure is the median of repeated timings and every ratio compares
timings taken back to back in the same process, so that load from other processes affects both.

1. Loss forward + backward, batch 4096, K=10, D=2, diagonal and full covariances:
   ``mdn_loss(GaussianMixture(...), y)`` against ``torch.distributions.MixtureSameFamily``
   (``Categorical`` + ``Independent(Normal)`` or ``MultivariateNormal``), both built from the same
   leaf tensors with ``validate_args=False`` and both timed from construction to ``backward()``;
   at one thread and at torch's default thread count.  The ratio is the median of the ratios of
   back-to-back pairs of timings (see :func:`_paired`).  Also, diagonal at one thread, both
   built with torch's default argument validation, as a user writes it.
2. Sampling one draw per row, 1-D, K=10, 200 000 rows, one thread: ``GaussianMixture.sample``
   against ``MixtureSameFamily.sample`` and against keras-mdn-layer 1.0.0's NumPy
   ``sample_from_output`` applied row by row with ``np.apply_along_axis`` as its README shows
   (timed on a few thousand rows, reported per row).
3. Peak memory of the loss (forward + backward), 2^18 rows, K=10, D=2: each variant runs in a
   fresh subprocess (median of three); the peak resident set size is reset (Linux
   ``/proc/self/clear_refs``) just before the loss, with the inputs allocated and a small warm-up
   done, and the figure is the peak (``VmHWM``) after ``backward()`` minus the resident set size
   before it: the extra memory the loss and its gradients need.
4. The loss as a training loop computes it: ``mdn_loss(MDNHead(64, 2, 10)(h), y)`` forward and
   backward to the features and the head's weights, against the same ``nn.Linear``, split,
   softplus scales and ``MixtureSameFamily``, one thread.

``--baseline SRC`` (a folder holding ``mdnkit/``, an older checkout's ``src``) also times
mdnkit's side of the diagonal loss, the head + loss and the prebuilt sampling with this source
and with ``SRC``, one process of each a round, alternating, and reports the speed-up round by
round::

    python benchmarks/bench_core.py --only loss --baseline /tmp/before/src --rounds 9
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from functools import partial

import numpy as np
import torch
from report import Report, add_json_argument
from torch import distributions as td

from mdnkit.head import MDNHead
from mdnkit.loss import mdn_loss
from mdnkit.mixture import GaussianMixture

__all__ = ["main"]


def _leaves(n: int, k: int, d: int, full: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g).requires_grad_()
    loc = torch.randn(n, k, d, generator=g).requires_grad_()
    y = torch.randn(n, d, generator=g)
    if full:
        a = torch.randn(n, k, d, d, generator=g) * 0.3
        tril = torch.tril(a, -1) + torch.diag_embed(torch.rand(n, k, d, generator=g) + 0.5)
        return logits, loc, tril.requires_grad_(), y
    scale = (torch.rand(n, k, d, generator=g) + 0.5).requires_grad_()
    return logits, loc, scale, y


def _ours_loss(logits, loc, s, y, full, validate=False):
    if full:
        m = GaussianMixture(logits, loc, scale_tril=s, validate_args=validate)
    else:
        m = GaussianMixture(logits, loc, s, validate_args=validate)
    return mdn_loss(m, y)


def _torch_loss(logits, loc, s, y, full, validate=False):
    cat = td.Categorical(logits=logits, validate_args=validate)
    if full:
        comp = td.MultivariateNormal(loc, scale_tril=s, validate_args=validate)
    else:
        comp = td.Independent(td.Normal(loc, s, validate_args=validate), 1, validate_args=validate)
    return -td.MixtureSameFamily(cat, comp, validate_args=validate).log_prob(y).mean()


@contextlib.contextmanager
def _threads(n: int):
    """Torch at ``n`` threads inside, its previous count restored on leaving."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _time(fn, repeats: int, inner: int) -> list[float]:
    """Seconds per call: ``repeats`` measurements, each the mean over ``inner`` calls."""
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        out.append((time.perf_counter() - t0) / inner)
    return out


def _add_loss(report: Report, what: str, times: dict, ratios: list, target: str | None) -> None:
    """The two figures of one loss measurement: mdnkit's time and its speed-up."""
    report.add(f"{what}: mdnkit", [t * 1e3 for t in times["ours"]], "ms", better="lower")
    report.add(
        f"{what}: speed-up",
        ratios,
        "x",
        competitor=f"MixtureSameFamily {statistics.median(times['torch']) * 1e3:.3f} ms",
        target=target,
    )


def _paired(fns: dict, repeats: int, inner: int) -> tuple[dict[str, list[float]], list[float]]:
    """Time two functions in alternation (order swapped every round).

    Returns the seconds per call of each, round by round, and the ratio (second / first) of the
    two timings taken back to back in each round: a load spike from other processes hits both
    halves of a pair, so the paired ratios are steadier than a ratio of medians.
    """
    (na, fa), (nb, fb) = fns.items()
    fa(), fb()  # warm-up
    ta: list[float] = []
    tb: list[float] = []
    for i in range(repeats):
        if i % 2:
            b = _time(fb, 1, inner)[0]
            a = _time(fa, 1, inner)[0]
        else:
            a = _time(fa, 1, inner)[0]
            b = _time(fb, 1, inner)[0]
        ta.append(a)
        tb.append(b)
    return {na: ta, nb: tb}, [y / x for x, y in zip(ta, tb)]


def bench_loss(report: Report, quick: bool) -> None:
    n, k, d = 4096, 10, 2
    repeats, inner = (20, 1) if quick else (300, 1)
    for threads in sorted({1, torch.get_num_threads()}):
        with _threads(threads):
            for full in (False, True):
                leaves = _leaves(n, k, d, full)
                params = leaves[:3]

                def step(loss_fn, leaves=leaves, params=params, full=full):
                    for p in params:
                        p.grad = None
                    loss_fn(*leaves, full).backward()

                # Same value from both (a sanity check, not a timing).
                a = _ours_loss(*leaves, full).item()
                b = _torch_loss(*leaves, full).item()
                assert abs(a - b) <= 1e-4 * max(1.0, abs(b)), (a, b)
                times, ratios = _paired(
                    {
                        "ours": lambda step=step: step(_ours_loss),
                        "torch": lambda step=step: step(_torch_loss),
                    },
                    repeats,
                    inner,
                )
                kind = "full" if full else "diagonal"
                what = f"loss fwd+bwd, {kind}, N={n}, K={k}, D={d}, {threads} thread(s)"
                _add_loss(report, what, times, ratios, ">= 3x" if kind == "diagonal" else None)
                if full or threads != 1:
                    continue
                # The way a user writes it: both distributions built with torch's default
                # argument validation (None), which a head in a training loop pays every step.
                times, ratios = _paired(
                    {
                        "ours": lambda step=step: step(partial(_ours_loss, validate=None)),
                        "torch": lambda step=step: step(partial(_torch_loss, validate=None)),
                    },
                    repeats,
                    inner,
                )
                _add_loss(report, f"{what}, built with default validation", times, ratios, None)
    _bench_head_loss(report, n, k, d, repeats, inner)


def _bench_head_loss(report: Report, n: int, k: int, d: int, repeats: int, inner: int) -> None:
    """The loss as a training loop computes it from a network's features ``h`` ``(N, 64)``:
    ``mdn_loss(MDNHead(h), y)`` against the same linear layer, split, softplus scales with the
    same floor and ``MixtureSameFamily`` (argument validation off: its fastest), forward and
    backward to ``h`` and the layer's weights, one thread."""
    head, h, y = _head_inputs(n, k, d)
    lay = head.layout

    def theirs():
        loc, raw, logits = lay.split(head.proj(h))
        scale = torch.nn.functional.softplus(raw) + lay.min_scale
        comp = td.Independent(td.Normal(loc, scale, validate_args=False), 1)
        cat = td.Categorical(logits=logits, validate_args=False)
        return -td.MixtureSameFamily(cat, comp, validate_args=False).log_prob(y).mean()

    with _threads(1):
        a, b = mdn_loss(head(h), y).item(), theirs().item()
        assert abs(a - b) <= 1e-4 * max(1.0, abs(b)), (a, b)
        times, ratios = _paired(
            {"ours": _head_step(head, h, y), "torch": _head_step(head, h, y, theirs)},
            repeats,
            inner,
        )
    what = f"head + loss fwd+bwd, diagonal, features 64, N={n}, K={k}, D={d}, 1 thread(s)"
    _add_loss(report, what, times, ratios, None)


def _head_inputs(n: int, k: int, d: int):
    """An ``MDNHead(64, d, k)``, features ``h`` ``(n, 64)`` (requiring a gradient), targets."""
    g = torch.Generator().manual_seed(0)
    head = MDNHead(64, d, k)
    return head, torch.randn(n, 64, generator=g).requires_grad_(), torch.randn(n, d, generator=g)


def _head_step(head, h, y, loss_fn=None):
    """One training step's loss work: ``loss_fn()`` (mdnkit's by default) forward and backward
    to ``h`` and the head's weights, from cleared gradients."""
    loss_fn = loss_fn or (lambda: mdn_loss(head(h), y))

    def step():
        h.grad = None
        head.zero_grad(set_to_none=True)
        loss_fn().backward()

    return step


def _keras_sampler():
    os.environ.setdefault("KERAS_BACKEND", "jax")
    try:
        import keras_mdn_layer
    except Exception as exc:  # keras-mdn-layer not installed or no Keras backend
        return None, f"{type(exc).__name__}: {exc}"
    return keras_mdn_layer.sample_from_output, None


def _sampling_leaves(n: int, k: int):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(n, k, generator=g)
    loc = torch.randn(n, k, 1, generator=g) * 3
    scale = torch.rand(n, k, 1, generator=g) + 0.1
    return logits, loc, scale


def _bench_sampling_torch(report: Report, n: int, k: int, repeats: int) -> None:
    logits, loc, scale = _sampling_leaves(n, k)

    def ours_built(validate):
        return GaussianMixture(logits, loc, scale, validate_args=validate).sample(generator=1)

    def theirs_built(validate):
        cat = td.Categorical(logits=logits, validate_args=validate)
        comp = td.Independent(td.Normal(loc, scale, validate_args=validate), 1)
        return td.MixtureSameFamily(cat, comp, validate_args=validate).sample()

    ours_pre = GaussianMixture(logits, loc, scale)
    theirs_pre = td.MixtureSameFamily(
        td.Categorical(logits=logits), td.Independent(td.Normal(loc, scale), 1)
    )
    cases = {
        "built with validation off": (lambda: ours_built(False), lambda: theirs_built(False)),
        "built with default validation": (lambda: ours_built(None), lambda: theirs_built(None)),
        "prebuilt": (lambda: ours_pre.sample(generator=1), theirs_pre.sample),
    }
    for what, (ours, theirs) in cases.items():
        times, ratios = _paired({"ours": ours, "torch": theirs}, repeats, 1)
        name = f"sample 1-D, K={k}, {n} rows, 1 thread, {what}"
        report.add(
            f"{name}: mdnkit", [t / n * 1e9 for t in times["ours"]], "ns/row", better="lower"
        )
        report.add(
            f"{name}: speed-up",
            ratios,
            "x",
            competitor=f"MixtureSameFamily {statistics.median(times['torch']) / n * 1e9:.0f} ns/row",
        )


def _bench_sampling_keras(report: Report, k: int, quick: bool) -> None:
    sampler, err = _keras_sampler()
    if sampler is None:
        print(f"sampling against keras-mdn-layer not run ({err})")
        return
    m = 500 if quick else 3000
    logits, loc, scale = _sampling_leaves(m, k)
    # The Keras layer's flat layout: K*D means, K*D sigmas, K logits.
    flat = torch.cat([loc[:, :, 0], scale[:, :, 0], logits], -1).numpy().astype(np.float64)
    np.random.seed(0)  # noqa: NPY002 (the competitor draws from NumPy's global state)

    def keras_rows():
        return np.apply_along_axis(sampler, 1, flat, 1, k, temp=1.0, sigma_temp=1.0)

    # Both sides draw the same m rows per call, built from the flat Keras layout as a user of
    # the Keras front would (default validation): the fixed cost per call counts.
    def ours():
        return GaussianMixture(logits, loc, scale).sample(generator=1)

    times, ratios = _paired({"ours": ours, "keras": keras_rows}, 3 if quick else 7, 1)
    report.add(
        f"sample 1-D, K={k}, {m} rows a call, 1 thread: mdnkit",
        [t / m * 1e9 for t in times["ours"]],
        "ns/row",
        better="lower",
    )
    report.add(
        f"sample 1-D, K={k}, {m} rows a call, 1 thread: speed-up per row",
        ratios,
        "x",
        competitor=f"keras-mdn-layer sample_from_output "
        f"{statistics.median(times['keras']) / m * 1e6:.1f} µs/row",
        target=">= 2000x",
    )


def bench_sampling(report: Report, quick: bool) -> None:
    with _threads(1):
        _bench_sampling_torch(report, 20_000 if quick else 200_000, 10, 3 if quick else 15)
        _bench_sampling_keras(report, 10, quick)


_MEMORY_CHILD = r"""
import resource, sys, torch
sys.path.insert(0, {bench_dir!r})
import bench_core as b
which, n = sys.argv[1], int(sys.argv[2])
fn = b._ours_loss if which == "ours" else b._torch_loss
leaves = b._leaves(n, 10, 2, False)
fn(*leaves, False).backward()             # warm-up at full size: lazy initialisation, threads
for t in leaves:
    t.grad = None
def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
try:  # reset the peak (VmHWM) to the current resident set size (Linux >= 4.0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    reset = True
except OSError:
    reset = False
before = status("VmRSS:")
fn(*leaves, False).backward()
peak = status("VmHWM:") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(max(peak - before, 0))
"""


def bench_memory(report: Report, quick: bool) -> None:
    n = 2**15 if quick else 2**18
    code = _MEMORY_CHILD.format(bench_dir=os.path.dirname(os.path.abspath(__file__)))
    out = {}
    for which in ("ours", "torch"):
        vals = []
        for _ in range(1 if quick else 3):
            res = subprocess.run(
                [sys.executable, "-c", code, which, str(n)],
                capture_output=True,
                text=True,
                check=True,
                # a fixed mmap threshold: every large buffer is mapped and unmapped, so the
                # resident set follows the live tensors (glibc's adaptive threshold keeps freed
                # buffers resident in the heap, which made the figures depend on history)
                env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"},
            )
            vals.append(int(res.stdout.strip().splitlines()[-1]))
        out[which] = vals
    mib = 1024 * 1024
    inputs = n * (10 + 10 * 2 * 2 + 2) * 4 / mib
    what = f"peak memory of loss fwd+bwd, diagonal, N={n}, K=10, D=2 (inputs {inputs:.0f} MiB)"
    report.add(f"{what}: mdnkit", [v / mib for v in out["ours"]], "MiB", better="lower")
    report.add(f"{what}: MixtureSameFamily", [v / mib for v in out["torch"]], "MiB", better="lower")


def _ours_cases() -> dict:
    """mdnkit's side of the loss, head and sampling benchmarks, each a call to time: what
    ``--baseline`` compares between two sources."""
    loss_leaves = _leaves(4096, 10, 2, False)
    logits, loc, scale = _sampling_leaves(200_000, 10)
    prebuilt = GaussianMixture(logits, loc, scale)

    def loss():
        for t in loss_leaves[:3]:
            t.grad = None
        _ours_loss(*loss_leaves, False).backward()

    return {
        "loss fwd+bwd, diagonal, N=4096, K=10, D=2": loss,
        "head + loss fwd+bwd, diagonal, features 64, N=4096, K=10, D=2": _head_step(
            *_head_inputs(4096, 10, 2)
        ),
        "sample 1-D, K=10, 200000 rows, prebuilt": lambda: prebuilt.sample(generator=1),
    }


def _worker_ours(repeats: int) -> None:
    """Print the median seconds per call of each of :func:`_ours_cases` (one thread)."""
    with _threads(1):
        cases = _ours_cases()
        for fn in cases.values():
            fn()
        out = {name: statistics.median(_time(fn, repeats, 5)) for name, fn in cases.items()}
    print(json.dumps(out))


def bench_baseline(report: Report, source: str, rounds: int) -> None:
    """:func:`_ours_cases` with this mdnkit and with the one in ``source`` (a folder holding
    ``mdnkit/``), each round one process of each, their order swapped every round; the speed-up
    of this source round by round."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker-ours", "7"]
    env = dict(os.environ)
    there_env = {**env, "PYTHONPATH": os.pathsep.join([source, env.get("PYTHONPATH", "")])}
    here: list[dict] = []
    there: list[dict] = []
    for r in range(rounds):
        order = [(env, here), (there_env, there)]
        for e, out in order if r % 2 == 0 else order[::-1]:
            res = subprocess.run(cmd, env=e, capture_output=True, text=True, check=True)
            out.append(json.loads(res.stdout.strip().splitlines()[-1]))
    for name in here[0]:
        report.add(
            f"{name}, 1 thread: mdnkit speed-up over the baseline source, round by round",
            [b[name] / a[name] for a, b in zip(here, there)],
            "x",
            competitor=f"mdnkit from {source}",
        )


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmarks, print a markdown table, and write ``--json`` when asked."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--quick", action="store_true", help="a fast smoke run (small sizes, few repeats)"
    )
    p.add_argument(
        "--only", choices=("loss", "sampling", "memory"), default=None, help="run one benchmark"
    )
    p.add_argument(
        "--baseline",
        default=None,
        metavar="SRC",
        help="also time mdnkit's loss, head and sampling against mdnkit from this source folder",
    )
    p.add_argument("--rounds", type=int, default=9, help="rounds of --baseline (default 9)")
    p.add_argument("--worker-ours", type=int, default=None, help=argparse.SUPPRESS)
    add_json_argument(p)
    args = p.parse_args(argv)
    if args.worker_ours:
        _worker_ours(args.worker_ours)
        return {}
    torch.manual_seed(0)
    report = Report("bench_core" + (" (quick)" if args.quick else ""), __doc__)
    print(f"{torch.get_num_threads()} torch threads by default, {os.cpu_count()} CPUs")
    if args.only in (None, "loss"):
        bench_loss(report, args.quick)
    if args.only in (None, "sampling"):
        bench_sampling(report, args.quick)
    if args.only in (None, "memory"):
        bench_memory(report, args.quick)
    if args.baseline:
        bench_baseline(report, args.baseline, 3 if args.quick else args.rounds)
    return report.finish(args.json)


if __name__ == "__main__":
    main()

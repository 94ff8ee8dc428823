"""Run every benchmark and write one machine-readable results file; compare two such files.

    python benchmarks/run_all.py                       # everything, full size (about an hour on 2 cores)
    python benchmarks/run_all.py --quick               # every benchmark at smoke size (minutes)
    python benchmarks/run_all.py --only core,training  # a subset
    python benchmarks/run_all.py -o results.json       # where to write (default below)
    python benchmarks/run_all.py --compare OLD.json NEW.json

Each benchmark runs in its own process, one after another (never two at once: they would slow
each other), with ``--json`` so that it writes its figures (median, range and every round, see
``benchmarks/report.py``); the results file holds them all with the environment of each run.
The default file is ``benchmarks/results/<date>-<commit>[-quick].json``.

``--compare`` lines up the figures of two files by benchmark and figure name and prints the old
and new medians, the change, and whether the new median lies inside the old range.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from report import environment, fmt  # noqa: E402

# name: (script, full-size arguments, smoke-size arguments, extra environment)
BENCHMARKS: dict[str, tuple[str, list[str], list[str], dict[str, str]]] = {
    "core": ("bench_core.py", [], ["--quick"], {}),
    # against keras-mdn-layer on JAX, the faster Keras backend (bench_training --only ... adds torch)
    "training": (
        "bench_training.py",
        ["--only", "mdnkit,keras-jax"],
        ["--only", "mdnkit,keras-jax", "--epochs", "20", "--repeats", "1"],
        {},
    ),
    "keras-jax": ("bench_keras.py", [], ["--quick"], {"KERAS_BACKEND": "jax"}),
    "keras-torch": ("bench_keras.py", [], ["--quick"], {"KERAS_BACKEND": "torch"}),
    "realtime": ("bench_realtime.py", [], ["--quick"], {}),
    "live": ("bench_live.py", [], ["--events", "3000"], {}),
    "seq-training": ("bench_seq_training.py", [], ["--rounds", "1", "--seconds", "3"], {}),
    "cli-io": ("bench_cli_io.py", [], ["--rows", "200000"], {}),
    "uci": ("bench_uci.py", [], ["--splits", "2", "--sets", "yacht,energy"], {}),
    "sine": ("bench_sine.py", [], ["--seeds", "0"], {}),
}


def run(names: list[str], quick: bool) -> dict:
    results: dict = {"environment": environment(), "quick": quick, "benchmarks": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            script, full, smoke, env = BENCHMARKS[name]
            path = Path(tmp) / f"{name}.json"
            cmd = [
                sys.executable,
                str(HERE / script),
                *(smoke if quick else full),
                "--json",
                str(path),
            ]
            print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
            start = time.perf_counter()
            proc = subprocess.run(cmd, env={**os.environ, **env}, check=False)
            seconds = time.perf_counter() - start
            if proc.returncode != 0 or not path.exists():
                print(f"!! {name} failed (exit {proc.returncode}); its figures are missing")
                results["benchmarks"][name] = {"failed": proc.returncode, "seconds": seconds}
                continue
            result = json.loads(path.read_text())
            result["seconds"] = round(seconds, 1)
            results["benchmarks"][name] = result
    results["environment_end"] = environment()
    return results


def compare(old: dict, new: dict) -> list[str]:
    lines = [
        "| benchmark | figure | old | new | new / old | inside the old range |",
        "|---|---|---|---|---|---|",
    ]
    for name, res in new["benchmarks"].items():
        before = {f["figure"]: f for f in old["benchmarks"].get(name, {}).get("figures", [])}
        for f in res.get("figures", []):
            o = before.get(f["figure"])
            if o is None:
                lines.append(f"| {name} | {f['figure']} | - | {fmt(f, f['unit'])} | | |")
                continue
            change = f["median"] / o["median"] if o["median"] else float("nan")
            inside = "yes" if o["min"] <= f["median"] <= o["max"] else "no"
            lines.append(
                f"| {name} | {f['figure']} | {fmt(o, o['unit'])} | {fmt(f, f['unit'])} | "
                f"{change:.2f} | {inside} |"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="every benchmark at smoke size")
    ap.add_argument(
        "--only", default=None, help="comma-separated subset of: " + ", ".join(BENCHMARKS)
    )
    ap.add_argument("-o", "--output", default=None, help="results file to write")
    ap.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"), default=None)
    args = ap.parse_args(argv)
    if args.compare:
        old, new = (json.loads(Path(p).read_text()) for p in args.compare)
        print("\n".join(compare(old, new)))
        return 0
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        ap.error(
            f"unknown benchmark(s) {', '.join(unknown)}; expected some of {', '.join(BENCHMARKS)}"
        )
    results = run(names, args.quick)
    env = results["environment"]
    out = (
        Path(args.output)
        if args.output
        else (
            HERE
            / "results"
            / f"{env['date'][:10]}-{env['commit'] or 'nocommit'}{'-quick' if args.quick else ''}.json"
        )
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    failed = [n for n, r in results["benchmarks"].items() if "failed" in r]
    print(f"\nwrote {out}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

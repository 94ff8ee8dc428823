"""Wall time and peak memory of the ``mdnkit`` command on a large CSV file.

Generates a table of ``--rows`` rows and 5 columns (``x0..x3`` inputs, ``y`` target; fixed seed,
in a temporary folder: 2 000 000 rows are about 92 MB), fits a small model on its first rows,
then runs each command in its own subprocess and reports the seconds, the CPU seconds (user +
system, all its threads: less sensitive than the wall time to other processes' load) and the
peak resident set size of that process (``os.wait4``'s ``ru_maxrss``)::

    python benchmarks/bench_cli_io.py                                  # this checkout's src/
    python benchmarks/bench_cli_io.py --src /tmp/cli_before/src       # another version
    python benchmarks/bench_cli_io.py --rows 500000 --commands fit    # fit at another size
    python benchmarks/bench_cli_io.py --commands eval --against /tmp/cli_before/src --rounds 3

``--against SRC`` (repeatable) runs each command from the other source trees too, in
interleaved rounds (this tree, then each other one, ``--rounds`` times, on the same files), and
reports the median of each, and the ratios of each other tree's medians to this tree's.
The load average (``os.getloadavg``) is printed before and after; ``--json PATH`` also writes
the figures to a JSON file (see ``benchmarks/report.py``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from report import Report, add_json_argument

HERE = Path(__file__).resolve().parent
RUN = "import sys; from mdnkit.cli import main; sys.exit(main(sys.argv[1:]))"
COMMANDS = ("eval", "fit", "sample", "plot")


def make_table(path: Path, rows: int, seed: int = 0, chunk: int = 250_000) -> None:
    """``rows`` rows: x0..x3 ~ N(0, 1), y = sin(2 x0) + 0.5 x1 + N(0, 0.3^2) (6 significant
    digits), written chunk by chunk."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as fh:
        fh.write("x0,x1,x2,x3,y\n")
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            x = rng.standard_normal((n, 4))
            y = np.sin(2 * x[:, 0]) + 0.5 * x[:, 1] + 0.3 * rng.standard_normal(n)
            np.savetxt(fh, np.column_stack([x, y]), fmt="%.6g", delimiter=",")


def run(src: Path, argv: list[str], env_extra: dict[str, str] | None = None) -> dict:
    """Run ``mdnkit argv`` from ``src`` in a subprocess: seconds, peak RSS (MB), exit status,
    output.  The child is reaped with ``os.wait4``, whose rusage is that child's alone."""
    env = dict(os.environ, PYTHONPATH=str(src), **(env_extra or {}))
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", RUN, *argv], env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return {
            "seconds": seconds,
            "cpu_s": usage.ru_utime + usage.ru_stime,  # all its threads; waiting is not counted
            "peak_rss_mb": usage.ru_maxrss / 1024,  # Linux: kilobytes
            "status": proc.returncode,
            "stdout": out.read(),
            "stderr": err.read(),
        }


def _median(values: list[float]) -> float:
    return float(np.median(values))


def _measure(srcs: list[Path], argvs: dict, commands: list[str], rounds: int) -> dict:
    """{src: {command: {"seconds", "cpu_s", "peak_rss_mb": medians, "rounds": [[seconds, cpu_s,
    peak_rss_mb], ...]}}}, the trees taking turns within each round."""
    runs: dict[str, dict[str, list[dict]]] = {str(s): {c: [] for c in commands} for s in srcs}
    for _ in range(rounds):
        for name in commands:
            for src in srcs:
                r = run(src, argvs[name])
                if r["status"] != 0:
                    raise SystemExit(
                        f"{name} from {src} failed ({r['status']}): {r['stderr'][-2000:]}"
                    )
                runs[str(src)][name].append(r)
    out: dict[str, dict] = {}
    for src, by_command in runs.items():
        out[src] = {}
        for name, rs in by_command.items():
            out[src][name] = {
                "seconds": _median([r["seconds"] for r in rs]),
                "cpu_s": _median([r["cpu_s"] for r in rs]),
                "peak_rss_mb": _median([r["peak_rss_mb"] for r in rs]),
                "rounds": [
                    [round(r[k], 2) for k in ("seconds", "cpu_s", "peak_rss_mb")] for r in rs
                ],
            }
            if name == "fit":
                out[src][name]["output"] = rs[-1]["stdout"].strip()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--src", type=Path, default=HERE.parent / "src", help="the mdnkit source tree")
    p.add_argument(
        "--against", type=Path, action="append", default=[], help="another source tree to compare"
    )
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds (median reported)")
    p.add_argument("--commands", default=",".join(COMMANDS), help="comma-separated subset")
    add_json_argument(p)
    args = p.parse_args()
    commands = [c for c in args.commands.split(",") if c]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_cli_io_") as tmp:
        folder = Path(tmp)
        data, small, model = folder / "big.csv", folder / "small.csv", folder / "model.mdn"
        t0 = time.perf_counter()
        make_table(data, args.rows)
        make_table(small, 20_000, seed=1)
        gen_s = time.perf_counter() - t0
        cols = ["--x", "x0,x1,x2,x3", "--y", "y"]
        base = ["fit", str(small), *cols, "--hidden", "32,32", "--epochs", "2", "-o", str(model)]
        made = run(args.src, base)
        if made["status"] != 0:
            raise SystemExit(f"could not make the model: {made['stderr']}")
        argvs = {
            "eval": ["eval", str(model), str(data), "--json"],
            "fit": ["fit", str(data), *cols, "--epochs", "1", "-o", str(folder / "fit.mdn")],
            "sample": ["sample", str(model), str(data), "-n", "1", "-o", str(folder / "s.csv")],
            "plot": ["plot", str(model), str(data), "-o", str(folder / "density.png")],
        }
        srcs = [args.src, *args.against]
        measured = _measure(srcs, argvs, commands, max(1, args.rounds))
        report = {
            "rows": args.rows,
            "csv_mb": round(data.stat().st_size / 1e6, 1),
            "src": str(args.src),
            "generate_s": round(gen_s, 1),
            "rounds": max(1, args.rounds),
            "load_average": [list(load_before), list(os.getloadavg())],
            "results": measured[str(args.src)],
            "against": {str(s): measured[str(s)] for s in args.against},
        }
    print(
        f"{report['rows']} rows, {report['csv_mb']} MB CSV; median of {report['rounds']} round(s)"
    )
    print(f"load average (1, 5, 15 min): before {load_before}, after {os.getloadavg()}")
    print(f"{'command':<8} {'seconds':>8} {'CPU s':>8} {'peak RSS MB':>12}  source")
    for src, results in ((args.src, report["results"]), *report["against"].items()):
        for name, r in results.items():
            ratio = ""
            if str(src) != str(args.src):
                mine = report["results"][name]
                ratio = (
                    f"  ({r['seconds'] / mine['seconds']:.2f}x this tree's seconds, "
                    f"{r['cpu_s'] / mine['cpu_s']:.2f}x its CPU seconds)"
                )
            print(
                f"{name:<8} {r['seconds']:>8.1f} {r['cpu_s']:>8.1f} {r['peak_rss_mb']:>12.0f}  "
                f"{src}{ratio}"
            )
    if "fit" in report["results"]:
        print(f"fit: {report['results']['fit']['output']}")
    figures = Report("bench_cli_io", __doc__)
    for src, results in ((args.src, report["results"]), *report["against"].items()):
        which = "" if str(src) == str(args.src) else f" ({src})"
        for name, r in results.items():
            rounds = r["rounds"]
            what = f"mdnkit {name}, {report['rows']} rows x 5 columns{which}"
            figures.add(f"{what}: seconds", [x[0] for x in rounds], "s", better="lower",
                        target="<= 10 s" if name == "eval" and not which else None)  # fmt: skip
            figures.add(f"{what}: peak RSS", [x[2] for x in rounds], "MB", better="lower",
                        target="<= 300 MB" if name == "eval" and not which else None)  # fmt: skip
    figures.finish(args.json)


if __name__ == "__main__":
    main()

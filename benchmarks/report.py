"""What every benchmark reports, in one place: the environment, medians with their spread, a
markdown table, and one machine-readable JSON file that a later run can be compared with.

A benchmark script collects its figures in a :class:`Report`::

    report = Report("bench_core", __doc__)
    report.add("loss fwd+bwd, diagonal, 1 thread", ratios, unit="x", competitor="MixtureSameFamily")
    report.finish(args.json)          # prints the table; writes the JSON file when asked

Each figure keeps every round's value, so the file holds the median, the range (min-max) and the
rounds themselves.  :func:`environment` is measured at the start and at the end of the run (the
load average of a shared machine moves).  ``benchmarks/run_all.py`` runs every benchmark with
``--json`` and merges the files; ``run_all.py --compare OLD.json NEW.json`` lines them up.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "numpy", "mdnkit", "keras", "jax", "keras-mdn-layer", "onnxruntime")


def _commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment() -> dict:
    """Date (UTC), load average, CPU count, Python and package versions, git commit."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "versions": versions,
        "commit": _commit(),
    }


def spread(values: Iterable[float]) -> dict:
    """Median, minimum, maximum and the values of several rounds."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("spread needs at least one value, got none")
    return {
        "median": statistics.median(vals),
        "min": min(vals),
        "max": max(vals),
        "n": len(vals),
        "values": vals,
    }


def _number(x: float) -> str:
    a = abs(x)
    if a >= 100:
        return f"{x:,.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def fmt(s: dict, unit: str = "") -> str:
    """``"1.92x [1.80-2.05]"``: the median and, for several rounds, the range."""
    sep = "" if unit in ("x", "%") else " "
    text = f"{_number(s['median'])}{sep}{unit}".rstrip()
    if s["n"] > 1 and s["min"] != s["max"]:
        text += f" [{_number(s['min'])}-{_number(s['max'])}]"
    return text


class Report:
    """The figures of one benchmark run (see the module docstring)."""

    def __init__(self, name: str, doc: str | None = None) -> None:
        self.name = name
        self.doc = (doc or "").strip().splitlines()[0] if doc else ""
        self.start = environment()
        self.figures: list[dict] = []

    def add(
        self,
        figure: str,
        values: float | Sequence[float],
        unit: str = "",
        competitor: str | None = None,
        better: str = "higher",
        target: str | None = None,
        note: str = "",
    ) -> dict:
        """Record one figure.  ``values``: one number or one per round; ``better``: "higher" or
        "lower" (for a later comparison); ``competitor``: what a ratio is taken against."""
        if better not in ("higher", "lower"):
            raise ValueError(f"better must be 'higher' or 'lower', got {better!r}")
        vals = [values] if isinstance(values, (int, float)) else list(values)
        entry = {
            "figure": figure,
            "unit": unit,
            "better": better,
            "competitor": competitor,
            "target": target,
            "note": note,
            **spread(vals),
        }
        self.figures.append(entry)
        return entry

    def table(self) -> str:
        lines = ["| figure | median [range] | against | target | note |", "|---|---|---|---|---|"]
        for f in self.figures:
            lines.append(
                f"| {f['figure']} | {fmt(f, f['unit'])} | {f['competitor'] or ''} | "
                f"{f['target'] or ''} | {f['note']} |"
            )
        return "\n".join(lines)

    def header(self, env: dict) -> str:
        v = ", ".join(f"{k} {x}" for k, x in env["versions"].items())
        load = "/".join(f"{x:.1f}" for x in self.start["load_average"])
        load_end = "/".join(f"{x:.1f}" for x in env["load_average"])
        return (
            f"{self.name} on {env['date'][:10]}, commit {env['commit']}, {env['cpus']} CPUs, "
            f"Python {env['python']}, {v}; load average (1/5/15 min) {load} at the start, "
            f"{load_end} at the end"
        )

    def finish(self, json_path: str | os.PathLike | None = None) -> dict:
        """Print the header and the table; write the JSON file when ``json_path`` is given."""
        end = environment()
        print()
        print(self.header(end))
        print()
        print(self.table())
        result = {
            "benchmark": self.name,
            "description": self.doc,
            "environment": {**self.start, "load_average_end": end["load_average"]},
            "figures": self.figures,
        }
        if json_path:
            path = Path(json_path)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(json.dumps(result, indent=1) + "\n")
            os.replace(tmp, path)
        return result


def add_json_argument(parser) -> None:
    """The ``--json PATH`` option every benchmark takes (what ``run_all.py`` passes)."""
    parser.add_argument(
        "--json", default=None, metavar="PATH", help="also write the figures to this JSON file"
    )

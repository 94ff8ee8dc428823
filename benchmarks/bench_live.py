"""Round trip of ``mdnkit serve`` over loopback OSC, and its memory over a long run.

    python benchmarks/bench_live.py [--events 100000] [--hidden 64] [--layers 2] [--dim 8] [-k 5]

Starts ``mdnkit serve MODEL --osc 127.0.0.1:0 --mode echo`` in its own process (a 2x64 LSTM,
8-D events, 5 components, untrained with a fixed seed: the cost does not depend on the
weights), then sends one ``/mdnkit/event`` at a time from this process and waits for its
``/mdnkit/prediction``: the time between the two is one round trip (encode, UDP to the server,
parse, check, one generator step, encode, UDP back, receive).  Prints the median and 99th
percentile, the server's resident memory (VmRSS) after 1 000 events and after all of them,
and the load average (the machine is shared: absolute times move with it).

Targets: median <= 1 ms, p99 <= 5 ms; memory after 100 000 events equal to that after 1 000.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from report import Report, add_json_argument

from mdnkit import MDNRNN, save
from mdnkit.serve import encode_osc


def rss_kib(pid: int) -> int:
    """The process's resident memory in KiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def start_server(path: Path) -> tuple[subprocess.Popen, int]:
    cmd = [sys.executable, "-m", "mdnkit", "serve", str(path), "--osc", "127.0.0.1:0"]
    proc = subprocess.Popen(
        [*cmd, "--mode", "echo", "--seed", "0"], stdout=subprocess.PIPE, text=True
    )
    line = proc.stdout.readline()
    if "udp://127.0.0.1:" not in line:
        proc.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    return proc, int(line.split("udp://127.0.0.1:")[1].split()[0].rstrip(","))


def round_trips(sock: socket.socket, port: int, packets: list[bytes], n: int) -> np.ndarray:
    """Seconds per round trip, one event at a time."""
    out = np.empty(n)
    addr = ("127.0.0.1", port)
    clock = time.perf_counter
    for i in range(n):
        t0 = clock()
        sock.sendto(packets[i % len(packets)], addr)
        sock.recv(4096)
        out[i] = clock() - t0
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--dim", type=int, default=8)
    ap.add_argument("-k", "--components", type=int, default=5)
    add_json_argument(ap)
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    model = MDNRNN(args.dim, hidden_size=args.hidden, num_layers=args.layers,
                   num_components=args.components)  # fmt: skip
    rng = np.random.default_rng(0)
    packets = [encode_osc("/mdnkit/event", 0, *rng.standard_normal(args.dim).tolist())
               for _ in range(1000)]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "live.mdn"
        save(model, path)
        proc, port = start_server(path)
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.settimeout(5.0)
            round_trips(sock, port, packets, 200)  # warm up
            first = round_trips(sock, port, packets, 1000)
            rss_1k = rss_kib(proc.pid)
            rest = round_trips(sock, port, packets, max(args.events - 1200, 0))
            rss_all = rss_kib(proc.pid)
        finally:
            proc.send_signal(2)
            proc.wait(10)
    times = np.concatenate([first, rest]) * 1e6
    med, p90, p99 = np.percentile(times, [50, 90, 99])
    # Figures per block of 1 000 round trips: the spread of the median over the run.
    blocks = [np.median(times[i : i + 1000]) for i in range(0, len(times) - 999, 1000)]
    report = Report("bench_live", __doc__)
    note = (
        f"OSC over loopback, echo mode, LSTM {args.layers}x{args.hidden}, D={args.dim}, "
        f"K={args.components}, {len(times)} events"
    )
    report.add("round trip, median per 1 000 events", blocks, "µs", better="lower",
               target="<= 1000 µs", note=note)  # fmt: skip
    report.add("round trip, p90", float(p90), "µs", better="lower")
    report.add("round trip, p99", float(p99), "µs", better="lower", target="<= 5000 µs")
    report.add("round trip, max", float(times.max()), "µs", better="lower")
    report.add("server RSS after 1 000 events", rss_1k / 1024, "MiB", better="lower")
    report.add(f"server RSS growth after {len(times) + 200} events", (rss_all - rss_1k) / 1024,
               "MiB", better="lower", target="0")  # fmt: skip
    report.finish(args.json)


if __name__ == "__main__":
    main()

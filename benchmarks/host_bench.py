"""Host tool against the virtual board with the 115200-baud link limit on, side by side:

- a full deploy (`microstim deploy --force`: every file sent and verified) vs
  `mpremote fs cp -r` of the same compiled tree, on the same board;
- a redeploy with nothing changed;
- `status` round-trip latency (median, p99) through the device protocol.

    python benchmarks/host_bench.py [--rounds 3] [--status 300]

Each deploy/copy is timed as a user runs it (the CLI as a subprocess), so process start,
port opening and mpremote's own raw-REPL entry count, as they would for a user.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "host"))

from microstim import build  # noqa: E402
from microstim.device import Device  # noqa: E402
from microstim.vboard import VirtualBoard  # noqa: E402

BAUD = 115200


def cli(*args: str) -> float:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "microstim.cli", *args], capture_output=True, text=True,
                       env=os.environ | {"PYTHONPATH": str(HERE.parent / "host")})
    if r.returncode:
        raise SystemExit(f"microstim {' '.join(args)} failed: {r.stderr}")
    return time.perf_counter() - t


def mpremote(port: str, *args: str) -> float:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "mpremote", "connect", port, *args],
                       capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"mpremote {' '.join(args)} failed: {r.stderr or r.stdout}")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--status", type=int, default=300, help="status requests to time")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tree = build.stage(Path(tmp) / "tree", "virtual")
        files = [p for p in tree.rglob("*") if p.is_file()]
        nbytes = sum(p.stat().st_size for p in files)
        vb = VirtualBoard(Path(tmp) / "vb", "virtual", speed=1.0, baud=BAUD).start()
        try:
            port = vb.port
            ours, theirs, noop = [], [], []
            for r in range(a.rounds):
                ours.append(cli("deploy", "--port", port, "--force", "--no-progress"))
                # mpremote skips files whose hash matches, so it copies the same tree into a
                # fresh folder each round: the same bytes written to the same flash.
                mpremote(port, "fs", "mkdir", f":bench{r}")
                theirs.append(mpremote(port, "fs", "cp", "-r",
                                       *[str(p) for p in sorted(tree.iterdir())], f":bench{r}/"))
                mpremote(port, "fs", "rm", "-r", f":bench{r}", "+", "soft-reset")
                cli("deploy", "--port", port, "--no-progress")  # back to the app running
                noop.append(cli("deploy", "--port", port, "--no-progress"))
            lat = []
            with Device(port) as dev:
                dev.connect()
                for _ in range(a.status):
                    t = time.perf_counter()
                    dev.request("status")
                    lat.append(time.perf_counter() - t)
        finally:
            vb.stop()
    lat.sort()
    med = statistics.median(lat) * 1000
    p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000
    d, m, n = statistics.median(ours), statistics.median(theirs), statistics.median(noop)
    link = BAUD / 10
    print(f"virtual board, link limited to {BAUD} baud ({link:.0f} bytes/s); "
          f"firmware tree: {len(files)} files, {nbytes} bytes; median of {a.rounds} rounds")
    print()
    print("| measurement | time | figure |")
    print("|---|---|---|")
    print(f"| full deploy, `microstim deploy --force` (sent + verified) | {d:.2f} s | "
          f"{nbytes / d:.0f} B/s = {nbytes / d / link:.0%} of the link |")
    print(f"| `mpremote fs cp -r` of the same tree | {m:.2f} s | {nbytes / m:.0f} B/s = "
          f"{nbytes / m / link:.0%} of the link |")
    print(f"| **deploy speed-up over mpremote** | | **{m / d:.2f}x** (limit >= 1.5x) |")
    print(f"| redeploy, nothing changed | {n:.2f} s | limit <= 2 s |")
    print(f"| `status` round trip ({a.status} requests) | median {med:.1f} ms | p99 {p99:.1f} ms |")


if __name__ == "__main__":
    main()

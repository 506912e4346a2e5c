"""Log pull throughput against the virtual board at 115200 baud, side by side with
`mpremote fs cp` of the same log files:

    python benchmarks/pull_bench.py [--days 30]

A realistic month of logs is made by the firmware's own LogStore (microstim.logs.generate),
put on a virtual board's flash (/log) at full speed, then the board restarts with the
115200-baud limit and both tools fetch the same segments. Times are wall clock of each
tool as a user runs it (process start included).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "host"))

from microstim.build import Item  # noqa: E402
from microstim.deploy import upload  # noqa: E402
from microstim.device import Device  # noqa: E402
from microstim.logs.generate import generate  # noqa: E402
from microstim.vboard import VirtualBoard  # noqa: E402

BAUD = 115200


def run(cmd: list[str]) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True,
                       env=os.environ | {"PYTHONPATH": str(HERE.parent / "host")})
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stdout}\n{r.stderr}")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--days", type=int, default=30)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        gen = generate(tmp / "gen", days=a.days)
        segs = gen.segments
        nbytes = sum(len(b) for b in segs.values())
        run_dir = tmp / "vb"
        vb = VirtualBoard(run_dir, "virtual", speed=1.0).start()
        try:
            with Device(vb.port) as dev:
                dev.connect()
                for sid, data in segs.items():
                    upload(dev, Item(f"/log/{sid:08x}.seg", data))
                dev.request("fs_commit")
                dev.request("reset")
        finally:
            vb.stop()
        vb = VirtualBoard(run_dir, "virtual", speed=1.0, baud=BAUD).start()
        try:
            port = vb.port
            time.sleep(1.0)
            with Device(port) as dev:
                dev.connect()
                listed = dev.request("log_list")["segments"]
            on_dev = sum(size for _, size in listed)
            t_pull = run([sys.executable, "-m", "microstim.cli", "logs", "pull", "--port", port,
                          "--archive", str(tmp / "archive"), "--no-progress"])
            dest = tmp / "mpremote"
            dest.mkdir()
            t_mp = run([sys.executable, "-m", "mpremote", "connect", port, "fs", "cp", "-r",
                        ":log", str(dest)])
            copied = sum(p.stat().st_size for p in dest.rglob("*.seg"))
            same = all(hashlib.sha256((dest / "log" / f"{sid:08x}.seg").read_bytes()).digest()
                       == hashlib.sha256(d).digest() for sid, d in segs.items()
                       if (dest / "log" / f"{sid:08x}.seg").exists())
        finally:
            vb.stop()
    link = BAUD / 10
    print(f"{a.days} days of logs made by the firmware's LogStore: {len(segs)} segments, "
          f"{nbytes} bytes generated, {on_dev} on the board; mpremote copied {copied} bytes "
          f"(identical: {same}); link {BAUD} baud = {link:.0f} bytes/s")
    print()
    print("| tool | time | throughput | share of the link's byte rate |")
    print("|---|---|---|---|")
    print(f"| `microstim logs pull` | {t_pull:.2f} s | {on_dev / t_pull:.0f} B/s | {on_dev / t_pull / link:.0%} |")
    print(f"| `mpremote fs cp -r :log` | {t_mp:.2f} s | {copied / t_mp:.0f} B/s | {copied / t_mp / link:.0%} |")
    print(f"| **pull speed-up over mpremote** | | **{t_mp / t_pull:.2f}x** (limit >= 2x) | limit >= 85 % |")


if __name__ == "__main__":
    main()

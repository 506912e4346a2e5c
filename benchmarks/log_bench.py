"""Session log figures: power cuts, bytes of flash per day, days that fit in 512 KB.

    python benchmarks/log_bench.py [--cuts 1000]

1. Power cuts: the firmware's LogStore on the MicroPython unix port, on the virtual
   board's flash (LittleFS on FileBlockDev), cut at random byte offsets of flash
   programming/erasing (half in realistic 16 KB segments under a 512 KB budget, half in
   2 KB segments under 32 KB so that cuts also land in rotation); after each cut the
   board recovers on its own and every record is checked (host/microstim/logs/device/
   powercut.py). Records lost beyond the one in flight and corrupted bytes must be 0.
2. Bytes of flash per day: logs written by the same firmware code for 90 days of use
   (microstim.logs.generate): daily 10-minute sessions (the requirement's case), the
   protocol followed imperfectly (typical), and the daily case with 4x the current noise
   (a noisier front end: fewer seconds compress to one byte). LittleFS blocks measured
   by statvfs on the image while writing.
3. Days that fit in 512 KB: the records a full 512 KB log keeps at its lowest (right
   after a rotation dropped the oldest segment), over bytes per day.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "host"))

from microstim import paths  # noqa: E402
from microstim.logs import data as D  # noqa: E402
from microstim.logs import generate as G  # noqa: E402
from microstim.logs.format import fw  # noqa: E402


def powercuts(tmp: Path, cuts: int, seed: int, seg: int, budget: int) -> tuple[dict, float]:
    t = time.time()
    r = subprocess.run([G.micropython(), "-X", "heapsize=32m", str(ROOT / "host/microstim/logs/device/powercut.py"),
                        str(paths.vboard_device_dir()), str(paths.firmware_dir()), str(tmp / f"pc{seed}.img"),
                        str(cuts), str(seed), str(seg), str(budget)], capture_output=True, text=True, timeout=3600)
    if r.returncode:
        sys.exit(r.stdout + r.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1]), time.time() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cuts", type=int, default=1000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="log-bench-"))

    half = args.cuts // 2
    a, ta = powercuts(tmp, half, 101, fw.SEG_BYTES, fw.BUDGET_BYTES)
    b, tb = powercuts(tmp, args.cuts - half, 202, 2048, 32 * 1024)
    print(f"power cuts at random byte offsets during flash writes ({args.cuts}), MicroPython unix port")
    print(f"{'segments / budget':<22}{'cuts':>6}{'committed':>10}{'lost*':>7}{'corrupt B':>10}{'wrong':>7}"
          f"{'in flight kept/lost':>21}{'seg dropped':>12}{'in recovery':>12}{'wall s':>8}")
    for name, st, wall in (("16 KB / 512 KB", a, ta), ("2 KB / 32 KB", b, tb)):
        print(f"{name:<22}{st['cuts']:>6}{st['records_committed']:>10}{st['lost']:>7}{st['corrupt_bytes']:>10}"
              f"{st['wrong']:>7}{st['in_flight_kept']:>11}/{st['in_flight_lost']:<9}{st['segments_dropped']:>12}"
              f"{st['cut_during_recovery']:>12}{wall:>8.1f}")
    lost = a["lost"] + b["lost"]
    corrupt = a["corrupt_bytes"] + b["corrupt_bytes"] + a["wrong"] + b["wrong"]
    print(f"* committed records lost beyond the one in flight: {lost}; corrupted records or bytes: {corrupt}"
          f"; over budget: {a['over_budget'] + b['over_budget']}; segment id gaps: {a['id_gaps'] + b['id_gaps']}")
    print()

    seg_blocks = fw.blocks_for(fw.SEG_BYTES)
    kept_min = (fw.BUDGET_BYTES // fw.FS_BLOCK - fw.RESERVE_BLOCKS - seg_blocks) // seg_blocks * fw.SEG_BYTES
    print(f"flash per day, 90 days written by msfw/logstore.py; a full 512 KB log keeps at least "
          f"{kept_min} bytes of records")
    print(f"{'usage':<34}{'sessions':>9}{'log bytes':>10}{'B/session':>10}{'B/day':>7}{'max LFS KB':>11}"
          f"{'days in 512 KB':>15}{'flush s/session':>16}")
    cases = [("daily 10-min sessions", dict(daily=True)),
             ("protocol (5/wk, then 2-3/wk)", dict()),
             ("daily, 4x current noise", dict(daily=True, noise_ua=(0.8, 3.2)))]
    for name, kw in cases:
        plan = G.plan_usage(90, seed=21, **kw)
        g = G.generate(tmp / name.split()[0].replace(",", "") / str(len(kw)), plan=plan)
        total = sum(len(v) for v in g.segments.values())
        d = D.load(g.segments)
        n = len(d.sessions)
        per_day = total / 90
        print(f"{name:<34}{n:>9}{total:>10}{total / n:>10.0f}{per_day:>7.0f}"
              f"{g.figures['max_log_blocks'] * 4:>11}{kept_min / per_day:>15.0f}"
              f"{g.figures['flash_stall_us'] / 1e6 / n:>16.2f}")
    print("flush s/session: virtual flash time (45 ms an erase, 0.7 ms a page) to commit a session's "
          "records one by one, spent only while the output is off")


if __name__ == "__main__":
    main()

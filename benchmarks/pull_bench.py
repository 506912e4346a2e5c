"""Log pull throughput against the virtual board at 115200 baud, side by side with
`mpremote fs cp` of the same log files:

    python benchmarks/pull_bench.py [--days 30] [--rounds 3] [--from-day 0]

The month: the first 30 days of the usage protocol in PRODUCT.md (5 sessions a week for
the first 60 days, followed imperfectly: skipped days, a few 5- and 15-minute sessions
among the default 10-minute ones, contact losses, intensity steps, a fault, a session
cut by a dead battery); `--from-day 63` takes a month of the maintenance phase (2-3 a
week) instead. Written by the firmware's own log code (msfw/logstore.py on the
MicroPython unix port, microstim.logs.generate). Its segments are put on a virtual
board's flash (/log) at full speed; the board restarts with the 115200-baud limit (its
LogStore opens the log and appends its boot record, as on a device) and both tools fetch
the same segments, alternately, `--rounds` times; the medians are printed.

The figure that counts is the whole command as a user runs it: the wall time from
starting the `microstim` (or `mpremote`) process to its exit, Python's start, imports,
opening the port and the device's first answers included. The transfer phase alone
(first log_read sent to the last block stored, as `microstim logs pull --json` reports
it) is the second line.
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
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "host"))

from microstim.build import Item  # noqa: E402
from microstim.deploy import upload  # noqa: E402
from microstim.device import Device  # noqa: E402
from microstim.logs.generate import DAY_S, generate, plan_usage  # noqa: E402
from microstim.vboard import VirtualBoard  # noqa: E402

BAUD = 115200
BIN = Path(sys.executable).parent  # the console scripts a user runs: microstim, mpremote


def run(cmd: list[str]) -> tuple[float, str]:
    """Wall time from process start to exit, and what it printed."""
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tempfile.gettempdir())
    dt = time.perf_counter() - t
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stdout}\n{r.stderr}")
    return dt, r.stdout


def month_plan(days: int, from_day: int) -> dict:
    """Days from_day .. from_day+days of the usage plan: what a monthly pull fetches (the
    first boot, clock setting and calibration stay; they are a few records)."""
    plan = plan_usage(from_day + days)
    t0 = plan["start_unix"] + from_day * DAY_S
    setup = plan["actions"][:3]
    plan["actions"] = setup + [a for a in plan["actions"][3:] if a["rtc"] >= t0]
    plan["session_days"] = [d for d in plan["session_days"] if d >= from_day]
    return plan


def month_figures(gen, days: int) -> dict:
    sessions = [a for a in gen.plan["actions"] if a["a"] == "session"]
    minutes = sum((a.get("stop_s") or a["dur"]) for a in sessions) / 60
    return {"sessions": len(sessions), "per_week": len(sessions) / days * 7, "minutes": minutes,
            "days_used": len(set(gen.plan["session_days"]))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--from-day", type=int, default=0,
                    help="0: the first month (5 sessions a week); 63: a month of the maintenance phase (2-3 a week)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        gen = generate(tmp / "gen", plan=month_plan(a.days, a.from_day))
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
        pulls: list[tuple[float, dict]] = []
        copies: list[float] = []
        sizes: list[int] = []
        same = True
        for k in range(a.rounds):
            # A fresh boot each round: mpremote stops the app (Ctrl-C into the raw REPL).
            vb = VirtualBoard(run_dir, "virtual", speed=1.0, baud=BAUD).start()
            try:
                port = vb.port
                time.sleep(1.0)
                with Device(port) as dev:
                    dev.connect()
                    sizes.append(sum(size for _, size in dev.request("log_list")["segments"]))
                arch = tmp / f"archive{k}"
                dt, out = run([str(BIN / "microstim"), "logs", "pull", "--port", port,
                               "--archive", str(arch), "--no-progress", "--json"])
                pulls.append((dt, json.loads(out)))
                dest = tmp / f"mpremote{k}"
                dest.mkdir()
                dt, _ = run([str(BIN / "mpremote"), "connect", port, "fs", "cp", "-r", ":log", str(dest)])
                copies.append(dt)
            finally:
                vb.stop()
            assert pulls[-1][1]["bytes"] == sizes[-1], (pulls[-1][1]["bytes"], sizes[-1])
            # Both tools got the same bytes: the archive keeps every verified record raw.
            pulled = {p.name: p.read_bytes() for p in Path(pulls[-1][1]["archive"]).glob("*/*.seg")}
            copied = {p.name: p.read_bytes() for p in (dest / "log").glob("*.seg")}
            same = same and pulled == copied
    link = BAUD / 10
    m = month_figures(gen, a.days)
    med = statistics.median
    t_pull = med(t for t, _ in pulls)
    t_xfer = med(d["transfer_s"] for _, d in pulls)
    t_mp = med(copies)
    on_dev = med(sizes)  # the board logs its boot each round: one record more each time
    r_pull = med(n / t for n, (t, _) in zip(sizes, pulls, strict=True))
    r_xfer = med(n / d["transfer_s"] for n, (_, d) in zip(sizes, pulls, strict=True))
    r_mp = med(n / t for n, t in zip(sizes, copies, strict=True))
    bytecode = "off (PYTHONDONTWRITEBYTECODE set: every start compiles microstim's modules)" \
        if os.environ.get("PYTHONDONTWRITEBYTECODE") else "on"
    print(f"days {a.from_day}..{a.from_day + a.days - 1} of use, logs written by the firmware's LogStore: {m['sessions']} sessions "
          f"({m['per_week']:.1f} a week) on {m['days_used']} days, {m['minutes']:.0f} session-minutes; "
          f"{len(segs)} segments, {nbytes} bytes generated, {on_dev:.0f} on the board "
          f"({nbytes / m['sessions']:.0f} B a session)")
    print(f"link {BAUD} baud 8N1 = {link:.0f} bytes/s, so the bytes alone need {on_dev / link:.2f} s; "
          f"median of {a.rounds} rounds, tools alternating; Python bytecode cache {bytecode}; "
          f"pulled and copied files identical: {same}")
    print()
    print("| tool, wall time from process start to exit | time | throughput | share of the link's byte rate |")
    print("|---|---|---|---|")
    print(f"| `microstim logs pull` (whole command) | {t_pull:.2f} s | {r_pull:.0f} B/s | "
          f"**{r_pull / link:.1%}** (limit >= 85 %) |")
    print(f"| `microstim logs pull`, transfer phase only | {t_xfer:.2f} s | {r_xfer:.0f} B/s | "
          f"{r_xfer / link:.1%} |")
    print(f"| `mpremote fs cp -r :log` (whole command) | {t_mp:.2f} s | {r_mp:.0f} B/s | "
          f"{r_mp / link:.1%} |")
    print(f"| **pull speed-up over mpremote** | | **{t_mp / t_pull:.2f}x** (limit >= 2x) | |")
    print()
    print("rounds (s): pull " + ", ".join(f"{t:.2f}" for t, _ in pulls)
          + "; transfer " + ", ".join(f"{d['transfer_s']:.2f}" for _, d in pulls)
          + "; mpremote " + ", ".join(f"{t:.2f}" for t in copies))


if __name__ == "__main__":
    main()

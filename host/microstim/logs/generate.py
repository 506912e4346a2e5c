"""Realistic device logs for tests, the report and the benchmark, written by the
firmware's own log code (msfw/logstore.py) running on the MicroPython unix port.

The usage plan is made here: sessions following the protocol imperfectly (5 a week for
the first 60 days with skipped days and a holiday gap, then 2-3 a week), mostly the
steady program at 200 uA for 10 minutes, contact losses, intensity steps, gel drying,
an overcurrent fault, a session cut short by a dead battery, charging (USB power), a
first boot before the clock was set. device/usage.py plays it through LogStore.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import paths

DAY_S = 86400
PROGRAMS = {
    "steady": {"freq_hz": 10, "phase_us": 20000, "gap_us": 1000, "train_n": 1, "train_on_ms": 0, "train_off_ms": 0},
    "lift": {"freq_hz": 0.5, "phase_us": 600000, "gap_us": 200000, "train_n": 1, "train_on_ms": 0, "train_off_ms": 0},
    "tone": {"freq_hz": 30, "phase_us": 5000, "gap_us": 1000, "train_n": 1, "train_on_ms": 2000, "train_off_ms": 1000},
    "fine": {"freq_hz": 400, "phase_us": 1000, "gap_us": 200, "train_n": 1, "train_on_ms": 0, "train_off_ms": 0},
}


def micropython() -> str:
    here = Path(sys.executable).parent / "micropython"
    return str(here) if here.exists() else "micropython"


def plan_usage(days: int = 30, seed: int = 1, start_unix: int = 1767225600,
               noise_ua: tuple[float, float] = (0.2, 0.8), daily: bool = False) -> dict:
    """The actions of `days` days of use starting at start_unix (default 2026-01-01 00:00 UTC).

    daily: one 10-minute session every day (the capacity requirement's case) instead of
    the protocol followed imperfectly."""
    rng = np.random.default_rng(seed)
    actions: list[dict] = []
    # First power-on: the RTC has not been set yet (it counts from the epoch), then the
    # first connection to the host sets it.
    actions.append({"a": "boot", "rtc": 3, "cause": 1})
    actions.append({"a": "clock", "old": 40, "new": start_unix - 3600})
    actions.append({"a": "cal", "rtc": start_unix - 3500, "gain_q14": 16217, "offset_cu": -18})
    holiday = range(38, 47) if days >= 50 and not daily else range(0)
    session_days: list[int] = []
    for week in range((days + 6) // 7):
        first = week * 7
        if first < 60:
            n = rng.choice([5, 4, 3, 6, 1], p=[0.5, 0.25, 0.12, 0.08, 0.05])
        else:
            n = rng.choice([2, 3, 1, 4], p=[0.45, 0.4, 0.1, 0.05])
        if daily:
            n = 7
        for d in sorted(rng.choice(7, size=n, replace=False)):
            day = first + int(d)
            if day < days and day not in holiday:
                session_days.append(day)
    fault_day = session_days[min(8, len(session_days) - 1)] if session_days else -1
    cut_day = session_days[min(14, len(session_days) - 1)] if len(session_days) > 15 else -1
    for day in session_days:
        base = start_unix + day * DAY_S
        hour = rng.choice([7.0, 7.5, 8.0, 20.5, 21.0, 21.5, 22.0])
        rtc = int(base + hour * 3600 + rng.integers(0, 1800))
        actions.append({"a": "boot", "rtc": rtc - 30, "cause": 1})
        if day % 5 == 0:
            actions.append({"a": "usb", "rtc": rtc - 20, "v": 1})
            actions.append({"a": "usb", "rtc": rtc - 10, "v": 0})
        prog = str(rng.choice(["steady", "lift", "tone", "fine"], p=[0.7, 0.1, 0.15, 0.05]))
        dur = 600 if daily else int(rng.choice([600, 300, 900], p=[0.8, 0.1, 0.1]))
        n_lifts = int(rng.poisson(1.5))
        lifts = sorted([[float(rng.uniform(20, dur - 20)), float(rng.uniform(1, 6))] for _ in range(n_lifts)])
        intens = []
        if rng.random() < 0.4:
            intens.append([float(rng.uniform(30, 200)), int(rng.choice([1, 2, 3]))])
            if rng.random() < 0.5:
                intens.append([float(intens[0][0] + rng.uniform(30, 200)), int(rng.choice([3, 4]))])
        s = {"a": "session", "rtc": rtc, "prog": prog, "program": PROGRAMS[prog],
             "setpoint": int(rng.choice([200, 150, 250], p=[0.7, 0.15, 0.15])), "dur": dur,
             "level": 5, "z0": float(rng.lognormal(np.log(25000), 0.3)),
             "dry": float(rng.uniform(1.1, 1.8)), "noise_ua": float(rng.uniform(*noise_ua)),
             "lifts": lifts, "intens": intens}
        if rng.random() < 0.1:
            s["stop_s"] = int(rng.uniform(120, dur - 60))
        if day == fault_day:
            s["fault"] = [float(rng.uniform(100, 300)), 1, 8100]  # overcurrent, i_cu
        if day == cut_day:
            s["cut"] = True
            s["stop_s"] = None
            actions.append(s)
            actions.append({"a": "boot", "rtc": rtc + dur + 600, "cause": 1})
            continue
        actions.append(s)
    return {"seed": seed, "days": days, "start_unix": start_unix, "actions": actions,
            "session_days": session_days}


@dataclass
class Generated:
    segments: dict[int, bytes]
    plan: dict
    figures: dict


def generate(out_dir: Path, days: int = 30, seed: int = 1, plan: dict | None = None,
             timeout: float = 600) -> Generated:
    """Plays a usage plan through the firmware's LogStore on the unix port; returns the
    device's segments (what a pull would fetch) and the figures it printed."""
    out_dir = Path(out_dir)
    seg_dir = out_dir / "segments"
    seg_dir.mkdir(parents=True, exist_ok=True)
    plan = plan or plan_usage(days, seed)
    (out_dir / "plan.json").write_text(json.dumps(plan))
    script = Path(__file__).parent / "device" / "usage.py"
    r = subprocess.run(
        [micropython(), "-X", "heapsize=8m", str(script), str(paths.vboard_device_dir()),
         str(paths.firmware_dir()), str(out_dir / "plan.json"), str(out_dir / "flash.img"), str(seg_dir)],
        capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"usage.py failed:\n{r.stdout}\n{r.stderr}")
    figures = json.loads(r.stdout.strip().splitlines()[-1])
    segs = {int(p.stem, 16): p.read_bytes() for p in sorted(seg_dir.glob("*.seg"))}
    return Generated(segs, plan, figures)

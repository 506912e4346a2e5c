"""Short circuit: output-on time from the onset to the output off, for onsets swept across
a whole phase, per program, both polarities, into a resistor and into the default skin.

tests/test_electrode_sense.py places a few onsets per program (a test must stay fast);
this sweeps them at a fine step to find each program's worst case: where in a phase a
short is seen latest. A short is seen by a load conversion (ADS1115, 1.16 ms) that starts
after it, so the worst onsets are just after a phase's last load window starts (it is then
seen in the next phase) and inside a first window (its reading averages the short with
the skin before it). Every figure comes from the simulator's trace: the on-time of every
phase that carried current after the onset (what flowed into the short), never from the
firmware's own readings. The calibrated virtual board, 400 uA, the app as it runs.

    python benchmarks/short_onset.py [--quick] [--before REV] [--programs lift,pulse3] [--workers N]

--before REV runs the same onsets on the firmware of a git revision too (side by side).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tarfile
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from io import BytesIO
from pathlib import Path

import numpy as np
from microstim import paths
from microstim.vboard.calibrated import calibrate, run_headless_calibrated

ROOT = Path(__file__).resolve().parent.parent
SETPOINT = 400.0
LIMIT_MS = 5.0
LOADS = {"R 2k": (2000.0, 0.0, 0.0), "skin 2k+30k|100n": (2000.0, 30000.0, 1e-7)}
PROGRAMS = ("lift", "steady", "tone", "pulse3", "fine")


def offsets(program: str, dur_s: float, quick: bool) -> list[float]:
    """Onsets within a phase (s from its start): every step across it; lift's 600 ms
    phases at its two ends (the middle is like any long phase's)."""
    k = 2 if quick else 1
    if program == "lift":
        step = 0.00025 * k
        n3, n5 = int(round(0.003 / step)), int(round(0.005 / step))
        return [x * step for x in range(n3)] + [dur_s - (x + 1) * step for x in range(n5)]
    step = {"steady": 0.0005, "tone": 0.00025, "pulse3": 0.000125, "fine": 0.0001}[program] * k
    span = 0.0025 if program == "fine" else dur_s  # fine: one whole 2.5 ms period, both phases
    return [x * step for x in range(int(round(span / step)))]


def _load_event(load):
    rs, rp, cp = LOADS[load]
    return {"at_s": 0.0, "event": "load", "r_series_ohm": rs, "r_parallel_ohm": rp, "c_parallel_f": cp}


def _run(job):
    """One session (in a worker: the firmware tree is picked per job)."""
    fw, calib, program, load, events, seconds = job
    paths.firmware_dir = lambda: Path(fw)  # microstim.build stages the firmware from here
    cfg = {"program": program, "setpoint_ua": SETPOINT, "duration_s": 1200}
    scenario = [_load_event(load), {"at_s": 1.0, "event": "press"}, *events, {"at_s": seconds, "event": "stop"}]
    with tempfile.TemporaryDirectory() as d:
        tr, console, _ = run_headless_calibrated(d, scenario, calib, device_config=cfg, timeout_s=900)
    faults = [e["fault"] for e in (json.loads(x) for x in console.splitlines() if x.startswith("{"))
              if e.get("ev") == "fault"]
    p = tr.phases[tr.phases["i_cmd_ua"] > 0]
    return {"t": p["t_us"].astype(np.int64), "dur": p["dur_us"].astype(np.int64),
            "i": p["i_mean_ua"].astype(float), "cmd": p["i_cmd_ua"].astype(float), "faults": faults}


def on_ms(r, onset_s: float) -> float:
    t0 = int(round(onset_s * 1e6))
    return float(np.clip(r["t"] + r["dur"] - np.maximum(r["t"], t0), 0, None).sum()) / 1e3


def firmware_at(rev: str, dst: Path) -> Path:
    """firmware/ as it was at a git revision."""
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "firmware"], capture_output=True,
                         check=True).stdout
    with tarfile.open(fileobj=BytesIO(tar)) as t:
        t.extractall(dst, filter="data")
    return dst / "firmware"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="twice the onset step")
    ap.add_argument("--before", help="also run a git revision's firmware on the same onsets")
    ap.add_argument("--programs", default=",".join(PROGRAMS))
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    t_wall = time.perf_counter()
    programs = args.programs.split(",")
    with tempfile.TemporaryDirectory() as work, ProcessPoolExecutor(args.workers) as ex:
        work = Path(work)
        c = calibrate(work / "cal", 10_000.0)
        assert c["file"], c["console"]
        calib = c["file"]
        fws = {"now": str(paths.firmware_dir())}
        if args.before:
            fws[args.before] = str(firmware_at(args.before, work / "before"))
        # Where the phases are: an undisturbed session per program and load (a short
        # changes nothing before its onset).
        dry_jobs = [(fws["now"], calib, prog, load, [], 16.0 if prog == "lift" else 6.0)
                    for prog in programs for load in LOADS]
        onsets = {}
        for (_, _, prog, load, _, _), r in zip(dry_jobs, ex.map(_run, dry_jobs), strict=True):
            assert not r["faults"], (prog, load, r["faults"])
            full = (r["cmd"] >= 0.97 * SETPOINT) & (r["t"] > 4_000_000)
            pts = []
            for sign in (1, -1):
                k = int(np.flatnonzero(full & (np.sign(r["i"]) == sign))[0])
                t, d = r["t"][k] / 1e6, r["dur"][k] / 1e6
                pts += [(sign, off, round(t + off, 6)) for off in offsets(prog, d, args.quick)]
                if prog == "fine":
                    break  # one whole period holds both phases
            onsets[(prog, load)] = pts
        jobs, keys = [], []
        for (prog, load), pts in onsets.items():
            for which, fw in fws.items():
                for sign, off, onset in pts:
                    # A short after a phase's last load window is seen in the next phase:
                    # run until it has come (lift: a 1.2 s rest after its - phase).
                    jobs.append((fw, calib, prog, load, [{"at_s": onset, "event": "short"}],
                                 onset + (2.0 if prog == "lift" else 0.3)))
                    keys.append((prog, load, which, sign, off, onset))
        res = {}
        for key, r in zip(keys, ex.map(_run, jobs), strict=True):
            res[key] = (on_ms(r, key[5]), r["faults"][0] if r["faults"] else None)
    print(f"short circuit: output-on time (ms) from the onset to the output off, {SETPOINT:.0f} uA, calibrated "
          "virtual board, onsets swept across a phase of steady output (+ and -; lift: its first 3 ms and last 5 ms)")
    print(f"{'program':7} {'load':17} {'firmware':9} {'onsets':>6} {'latched':>7} {'median':>6} {'worst':>6} "
          f"{'worst at (into its phase)':>26}")
    worst_now = 0.0
    for (prog, load), pts in onsets.items():
        for which in fws:
            rows = [(res[(prog, load, which, s, o, t)], s, o) for s, o, t in pts]
            ons = [x[0][0] for x in rows]
            latched = sum(x[0][1] == "short_circuit" for x in rows)
            (w, _), s, o = max(rows, key=lambda x: x[0][0])
            if which == "now":
                worst_now = max(worst_now, w)
            print(f"{prog:7} {load:17} {which[:9]:9} {len(rows):>6} {latched:>3}/{len(rows):<3} "
                  f"{float(np.median(ons)):6.2f} {w:6.2f} {('+' if s > 0 else '-') + f'{o * 1e3:.2f} ms':>26}")
    print(f"worst (this tree): {worst_now:.2f} ms, limit {LIMIT_MS:.0f} ms: "
          f"{'met' if worst_now <= LIMIT_MS else 'NOT MET'}; wall {time.perf_counter() - t_wall:.0f} s")
    return 0 if worst_now <= LIMIT_MS else 1


if __name__ == "__main__":
    raise SystemExit(main())

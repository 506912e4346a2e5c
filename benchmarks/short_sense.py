"""Load sense: false "short" trips when a phase's first load conversion starts late.

At the start of a phase the skin's capacitance still holds the previous (opposite)
phase's charge: the voltage across the electrodes opposes the current, then crosses zero
some time into the phase. A 1.16 ms ADS1115 window straddling that crossing averages to
about 0 V, which is what a short reads. The firmware starts a phase's first conversion as
early as it can, but a late wake (a GC pause, a slow I2C transfer, a flash cache stall)
pushes it later, into the crossing.

This runs the unchanged engine (firmware/msfw) in the unix port on the virtual board's
hardware, calibrated, paced as the app paces its loop (engine.wait_us), with every phase's
first conversion held back until `late` us after the phase starts (Timeline.fits
patched in the snippet; the firmware is not changed), over skins, resistors, setpoints
and programs, and counts the short_circuit faults (each clears and the session restarts)
and other faults / pauses. A last row per program polls with 1 ms sleeps instead
(the loop that first showed the fault). fine (dense: its load windows are placed by the
sampler, not at a phase's start) runs as the app paces it; before its fix its windows
began in the gap before a phase and averaged the skin's zero crossing there too. The same cases run twice in one go: with the
sampler/supervisor of a git revision (--before, default the commit before the fix) and
with the working tree's.

    python benchmarks/short_sense.py [--quick] [--before REV] [--workers N] [--seconds S]

--onsets instead times a real short in fine (the app itself, run_headless, calibrated):
onsets every 0.25 ms over 8 ms of steady output and 6 ms across the soft start's 8 uA
(where the load starts being judged), on a 2 kohm resistor and the 1k + 20k||47n skin;
output-on time from the onset to the short_circuit fault, from the trace, before / after.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from microstim import paths
from microstim.vboard import runconfig
from microstim.vboard.calibrated import calibrate, resistor, run_headless_calibrated
from microstim.vboard.supervisor import find_micropython

ROOT = Path(__file__).resolve().parent.parent
BEFORE = "91de372"  # main before the dense-window fix (86c9f0d: before the late-wake fix)
FIXED_FILES = ("firmware/msfw/sampler.py", "firmware/msfw/supervisor.py")

# (label, r_series, r_parallel, c_parallel): the default skin (boards/virtual/sim.json),
# its area and drying variants (the scenario's contact area / gel_drying scale R and C),
# other R || C skins, and pure resistors (the scenario's "load" event).
SKINS = [
    ("skin 2k+30k|100n", 2000.0, 30000.0, 1e-7),
    ("skin area 0.3", 2000.0 / 0.3, 30000.0 / 0.3, 1e-7 * 0.3),
    ("skin dried x3", 6000.0, 90000.0, 1e-7 / 3),
    ("skin 1k+10k|470n", 1000.0, 10000.0, 4.7e-7),
    ("skin 1k+20k|47n", 1000.0, 20000.0, 4.7e-8),
    ("skin 5k+40k|22n", 5000.0, 40000.0, 2.2e-8),
    ("R 1k", 1000.0, 0.0, 0.0),
    ("R 10k", 10000.0, 0.0, 0.0),
    ("R 40k", 40000.0, 0.0, 0.0),
]
SETPOINTS = (20, 100, 200, 400)
# Per program: how late a phase's first conversion starts, swept phase by phase from 0 to
# `top` us in `step`s (the natural start is the sampler's margin, 150 us, plus the ADC's
# wake-up), and the session's length (s; the soft start is the first 1.5 s, lift's 6 s).
# fine is dense: its load windows are placed by their on-fraction, not at a phase's start
# (step 0: as the app runs it); lift is software-timed, its margin already 3 ms.
SWEEP = {"steady": (50, 3000, 8.0), "tone": (50, 3000, 8.0), "pulse3": (50, 2500, 6.0),
         "lift": (500, 8000, 30.0), "fine": (0, 0, 5.0)}

# A real short as a - phase of steady begins (its 20 ms phases are on throughout, so the time to
# the fault is on-time), that phase's first conversion this late (us).
SHORT_LATE_US = (0, 250, 500, 750, 1000, 1500, 2000, 2500, 3000)
SHORT_LOADS = [("skin 2k+30k|100n", 200, 2000.0, 30000.0, 1e-7), ("R 2k", 400, 2000.0, 0.0, 0.0),
               ("R 40k", 20, 40000.0, 0.0, 0.0)]

SNIPPET = r"""
import gc
sys.path.insert(0, %(fw)r)
from msfw import board as boardmod
from msfw.hw import Hardware
from msfw import engine as E
from msfw import sampler as S
from msfw import calib
b = boardmod.load(%(bj)r, %(pins)r)
hw = Hardware(b)
hw.output_off()
sc = calib.self_check(hw)
cal = calib.load(board=b, path=%(calfile)r)
LATE = [0]
_fits = S.Timeline.fits
def fits(self, pos, length, margin):
    # No conversion starts in the first LATE us of a phase (pos includes the ADC's wake-up).
    s = _fits(self, pos, length, margin)
    if s and pos < self.fit_start + LATE[0]:
        return 0
    return s
S.Timeline.fits = fits

def case(prog, sp, rs, rp, cp, step, top, secs, sleep1, short_ms=-1):
    # step 0: every phase's first conversion held back by `top` us. short_ms >= 0: a short
    # across the electrodes at the start of the first - phase after short_ms; returns the
    # us from it to the fault (-1: none) instead of running on.
    W.sync()
    ld = W.load
    ld.base_rs = rs; ld.base_rp = rp; ld.base_cp = cp; ld.short = False; ld.open = False
    LATE[0] = top if not step else 0
    gc.collect()
    eng = E.Engine(hw, {"program": prog, "setpoint_ua": sp, "duration_s": 1200, "cue_s": 0}, cal)
    eng.apply_self_check(sc)
    shorts = 0; other = []; pauses = []; at = []; phases = 0; prev = -1; pa = -1; t_short = -1
    t0 = hw.ticks_ms()
    eng.start(t0)
    while hw.ticks_diff(hw.ticks_ms(), t0) < secs:
        now = hw.ticks_us()
        tl = eng.tl
        if tl is not None:
            # Every new phase starts its first conversion `step` us later than the last did
            # (0 .. top, then again).
            p = tl.pos(now)
            sg = 0
            for a, b, sa in tl.intervals:
                if a <= p < b:
                    sg = sa
                    pa = a
            if sg and pa != prev:
                if short_ms >= 0 and sg < 0 and t_short < 0 and hw.ticks_diff(hw.ticks_ms(), t0) >= short_ms:
                    W.sync()
                    ld.short = True
                    t_short = now
                if step:
                    LATE[0] = LATE[0] + step if LATE[0] + step <= top else 0
                phases += 1
                prev = pa
        eng.tick(now, hw.ticks_ms())
        if eng.state == E.S_FAULT:
            if t_short >= 0:
                dt = hw.ticks_diff(hw.ticks_us(), t_short)
                ld.short = False
                hw.sleep_ms(400)
                return eng.sup.fault, dt
            if eng.sup.fault == 2:
                shorts += 1
                at.append(LATE[0] if step else eng.sampler.done_pos)
            else:
                other.append(eng.sup.fault)
            eng.clear_fault()
            eng.start(hw.ticks_ms())
        for k, v in eng.drain():
            if k == E.E_CONTACT_LOST:
                pauses.append(v)
        if sleep1:
            hw.sleep_ms(1)
            continue
        now = hw.ticks_us()
        w = eng.wait_us(now)
        tl = eng.tl
        if LATE[0] and tl is not None:
            # ...and the loop wakes for it then (the app's loop wakes every 200 us).
            p = tl.pos(now)
            for a, _, _ in tl.intervals:
                d = a + LATE[0] - 40 - p
                if 0 < d < w:
                    w = d
        hw.sleep_us(w)
    eng.stop()
    eng = None
    hw.sleep_ms(400)  # the skin relaxes between cases
    ld.short = False
    if short_ms >= 0:
        return 0, -1
    return shorts, other, pauses, at[:8], phases

for c in json.loads(%(cases)r):
    print("CASE " + json.dumps([c, case(*c)]))
"""


def firmware_tree(rev: str | None, dst: Path) -> Path:
    """firmware/ as in the working tree, with the fixed files from `rev` if given."""
    fw = dst / "firmware"
    shutil.copytree(ROOT / "firmware", fw)
    if rev:
        for f in FIXED_FILES:
            text = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{f}"], capture_output=True,
                                  text=True, check=True).stdout
            (dst / f).write_text(text)
    return fw


def run_batch(job: dict) -> list:
    """Runs job["cases"] (snippet case() arguments) in one unix-port process on job["fw"]."""
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        (d / "calib.json").write_text(job["calib"])
        script = runconfig.world_script(d, SNIPPET % {
            "fw": job["fw"], "bj": str(ROOT / "boards/virtual/board.json"),
            "pins": str(ROOT / "boards/virtual/pins.csv"), "calfile": str(d / "calib.json"),
            "cases": json.dumps(job["cases"])},
            scenario=[{"at_s": 100000.0, "event": "stop"}], speed=None,
            sim={"usb_present": False, "seed": job["seed"]})
        r = subprocess.run([find_micropython(), "-X", "heapsize=4m", str(script)], capture_output=True,
                           text=True, cwd=d, timeout=3600)
        out = [json.loads(x[5:]) for x in r.stdout.splitlines() if x.startswith("CASE ")]
        if len(out) != len(job["cases"]):
            raise RuntimeError(r.stdout[-2000:] + r.stderr[-3000:])
        return [(job["which"], c, res) for c, res in out]


def cases_for(quick: bool) -> list:
    """(program, load label, setpoint, loop, snippet case) for every row."""
    out = []
    skins = SKINS if not quick else [SKINS[0], SKINS[1], SKINS[3], SKINS[6], SKINS[8]]
    sps = SETPOINTS if not quick else (20, 200, 400)
    for prog, (step, top, secs) in SWEEP.items():
        for label, rs, rp, cp in skins:
            for sp in sps:
                out.append((prog, label, sp, f"late 0-{top / 1000:g}ms" if step else "wait_us",
                            (prog, sp, rs, rp, cp, step, top, int(secs * 1000), False)))
                out.append((prog, label, sp, "sleep 1ms", (prog, sp, rs, rp, cp, 0, 0, int(secs * 1000), True)))
    return out


ONSET_LOADS = [("R 2k", 2000.0, 0.0, 0.0), ("skin 1k+20k|47n", 1000.0, 20000.0, 4.7e-8)]
ONSET_SWEEPS = [("steady", 4.0, 32), ("8 uA", 1.1986, 24)]  # (label, first onset s, count) at 0.25 ms


def onset_run(job: tuple) -> tuple:
    """(fw, calib, load, onset s) -> (on-time ms from the onset to the fault, fault name, fault t s)."""
    fw, calib, (_, rs, rp, cp), onset = job
    paths.firmware_dir = lambda: Path(fw)  # this worker process runs that firmware tree
    scenario = [resistor(2000.0), {"at_s": 0.5, "event": "load", "r_series_ohm": rs, "r_parallel_ohm": rp,
                                   "c_parallel_f": cp},
                {"at_s": 1.0, "event": "press"}, {"at_s": onset, "event": "short"},
                {"at_s": onset + 0.3, "event": "stop"}]
    with tempfile.TemporaryDirectory() as d:
        tr, console, _ = run_headless_calibrated(d, scenario, calib, timeout_s=600, device_config={
            "program": "fine", "setpoint_ua": 400.0, "duration_s": 1200})
    faults = [e for e in (json.loads(x) for x in console.splitlines() if x.startswith("{"))
              if e.get("ev") == "fault"]
    ph = tr.phases[tr.phases["i_cmd_ua"] > 0]
    a = ph["t_us"].astype(np.int64)
    on = float(np.clip(a + ph["dur_us"] - np.maximum(a, int(round(onset * 1e6))), 0, None).sum()) / 1e3
    return on, faults[0]["fault"] if faults else None, faults[0]["t_ms"] / 1e3 if faults else None


def onsets_main(args, fws: dict, calib: str) -> int:
    jobs = [(which, load, sweep, round(t0 + k * 0.00025, 6))
            for which in fws for load in ONSET_LOADS for sweep, t0, n in ONSET_SWEEPS for k in range(n)]
    with ProcessPoolExecutor(args.workers) as ex:
        res = list(ex.map(onset_run, [(fws[w], calib, load, t) for w, load, _, t in jobs]))
    print("fine, 400 uA, a real short at each onset (every 0.25 ms): output-on time (ms, from the trace) "
          "from the onset to the short_circuit fault; 'steady' from 4 s, '8 uA' across the soft start's 8 uA "
          f"(press at 1 s). before = {args.before}, after = the working tree.")
    print(f"{'load':17} {'onsets':>8} {'n':>3} {'worst before':>12} {'after':>6} {'median b/a':>11}  other")
    bad = 0
    for load in ONSET_LOADS:
        for sweep, _, _n in ONSET_SWEEPS:
            row = {}
            notes = []
            for which in fws:
                r = [(t, x) for (w, ld, sw, t), x in zip(jobs, res, strict=True)
                     if w == which and ld == load and sw == sweep]
                ok = [x[0] for t, x in r if x[1] == "short_circuit" and x[2] >= t - 0.001]
                early = [x for t, x in r if x[1] is not None and x[2] < t - 0.001]
                wrong = [x for t, x in r if x[1] != "short_circuit"]
                if early:
                    notes.append(f"{which}: {len(early)} faulted before the onset ({early[0][1]} at {early[0][2]:.3f} s)")
                if wrong:
                    notes.append(f"{which}: {len(wrong)} not short_circuit")
                    bad += which == "after"
                row[which] = ok
            w = {k: (f"{max(v):.2f}" if v else "-") for k, v in row.items()}
            med = {k: (f"{sorted(v)[len(v) // 2]:.2f}" if v else "-") for k, v in row.items()}
            print(f"{load[0]:17} {sweep:>8} {_n:>3} {w['before']:>12} {w['after']:>6} "
                  f"{med['before'] + '/' + med['after']:>11}  {'; '.join(notes)}")
            bad += bool(row["after"]) and max(row["after"]) > 5.0
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer skins and setpoints")
    ap.add_argument("--before", default=BEFORE, help="git revision of the old sampler/supervisor")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--onsets", action="store_true", help="time a real short in fine instead (see above)")
    args = ap.parse_args()
    t_wall = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        c = calibrate(work / "cal", 10_000.0)
        assert c["file"], c["console"]
        fws = {"before": str(firmware_tree(args.before, work / "before")),
               "after": str(firmware_tree(None, work / "after"))}
        if args.onsets:
            return onsets_main(args, fws, c["file"])
        cases = cases_for(args.quick)
        shorts = [(label, sp, late, ("steady", sp, rs, rp, cp, 0, late, 6000, False, 3000))
                  for label, sp, rs, rp, cp in SHORT_LOADS for late in SHORT_LATE_US]
        jobs = []
        for which, fw in fws.items():
            jobs.append({"which": which, "fw": fw, "cases": [x[3] for x in shorts], "calib": c["file"],
                         "seed": args.seed})
            for prog in SWEEP:
                mine = [x[4] for x in cases if x[0] == prog]
                n = 12
                for k in range(0, len(mine), n):
                    jobs.append({"which": which, "fw": fw, "cases": mine[k:k + n], "calib": c["file"],
                                 "seed": args.seed})
        res = {}
        with ProcessPoolExecutor(args.workers) as ex:
            for batch in ex.map(run_batch, jobs):
                for which, cs, r in batch:
                    res[(which, tuple(cs))] = r
    print("Load sense, late first conversions: short_circuit faults with no short in the scenario "
          "(each clears, the session restarts), calibrated virtual board.")
    print("loop: 'late 0-Xms' = paced by engine.wait_us, every phase's first conversion held back "
          "(0, step, 2 x step .. X us after the phase starts, phase by phase); 'sleep 1ms' = the loop "
          "sleeps 1 ms instead; 'wait_us' = as the app runs.")
    print(f"before = sampler/supervisor of {args.before}, after = the working tree's. 'at' = the lateness "
          "(us) of the phases that tripped (sleep 1ms: the conversion's start in the period).")
    print(f"{'program':7} {'load':17} {'uA':>3} {'loop':>13} {'phases':>6} {'before':>6} {'after':>5} "
          f"{'at (before)':>19} {'other b/a':>9}")
    tot = {"before": 0, "after": 0}
    rows = {"before": 0, "after": 0}
    others = {"before": 0, "after": 0}
    per_prog = {}
    for prog, label, sp, loop, c in cases:
        b = res[("before", tuple(c))]
        a = res[("after", tuple(c))]
        pp = per_prog.setdefault(prog, {"before": 0, "after": 0, "n": 0, "phases": 0})
        pp["n"] += 1
        pp["phases"] += a[4]
        for which, r in (("before", b), ("after", a)):
            tot[which] += r[0]
            rows[which] += r[0] > 0
            others[which] += len(r[1]) + len(r[2])
            pp[which] += r[0]

        def other(r):
            return (",".join(str(x) for x in r[1]) or "-") + "".join(f"p{x}" for x in r[2][:3])
        at = ",".join(str(x) for x in sorted(set(b[3]))[:4]) or "-"
        print(f"{prog:7} {label:17} {sp:>3} {loop:>13} {a[4]:>6} {b[0]:>6} {a[0]:>5} {at:>19} "
              f"{other(b) + '/' + other(a):>9}")
    print("other b/a: fault codes (msfw/supervisor.py) other than short_circuit, before/after; pN: a pause "
          "(contact lost), N its reason: 1 lift-off, 2 compliance, 3 impedance jump")
    print("per program, false shorts before -> after (rows, phases run after): "
          + ", ".join(f"{p} {v['before']} -> {v['after']} ({v['n']}, {v['phases']})" for p, v in per_prog.items()))
    print(f"total false shorts: before {tot['before']} in {rows['before']} of {len(cases)} rows, after "
          f"{tot['after']} in {rows['after']} rows; other faults and pauses before {others['before']}, after "
          f"{others['after']}; wall {time.perf_counter() - t_wall:.0f} s")
    print("\nA real short as a steady - phase begins, that phase's first conversion late: time to the "
          "short_circuit fault (ms of on-time), before / after")
    print(f"{'load':17} {'uA':>3} " + " ".join(f"{x / 1000:>9g}" for x in SHORT_LATE_US))
    worst = {"before": 0.0, "after": 0.0}
    for label, sp, *_ in SHORT_LOADS:
        cells = []
        for late in SHORT_LATE_US:
            c = next(x[3] for x in shorts if x[0] == label and x[2] == late)
            ms = []
            for which in ("before", "after"):
                fault, us = res[(which, tuple(c))]
                ms.append(f"{us / 1000:.2f}" if fault == 2 else "none")
                if late <= 1000 and fault == 2:
                    worst[which] = max(worst[which], us / 1000)
            cells.append("/".join(ms))
        print(f"{label:17} {sp:>3} " + " ".join(f"{x:>9}" for x in cells))
    print(f"worst with the first conversion up to 1 ms late: before {worst['before']:.2f} ms, after "
          f"{worst['after']:.2f} ms")
    return 0 if tot["after"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

"""Stimulation engine against its limits, measured on the virtual board.

Runs sessions headless, in virtual time, on the "virtual" board with its simulated noise
and component (gain/offset) errors left on, and prints plain-text tables. Every figure is
taken from the simulator's trace (what the analog model really delivered), never from
the firmware's console; the console is read only for what the device *reported*
(faults, compliance, contact events).

First the device calibrates itself (firmware/msfw/calib.py) against a simulated 10 kohm
reference resistor across the probes; every session then runs on a flash holding that
/calib.json, as on a calibrated board. Section 6 runs the steady-state sweep once more
without it (before calibration).

    python benchmarks/engine_bench.py            # full run (about 1000 lift cycles)
    python benchmarks/engine_bench.py --quick    # reduced run
    python benchmarks/engine_bench.py --seed 7 --workers 2

Sections:
  1. steady-state error of the delivered amplitude, setpoint x resistive load
     (+ one load beyond compliance)
  2. overshoot at start, at an intensity change and at re-contact
  3. randomised lift-off / re-contact cycles
  4. short circuit and DAC stuck high: on-time after the fault
  5. net charge per minute, per program
  6. calibration: what it found, and the delivered-current error before and after it
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from microstim.vboard.calibrated import calibrate, run_headless_calibrated
from microstim.vboard.trace import F_COMPLIANCE, F_OPEN

PROBE_UA = 10.0
STIM_MIN_UA = 2 * PROBE_UA  # phases commanded above this are the session's own output
PRESS_AT_S = 1.0
OVERSHOOT_LIMIT = 1.05
OPEN_DRIVE_LIMIT_MS = 10.0
FAULT_ON_LIMIT_MS = 5.0
NET_CHARGE_LIMIT = 0.01  # of one phase's charge, per minute
COMPLIANCE_V = 30.0  # boards/virtual frontend.compliance_v
R_REF_OHM = 10_000.0  # the calibration's reference resistor
# The default skin load (boards/virtual/sim.json), restated so the table can name it.
SKIN = {"r_series_ohm": 2000.0, "r_parallel_ohm": 30000.0, "c_parallel_f": 1e-7}


# ---- running sessions ------------------------------------------------------------------

def _session(job: dict) -> dict:
    """One headless session (runs in a worker process)."""
    cfg = {"program": "steady", "setpoint_ua": 200, "duration_s": 600, "cue_s": 5}
    cfg.update(job.get("config", {}))
    scenario = [*job.get("pre", []), {"at_s": PRESS_AT_S, "event": "press"}, *job.get("events", []),
                {"at_s": job["stop_s"], "event": "stop"}]
    scenario.sort(key=lambda e: e["at_s"])
    with tempfile.TemporaryDirectory(prefix="engine-bench-") as tmp:
        trace, console, wall_s = run_headless_calibrated(tmp, scenario, job.get("calib"), device_config=cfg,
                                                         sim=job.get("sim"), timeout_s=job.get("timeout_s", 600))
    finished = any(e.get("event") == "stop" for e in trace.events)
    return {"key": job["key"], "phases": np.array(trace.phases), "console": console,
            "wall_s": wall_s, "finished": finished, "job": job}


def console_events(console: str) -> list[dict]:
    out = []
    for line in console.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def stim(p: np.ndarray) -> np.ndarray:
    return p[p["i_cmd_ua"] > STIM_MIN_UA]


def window(p: np.ndarray, t0_s: float, t1_s: float) -> np.ndarray:
    return p[(p["t_us"] >= t0_s * 1e6) & (p["t_us"] < t1_s * 1e6)]


def on_ms_in(p: np.ndarray, t0_s: float, t1_s: float = 1e9) -> float:
    """Output-on time of `p` that falls inside [t0, t1), ms (phases may straddle t0)."""
    a = p["t_us"].astype(np.int64)
    b = a + p["dur_us"]
    lo = np.maximum(a, int(round(t0_s * 1e6)))
    hi = np.minimum(b, int(round(t1_s * 1e6)))
    return float(np.clip(hi - lo, 0, None).sum()) / 1e3


def amplitude(p: np.ndarray) -> float:
    """Duration-weighted mean |i_mean_ua|."""
    d = p["dur_us"].astype(np.float64)
    return float((np.abs(p["i_mean_ua"].astype(np.float64)) * d).sum() / d.sum()) if len(p) else 0.0


# ---- 1. steady-state error ---------------------------------------------------------------

def jobs_steady(setpoints, loads, seed, name="steady"):
    jobs = []
    for k, (sp, r) in enumerate((sp, r) for sp in setpoints for r in loads):
        jobs.append({"key": (name, sp, r), "config": {"setpoint_ua": sp}, "stop_s": 9.0,
                     "sim": {"seed": seed + k},
                     "pre": [{"at_s": 0.0, "event": "load", "r_series_ohm": float(r),
                              "r_parallel_ohm": 0.0, "c_parallel_f": 0.0}]})
    if name != "steady":
        return jobs
    jobs.append({"key": ("compliance", 400, 100_000), "config": {"setpoint_ua": 400}, "stop_s": 14.0,
                 "sim": {"seed": seed + 99},
                 "pre": [{"at_s": 0.0, "event": "load", "r_series_ohm": 100_000.0,
                          "r_parallel_ohm": 0.0, "c_parallel_f": 0.0}]})
    return jobs


def report_steady(res, setpoints, loads):
    print("\n1. Steady-state error of the delivered amplitude (program steady, resistive load)")
    print("   mean |i| over the last 3 s of the session (6..9 s), phases commanded above "
          "min(20 uA, 0.6 x setpoint);")
    print("   limit: |error| <= max(1 % of setpoint, 1 uA), loads within compliance; the board's "
          "gain/offset errors are on, the device calibrated itself (10 kohm reference)")
    print("   'at compliance': phases flagged by the simulator as compliance-limited (none is claimed "
          "to meet the limit)")
    print(f"   {'setpoint uA':>11} {'load kOhm':>9} {'delivered uA':>12} {'error uA':>9} {'error %':>8} "
          f"{'limit uA':>8} {'at compliance':>13} {'meets':>5} {'device events':>22}")
    worst = []
    ok_all = True
    for sp in setpoints:
        for r in loads:
            rr = res[("steady", sp, r)]
            p = window(rr["phases"], 6.0, 9.0)
            p = p[p["i_cmd_ua"] > min(STIM_MIN_UA, 0.6 * sp)]
            amp = amplitude(p)
            err = amp - sp
            lim = max(0.01 * sp, 1.0)
            n_comp = int(((p["flags"] & F_COMPLIANCE) != 0).sum())
            ok = abs(err) <= lim and rr["finished"] and n_comp == 0
            said_ = said(rr["console"])
            ok_all &= ok
            worst.append(abs(err) / sp)
            print(f"   {sp:>11g} {r / 1000:>9g} {amp:>12.2f} {err:>+9.2f} {100 * err / sp:>+8.2f} "
                  f"{lim:>8.2f} {n_comp:>13d} {'yes' if ok else 'NO':>5} {said_:>22}")
    print(f"   worst |error|: {100 * max(worst):.2f} % of setpoint; "
          f"{sum(w * 100 <= 1.0 for w in worst)}/{len(worst)} within 1 %, "
          f"{sum(w * 100 <= 2.0 for w in worst)}/{len(worst)} within 2 %")

    rr = res[("compliance", 400, 100_000)]
    p = rr["phases"]
    evs = console_events(rr["console"])
    reported = ('"reason": "compliance"' in rr["console"]
                or '"compliance_limited": true' in rr["console"])
    limited = any(e.get("compliance_limited") for e in evs if e.get("ev") == "contact_ok")
    last = stim(window(p, 11.0, 14.0))
    amp = amplitude(last)
    allow = COMPLIANCE_V / 100_000 * 1e6
    n_comp = int(((stim(p)["flags"] & F_COMPLIANCE) != 0).sum())
    ok_c = reported and amp < 400 and stim(p)["i_peak_ua"].max() <= allow * OVERSHOOT_LIMIT
    print("\n   beyond compliance: 400 uA into 100 kOhm (needs 40 V; compliance 30 V -> at most "
          f"{allow:.0f} uA), session 1..14 s")
    print(f"   {'compliance reported':>19} {'resumed limited':>15} {'delivered 11..14 s uA':>21} "
          f"{'peak uA':>8} {'phases at compliance':>20} {'claims setpoint':>15}")
    print(f"   {'yes' if reported else 'NO':>19} {'yes' if limited else 'no':>15} {amp:>21.1f} "
          f"{stim(p)['i_peak_ua'].max():>8.1f} {n_comp:>20d} {'NO' if amp < 0.95 * 400 else 'YES':>15}")
    lost = [e for e in evs if e.get("ev") in ("contact_lost", "contact_ok")]
    print("   device said: " + "; ".join(f"{e['ev']} {e.get('reason')} at {e.get('t_ms')} ms "
                                         f"(compliance_limited={e.get('compliance_limited')})" for e in lost[:6]))
    return ok_all, ok_c


# ---- 2. overshoot -----------------------------------------------------------------------

def jobs_overshoot(setpoints, seed):
    jobs = []
    for k, sp in enumerate(setpoints):
        cfg = {"setpoint_ua": sp}
        jobs.append({"key": ("ov-start", sp), "config": cfg, "stop_s": 6.0, "sim": {"seed": seed + 10 * k}})
        jobs.append({"key": ("ov-level", sp), "config": cfg, "stop_s": 9.5, "sim": {"seed": seed + 10 * k + 1},
                     "events": [{"at_s": 4.0, "event": "press"}, {"at_s": 6.0, "event": "press"}]})
        jobs.append({"key": ("ov-contact", sp), "config": cfg, "stop_s": 9.0, "sim": {"seed": seed + 10 * k + 2},
                     "events": [{"at_s": 4.03, "event": "lift"},
                                {"at_s": 5.0, "event": "contact", "area": 0.3}]})
    return jobs


def peak(p: np.ndarray) -> float:
    return float(p["i_peak_ua"].max()) if len(p) else float("nan")


def said(console: str) -> str:
    """What the device reported that interrupted the output: a fault or a pause (first one)."""
    evs = console_events(console)
    faults = [e.get("fault") for e in evs if e.get("ev") == "fault"]
    lost = [e.get("reason") for e in evs if e.get("ev") == "contact_lost"]
    return f"fault {faults[0]}" if faults else f"paused {lost[0]}" if lost else "-"


def report_overshoot(res, setpoints):
    print("\n2. Overshoot: max i_peak / target (default skin load "
          f"{SKIN['r_series_ohm'] / 1e3:g}k + {SKIN['r_parallel_ohm'] / 1e3:g}k || "
          f"{SKIN['c_parallel_f'] * 1e9:g} nF), limit {100 * OVERSHOOT_LIMIT:.0f} %")
    print("   start: whole 6 s session; level: presses at 4 s (5/5 -> 1/5) and 6 s (1/5 -> 2/5, "
          "soft start); re-contact: lift 4.03 s, contact (area 0.3) 5.0 s")
    print("   'at 1/5', 'at 2/5': peak over that level's time / that level's target; the two-channel DAC "
          "steps 0.15 uA (one 8-bit")
    print("   channel: 2.5 uA) and the dither never puts a phase more than 1.047 x above its mean")
    print(f"   {'setpoint uA':>11} {'start %':>8} {'(at s)':>6} {'level:session %':>15} {'at 1/5 %':>9} "
          f"{'at 2/5 %':>9} {'re-contact %':>12} {'after re-contact %':>18} {'meets':>5} {'device events':>26}")
    ok_all = True
    for sp in setpoints:
        s = res[("ov-start", sp)]["phases"]
        lv = res[("ov-level", sp)]["phases"]
        rc = res[("ov-contact", sp)]["phases"]
        start = peak(s) / sp
        t_start = s["t_us"][np.argmax(s["i_peak_ua"])] / 1e6 if len(s) else float("nan")
        level = peak(lv) / sp
        at1 = peak(window(lv, 4.2, 6.1)) / (0.2 * sp)
        at2 = peak(window(lv, 6.1, 9.5)) / (0.4 * sp)
        recon = peak(rc) / sp
        after = peak(window(rc, 5.0, 9.0)) / sp
        figs = (start, level, at1, at2, recon)
        ok = all(x <= OVERSHOOT_LIMIT for x in figs)  # nan (no output at all) is not a pass
        ok_all &= ok
        ev = sorted({said(res[(k, sp)]["console"]) for k in ("ov-start", "ov-level", "ov-contact")} - {"-"})
        print(f"   {sp:>11g} {100 * start:>8.1f} {t_start:>6.2f} {100 * level:>15.1f} {100 * at1:>9.1f} "
              f"{100 * at2:>9.1f} {100 * recon:>12.1f} {100 * after:>18.1f} {'yes' if ok else 'NO':>5} "
              f"{', '.join(ev) or '-':>26}")
    return ok_all


# ---- 3. lift-off / re-contact cycles -------------------------------------------------------

def plan_cycles(seed, n):
    """n cycles as (lift duration s, area at re-contact, time to the next lift s, jitter)."""
    rng = np.random.default_rng([seed, 3])
    return [(math.exp(rng.uniform(math.log(0.005), math.log(2.0))),  # 5 ms .. 2 s, log-uniform
             round(float(rng.uniform(0.1, 1.0)), 3),
             float(rng.uniform(2.5, 3.5)),
             float(rng.uniform(0.0, 1.0)))
            for _ in range(n)]


def jobs_cycles(params, per_session, seed, rnd, setpoint=200):
    """Sessions running `params` in order, per_session cycles each (round `rnd`)."""
    jobs = []
    for k in range(0, len(params), per_session):
        chunk = params[k:k + per_session]
        t = 4.0 + chunk[0][3]  # first lift: after the soft start, in steady stimulation
        cycles, events = [], []
        for dur, area, gap, _ in chunk:
            lift = round(t, 6)
            contact = round(lift + dur, 6)
            cycles.append((lift, contact, area))
            events.append({"at_s": lift, "event": "lift"})
            events.append({"at_s": contact, "event": "contact", "area": area})
            t = contact + gap
        n = len(jobs)
        jobs.append({"key": ("cycles", rnd, n), "config": {"setpoint_ua": setpoint, "duration_s": 1200},
                     "stop_s": round(t, 6), "events": events,
                     "sim": {"seed": seed + 1000 + 100 * rnd + n},
                     "cycles": cycles, "params": chunk, "timeout_s": 900})
    return jobs


def analyse_cycles(rr, setpoint):
    p = rr["phases"]
    s = stim(p)
    evs = console_events(rr["console"])
    lost_ms = np.array([e["t_ms"] for e in evs if e.get("ev") == "contact_lost"], dtype=float)
    faults = [e for e in evs if e.get("ev") == "fault"]
    fault_s = faults[0]["t_ms"] / 1e3 if faults else float("inf")
    states = [(e["t_ms"] / 1e3, e["state"]) for e in evs if e.get("ev") == "state"]
    cycles = rr["job"]["cycles"]
    stop = rr["job"]["stop_s"]
    out = []
    for i, (lift, contact, area) in enumerate(cycles):
        if lift >= fault_s:
            break  # the output is latched off: later cycles exercise nothing
        nxt = cycles[i + 1][0] if i + 1 < len(cycles) else stop
        open_ms = on_ms_in(s, lift, contact)
        detected = bool(((lost_ms >= lift * 1e3) & (lost_ms < contact * 1e3 + 50)).any())
        tail = s[(s["t_us"] >= (nxt - 0.3) * 1e6) & (s["t_us"] < nxt * 1e6)
                 & ((s["flags"] & F_OPEN) == 0)]
        resumed = len(tail) > 0
        state = [st for t, st in states if t < nxt]
        out.append({"lift": lift, "contact": contact, "area": area, "dur_ms": 1e3 * (contact - lift),
                    "open_ms": open_ms, "detected": detected, "resumed": resumed,
                    "state": state[-1] if state else "?",
                    "full": resumed and amplitude(tail) >= 0.9 * setpoint,
                    "tail_amp": amplitude(tail) if resumed else 0.0})
    alive_until = min(fault_s, stop)
    over = s[(s["i_peak_ua"] > OVERSHOOT_LIMIT * setpoint) & (s["t_us"] < alive_until * 1e6)]
    return out, over, faults, len(cycles)


def report_cycles(runs, n_planned, rounds, seed, setpoint=200):
    print(f"\n3. Lift-off / re-contact cycles (seed {seed}): {n_planned} cycles in {len(runs)} sessions "
          f"({rounds} rounds), program steady, {setpoint} uA, default skin load")
    print("   lift lasting 5 ms..2 s (log-uniform), re-contact at area 10..100 % (uniform), "
          "next lift 2.5..3.5 s after re-contact")
    print("   drive into the open circuit: output-on time of phases commanded above 20 uA inside "
          "[lift, re-contact); a latched fault ends")
    print("   a session's output for good, so cycles after one exercise nothing: they are run again in "
          "fresh sessions (next round)")
    allc, overs, faults, wall = [], [], [], 0.0
    for rr in runs:
        k = "/".join(map(str, rr["key"][1:]))
        c, o, f, n = analyse_cycles(rr, setpoint)
        allc += c
        overs.append(o)
        if f:
            faults.append((k, f[0]))
        wall += rr["wall_s"]
        if not rr["finished"]:
            print(f"   !! session {k} did not reach its stop event")
    over = np.concatenate(overs) if overs else np.zeros(0)
    open_ms = np.array([c["open_ms"] for c in allc])
    n = len(allc)
    det = [c for c in allc if c["detected"]]
    res_frac = sum(c["resumed"] for c in allc) / n
    full_frac = sum(c["full"] for c in allc) / n
    worst = max(allc, key=lambda c: c["open_ms"])
    sim_s = sum(rr["job"]["stop_s"] for rr in runs)
    print(f"   {'planned':>7} {'exercised':>9} {'detected':>8} {'phases >105%':>12} {'open max ms':>11} "
          f"{'open p99 ms':>11} {'open mean ms':>12} {'lifts >10 ms':>12} {'resumed':>8} "
          f"{'at >=90%':>8} {'latched faults':>14}")
    print(f"   {n_planned:>7d} {n:>9d} {len(det):>8d} {len(over):>12d} {open_ms.max():>11.2f} "
          f"{np.percentile(open_ms, 99):>11.2f} {open_ms.mean():>12.2f} "
          f"{(open_ms > OPEN_DRIVE_LIMIT_MS).sum():>12d} {100 * res_frac:>7.1f}% {100 * full_frac:>7.1f}% "
          f"{len(faults):>14d}")
    print(f"   worst lift: at {worst['lift']:.3f} s, {worst['dur_ms']:.1f} ms long -> "
          f"{worst['open_ms']:.2f} ms of drive into the open circuit")
    if len(over):
        print(f"   phases above 105 %: max {over['i_peak_ua'].max():.1f} uA at "
              + ", ".join(f"{t / 1e6:.3f} s" for t in over["t_us"][:5]))
    st = {}
    for c in allc:
        st[c["state"]] = st.get(c["state"], 0) + 1
    print("   device state just before the next lift: "
          + ", ".join(f"{k} {v}" for k, v in sorted(st.items(), key=lambda kv: -kv[1])))
    print(f"   by re-contact area: {'area':>9} {'cycles':>6} {'resumed':>8} {'at >=90%':>8} "
          f"{'mean delivered uA':>17}")
    for lo, hi in ((0.1, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.01)):
        g = [c for c in allc if lo <= c["area"] < hi]
        if g:
            print(f"   {'':>19} {lo:>4.2f}-{min(hi, 1.0):<4.2f} {len(g):>6d} "
                  f"{100 * sum(c['resumed'] for c in g) / len(g):>7.1f}% "
                  f"{100 * sum(c['full'] for c in g) / len(g):>7.1f}% "
                  f"{np.mean([c['tail_amp'] for c in g]):>17.1f}")
    for k, f in faults:
        print(f"   session {k}: latched fault {f.get('fault')} at {f.get('t_ms') / 1e3:.3f} s")
    print(f"   ({sim_s:.0f} simulated s in {wall:.0f} wall s of worker time)")
    return len(over) == 0, open_ms.max() <= OPEN_DRIVE_LIMIT_MS, res_frac, faults, n


# ---- 4. short circuit and DAC stuck high ------------------------------------------------------

FAULT_PROGRAMS = ("steady", "lift", "tone", "fine", "pulse3")


def jobs_faults(n, seed):
    rng = np.random.default_rng([seed, 4])
    jobs = []
    sps = (50, 100, 200, 300)  # 400 (the ceiling) faults by itself: see section 1
    for kind in ("short", "dac_stuck"):
        for k in range(n):
            onset = round(float(rng.uniform(2.0, 7.0)), 6)
            sp = sps[k % len(sps)]
            # Shorts in every program (lift: in the recovery phase, the soft start or a
            # 600 ms phase, by the onset); a stuck DAC in steady.
            prog = FAULT_PROGRAMS[k % len(FAULT_PROGRAMS)] if kind == "short" else "steady"
            jobs.append({"key": (kind, k), "config": {"setpoint_ua": sp, "program": prog},
                         "stop_s": round(onset + 1.5, 6),
                         "events": [{"at_s": onset, "event": kind}], "sim": {"seed": seed + 2000 + k},
                         "onset": onset})
    return jobs


def report_faults(res, n):
    print(f"\n4. Faults: output-on time (phases commanded above 20 uA) after the onset, limit "
          f"{FAULT_ON_LIMIT_MS:g} ms; default skin load; onset uniform in 2..7 s (ramp and steady)")
    print(f"   {'fault':>9} {'program':>8} {'setpoint uA':>11} {'onset s':>8} {'on after ms':>11} {'peak after uA':>13} "
          f"{'reported':>13} {'console t-onset ms':>18} {'meets':>5}")
    ok_all = True
    worst = {}
    for kind, want in (("short", "short_circuit"), ("dac_stuck", "overcurrent")):
        for k in range(n):
            rr = res[(kind, k)]
            onset = rr["job"]["onset"]
            sp = rr["job"]["config"]["setpoint_ua"]
            s = stim(rr["phases"])
            on = on_ms_in(s, onset)
            after = s[s["t_us"] + s["dur_us"] > onset * 1e6]
            peak = float(after["i_peak_ua"].max()) if len(after) else 0.0
            fl = [e for e in console_events(rr["console"]) if e.get("ev") == "fault"]
            got = fl[0]["fault"] if fl else "-"
            lat = fl[0]["t_ms"] - onset * 1e3 if fl else float("nan")
            ok = on <= FAULT_ON_LIMIT_MS and got == want
            ok_all &= ok
            worst[kind] = max(worst.get(kind, 0.0), on)
            prog = rr["job"]["config"]["program"]
            if kind == "short":
                worst["short " + prog] = max(worst.get("short " + prog, 0.0), on)
            print(f"   {kind:>9} {prog:>8} {sp:>11g} {onset:>8.3f} {on:>11.2f} {peak:>13.1f} {got:>13} {lat:>18.1f} "
                  f"{'yes' if ok else 'NO':>5}")
    print("   worst on-time: " + ", ".join(f"{k} {v:.2f} ms" for k, v in worst.items()))
    return ok_all


# ---- 5. net charge --------------------------------------------------------------------

def jobs_charge(programs, seconds, seed):
    # The session runs to auto-off (before the stop event): the whole session, from the
    # start's recovery phase to the one that drains CBLOCK before auto-off, is measured too.
    return [{"key": ("charge", prog), "config": {"program": prog, "setpoint_ua": 200,
                                                 "duration_s": 2.0 + seconds + 1.0},
             "stop_s": 3.0 + seconds + 2.0, "sim": {"seed": seed + 3000 + k}, "seconds": seconds}
            for k, prog in enumerate(programs)]


def macro_starts(p: np.ndarray) -> np.ndarray:
    """Start times (us) of macro periods: a positive phase right after a negative one."""
    sign = np.sign(p["i_mean_ua"])
    first = np.r_[True, sign[:-1] < 0] & (sign > 0)
    return p["t_us"][first]


def report_charge(res, programs):
    print("\n5. Net charge, program at 200 uA on the default skin load; window from 3 s (the soft start "
          "ends at 2.65 s) to the end, cut at whole macro periods")
    print("   (a macro period starts at a + phase that follows a - phase, so no partial pair or train "
          "is counted); ratio = |net charge| per minute / mean charge of one phase; limit "
          f"{100 * NET_CHARGE_LIMIT:g} %")
    print(f"   {'program':>7} {'window s':>8} {'phases':>7} {'pairs/min':>9} {'phase uC':>9} {'net uC':>9} "
          f"{'net/min uC':>10} {'ratio %':>8} {'meets':>5}")
    ok_all = True
    diag = []
    for prog in programs:
        rr = res[("charge", prog)]
        secs = rr["job"]["seconds"]
        p = stim(rr["phases"])
        p = p[(p["flags"] & F_OPEN) == 0]
        starts = macro_starts(p)
        starts = starts[(starts >= 3.0e6) & (starts <= (3.0 + secs) * 1e6)]
        a, b = starts[0], starts[-1]
        w = p[(p["t_us"] >= a) & (p["t_us"] < b)]
        q = w["i_mean_ua"].astype(np.float64) * w["dur_us"] * 1e-6  # uC
        pos, neg = w[w["i_mean_ua"] > 0], w[w["i_mean_ua"] < 0]
        q_phase = float(np.abs(q).mean())
        net = float(q.sum())
        span_s = (b - a) / 1e6
        per_min = abs(net) * 60.0 / span_s
        ratio = per_min / q_phase
        ok = ratio <= NET_CHARGE_LIMIT
        ok_all &= ok
        pairs_min = len(pos) * 60.0 / span_s
        print(f"   {prog:>7} {span_s:>8.2f} {len(w):>7d} {pairs_min:>9.0f} {q_phase:>9.3f} {net:>+9.4f} "
              f"{per_min:>10.4f} {100 * ratio:>8.2f} {'yes' if ok else 'NO':>5}")
        # Where it comes from: durations vs amplitudes of the two polarities; a steady trend
        # (linear fit of the running net charge at macro starts) vs single events.
        cum = np.r_[0.0, np.cumsum(q)]
        k = np.searchsorted(w["t_us"], starts[starts < b])
        ts = starts[starts < b] / 1e6
        run = cum[k]
        per_macro = np.diff(np.r_[run, net])
        j = int(np.argmax(np.abs(per_macro)))
        trend = np.polyfit(ts, run, 1)[0] * 60.0 if len(ts) > 2 else 0.0
        dq_dur = (pos["dur_us"].sum() - neg["dur_us"].sum()) * 1e-6 * amplitude(w)
        mism = (amplitude(pos) * pos["dur_us"].sum() - amplitude(neg) * neg["dur_us"].sum()) \
            / (amplitude(w) * w["dur_us"].sum() / 2)
        diag.append((prog, pos["dur_us"].mean(), neg["dur_us"].mean(), amplitude(pos), amplitude(neg),
                     dq_dur, net - dq_dur, 1e6 * mism, 100 * abs(trend) / q_phase,
                     100 * abs(per_macro[j]) / q_phase, ts[j], 100 * np.ptp(run) / q_phase))
    print("   where it comes from (+ vs - phases; trend = linear fit of the running net charge; "
          "largest = one macro period's net):")
    print(f"   {'program':>7} {'mean dur +/- us':>19} {'mean |i| +/- uA':>17} {'from dur uC':>11} "
          f"{'from amp uC':>11} {'+/- charge ppm':>14} {'trend %/min':>11} {'largest %':>9} {'at s':>7} "
          f"{'range %':>7}")
    for d in diag:
        print(f"   {d[0]:>7} {d[1]:>9.1f}/{d[2]:<9.1f} {d[3]:>8.2f}/{d[4]:<8.2f} {d[5]:>+11.4f} {d[6]:>+11.4f} "
              f"{d[7]:>+14.1f} {d[8]:>11.2f} {d[9]:>9.2f} {d[10]:>7.2f} {d[11]:>7.1f}")
    print("   (1 % of a phase per minute means the + and - charge must match to 0.01 / (pairs per "
          "minute): e.g. 17 ppm at 600 pairs/min, 0.4 ppm at 24000)")
    print("   whole session, press to auto-off: every phase the output drove (the recovery phase that "
          "centres CBLOCK at the start,\n   the soft start, and the recovery phase that drains CBLOCK "
          "before auto-off), against the session's length")
    print(f"   {'program':>7} {'session s':>9} {'phases':>7} {'recovery uC':>11} {'net uC':>9} "
          f"{'ratio %':>8} {'meets':>5} {'ended by':>9}")
    for prog in programs:
        rr = res[("charge", prog)]
        p = rr["phases"]
        p = p[p["t_us"] >= (PRESS_AT_S - 0.01) * 1e6]  # before: the boot self-check's zero pair
        q = p["i_mean_ua"].astype(np.float64) * p["dur_us"] * 1e-6
        span_s = float(p["t_us"][-1] + p["dur_us"][-1] - p["t_us"][0]) / 1e6
        rec = stim(p)
        q_phase = float(np.abs(rec["i_mean_ua"].astype(np.float64) * rec["dur_us"] * 1e-6).mean())
        # the recovery phases: the output's first and last phase, each one long phase
        q_rec = f"{q[0]:+.3f}/{q[-1]:+.3f}"
        net = float(q.sum())
        ratio = abs(net) * 60.0 / span_s / q_phase
        ends = [e.get("reason") for e in console_events(rr["console"]) if e.get("ev") == "session_end"]
        ok = ratio <= NET_CHARGE_LIMIT and ends == ["auto_off"]
        ok_all &= ok
        print(f"   {prog:>7} {span_s:>9.2f} {len(p):>7d} {q_rec:>11} {net:>+9.4f} {100 * ratio:>8.2f} "
              f"{'yes' if ok else 'NO':>5} {','.join(map(str, ends)):>9}")
    return ok_all


# ---- 6. calibration -------------------------------------------------------------------

def report_calibration(cal, res, setpoints, loads):
    from microstim import paths

    bdir = paths.boards_dir() / "virtual"
    fe = json.loads((bdir / "board.json").read_text())["frontend"]
    err = json.loads((bdir / "sim.json").read_text())["errors"]
    r = cal["result"]
    n = 16  # internal_dual: 1/16
    nominal = fe["source_gain_ua_per_v"] * fe["dac_vref_v"] / 255 / n
    built = nominal * (1 + err["source_gain"]) * (1 + err["dac_gain"])
    print(f"\n6. Calibration (issue 6): the device's own routine (msfw/calib.py) against a "
          f"{R_REF_OHM / 1e3:g} kohm reference resistor across the probes")
    print(f"   (a resistive load event in the simulator); {cal['wall_s']:.1f} s wall; the reference for "
          "the current is the electrode sense (AIN2 - AIN3 through the two 16:1 dividers): V / R_ref")
    print(f"   {'quantity':<34} {'nominal':>10} {'calibrated':>10} {'as built':>10} {'cal/built-1 %':>13}")
    rows = [
        ("DAC line: uA per (12-bit) code", nominal, r["dac_ua_per_code"], built),
        ("fine channel ratio (1:16 network)", fe["dac"]["fine_ratio"], r["fine_ratio"],
         fe["dac"]["fine_ratio"] * (1 + err["fine_ratio"])),
        ("shunt ADC gain (x nominal reading)", 1.0, r["adc_gain"], 1 / (1 + err["shunt"])),
    ]
    for name, nom, got, truth in rows:
        print(f"   {name:<34} {nom:>10.5f} {got:>10.5f} {truth:>10.5f} {100 * (got / truth - 1):>+13.2f}")
    print(f"   DAC offset {r['dac_offset_ua']:+.2f} uA, ADC offset {r['adc_offset_ua']:+.2f} uA; linearity "
          f"at a third point: DAC {r['dac_residual_ua']:+.3f} uA, ADC {r['adc_residual_ua']:+.3f} uA")
    sc = cal["self_check"]
    print(f"   boot self-check: ok={sc['ok']}, ADC zero {sc['adc_zero_uv'][0]:.0f} / {sc['adc_zero_uv'][1]:.0f} uV "
          f"(shunt / load; limit 500), DAC zero {sc['dac_zero_ua']:.2f} uA (limit 5)")
    mean_div = (err["divider_a"] + err["divider_b"]) / 2
    print(f"   residual: the sense dividers are built {100 * err['divider_a']:+.2f} % (A) and "
          f"{100 * err['divider_b']:+.2f} % (B) off nominal (0.1 % parts); the reference is their mean, "
          f"{100 * mean_div:+.3f} %, and the calibrated current follows it")
    print("\n   delivered-current error, % of setpoint, before -> after calibration (steady program, "
          "resistive load, mean over 6..9 s)")
    print("   before: uncalibrated (nominal parts), which runs at 50 % of the ceiling: setpoints above "
          "200 uA are capped (shown as 'cap')")
    print(f"   {'setpoint uA':>11} " + " ".join(f"{f'{r_ / 1e3:g} kOhm':>17}" for r_ in loads))
    for sp in setpoints:
        cells = []
        for r_ in loads:
            vals = []
            for name in ("before", "steady"):
                p = window(res[(name, sp, r_)]["phases"], 6.0, 9.0)
                p = p[p["i_cmd_ua"] > min(STIM_MIN_UA, 0.6 * sp)]
                e = 100 * (amplitude(p) - sp) / sp
                vals.append("cap" if (name == "before" and sp > 200) else f"{e:+.2f}")
            cells.append(f"{vals[0]:>7} -> {vals[1]:>7}")
        print(f"   {sp:>11g} " + " ".join(f"{c:>17}" for c in cells))


# ---- main ------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="reduced run (fewer loads, cycles, faults)")
    ap.add_argument("--seed", type=int, default=20240611, help="seed for every random choice")
    ap.add_argument("--workers", type=int, default=2, help="parallel sessions (default 2)")
    ap.add_argument("--cycles", type=int, default=None, help="lift cycles (default 1000, quick 100)")
    args = ap.parse_args()

    if args.quick:
        setpoints, loads = (20, 100, 400), (1_000, 10_000, 40_000)
        ov_setpoints, n_faults, charge_s = (200,), 3, 20.0
        n_cycles = args.cycles or 100
        n_sessions = 4
    else:
        setpoints, loads = (20, 50, 100, 200, 400), (1_000, 5_000, 10_000, 20_000, 40_000)
        ov_setpoints, n_faults, charge_s = (50, 100, 200, 400), 20, 60.0
        n_cycles = args.cycles or 1000
        n_sessions = 20
    n_sessions = max(1, min(n_sessions, n_cycles))
    per_session = math.ceil(n_cycles / n_sessions)
    programs = ("steady", "tone", "fine", "pulse3", "lift")
    seed = args.seed
    pending = plan_cycles(seed, n_cycles)

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="engine-bench-cal-") as tmp:
        cal = calibrate(tmp, R_REF_OHM)
    if not (cal["result"] or {}).get("ok"):
        print(cal["console"])
        print("!! the device's calibration failed")
        return 1
    cal["wall_s"] = time.perf_counter() - t0

    def calibrated(jobs):
        for j in jobs:
            j["calib"] = cal["file"]
        return jobs

    jobs = (calibrated(jobs_cycles(pending, per_session, seed, 0) + jobs_charge(programs, charge_s, seed)
                       + jobs_steady(setpoints, loads, seed) + jobs_overshoot(ov_setpoints, seed)
                       + jobs_faults(n_faults, seed))
            + jobs_steady(setpoints, loads, seed, name="before"))
    res = {}
    cycle_runs = []
    rounds = 0
    with ProcessPoolExecutor(max_workers=max(1, args.workers)) as ex:
        while jobs:
            for r in ex.map(_session, jobs):  # longest first: the cycle and charge sessions
                res[r["key"]] = r
                if r["key"][0] == "cycles":
                    cycle_runs.append(r)
            # Cycles after a latched fault exercised nothing: run them again in fresh sessions.
            left = []
            for r in cycle_runs[-len([j for j in jobs if j["key"][0] == "cycles"]):]:
                done = len(analyse_cycles(r, 200)[0])
                left += r["job"]["params"][done:]
            rounds += 1
            jobs = calibrated(jobs_cycles(left, per_session, seed, rounds)) if left and rounds < 10 else []
    wall = time.perf_counter() - t0
    unfinished = [r["key"] for r in res.values() if not r["finished"]]

    print(f"engine limits on the virtual board ({'quick' if args.quick else 'full'} run, seed {seed}); "
          f"{platform.machine()} Python {platform.python_version()}, {os.cpu_count()} cores, "
          f"{args.workers} workers")
    print("all figures from the simulator's trace (trace/phases.bin); noise and the board's "
          "gain/offset errors on (boards/virtual/sim.json)")
    ok_steady, ok_comp = report_steady(res, setpoints, loads)
    ok_over = report_overshoot(res, ov_setpoints)
    ok_cyc_over, ok_open, resumed, cyc_faults, n_ex = report_cycles(cycle_runs, n_cycles, rounds, seed)
    ok_fault = report_faults(res, n_faults)
    ok_charge = report_charge(res, programs)
    report_calibration(cal, res, setpoints, loads)

    sim_s = sum(r["job"]["stop_s"] for r in res.values())
    print(f"\n{len(res)} sessions, {sim_s:.0f} simulated s, wall {wall:.1f} s")
    if unfinished:
        print(f"!! sessions that did not reach their stop event: {unfinished}")
    verdicts = [
        ("steady-state error <= max(1 %, 1 uA) (calibrated board, loads within compliance)", ok_steady),
        ("beyond compliance: reports compliance, does not claim the setpoint", ok_comp),
        ("overshoot <= 105 % (start, intensity change, re-contact)", ok_over),
        ("lift cycles: no phase above 105 % of the level", ok_cyc_over),
        ("lift cycles: drive into the open circuit <= 10 ms per lift", ok_open),
        ("lift cycles: no latched fault (a lift is not a fault)", not cyc_faults),
        ("short / DAC stuck: output off within 5 ms, fault reported", ok_fault),
        ("net charge <= 1 % of one phase per minute (every program)", ok_charge),
    ]
    print()
    for name, ok in verdicts:
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    print(f"info  lift cycles: stimulation resumed after {100 * resumed:.1f} % of the {n_ex} cycles "
          f"(one that ends in a latched fault counts as not resumed)")
    return 0 if all(ok for _, ok in verdicts) and not unfinished else 1


if __name__ == "__main__":
    sys.exit(main())

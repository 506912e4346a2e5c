"""The hot path allocates nothing: the regulator step, the supervisor checks, the whole
steady-state engine tick, and the watchdog feeder's timer callback, run on the unix port
under micropython.heap_lock(). The simulated hardware's own arithmetic does not count
(it releases the lock); the firmware's allocation raises MemoryError."""

import pytest
from conftest import ROOT

SETUP = f"""
import sys, micropython, gc
sys.path.insert(0, {str(ROOT / 'firmware')!r})
from msfw import board as boardmod
from msfw.hw import Hardware
from msfw import engine as E
b = boardmod.load({str(ROOT / 'boards/virtual/board.json')!r}, {str(ROOT / 'boards/virtual/pins.csv')!r})
hw = Hardware(b)
"""


def run_engine(mp, program, ms):
    r = mp(SETUP + f"""
eng = E.Engine(hw, {{"program": {program!r}, "setpoint_ua": 200, "duration_s": 600, "cue_s": 1}})
now = hw.ticks_ms()
eng.start(now)
while eng.state != E.S_STIM:
    eng.tick(hw.ticks_us(), hw.ticks_ms()); hw.sleep_ms(1)
eng.drain()
# Loops run inside functions: a module-level loop would store globals (a dict insert).
# Paced as the app paces its loop (engine.wait_us).
def hot():
    samples = 0
    t_end = hw.ticks_add(hw.ticks_ms(), {ms})
    while hw.ticks_diff(t_end, hw.ticks_ms()) > 0:
        eng.tick(hw.ticks_us(), hw.ticks_ms())
        if eng.sampler.fresh:
            samples += 1
        hw.sleep_us(eng.wait_us(hw.ticks_us()))
    return samples
samples = 0  # assigned under the lock: must exist already (a new global would allocate)
gc.collect()
micropython.heap_lock()
try:
    samples = hot()
    micropython.heap_unlock()
    print("ok", samples, eng.state, eng._ev_n)
except MemoryError as e:
    micropython.heap_unlock()
    print("ALLOCATED")
    sys.print_exception(e)
""")
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_steady_state_tick_allocates_nothing(mp):
    out = run_engine(mp, "steady", 4000)
    assert out.startswith("ok"), out
    _, samples, state, events = out.split()
    # It really worked under the lock: samples were taken, the state held, and the
    # relocation cues (every second here) were queued without allocating.
    assert int(samples) > 400 and state == "2" and int(events) >= 3


def test_dense_program_tick_allocates_nothing(mp):
    out = run_engine(mp, "fine", 3000)
    assert out.startswith("ok"), out
    assert int(out.split()[1]) > 1000


def test_regulator_and_supervisor_allocate_nothing(mp):
    r = mp(SETUP + """
from msfw.regulator import Regulator
from msfw.supervisor import Supervisor
reg = Regulator(b); sup = Supervisor(b)
reg.set_target(6400)
def hot():
    acc = 0
    for i in range(2000):
        acc += reg.dac_code()
        reg.sample(6400 + (i & 15))
        if i % 16 == 0:
            reg.learn(8)
        sup.check_current(6400 + (i & 7), 1 if i & 1 else -1, 6400)
        sup.check_load(4000 + (i & 31))
        if i % 50 == 0:
            sup.period_end(); sup.balance_window()
    return acc
acc = 0
micropython.heap_lock()
try:
    acc = hot()
    micropython.heap_unlock()
    print("ok", acc > 0, sup.fault)
except MemoryError as e:
    micropython.heap_unlock()
    print("ALLOCATED")
    sys.print_exception(e)
""")
    assert r.stdout.split() == ["ok", "True", "0"], r.stdout + r.stderr


def test_watchdog_feeder_callback_allocates_nothing(mp):
    r = mp(SETUP + """
import safe
safe.arm_watchdog()
def hot():
    for i in range(100):
        safe._feed_if_disarmed(None)
micropython.heap_lock()
try:
    hot()
    micropython.heap_unlock()
    print("ok")
except MemoryError:
    micropython.heap_unlock()
    print("ALLOCATED")
""")
    assert r.stdout.strip() == "ok", r.stdout + r.stderr


def test_the_lock_catches_firmware_allocation(mp):
    # The same harness fails when the engine allocates: the tests above can fail.
    r = mp(SETUP + """
eng = E.Engine(hw, {"program": "steady", "setpoint_ua": 200, "duration_s": 600, "cue_s": 5})
orig = eng.sup.check_current
eng.sup.check_current = lambda *a: [orig(*a)][0]
eng.start(hw.ticks_ms())
def hot():
    for i in range(100):
        eng.tick(hw.ticks_us(), hw.ticks_ms()); hw.sleep_ms(1)
micropython.heap_lock()
try:
    hot()
    micropython.heap_unlock()
    print("no-allocation")
except MemoryError:
    micropython.heap_unlock()
    print("ALLOCATED")
""")
    assert r.stdout.strip() == "ALLOCATED", r.stdout + r.stderr


@pytest.mark.slow
# 96 KB, what issue 3 asks. A whole 20-minute session: its log's RAM queue is only full at
# the end (about 3.2 KB of records for this one), so a shorter one would not show a queue
# too small. `python benchmarks/hot_path.py --repeat 4` runs it in four heap layouts and
# at 100-112 KB (benchmarks/RESULTS.md).
@pytest.mark.parametrize("heap_kb", [96])
def test_firmware_runs_a_20_minute_session_in_a_small_heap(tmp_path, heap_kb):
    """Issue 3: the whole firmware boots and runs a 20-minute session in a small heap
    (the issue asks 96 KB), and its log takes the whole session (the RAM queue a session
    needs is taken at boot, while the heap still has pieces that big, and kept)."""
    import json

    from microstim.vboard import run_headless

    run = tmp_path / "run"
    scenario = [{"at_s": 1.0, "event": "press"}, {"at_s": 8.0, "event": "lift"},
                {"at_s": 8.5, "event": "contact"}, {"at_s": 1215.0, "event": "stop"}]
    trace, console, _ = run_headless(run, scenario, fw_heap=heap_kb * 1024,
                                     device_config={"duration_s": 1200})
    assert "MemoryError" not in console
    assert "log_error" not in console  # the log opened
    boot = json.loads([ln for ln in console.splitlines() if '"ev": "boot"' in ln][0])
    end = json.loads([ln for ln in console.splitlines() if '"ev": "session_end"' in ln][0])
    assert end["reason"] == "auto_off"
    assert end["t_ms"] > 1_190_000
    # Reported by the firmware itself (gc.mem_free() after a collection); on this 64-bit
    # port objects are twice an ESP32's.
    assert 2 * 1024 < boot["mem_free"] < heap_kb * 1024
    assert end["mem_free"] > 2 * 1024
    assert len(trace.phases) > 20000  # 10 Hz, biphasic, for 20 minutes
    from microstim.logs import data
    from microstim.vboard.board import flash_log_segments

    log = data.load(flash_log_segments(run))
    assert len(log.sessions) == 1
    s = log.sessions[0]
    assert s["end_reason"] == "auto_off"
    summaries = log.session_summaries(s["seq"])
    assert len(summaries) >= 1195  # a summary for every second of the session
    assert "log_overflow" not in set(log.events["kind"])  # nothing dropped for want of RAM

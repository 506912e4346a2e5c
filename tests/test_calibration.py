"""Calibration (issue 6 point 3) on the virtual board: the boot self-check, the two-point
calibration against a reference resistor across the probes (the device's own routine,
firmware/msfw/calib.py), its storage with a checksum, the reduced ceiling of an
uncalibrated board, and the two-channel DAC it calibrates. What the board really is comes
from the simulator (boards/virtual/sim.json errors), never from the firmware."""

import json
import tempfile

import numpy as np
import pytest
from conftest import ROOT
from microstim.vboard.calibrated import calibrate, resistor, run_headless_calibrated

SIM = json.loads((ROOT / "boards/virtual/sim.json").read_text())
BOARD = json.loads((ROOT / "boards/virtual/board.json").read_text())

SETUP = f"""
import sys, json
sys.path.insert(0, {str(ROOT / 'firmware')!r})
from msfw import board as boardmod
from msfw.hw import Hardware
from msfw import calib
from msfw import engine as E
b = boardmod.load({str(ROOT / 'boards/virtual/board.json')!r}, {str(ROOT / 'boards/virtual/pins.csv')!r})
hw = Hardware(b)
"""


@pytest.fixture(scope="module")
def calibrated():
    with tempfile.TemporaryDirectory() as d:
        c = calibrate(d, 10_000.0)
        c["trace"] = __import__("microstim.vboard", fromlist=["Trace"]).Trace.load(d)
    assert c["result"] and c["result"]["ok"], c["console"]
    return c


def test_calibration_finds_the_board_as_built(calibrated):
    r = calibrated["result"]
    err = SIM["errors"]
    fe = BOARD["frontend"]
    # The real DAC-to-current slope of the simulated front end (per wide code).
    true_slope = (fe["source_gain_ua_per_v"] * (1 + err["source_gain"]) * (1 + err["dac_gain"])
                  * fe["dac_vref_v"] / 255 / 16)
    nominal = fe["source_gain_ua_per_v"] * fe["dac_vref_v"] / 255 / 16
    assert r["dac_ua_per_code"] == pytest.approx(true_slope, rel=0.01)
    assert abs(r["dac_ua_per_code"] / nominal - 1) > 0.03  # it moved: the board is 3.9 % off
    # The shunt reads 1 % high and the ADC has an offset: the ADC gain corrects the first.
    assert r["adc_gain"] == pytest.approx(1 / (1 + err["shunt"]), rel=0.01)
    # The fine channel's resistor network is 1.5 % off its nominal 1/16.
    assert r["fine_ratio"] == pytest.approx(0.0625 * (1 + err["fine_ratio"]), rel=0.003)
    assert abs(r["dac_residual_ua"]) < 0.5 and abs(r["adc_residual_ua"]) < 0.5
    # Boot self-check: the ADS1115's 0.2 mV offset is within tolerance, the DAC zero is zero.
    sc = calibrated["self_check"]
    assert sc["ok"] and sc["adc_zero_uv"][0] == pytest.approx(err["ain_offset_v"] * 1e6, abs=30)
    assert abs(sc["dac_zero_ua"]) < 1.0


def test_calibration_drives_safely(calibrated):
    # Never above the uncalibrated ceiling (plus the source's own gain error), and charge
    # balanced: it alternates polarity with equal phases.
    p = calibrated["trace"].phases
    assert len(p) > 100
    ceiling = BOARD["frontend"]["ceiling_ua"] * 0.5
    assert p["i_peak_ua"].max() <= ceiling * 1.1
    q = p["i_mean_ua"].astype(float) * p["dur_us"]
    assert abs(q.sum()) <= 0.01 * np.abs(q).max()


def test_stored_with_a_checksum_and_refused_when_corrupt(mp):
    r = mp(SETUP + """
res = calib.run(hw, 10000, save_to="calib.json", pairs=4)
print(res["ok"], calib.check(b, "calib.json")[1])
s = open("calib.json").read()
i = s.index("dac_ua_per_code") + 22
bad = s[:i] + ("1" if s[i] != "1" else "2") + s[i + 1:]
open("calib.json", "w").write(bad)
print(calib.check(b, "calib.json")[1])
open("calib.json", "w").write(s[:40])
print(calib.check(b, "calib.json")[1])
print(calib.check(b, "nothing.json")[1])
b.name = "another"
open("calib.json", "w").write(s)
print(calib.check(b, "calib.json")[1])
""", scenario=[resistor(10_000)])
    assert r.stdout.split() == ["True", "ok", "corrupt", "corrupt", "missing", "other_board"], r.stdout + r.stderr


def test_uncalibrated_board_runs_at_half_its_ceiling_and_says_so(mp):
    r = mp(SETUP + """
eng = E.Engine(hw, {"program": "steady", "setpoint_ua": 400, "duration_s": 60, "cue_s": 5}, cal=None)
print(eng.calibrated, eng.ceiling_ua, eng.setpoint_cu / 32, eng.setpoint_capped, eng.sup.ceiling_cu / 32)
res = calib.run(hw, 10000, save_to=None, pairs=4)
eng = E.Engine(hw, {"program": "steady", "setpoint_ua": 400, "duration_s": 60, "cue_s": 5}, cal=res)
print(eng.calibrated, eng.ceiling_ua, eng.setpoint_cu / 32, eng.setpoint_capped, eng.sup.ceiling_cu / 32)
""", scenario=[resistor(10_000)])
    assert r.stdout.split() == ["False", "200.0", "200.0", "True", "200.0",
                                "True", "400.0", "400.0", "False", "400.0"], r.stdout + r.stderr


def test_uncalibrated_session_delivers_at_most_the_reduced_ceiling(tmp_path):
    tr, console, _ = run_headless_calibrated(
        tmp_path, [resistor(10_000), {"at_s": 1.0, "event": "press"}, {"at_s": 5.0, "event": "stop"}], None,
        device_config={"setpoint_ua": 400, "program": "steady", "duration_s": 60})
    p = tr.phases
    assert len(p) > 20 and p["i_peak_ua"].max() <= 200 * 1.05, console


@pytest.mark.parametrize("scenario, words", [
    ([{"at_s": 0.0, "event": "lift"}], "no current flows"),
    ([resistor(20_000)], "the load is"),
    ([resistor(10_000), {"at_s": 0.0, "event": "dac_stuck"}], "overcurrent"),
])
def test_calibration_refuses_a_wrong_setup_and_leaves_the_output_off(mp, scenario, words):
    r = mp(SETUP + """
res = calib.run(hw, 10000, save_to="calib.json", pairs=4)
print(json.dumps(res))
import os
print("stored" if "calib.json" in os.listdir() else "nothing")
print(W.output_level(W.gpio_en), W.dac[W.gpio_dac], W.dac[W.gpio_dac_fine])
""", scenario=scenario)
    lines = r.stdout.splitlines()
    res = json.loads(lines[0])
    assert not res["ok"] and words in res["error"], r.stdout + r.stderr
    assert lines[1:] == ["nothing", "0 0 0"]


def test_self_check_reports_an_adc_offset_and_a_dac_that_is_not_at_zero(mp):
    code = SETUP + """
res = calib.self_check(hw)
print(json.dumps(res))
eng = E.Engine(hw, {"program": "steady", "setpoint_ua": 200, "duration_s": 60, "cue_s": 5}, cal=None)
eng.apply_self_check(res)
print(eng.state, eng.start(hw.ticks_ms()), eng.state)
"""
    good = mp(code, scenario=[resistor(10_000)])
    res = json.loads(good.stdout.splitlines()[0])
    assert res["ok"] and res["faults"] == [], good.stdout + good.stderr
    assert good.stdout.splitlines()[1] == "0 True 1"
    # An ADC whose zero is 2 mV off, and a DAC stuck at full scale.
    bad = mp(code, scenario=[resistor(10_000)], sim={"errors": {"ain_offset_v": 0.002}})
    res = json.loads(bad.stdout.splitlines()[0])
    assert not res["ok"] and "adc_zero_shunt" in res["faults"] and res["adc_zero_uv"][0] > 1900
    assert bad.stdout.splitlines()[1] == "5 False 5"  # fault, and a start is refused
    stuck = mp(code, scenario=[resistor(10_000), {"at_s": 0.0, "event": "dac_stuck"}])
    res = json.loads(stuck.stdout.splitlines()[0])
    assert not res["ok"] and res["faults"] == ["dac_zero"], stuck.stdout + stuck.stderr


def test_dual_dac_steps_are_fine_and_never_pass_through_a_higher_level(mp):
    # Every wide code from 1000 to 1100 and back, both directions: the source current
    # (the simulator's) rises by about 0.15 uA a code, monotonic, and no intermediate state
    # between the two channel writes exceeds both the old and the new level.
    r = mp(SETUP + """
levels = []
orig = W.set_dac
def spy(gpio, code):
    orig(gpio, code)
    levels.append(W.source_ua())
W.set_dac = spy
seq = list(range(1000, 1101)) + list(range(1100, 999, -1))
ends = []
worst = 0.0
for k, code in enumerate(seq):
    start = len(levels)
    before = W.source_ua()
    hw.dac.write(code)
    after = W.source_ua()
    ends.append(after)
    for v in levels[start:]:
        worst = max(worst, v - max(before, after))
steps = [ends[i + 1] - ends[i] for i in range(100)]
print(min(steps), max(steps), worst)
""")
    lo, hi, worst = map(float, r.stdout.split())
    assert 0.1 < lo and hi < 0.2, r.stdout + r.stderr  # 2.47 uA / 16, with the board's errors
    assert worst <= 1e-9


# ---- plausibility: a calibration that did not measure the stated resistor is refused ----

SKIN = {"event": "load", "r_series_ohm": SIM["load"]["r_series_ohm"],
        "r_parallel_ohm": SIM["load"]["r_parallel_ohm"], "c_parallel_f": SIM["load"]["c_parallel_f"]}

# Calibrate right (10 kohm across the probes), keep the file's bytes; then put another load
# there and calibrate again into the same file: it must be refused and leave the file as it was.
RECALIBRATE = SETUP + """
import os
good = calib.run(hw, 10000, save_to="calib.json", pairs=4)
before = open("calib.json", "rb").read()
k = hw.dac.fine_k_q8 = hw.dac.fine_k_q8 - 3  # not what this board measures: a run that sets it shows
W._apply({load!r})
res = calib.run(hw, {r_ref!r}, save_to="calib.json", pairs=4)
print(json.dumps(res))
print(good["ok"], open("calib.json", "rb").read() == before, sorted(os.listdir()).count("calib.json.tmp"),
      calib.check(b, "calib.json")[1], hw.dac.fine_k_q8 == k)
print(W.output_level(W.gpio_en), W.dac[W.gpio_dac], W.dac[W.gpio_dac_fine])
"""


@pytest.mark.parametrize("load, r_ref, words", [
    # The default skin load (2 k + 30 k || 100 nF) looks like ~3.4 kohm across the probes
    # in the calibration's short alternating phases (its capacitance still holds the other
    # phase's charge when a conversion starts).
    (SKIN, 10_000, "not the 10000 ohm reference"),
    # Even with a stated value that matches what the skin looks like, it is not a resistor.
    (SKIN, 3_360, "not a resistor"),
    (resistor(12_000), 10_000, "not the 10000 ohm reference"),  # 20 % off, both ways
    (resistor(8_000), 10_000, "not the 10000 ohm reference"),
    # 2.5 % off: within the ratio check, but with the board's own +4.4 % the source's gain
    # is beyond what its parts allow (refused after the fine DAC was measured: restored)
    (resistor(10_250), 10_000, "the source gives"),
])
def test_an_implausible_calibration_is_refused_and_the_old_one_kept(mp, load, r_ref, words):
    r = mp(RECALIBRATE.format(load=load, r_ref=float(r_ref)), scenario=[resistor(10_000)])
    lines = r.stdout.splitlines()
    assert len(lines) == 3, r.stdout + r.stderr
    res = json.loads(lines[0])
    assert not res["ok"] and words in res["error"], res
    assert "fit the" in res["error"] and "previous calibration is kept" in res["error"]  # what to do
    # The earlier calibration was good, and its file is byte-identical and still valid;
    # the fine DAC's ratio is the one it set.
    assert lines[1].split() == ["True", "True", "0", "ok", "True"]
    assert lines[2] == "0 0 0"  # output off


def test_the_issue_3_calibration_is_refused_by_the_new_limits(mp):
    # What issue 3 accepted: the default skin load calibrated as a 10 kohm reference gave an
    # ADC gain of 0.86-0.93. The stored-calibration check refuses such a result too.
    r = mp(SETUP + """
cal = {"version": 1, "board": b.name, "r_ref_ohm": 10000.0, "dac_ua_per_code": 0.13155,
       "dac_offset_ua": 0.36, "adc_gain": 0.9300, "adc_offset_ua": 0.18}
calib.save(cal, "c.json")
print(calib.check(b, "c.json")[1])
cal["adc_gain"] = 0.9952; cal["dac_ua_per_code"] = 0.15203; calib.save(cal, "c.json")
print(calib.check(b, "c.json")[1])
""")
    assert r.stdout.split() == ["out_of_range", "ok"], r.stdout + r.stderr


def _steady_error_pct(trace, setpoint):
    p = trace.window(6.0, 9.0)
    p = p[p["i_cmd_ua"] > min(20.0, 0.6 * setpoint)]
    d = p["dur_us"].astype(float)
    amp = float((np.abs(p["i_mean_ua"].astype(float)) * d).sum() / d.sum())
    return amp, (amp - setpoint) / setpoint * 100


def test_the_right_resistor_is_accepted_and_meets_the_steady_state_limit(calibrated, tmp_path):
    # The sim's gain/offset errors are on (boards/virtual/sim.json); the issue-3 limit is
    # |error| <= max(1 % of setpoint, 1 uA) on a resistive load within compliance.
    r = calibrated["result"]
    assert r["ok"] and r["load_rise"] < 0.01
    setpoint = 100.0
    scenario = [resistor(10_000), {"at_s": 1.0, "event": "press"}, {"at_s": 9.0, "event": "stop"}]
    cfg = {"program": "steady", "setpoint_ua": setpoint, "duration_s": 60}
    errors = {}
    for name, cal in (("calibrated", calibrated["file"]), ("uncalibrated", None)):
        tr, console, _ = run_headless_calibrated(tmp_path / name, scenario, cal, device_config=cfg)
        amp, errors[name] = _steady_error_pct(tr, setpoint)
        assert abs(amp - setpoint) > 0 and len(tr.window(6.0, 9.0)) > 20, console[-2000:]
    limit = max(1.0, 1.0 / setpoint * 100)
    assert abs(errors["calibrated"]) <= limit, errors
    # and the board needed it: uncalibrated, its errors put it outside the limit
    assert abs(errors["uncalibrated"]) > limit, errors

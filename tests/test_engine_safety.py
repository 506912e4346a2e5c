"""The stimulation engine against SAFETY.md, on the virtual board. Every figure comes
from the simulator's analog model (what flowed), never from the firmware's readings."""

import functools
import tempfile

import numpy as np
import pytest
from microstim.vboard.calibrated import calibrate, run_headless_calibrated
from microstim.vboard.trace import F_OPEN

SETPOINT = 200.0
PROBE_UA = 10.0


@functools.cache
def calibration(board):
    """The board's /calib.json, made once by the device's own routine (10 kohm reference)."""
    with tempfile.TemporaryDirectory() as d:
        c = calibrate(d, 10_000.0, board=board)
    assert c["result"] and c["result"]["ok"], c["console"]
    return c["file"]


def run(tmp_path, events, *, seconds=8.0, config=None, board="virtual", sim=None):
    """A session on a calibrated board (the virtual one; the others run uncalibrated)."""
    cfg = {"setpoint_ua": SETPOINT, "duration_s": 600, "program": "steady"}
    cfg.update(config or {})
    scenario = [{"at_s": 1.0, "event": "press"}, *events, {"at_s": seconds, "event": "stop"}]
    cal = calibration(board) if board == "virtual" else None
    trace, console, _ = run_headless_calibrated(tmp_path, scenario, cal, device_config=cfg, board=board,
                                                sim=sim)
    return trace, console


def stim(p):
    """Phases above the probe level: the session's own output."""
    return p[p["i_cmd_ua"] > 2 * PROBE_UA]


def on_time_after(p, t_s, until_s=1e9):
    q = stim(p[(p["t_us"] >= t_s * 1e6) & (p["t_us"] < until_s * 1e6)])
    return q["dur_us"].sum() / 1e3  # ms


def test_soft_start_takes_at_least_a_second(tmp_path):
    tr, _ = run(tmp_path, [], seconds=5.0)
    p = stim(tr.phases)
    t0 = p["t_us"][0] / 1e6
    early = p[p["t_us"] < (t0 + 0.9) * 1e6]
    assert np.abs(early["i_peak_ua"]).max() < 0.7 * SETPOINT
    assert np.abs(tr.window(t0 + 2.0, 5.0)["i_peak_ua"]).min() > 0.9 * SETPOINT


def test_no_overshoot_at_start(tmp_path):
    tr, _ = run(tmp_path, [], seconds=6.0)
    assert tr.phases["i_peak_ua"].max() <= 1.05 * SETPOINT


def test_lift_off_stops_the_output_and_recontact_soft_starts(tmp_path):
    tr, console = run(tmp_path, [{"at_s": 4.03, "event": "lift"},
                                 {"at_s": 5.0, "event": "contact", "area": 0.3}], seconds=9.0)
    p = tr.phases
    # Drive into the open circuit after lift-off: at most 10 ms of it.
    open_ms = p[(p["t_us"] >= 4.03e6) & ((p["flags"] & F_OPEN) != 0) & (p["i_cmd_ua"] > 2 * PROBE_UA)]
    assert open_ms["dur_us"].sum() <= 10_000
    assert '"ev": "contact_lost"' in console and '"ev": "contact_ok"' in console
    # From the lift until the contact has been stable for 0.5 s: nothing but probe pulses,
    # apart from the (at most 10 ms of) drive before the lift was detected.
    assert on_time_after(p, 4.03, 5.5) <= 10.0
    back = stim(p[p["t_us"] >= 5.0e6])
    t_back = back["t_us"][0] / 1e6
    assert t_back >= 5.5
    first = back[back["t_us"] < (t_back + 0.8) * 1e6]
    assert np.abs(first["i_peak_ua"]).max() < 0.7 * SETPOINT  # a fresh soft start
    assert p["i_peak_ua"].max() <= 1.05 * SETPOINT


def test_short_circuit_latches_a_fault_within_5ms(tmp_path):
    tr, console = run(tmp_path, [{"at_s": 4.02, "event": "short"}], seconds=7.0)
    assert on_time_after(tr.phases, 4.02) <= 5.0
    assert '"fault": "short_circuit"' in console
    assert '"state": "fault"' in console


def test_dac_stuck_high_trips_overcurrent_within_5ms(tmp_path):
    tr, console = run(tmp_path, [{"at_s": 4.02, "event": "dac_stuck"}], seconds=7.0)
    p = tr.phases
    stuck = p[p["t_us"] >= 4.02e6]
    assert stuck["dur_us"].sum() <= 5_000  # the enable line cuts the stuck source off
    assert '"fault": "overcurrent"' in console


def test_fault_needs_a_deliberate_clear(tmp_path):
    events = [{"at_s": 3.0, "event": "short"}, {"at_s": 3.5, "event": "contact"},
              {"at_s": 4.0, "event": "press"},  # a short press does not restart
              {"at_s": 5.0, "event": "press", "hold_s": 1.2},  # a long press clears
              {"at_s": 7.0, "event": "press"}]  # and now a session starts again
    tr, console = run(tmp_path, events, seconds=10.0)
    p = stim(tr.phases)
    assert len(p[(p["t_us"] > 3.1e6) & (p["t_us"] < 7.0e6)]) == 0
    assert len(p[p["t_us"] > 7.5e6]) > 0
    assert '"ev": "cleared"' in console


def test_intensity_wraps_to_the_minimum(tmp_path):
    # Starts at the top level (5/5); the next press wraps to 1/5, then 2/5 with a soft start.
    tr, _ = run(tmp_path, [{"at_s": 4.0, "event": "press"}, {"at_s": 6.0, "event": "press"}],
                seconds=9.5)
    low = np.abs(tr.window(4.3, 6.0)["i_mean_ua"]).mean()
    two = np.abs(tr.window(8.0, 9.5)["i_mean_ua"]).mean()
    assert 0.17 * SETPOINT < low < 0.23 * SETPOINT
    assert 0.37 * SETPOINT < two < 0.43 * SETPOINT
    ramp = tr.window(6.16, 6.9)
    assert np.abs(ramp["i_peak_ua"]).max() < 0.37 * SETPOINT  # increase: soft start again
    assert tr.phases["i_peak_ua"].max() <= 1.05 * SETPOINT


def test_config_cannot_raise_the_ceiling(tmp_path):
    tr, _ = run(tmp_path, [], seconds=5.0, config={"setpoint_ua": 5000})
    assert tr.phases["i_peak_ua"].max() <= 400 * 1.05  # boards/virtual ceiling_ua


def test_usb_power_inhibits_a_non_isolated_board(tmp_path):
    tr, console = run(tmp_path, [], seconds=3.0, board="esp32-devkitc", sim={"usb_present": True})
    assert len(tr.phases) == 0
    assert '"reason": "usb_power"' in console


def test_usb_plugged_in_mid_session_stops_it(tmp_path):
    tr, console = run(tmp_path, [{"at_s": 3.0, "event": "usb", "present": True}], seconds=5.0,
                      board="esp32-devkitc", sim={"usb_present": False})
    assert len(stim(tr.phases)) > 0
    assert on_time_after(tr.phases, 3.0) <= 2.0
    assert '"fault": "usb_power"' in console


@pytest.mark.parametrize("program", ["lift", "tone", "fine", "pulse3"])
def test_every_program_delivers_charge_balanced_output(tmp_path, program):
    tr, console = run(tmp_path, [], seconds=9.0, config={"program": program})
    # Whole macro periods (a + phase after a - phase starts one), so no train is cut.
    q, q_phase, span_s = macro_net(tr.phases, 3.5, 9.0)
    assert span_s >= 2.0, console
    assert abs(q) <= 0.01 * q_phase, (q, q_phase)
    assert tr.phases["i_peak_ua"].max() <= 1.05 * SETPOINT


def test_impedance_jump_pauses_and_resumes_with_a_soft_start(tmp_path):
    # The probes stay on the skin but the contact shrinks to a quarter: the same current
    # over a quarter of the area. The output must stop at once and come back softly.
    tr, console = run(tmp_path, [{"at_s": 4.03, "event": "contact", "area": 0.25}], seconds=9.0)
    assert '"reason": "impedance_jump"' in console or '"reason": "compliance"' in console
    p = stim(tr.phases)
    after = p[p["t_us"] >= 4.03e6]
    # Full current over the shrunken contact for at most 10 ms (as for a lift-off)...
    assert on_time_after(tr.phases, 4.03, 4.5) <= 10.0
    first_back = after[after["t_us"] >= 4.2e6]
    # ...and the return is a fresh soft start.
    assert np.abs(first_back["i_peak_ua"][:3]).max() < 0.7 * SETPOINT
    assert tr.phases["i_peak_ua"].max() <= 1.05 * SETPOINT


def macro_net(p, t0_s, t1_s):
    """Net charge (uC) and mean |phase charge| over whole macro periods in [t0, t1): a
    period starts at a + phase that follows a - phase."""
    p = stim(p)
    p = p[(p["flags"] & F_OPEN) == 0]
    sign = np.sign(p["i_mean_ua"])
    starts = p["t_us"][np.r_[True, sign[:-1] < 0] & (sign > 0)]
    starts = starts[(starts >= t0_s * 1e6) & (starts <= t1_s * 1e6)]
    w = p[(p["t_us"] >= starts[0]) & (p["t_us"] < starts[-1])]
    q = w["i_mean_ua"].astype(float) * w["dur_us"] * 1e-6
    return float(q.sum()), float(np.abs(q).mean()), (starts[-1] - starts[0]) / 1e6


@pytest.mark.parametrize("program, seconds", [("fine", 20.0), ("lift", 30.0), ("steady", 12.0)])
def test_net_charge_within_1_percent_of_a_phase_per_minute(tmp_path, program, seconds):
    # From the start of the session: the soft start steps once per macro period, so its
    # pairs are balanced too. Limit: |net charge| per minute <= 1 % of one phase's charge.
    tr, console = run(tmp_path, [], seconds=1.0 + seconds, config={"program": program})
    net, q_phase, span_s = macro_net(tr.phases, 1.0, 1.0 + seconds)
    assert span_s > 0.6 * seconds, console
    assert abs(net) * 60.0 / span_s <= 0.01 * q_phase, (net, q_phase, span_s)


def test_soft_start_steps_in_whole_pairs(tmp_path):
    # Every +/- pair of the ramp carries one amplitude (the DAC moves only between pairs).
    tr, _ = run(tmp_path, [], seconds=3.0)
    p = stim(tr.phases)
    ramp = p[p["t_us"] < 2.6e6]
    assert len(ramp) >= 20 and ramp["i_mean_ua"][0] > 0
    pos, neg = ramp["i_mean_ua"][0::2], ramp["i_mean_ua"][1::2]
    n = min(len(pos), len(neg))
    assert np.all(pos[:n] > 0) and np.all(neg[:n] < 0)
    assert np.abs(pos[:n] + neg[:n]).max() < 1e-3
    assert len(np.unique(np.round(pos[:n], 3))) >= 10  # and it does ramp, in steps

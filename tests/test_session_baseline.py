"""Sessions on the virtual board, end to end, with the delivered current taken from the
simulator's analog model."""

import numpy as np
import pytest
from microstim.demo import run_demo
from microstim.vboard import run_headless


@pytest.mark.slow
def test_session_stops_at_20_minutes_even_if_config_asks_for_more(tmp_path):
    # The config asks for an hour: the firmware refuses that config, naming the field, and
    # auto-off comes at 20 minutes at the latest. The session also crosses the ESP32's
    # ticks_us wrap (2**30 us = 17.9 min).
    scenario = [{"at_s": 1.0, "event": "press"}, {"at_s": 1210.0, "event": "stop"}]
    trace, console, _ = run_headless(tmp_path, scenario,
                                     device_config={"duration_s": 3600, "setpoint_ua": 100})
    assert "duration_s = 3600 exceeds the maximum of 1200 s" in console
    assert '"reason": "auto_off"' in console
    p = trace.phases
    p = p[p["t_us"] >= 1_000_000]  # the session (before it: the boot self-check's zero pair)
    first_s = p["t_us"][0] / 1e6
    last_end_s = (p["t_us"][-1] + p["dur_us"][-1]) / 1e6
    assert last_end_s - first_s <= 1200.1  # never past 20 minutes
    # Stimulation continued through the whole session: the output never rested longer than
    # one period (0.1 s) between phases. (Phases start-to-start would count the start's
    # DC-block recovery phase, which is longer than a program phase.)
    idle_s = (p["t_us"][1:] - (p["t_us"][:-1] + p["dur_us"][:-1])) / 1e6
    assert idle_s.max() < 0.1


def test_demo_delivers_the_setpoint(tmp_path):
    r = run_demo(setpoint_ua=150.0, seconds=10.0, run_dir=str(tmp_path))
    d = r["delivered"]
    assert abs(d["amplitude_ua"] - 150.0) < 0.03 * 150.0
    assert r["whole_session"]["peak_ua"] <= 1.05 * 150.0
    assert r["firmware"]["end_reason"] == "auto_off"



def test_virtual_time_is_deterministic(tmp_path):
    # Same firmware, same scenario, same seed: the same delivered current, to the byte.
    scenario = [{"at_s": 0.5, "event": "press"}, {"at_s": 2.0, "event": "lift"},
                {"at_s": 2.5, "event": "contact", "area": 0.5}, {"at_s": 4.0, "event": "stop"}]
    runs = [run_headless(tmp_path / f"r{i}", scenario)[0] for i in range(2)]
    assert len(runs[0].phases) > 20
    assert runs[0].phases.tobytes() == runs[1].phases.tobytes()


@pytest.mark.parametrize("program", ["steady", "fine", "lift"])
def test_a_session_to_auto_off_leaves_no_net_charge(tmp_path, program):
    # Every phase the output drove, from the press to auto-off: the recovery phase that
    # centres CBLOCK at the start moves charge into the skin by design, and the one that
    # drains it before auto-off must take it back. Limit: 1 % of one phase's charge per
    # minute of session (issue 3). Without the drain this was +2.07 uC in 30 s of steady.
    seconds = 20.0
    scenario = [{"at_s": 1.0, "event": "press"}, {"at_s": seconds + 3.0, "event": "stop"}]
    trace, console, _ = run_headless(tmp_path, scenario, device_config={
        "program": program, "setpoint_ua": 200, "duration_s": seconds})
    assert '"reason": "auto_off"' in console
    p = trace.phases
    p = p[p["t_us"] >= 1_000_000]  # before it: the boot self-check's zero pair
    q = p["i_mean_ua"].astype(float) * p["dur_us"] * 1e-6  # uC
    span_s = (p["t_us"][-1] + p["dur_us"][-1] - p["t_us"][0]) / 1e6
    assert span_s <= seconds + 0.01  # the drain ends by the duration, not after it
    q_phase = np.abs(q[np.abs(p["i_mean_ua"]) > 150]).mean()
    assert abs(q[0]) > 0.02 * q_phase  # the start's recovery phase did move charge
    assert abs(q.sum()) <= 0.01 * q_phase * span_s / 60.0

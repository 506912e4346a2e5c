"""Every scripted event of the virtual board is observable: in the analog model's trace
(what really flowed), at a pin, or on the I2C bus."""

import numpy as np
import pytest
from microstim.vboard.trace import F_COMPLIANCE, F_OPEN, Trace

# A 100 Hz biphasic pattern on EN/POL by RMT, DAC at code 150 (~340 uA nominal), then
# time runs to 6 s while the scenario acts on the load and the hardware.
DRIVE = """
from machine import Pin
en = Pin(27, Pin.OUT); pol = Pin(14, Pin.OUT)
rp = esp32.RMT(pin=pol, resolution_hz=1000000); rp.loop_count(-1)
re = esp32.RMT(pin=en, resolution_hz=1000000); re.loop_count(-1)
rp.write_pulses((2500, 4500, 3000), (1, 0, 1))  # POL edges mid-gap and mid-rest
re.write_pulses((1000, 1000, 1000, 1000, 6000), (0, 1, 0, 1, 0))
d = machine.DAC(Pin(25)); d.write(150)
time.sleep_ms({until_ms})
W.flush()
print("ok")
"""


def run(mp, tmp_path, scenario, until_ms=6000, sim=None):
    r = mp(DRIVE.format(until_ms=until_ms), scenario=scenario, sim=sim)
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout + r.stderr
    return Trace.load(tmp_path)


def between(trace, t0, t1):
    return trace.window(t0, t1)


def test_biphasic_drive_is_charge_balanced_in_the_trace(mp, tmp_path):
    tr = run(mp, tmp_path, [], until_ms=2000, sim={"noise": False})
    p = between(tr, 0.1, 1.9)
    pos = p[p["i_mean_ua"] > 0]
    neg = p[p["i_mean_ua"] < 0]
    assert len(pos) > 100 and len(neg) > 100
    q = (p["i_mean_ua"].astype(float) * p["dur_us"]).sum()
    assert abs(q) < 0.01 * abs((pos["i_mean_ua"].astype(float) * pos["dur_us"]).sum())


def test_lift_off_then_partial_recontact(mp, tmp_path):
    tr = run(mp, tmp_path, [{"at_s": 1.0, "event": "lift"}, {"at_s": 2.0, "event": "contact", "area": 0.25}])
    before, lifted, after = between(tr, 0.2, 1.0), between(tr, 1.01, 2.0), between(tr, 2.01, 3.0)
    assert not (before["flags"] & F_OPEN).any()
    assert (lifted["flags"] & F_OPEN).all() and np.all(lifted["i_mean_ua"] == 0)
    assert np.allclose(lifted["v_peak_v"], 30.0)  # the source sits at its compliance voltage
    assert not (after["flags"] & F_OPEN).any()
    # A quarter of the contact area: four times the impedance, so a higher voltage.
    assert after["v_peak_v"].max() > 2.5 * before["v_peak_v"].max()


def test_gel_drying_raises_the_load_voltage(mp, tmp_path):
    tr = run(mp, tmp_path, [{"at_s": 1.0, "event": "gel_drying", "factor": 2.0, "over_s": 4.0}])
    early, late = between(tr, 0.5, 1.0), between(tr, 5.0, 6.0)
    ratio = late["v_peak_v"].max() / early["v_peak_v"].max()
    assert 1.6 < ratio < 2.2


def test_short_circuit_collapses_the_voltage_not_the_current(mp, tmp_path):
    tr = run(mp, tmp_path, [{"at_s": 1.0, "event": "short"}])
    before, shorted = between(tr, 0.5, 1.0), between(tr, 1.01, 2.0)
    assert shorted["v_peak_v"].max() < 0.1 < before["v_peak_v"].min()
    assert np.allclose(np.abs(shorted["i_mean_ua"]).mean(), np.abs(before["i_mean_ua"]).mean(), rtol=0.01)


def test_dac_stuck_high_drives_the_hardware_limit(mp, tmp_path):
    tr = run(mp, tmp_path, [{"at_s": 1.0, "event": "dac_stuck"}])
    before, stuck = between(tr, 0.5, 1.0), between(tr, 1.01, 2.0)
    # Full-scale DAC: about 3.3 V x 180 uA/V with this board's gain errors, whatever is written.
    assert before["i_cmd_ua"].max() < 400
    assert np.all(stuck["i_cmd_ua"] > 550) and np.ptp(stuck["i_cmd_ua"]) == 0


def test_high_impedance_is_compliance_limited(mp, tmp_path):
    tr = run(mp, tmp_path, [{"at_s": 1.0, "event": "load", "r_series_ohm": 150000.0}])
    limited = between(tr, 1.1, 2.0)
    assert (limited["flags"] & F_COMPLIANCE).all()
    assert np.abs(limited["i_mean_ua"]).max() < limited["i_cmd_ua"].min()


@pytest.mark.parametrize("event,expect", [
    ({"event": "press", "hold_s": 0.2}, ["1", "0", "1"]),
    ({"event": "usb", "present": False}, ["1", "0", "0"]),
])
def test_inputs_follow_the_scenario(mp, event, expect):
    pin = 32 if event["event"] == "press" else 34
    r = mp(f"""
        p = machine.Pin({pin}, machine.Pin.IN)
        out = [p.value()]
        time.sleep_ms(1100); out.append(p.value())
        time.sleep_ms(300); out.append(p.value())
        print(*out)
    """, scenario=[dict(event, at_s=1.0)])
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == expect


def test_i2c_faults_reach_the_firmware(mp):
    r = mp("""
        i2c = machine.I2C(0)
        b = bytearray(2)
        i2c.readfrom_mem_into(72, 1, b); print("ok")
        time.sleep_ms(1100)
        try:
            i2c.readfrom_mem_into(72, 1, b); print("read")
        except OSError as e:
            print("nack", e.args[0])
        time.sleep_ms(1000)
        i2c.readfrom_mem_into(72, 1, b); print("back")
    """, scenario=[{"at_s": 1.0, "event": "i2c_nack"}, {"at_s": 2.0, "event": "i2c_nack", "on": False}])
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["ok", "nack", "19", "back"]


def test_events_at_the_same_time_apply_in_the_scenarios_order(mp):
    # MicroPython's list.sort is not stable: the world breaks ties by the scenario's order,
    # so the last of several events at one time is the one that lasts (a test that puts a
    # skin over the default resistor at 0 s gets the skin).
    ohms = [1000.0 * (k + 1) for k in range(24)]
    scenario = [{"at_s": 0.5, "event": "load", "r_series_ohm": r} for r in reversed(ohms)]
    scenario += [{"at_s": 0.25, "event": "load", "r_series_ohm": 7.0}, {"at_s": 0.75, "event": "press"},
                 {"at_s": 0.75, "event": "load", "r_series_ohm": 5.0}]
    r = mp("""
time.sleep_ms(600)
print(W.load.base_rs)
time.sleep_ms(1000)
print(W.load.base_rs)
""", scenario=scenario)
    assert r.stdout.split() == ["1000.0", "5.0"], r.stdout + r.stderr

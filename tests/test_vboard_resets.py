"""Resets as a board has them: watchdog, brown-out, power cut, with the reset cause the
ESP32 port reports, the flash kept, and the world (virtual time, load) carried across."""

import json
import subprocess
import sys
import time

import pytest
from conftest import mpremote
from microstim.vboard import run_headless


def causes(vb):
    return [c for c, _ in vb.supervisor.resets]


def wait_for(pred, timeout_s=20.0):
    end = time.time() + timeout_s
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_starved_watchdog_resets_the_board(vboard):
    vb = vboard()
    # --no-follow: the board resets mid-exec, so there is no end of output to wait for.
    r = mpremote(vb.port, "exec", "--no-follow",
                 "import machine, time; w = machine.WDT(timeout=200); time.sleep_ms(500); print('alive')")
    assert r.returncode == 0, r.stderr
    assert wait_for(lambda: 3 in causes(vb))
    assert b"alive" not in vb.supervisor.output
    r = mpremote(vb.port, "exec", "import machine; print(machine.reset_cause())")
    # mpremote's own soft reset comes after the watchdog's: the board came back.
    assert r.returncode == 0 and r.stdout.strip() == "5"
    events = [json.loads(x) for x in (vb.run_dir / "trace" / "events.jsonl").read_text().splitlines()]
    assert any(e["event"] == "wdt_expired" for e in events)


@pytest.mark.parametrize("event", ["brownout", "power_cut"])
def test_power_events_reset_as_power_on(tmp_path, event):
    scenario = [
        {"at_s": 1.0, "event": "press"},  # a session starts
        {"at_s": 3.0, "event": event, "off_s": 2.0},
        {"at_s": 9.0, "event": "stop"},
    ]
    trace, console, _ = run_headless(tmp_path, scenario)
    boots = [e for e in trace.events if e["event"] == "boot"]
    assert [b["cause"] for b in boots] == [1, 1]  # ESP32: brown-out reports PWRON_RESET
    assert boots[1]["t_us"] >= 5_000_000  # off for 2 s of virtual time, then booted
    assert len(trace.window(1.5, 3.0)) > 0  # it was stimulating before
    # After the reset nothing stimulates until a user presses the button again. The boot
    # self-check's DAC-zero pair (code 0, one +/- pair) is the only output allowed: it
    # must carry no more than the DAC's zero error (calib.DAC_ZERO_MAX_UA = 5 uA).
    after = trace.window(3.0, 9.0)
    assert len(after) <= 2 and (abs(after["i_peak_ua"]) < 1.0).all(), after
    assert console.count('"ev": "boot"') == 2


def test_load_state_survives_a_reset(tmp_path):
    scenario = [
        {"at_s": 0.5, "event": "lift"},
        {"at_s": 1.0, "event": "power_cut", "off_s": 0.5},
        {"at_s": 3.0, "event": "stop"},
    ]
    trace, _, _ = run_headless(tmp_path, scenario)
    # The world replays lasting events after a reset: the probes are still off the skin.
    assert [e["cause"] for e in trace.events if e["event"] == "boot"] == [1, 1]


def test_microstim_sim_serves_a_port(tmp_path):
    p = subprocess.Popen([sys.executable, "-m", "microstim.cli", "sim", "--run-dir", str(tmp_path / "vb")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = p.stdout.readline().strip()
        assert port.startswith("/dev/")
        r = mpremote(port, "exec", "print(1+1)")
        assert r.stdout.strip() == "2", r.stderr
    finally:
        p.terminate()
        p.wait(timeout=10)
    assert p.returncode in (0, -15)


def test_watchdog_lets_the_repl_live_while_the_output_is_off(vboard):
    # boot.py's watchdog survives mpremote's soft reset, as on an ESP32; its feeder keeps
    # the board alive well past the 2 s timeout while the output is disarmed.
    vb = vboard()
    r = mpremote(vb.port, "exec", "import time; time.sleep(5); print('alive')", timeout=60)
    assert r.stdout.strip() == "alive", r.stderr
    assert 3 not in causes(vb)


def test_watchdog_resets_a_loop_that_stalls_with_the_output_armed(vboard):
    vb = vboard()
    code = "import safe, time\nsafe.set_armed(True)\nwhile True:\n    time.sleep_ms(10)"
    r = mpremote(vb.port, "exec", "--no-follow", code)
    assert r.returncode == 0, r.stderr
    assert wait_for(lambda: 3 in causes(vb), timeout_s=15)
    # The board comes back disarmed, with the output off.
    r = mpremote(vb.port, "resume", "exec",
                 "import _vworld; w = _vworld.world(); print(w.dac.get(25, 0), w.output_level(27))")
    assert r.stdout.split() == ["0", "0"], r.stdout + r.stderr

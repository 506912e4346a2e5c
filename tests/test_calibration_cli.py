"""`microstim calibrate` end to end, as a maker runs it against a virtual board: with the
probes on skin (the board's default load) instead of the reference resistor it is refused
with a message that says what to do, and the board's calibration is unchanged; with the
resistor it is accepted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from microstim.vboard.calibrated import resistor

HOST = str(Path(__file__).resolve().parent.parent / "host")


def ms(*args: str, port: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": HOST}
    env.pop("MICROSTIM_PORT", None)
    return subprocess.run([sys.executable, "-m", "microstim.cli", *args, "--port", port],
                          capture_output=True, text=True, timeout=timeout, env=env)


def calibration_status(port: str) -> str:
    r = ms("info", "--json", port=port)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)["calibration"]["status"]


def test_calibrating_on_skin_is_refused_and_on_the_resistor_accepted(vboard):
    skin = vboard(board="virtual")  # nothing across the probes but the default skin load
    before = calibration_status(skin.port)
    r = ms("calibrate", "--r-ref", "10000", port=skin.port)
    assert r.returncode == 3, r.stdout + r.stderr  # the device refused
    msg = r.stderr
    # Which check speaks first depends on the skin's state (its apparent resistance over a
    # phase); either names what is wrong and says what to do.
    assert "not the 10000 ohm reference" in msg or "not a resistor" in msg, msg
    assert "fit the 10000 ohm reference resistor" in msg, msg
    assert "previous calibration is kept" in msg, msg
    assert calibration_status(skin.port) == before
    skin.stop()

    ref = vboard(board="virtual", scenario=[resistor(10_000)])
    r = ms("calibrate", "--r-ref", "10000", port=ref.port)
    assert r.returncode == 0 and "calibrated" in r.stdout, r.stdout + r.stderr
    assert calibration_status(ref.port) == "ok"

"""A calibrated virtual board: run the device's own calibration routine (firmware/msfw/
calib.py) against a simulated reference resistor, then run sessions on a board whose
flash holds that /calib.json, as a calibrated real board's would.

Used by the engine benchmark and the tests; a stand-in for `microstim calibrate` (which
reaches the same calib.run through the device protocol) where no host is attached.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .board import VirtualBoard
from .trace import Trace

# main.py of the calibration run: the boot self-check, then calib.run against the
# reference across the probes; prints what it found and the stored file.
_CALIBRATE_MAIN = """\
import json
import safe
from msfw import board as boardmod
from msfw import calib
from msfw.hw import Hardware
try:
    hw = Hardware(boardmod.load())
    hw.output_off()
    print("SELFCHECK " + json.dumps(calib.self_check(hw)))
    res = calib.run(hw, {r_ref!r})
    print("CALIB " + json.dumps(res))
    if res.get("ok"):
        with open(calib.CALIB_PATH) as f:
            print("CALIBFILE " + f.read())
finally:
    safe.all_off()
"""


def resistor(ohm: float, at_s: float = 0.0) -> dict:
    """A scenario event: a pure resistor across the probes (no skin R||C)."""
    return {"at_s": at_s, "event": "load", "r_series_ohm": float(ohm), "r_parallel_ohm": 0.0,
            "c_parallel_f": 0.0}


def calibrate(run_dir: str | Path, r_ref_ohm: float = 10_000.0, *, board: str = "virtual",
              sim: dict | None = None, timeout_s: float = 120.0) -> dict:
    """Calibrate a fresh virtual board against a reference resistor.

    Returns {"self_check": {...}, "result": {...}, "file": <the /calib.json text or None>,
    "console": <console text>}."""
    vb = VirtualBoard(run_dir, board, scenario=[resistor(r_ref_ohm), {"at_s": 60.0, "event": "stop"}],
                      speed=None, sim=sim, transport=None)
    staged = Path(vb.config["flash"]["provision"])
    (staged / "main.py").write_text(_CALIBRATE_MAIN.format(r_ref=float(r_ref_ohm)))
    with vb:
        vb.supervisor.wait(timeout_s)
    console = vb.output_text()
    out = {"self_check": None, "result": None, "file": None, "console": console}
    for line in console.splitlines():
        for key, tag in (("self_check", "SELFCHECK "), ("result", "CALIB "), ("file", "CALIBFILE ")):
            if line.startswith(tag):
                text = line[len(tag):].strip()
                out[key] = text if key == "file" else json.loads(text)
    return out


def run_headless_calibrated(run_dir: str | Path, scenario: list[dict], calib_file: str | None, *,
                            board: str = "virtual", sim: dict | None = None,
                            device_config: dict | None = None, heap: str = "2m",
                            fw_heap: int | None = None,
                            timeout_s: float = 300.0) -> tuple[Trace, str, float]:
    """microstim.vboard.run_headless on a board whose flash holds `calib_file` as
    /calib.json (None: uncalibrated, as run_headless)."""
    vb = VirtualBoard(run_dir, board, scenario=scenario, speed=None, sim=sim, device_config=device_config,
                      transport=None, heap=heap, fw_heap=fw_heap)
    if calib_file is not None:
        (Path(vb.config["flash"]["provision"]) / "calib.json").write_text(calib_file)
    t0 = time.perf_counter()
    with vb:
        vb.supervisor.wait(timeout_s)
    return vb.trace(), vb.output_text(), time.perf_counter() - t0

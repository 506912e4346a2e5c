"""The virtual board as a host program sees it: start one, get its serial port, run a
scenario headless, read back what it delivered."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from . import runconfig
from .supervisor import Supervisor
from .trace import Trace


class VirtualBoard:
    """One virtual board: its flash image, run directory and (while started) a process.

    `speed` None runs virtual time as fast as the firmware allows; 1.0 paces it to wall
    time (what an interactive user expects); any other factor speeds it up.
    """

    def __init__(
        self,
        run_dir: str | Path | None = None,
        board: str = "virtual",
        *,
        scenario: list[dict] = (),
        speed: float | None = 1.0,
        sim: dict | None = None,
        device_config: dict | None = None,
        transport: str | None = "pty",
        baud: int | None = None,
        heap: str = "2m",
        fw_heap: int | None = None,
    ):
        if run_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="microstim-vboard-")
            run_dir = self._tmp.name
        self.run_dir = Path(run_dir)
        self.config = runconfig.build(
            self.run_dir, board, scenario=scenario, speed=speed, sim=sim, device_config=device_config
        )
        self.config["headless"] = transport is None
        self.supervisor = Supervisor(self.run_dir, self.config, transport=transport, baud=baud, heap=heap,
                                     fw_heap=fw_heap)

    @property
    def port(self) -> str:
        return self.supervisor.port

    def start(self) -> VirtualBoard:
        self.supervisor.start()
        return self

    def stop(self) -> None:
        self.supervisor.stop()

    def __enter__(self) -> VirtualBoard:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def trace(self) -> Trace:
        return Trace.load(self.run_dir)

    def output_text(self) -> str:
        return bytes(self.supervisor.output).decode(errors="replace")


def run_headless(
    run_dir: str | Path,
    scenario: list[dict],
    *,
    board: str = "virtual",
    sim: dict | None = None,
    device_config: dict | None = None,
    heap: str = "2m",
    fw_heap: int | None = None,
    timeout_s: float = 300.0,
) -> tuple[Trace, str, float]:
    """Run a scenario in pure virtual time with no host attached.

    The scenario must end with a {"event": "stop"}; returns (trace, console output,
    wall seconds).
    """
    vb = VirtualBoard(
        run_dir, board, scenario=scenario, speed=None, sim=sim, device_config=device_config,
        transport=None, heap=heap, fw_heap=fw_heap,
    )
    t0 = time.perf_counter()
    with vb:
        vb.supervisor.wait(timeout_s)
    wall_s = time.perf_counter() - t0
    return vb.trace(), vb.output_text(), wall_s


# Copies /log off a virtual board's flash image, mounted as the board mounts it.
_DUMP_LOG = """
import sys, os
sys.path.insert(0, {dev!r})
import _vworld
f = open({img!r}, "rb")
f.seek(0, 2)
os.mount(os.VfsLfs2(_vworld.FileBlockDev(f, 4096, f.tell() // 4096)), "/fl", readonly=True)
for name in sorted(os.listdir("/fl/log")):
    with open("/fl/log/" + name, "rb") as src, open({out!r} + "/" + name, "wb") as dst:
        dst.write(src.read())
"""


def flash_log_segments(run_dir: str | Path) -> dict[int, bytes]:
    """The session log a (stopped) virtual board wrote to its flash: {segment id: bytes},
    as `microstim.logs.data.load()` takes it."""
    import subprocess
    import tempfile

    from .supervisor import device_dir, find_micropython

    img = Path(run_dir) / "flash.img"
    with tempfile.TemporaryDirectory() as out:
        code = _DUMP_LOG.format(dev=str(device_dir()), img=str(img), out=out)
        r = subprocess.run([find_micropython(), "-c", code], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"reading the log off {img} failed:\n{r.stdout}{r.stderr}")
        return {int(p.stem, 16): p.read_bytes() for p in Path(out).glob("*.seg")}

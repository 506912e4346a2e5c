"""Talking to a board: the device protocol (firmware/PROTOCOL.md) over a serial link.

`Device` opens a port (a USB serial adapter, a virtual board's pty, or socket://) and sends
requests; each gets exactly one response. Lines with "ev" are events and telemetry; they
are queued for whoever wants them (`events()`), never mistaken for a response. A board
without running firmware (freshly flashed, or its app stopped) is reached by pasting the
protocol module into the raw REPL (`Device.agent()`), so files go over the same protocol.
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import serial

from . import paths
from .errors import DeviceError, MicrostimError
from .ports import open_port, resolve

BAUD = 115200
RESPONSE_TIMEOUT = 5.0
HELLO_TIMEOUT = 0.6
BATCH = 64  # bytes: a bulk payload is read in wake-ups of at least this many ...
BATCH_S = 0.01  # ... or after this long


class RequestError(MicrostimError):
    """The device refused a request; `.error` is its error object (code, message, field...)."""

    exit_code = 3

    def __init__(self, op: str, error: dict):
        self.op = op
        self.error = error
        super().__init__(f"{op}: {error.get('message', error)}")

    @property
    def code(self) -> str:
        return self.error.get("code", "")


def escape(data: bytes) -> bytes:
    return data.replace(b"\x10", b"\x10\x20").replace(b"\x03", b"\x10\x13")


class Device:
    def __init__(self, port: str | None = None, baud: int = BAUD, *, ser: serial.SerialBase | None = None):
        self.port = resolve(port) if ser is None else port
        self.ser = ser if ser is not None else open_port(self.port, baud, timeout=0.05)
        self.byte_s = 10 / baud  # one byte's time on the wire (8N1) at the nominal rate
        self.next_id = 1
        self.buf = bytearray()
        self.queue: collections.deque[dict] = collections.deque()
        self.other: list[bytes] = []  # non-protocol output (tracebacks, REPL text)
        self.info: dict | None = None
        self.agent_mode = False

    # ---- life cycle ----------------------------------------------------------------------
    def close(self) -> None:
        try:
            if self.agent_mode:
                self.request("bye", timeout=2)
                self._leave_raw_repl(run_main=False)
        except (MicrostimError, OSError, serial.SerialException):
            pass
        self.ser.close()

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- low level -----------------------------------------------------------------------
    def _fill(self, deadline: float) -> bool:
        n = self.ser.in_waiting
        chunk = self.ser.read(n if n > 0 else 1)
        if chunk:
            self.buf += chunk
            return True
        if time.monotonic() > deadline:
            raise DeviceError(f"{self.port}: no answer from the device (is the microstim firmware "
                              "running? `microstim deploy` installs it)")
        return False

    def _line(self, deadline: float) -> bytes:
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line = bytes(self.buf[:i]).rstrip(b"\r")
                del self.buf[: i + 1]
                return line
            self._fill(deadline)

    def _exact(self, n: int, deadline: float) -> bytes:
        while len(self.buf) < n:
            missing = n - len(self.buf)
            if missing > BATCH and self.ser.in_waiting < BATCH:
                # Bulk data trickles in a few bytes at a time (a UART, a pty): collect
                # about BATCH_S of it per wake-up instead of waking for every few bytes.
                # Never longer than the missing bytes need at the port's nominal rate.
                time.sleep(min(BATCH_S, missing * self.byte_s))
            self._fill(deadline)
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def _parse(self, line: bytes) -> dict | None:
        if not line.startswith(b"{"):
            if line.strip():
                self.other.append(line)
            return None
        try:
            obj = json.loads(line)
        except ValueError:
            self.other.append(line)
            return None
        return obj if isinstance(obj, dict) else None

    def send(self, op: str, args: dict | None = None, data: bytes | None = None) -> int:
        rid = self.next_id
        self.next_id += 1
        req = {"id": rid, "op": op}
        if args:
            req.update(args)
        self.ser.write(json.dumps(req, separators=(",", ":")).encode() + b"\n")
        if data is not None:
            self.ser.write(data)
        return rid

    def receive(self, rid: int, op: str, timeout: float = RESPONSE_TIMEOUT) -> tuple[dict, bytes | None]:
        deadline = time.monotonic() + timeout
        while True:
            obj = self._parse(self._line(deadline))
            if obj is None:
                continue
            if "ev" in obj and "id" not in obj:
                self.queue.append(obj)
                continue
            if "ok" not in obj or obj.get("id") != rid:
                # A REPL echoing our request, or a late answer to one we gave up on.
                continue
            if not obj.get("ok"):
                raise RequestError(op, obj.get("error") or {})
            result = obj.get("result") or {}
            payload = self._exact(result["bin"], deadline) if "bin" in result else None
            return result, payload

    def request(self, op: str, timeout: float = RESPONSE_TIMEOUT, data: bytes | None = None,
                **args: Any) -> dict:
        rid = self.send(op, args, data)
        return self.receive(rid, op, timeout)[0]

    def request_bin(self, op: str, timeout: float = RESPONSE_TIMEOUT, **args: Any) -> tuple[dict, bytes]:
        rid = self.send(op, args)
        result, payload = self.receive(rid, op, timeout)
        return result, payload or b""

    def events(self, timeout: float = 0.1) -> Iterator[dict]:
        """Events and telemetry as they arrive, for `timeout` seconds of silence at most."""
        while self.queue:
            yield self.queue.popleft()
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._line(deadline)
            except DeviceError:
                return
            obj = self._parse(line)
            if obj is not None and "ev" in obj:
                yield obj
                deadline = time.monotonic() + timeout

    # ---- connecting ----------------------------------------------------------------------
    def hello(self, timeout: float = HELLO_TIMEOUT) -> dict | None:
        """The running firmware's hello, or None if nothing answers the protocol."""
        self.ser.reset_input_buffer()
        self.buf.clear()
        try:
            self.info = self.request("hello", timeout=timeout)
        except DeviceError:
            self.info = None
        return self.info

    def connect(self, need_app: bool = True) -> dict:
        info = self.hello()
        if info is None:
            info = self.hello(timeout=2.0)  # a board busy booting answers late
        if info is None and need_app and self._at_repl():
            # Left at the REPL (mpremote, a Ctrl-C, the firmware stopped by an error):
            # a soft reset runs boot.py and main.py again. The output stays off: the
            # firmware never stimulates after a reset without a user action.
            self.restart_firmware()
            info = self.hello(timeout=5.0)
        if info is None:
            if need_app:
                raise DeviceError(f"{self.port}: the microstim firmware is not answering; "
                                  "`microstim deploy` installs it (`microstim flash` first on a "
                                  "blank board)")
            info = self.agent()
        return info

    def _at_repl(self) -> bool:
        """Whether what the board said (to our hello) looks like a MicroPython REPL."""
        said = b"\n".join(self.other[-10:]) + bytes(self.buf)
        return any(k in said for k in (b">>> ", b"raw REPL", b"SyntaxError", b"NameError", b"\x04>"))

    def restart_firmware(self) -> None:
        """Ctrl-C, Ctrl-B (the friendly REPL, where Ctrl-D runs main.py after the
        reset), Ctrl-D: a soft reset into the firmware."""
        self.ser.write(b"\r\x03\x03")
        time.sleep(0.1)
        self.ser.write(b"\x02")
        time.sleep(0.1)
        self.ser.write(b"\x04")
        time.sleep(0.2)
        self.ser.reset_input_buffer()
        self.buf.clear()

    def agent(self) -> dict:
        """Interrupt whatever runs, enter the raw REPL and run the protocol module there."""
        code = agent_source() + "\nserve()\n"
        self._raw_repl_exec(code)
        self.agent_mode = True
        deadline = time.monotonic() + 10
        while True:
            try:
                obj = self._parse(self._line(deadline))
            except DeviceError:
                said = b"\n".join(self.other[-5:] + [bytes(self.buf)]).decode(errors="replace")
                raise DeviceError(f"{self.port}: the deploy agent did not start; the board said:\n"
                                  f"{said}") from None
            if obj and obj.get("ev") == "agent":
                break
        self.info = self.request("hello")
        return self.info

    def _raw_repl_exec(self, code: str) -> None:
        from mpremote.transport_serial import SerialTransport

        # mpremote's raw REPL and raw-paste code, on our already-open port.
        t = SerialTransport.__new__(SerialTransport)
        t.serial = self.ser
        t.in_raw_repl = False
        t.use_raw_paste = True
        t.mounted = False
        t.device_name = self.port
        t.is_pty = False
        old = self.ser.timeout
        self.ser.timeout = 1
        try:
            t.serial.write(b"\r\x03")
            time.sleep(0.05)
            t.serial.write(b"\x03")
            time.sleep(0.1)
            t.enter_raw_repl(soft_reset=False)
            t.exec_raw_no_follow(code)
            if not t.use_raw_paste:
                data = self.ser.read(2)
                if data != b"OK":
                    raise DeviceError(f"{self.port}: the raw REPL refused the agent ({data!r})")
        except Exception as e:  # mpremote raises TransportError and friends
            if isinstance(e, MicrostimError):
                raise
            raise DeviceError(f"{self.port}: could not reach the MicroPython REPL ({e}); press "
                              "the board's EN/RST button and try again") from None
        finally:
            self.ser.timeout = old
        self.buf.clear()

    def _leave_raw_repl(self, run_main: bool) -> None:
        """After the agent: back to the friendly REPL; a soft reset there runs main.py."""
        self.ser.write(b"\r\x02")
        time.sleep(0.05)
        if run_main:
            self.ser.write(b"\x04")
        self.agent_mode = False

    def restart(self) -> None:
        """Leave the board running its (new) firmware."""
        if self.agent_mode:
            self.request("bye", timeout=2)
            # The raw REPL ends the exec with \x04 \x04 >; then leave it and soft reset.
            time.sleep(0.05)
            self._leave_raw_repl(run_main=True)
        else:
            self.request("reset", kind="soft")
        self.buf.clear()


def agent_source() -> str:
    """The deploy agent: the protocol module followed by its file operations (msfw.proto
    and msfw.protofs), as one paste with protofs's import of proto removed."""
    d = paths.firmware_dir() / "msfw"
    fs = "\n".join(line for line in (d / "protofs.py").read_text().splitlines()
                   if not line.startswith("from msfw.proto import "))
    return strip_source((d / "proto.py").read_text()) + strip_source(fs)


def strip_source(src: str) -> str:
    """Drop comments, docstrings and blank lines: less to paste over a slow link."""
    import io
    import tokenize

    out = []
    prev = tokenize.INDENT
    last_line = -1
    last_col = 0
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        kind, text, (sl, sc), (el, ec), _ = tok
        if sl > last_line:
            last_col = 0
        if kind == tokenize.COMMENT:
            continue
        if kind == tokenize.STRING and prev in (tokenize.INDENT, tokenize.NEWLINE, tokenize.DEDENT):
            text = "0"  # a docstring; keeps the block non-empty
        if sc > last_col:
            out.append(" " * (sc - last_col))
        out.append(text)
        prev = kind
        last_line, last_col = el, ec
    lines = [ln.rstrip() for ln in "".join(out).split("\n")]
    return "\n".join(ln for ln in lines if ln.strip()) + "\n"


def with_device(port: str | None, fn: Callable[[Device], Any], need_app: bool = True) -> Any:
    with Device(port) as dev:
        dev.connect(need_app=need_app)
        return fn(dev)


def firmware_root() -> Path:
    return paths.firmware_dir()

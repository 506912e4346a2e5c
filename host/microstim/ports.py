"""Finding the board: USB serial ports that can be one, and running virtual boards.

The rules follow esptool and mpremote: an explicit --port wins, then MICROSTIM_PORT;
otherwise exactly one candidate is used, and several candidates are an error that lists
them. Opening a port turns the two common failures (another program holds it; the user
may not open serial devices) into messages that say what to do.
"""

from __future__ import annotations

import errno
import os
from dataclasses import asdict, dataclass

import serial
import serial.tools.list_ports

from .errors import DeviceError, UsageError

# USB-UART bridges found on ESP32 boards, and Espressif's own USB (S2/S3/C3).
KNOWN_USB = {
    (0x10C4, 0xEA60): "Silicon Labs CP210x",
    (0x1A86, 0x7523): "WCH CH340",
    (0x1A86, 0x5523): "WCH CH341",
    (0x1A86, 0x55D3): "WCH CH343",
    (0x1A86, 0x55D4): "WCH CH9102",
    (0x0403, 0x6001): "FTDI FT232R",
    (0x0403, 0x6010): "FTDI FT2232",
    (0x0403, 0x6014): "FTDI FT232H",
    (0x0403, 0x6015): "FTDI FT-X",
}
ESPRESSIF_VID = 0x303A

ENV_PORT = "MICROSTIM_PORT"


@dataclass
class Candidate:
    port: str
    kind: str  # "usb" or "virtual"
    description: str
    serial_number: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def usb_kind(vid: int | None, pid: int | None) -> str | None:
    if vid is None:
        return None
    if vid == ESPRESSIF_VID:
        return "Espressif native USB"
    return KNOWN_USB.get((vid, pid))


def candidates() -> list[Candidate]:
    """Serial ports that may be a board, then the virtual boards running on this machine."""
    from .vboard.supervisor import running_boards

    found = []
    for p in sorted(serial.tools.list_ports.comports(), key=lambda p: p.device):
        kind = usb_kind(p.vid, p.pid)
        if kind:
            found.append(Candidate(p.device, "usb", f"{kind} ({p.vid:04X}:{p.pid:04X})", p.serial_number))
    for b in running_boards():
        found.append(Candidate(b["port"], "virtual", f"virtual board (run dir {b['run_dir']})"))
    return found


def resolve(port: str | None = None) -> str:
    """The port to use: --port, else MICROSTIM_PORT, else the only candidate."""
    port = port or os.environ.get(ENV_PORT)
    if port:
        return port
    found = candidates()
    if len(found) == 1:
        return found[0].port
    if not found:
        raise DeviceError(
            "no board found: plug one in over USB, or start a virtual board with "
            "`microstim sim`, then try again (or name the port with --port)")
    listing = "\n".join(f"  {c.port}  {c.description}" for c in found)
    raise UsageError(f"{len(found)} possible boards; choose one with --port or {ENV_PORT}:\n{listing}")


def open_port(port: str, baudrate: int = 115200, timeout: float | None = 1.0) -> serial.SerialBase:
    """Open a port exclusively, with a clear message for a busy port or missing permission."""
    try:
        return serial.serial_for_url(port, baudrate=baudrate, timeout=timeout, exclusive=True)
    except serial.SerialException as e:
        raise DeviceError(_explain(port, e)) from None


def _explain(port: str, e: serial.SerialException) -> str:
    code = getattr(e, "errno", None)
    text = str(e)
    if code == errno.EACCES or "Permission denied" in text:
        return (f"{port}: permission denied. On Linux, add yourself to the dialout group "
                "(sudo usermod -aG dialout $USER), then log out and in again")
    if code in (errno.EBUSY, errno.EAGAIN) or "Could not exclusively lock" in text or "busy" in text:
        return (f"{port}: busy, another program has it open (mpremote, a serial monitor, "
                "another microstim); close it and try again")
    if code == errno.ENOENT or "No such file" in text:
        return f"{port}: no such port; `microstim ports` lists the boards it can see"
    return f"{port}: cannot open it ({text})"

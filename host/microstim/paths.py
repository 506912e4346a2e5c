"""Where the firmware, board definitions and virtual-board device code live.

An installed wheel carries firmware/ and boards/ under microstim/_data; a checkout
(editable install) uses the folders at the top of the repository.
"""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def _data_dir(name: str) -> Path:
    packaged = _PKG / "_data" / name
    if packaged.is_dir():
        return packaged
    checkout = _PKG.parent.parent / name
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(f"cannot find the {name}/ folder (looked in {packaged} and {checkout})")


def firmware_dir() -> Path:
    return _data_dir("firmware")


def boards_dir() -> Path:
    return _data_dir("boards")


def vboard_device_dir() -> Path:
    """MicroPython modules that make up the virtual board's hardware (fake machine, esp32, time)."""
    return _PKG / "vboard" / "device"

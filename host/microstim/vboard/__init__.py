"""The virtual board: the unchanged firmware in the MicroPython unix port, with simulated
hardware, reachable as a serial port."""

from .board import VirtualBoard, run_headless
from .trace import Trace

__all__ = ["VirtualBoard", "run_headless", "Trace"]

# Entry point of one virtual-board "power cycle" inside the MicroPython unix port.
#
# The host-side supervisor (microstim.vboard.supervisor) starts
#     micropython -X heapsize=<n> -i _vrunner.py
# on a pseudo-terminal that is the child's controlling tty (so Ctrl-C raises
# KeyboardInterrupt as on a board), with these environment variables:
#   MICROSTIM_VB_CONFIG  path of the run's JSON config (board, simulated hardware,
#                        clock mode, scenario); required
#   MICROSTIM_VB_MODE    "friendly": run boot.py then main.py, then the REPL (power-on,
#                        hard reset, or Ctrl-D at the friendly REPL);
#                        "raw": run boot.py only (soft reset requested from the raw REPL,
#                        as mpremote does); the supervisor then re-enters the raw REPL
#   MICROSTIM_VB_RESET_CAUSE  value machine.reset_cause() returns (1 PWRON, 2 HARD,
#                        3 WDT, 5 SOFT)
#
# What it does, in order: import the virtual hardware (fake machine, esp32, time) while
# the host filesystem is still visible, open the flash image, copy in any files to
# provision, then unmount the host root and mount the flash's LittleFS at "/" so the
# firmware sees exactly a device filesystem; then run boot.py and main.py like
# MicroPython's pyexec does. When main.py ends (or Ctrl-C interrupts it) the unix port's
# own REPL takes over (-i), which serves mpremote's raw REPL and raw-paste mode.
import os
import sys

_here = sys.path[0] if sys.path and sys.path[0] else "."
sys.path.insert(0, _here)

import _vworld  # noqa: E402

_cfg_path = os.getenv("MICROSTIM_VB_CONFIG")
if not _cfg_path:
    print("_vrunner: MICROSTIM_VB_CONFIG is not set")
    sys.exit(2)
_mode = os.getenv("MICROSTIM_VB_MODE") or "friendly"
_cause = int(os.getenv("MICROSTIM_VB_RESET_CAUSE") or "1")

_world = _vworld.boot(_cfg_path, _cause)

# Importing these now binds the fakes in sys.modules before the host root disappears.
import time  # noqa: E402,F401

import esp32  # noqa: E402,F401
import machine  # noqa: E402,F401

_vworld.mount_flash(_world)
if os.getenv("MICROSTIM_VB_FW_HEAP"):
    _vworld.reserve_firmware_heap(int(os.getenv("MICROSTIM_VB_FW_HEAP")))

_vworld.signal_up(_world)

# A board's sys.path: current dir, frozen modules, /lib.
sys.path[:] = ["", ".frozen", "/lib"]
os.chdir("/")
del _here, _cfg_path, _cause


def _exec_file(name):
    try:
        os.stat(name)
    except OSError:
        return True
    g = {"__name__": "__main__", "__file__": name}
    try:
        with open(name) as f:
            src = f.read()
        exec(compile(src, name, "exec"), g)
        return True
    except SystemExit:
        # On a board, sys.exit() in boot.py/main.py means a soft reset.
        _world.soft_reset()
    except BaseException as e:  # noqa: BLE001 - pyexec prints every exception and goes on
        sys.print_exception(e)
        return False


if _exec_file("boot.py") and _mode == "friendly":
    _exec_file("main.py")
del _exec_file, _mode
_world.repl_started()

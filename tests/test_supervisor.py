"""The virtual board supervisor, driven by the real mpremote CLI.

These tests use a stand-in device dir (MICROSTIM_VB_DEVICE_DIR) whose _vrunner.py does
the minimum a board does: print a boot message, then in friendly mode run a main loop
that Ctrl-C interrupts. Its filesystem is a host directory (the child's cwd).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import serial
from microstim.vboard.supervisor import Supervisor, running_boards

pytestmark = pytest.mark.timeout(30)

# Config keys of the stand-in, acted on at its first boot only:
#   ctl_on_first_boot  a control message to send (then wait to be killed)
#   crash              die by SIGKILL
#   spam_bytes         print that many bytes before going on
STAND_IN_RUNNER = """\
import json, os, time
_cfg = json.load(open(os.getenv("MICROSTIM_VB_CONFIG")))
with open(_cfg["ctl_path"], "w") as f:
    f.write("up\\n")  # as the real runner does once it is executing
os.chdir(_cfg["fs_dir"])
_first = "booted" not in os.listdir()
open("booted", "w").close()
print("boot.py ran, cause", os.getenv("MICROSTIM_VB_RESET_CAUSE"))
if os.getenv("MICROSTIM_VB_MODE") == "friendly":
    if _first and "ctl_on_first_boot" in _cfg:
        with open(_cfg["ctl_path"], "w") as f:
            f.write(_cfg["ctl_on_first_boot"] + "\\n")
        while True:  # wait to be killed
            time.sleep_ms(10)
    if _first and _cfg.get("crash"):
        os.system("kill -9 $PPID")
    if _first and "spam_bytes" in _cfg:
        print("s" * _cfg["spam_bytes"])
    print("main.py running")
    while True:
        time.sleep_ms(10)
"""

BAUD = 115200
BYTES_PER_S = BAUD / 10


@pytest.fixture
def env(tmp_path, monkeypatch):
    device = tmp_path / "device"
    device.mkdir()
    (device / "_vrunner.py").write_text(STAND_IN_RUNNER)
    monkeypatch.setenv("MICROSTIM_VB_DEVICE_DIR", str(device))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    fs_dir = tmp_path / "fs"
    fs_dir.mkdir()
    return tmp_path, fs_dir


@pytest.fixture
def board(env):
    tmp_path, fs_dir = env
    with Supervisor(tmp_path / "run", {"fs_dir": str(fs_dir)}) as sup:
        wait_for_output(sup, b"main.py running")
        yield sup


def mpremote(port, *args, timeout_s=20):
    result = subprocess.run(
        [sys.executable, "-m", "mpremote", "connect", port, *args],
        capture_output=True,
        timeout=timeout_s,
    )
    assert result.returncode == 0, result
    return result.stdout


def wait_for_output(sup, needle, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while needle not in sup.output:
        assert time.monotonic() < deadline, f"{needle!r} not in {sup.output!r}"
        time.sleep(0.01)


def test_exec_with_soft_reset(board):
    assert mpremote(board.port, "exec", "print(1+1)") == b"2\n"
    # mpremote's soft reset restarted the child: boot ran again, main.py did not, and
    # the host saw what a board sends, without the unix port's friendly banner.
    assert [cause for cause, _ in board.resets] == [5]
    reboot = board.output.split(b"OK\r\nMPY: soft reboot\r\n", 1)[1]
    assert reboot.startswith(b"boot.py ran, cause 5\nraw REPL; CTRL-B to exit\r\n>")
    assert board.output.count(b"main.py running") == 1


def test_exec_with_resume(board):
    assert mpremote(board.port, "resume", "exec", "print(1+1)") == b"2\n"
    assert board.resets == []
    # A second session finds the board where the first left it.
    assert mpremote(board.port, "resume", "exec", "print(2+2)") == b"4\n"


def test_fs_cp_both_ways_and_ls(board, env, tmp_path):
    _, fs_dir = env
    payload = bytes(range(256)) * 12
    src = tmp_path / "all_bytes.bin"
    src.write_bytes(payload)
    mpremote(board.port, "fs", "cp", str(src), ":data.bin")
    assert (fs_dir / "data.bin").read_bytes() == payload

    # (The unix port's os.ilistdir() reports no sizes, so only the name is checked.)
    assert b"data.bin" in mpremote(board.port, "resume", "fs", "ls")

    back = tmp_path / "back.bin"
    mpremote(board.port, "resume", "fs", "cp", ":data.bin", str(back))
    assert back.read_bytes() == payload


def test_soft_reset_command(board):
    mpremote(board.port, "soft-reset")
    assert [cause for cause, _ in board.resets] == [5]
    assert b"MPY: soft reboot\r\n" in board.output


def test_friendly_ctrl_d_soft_reboots_and_runs_main(board):
    with serial.Serial(board.port, timeout=5) as port:
        port.write(b"\x03")
        wait_for_output(board, b">>> ")
        port.write(b"\x04")
        wait_for_output(board, b"boot.py ran, cause 5")
        wait_for_output(board, b"main.py running\n", timeout_s=5)
    assert board.output.count(b"main.py running") == 2
    assert [cause for cause, _ in board.resets] == [5]


def test_ctrl_c_interrupts_running_script(board):
    with serial.Serial(board.port, timeout=5) as port:
        port.write(b"\x03")
        seen = port.read_until(b">>> ")
    assert b"KeyboardInterrupt" in seen
    assert b"KeyboardInterrupt" in board.output


@pytest.mark.parametrize(
    "message, cause, announced",
    [("reset 3", 3, False), ("soft", 5, True), ("poweroff 2000000", 1, False)],
)
def test_control_channel_restarts(env, message, cause, announced):
    tmp_path, fs_dir = env
    config = {"fs_dir": str(fs_dir), "ctl_on_first_boot": message}
    with Supervisor(tmp_path / "run", config) as sup:
        wait_for_output(sup, b"main.py running")
        assert [c for c, _ in sup.resets] == [cause]
        assert f"boot.py ran, cause {cause}".encode() in sup.output
        assert (b"MPY: soft reboot\r\n" in sup.output) == announced


def test_crash_stops_the_board(env):
    tmp_path, fs_dir = env
    with Supervisor(tmp_path / "run", {"fs_dir": str(fs_dir), "crash": True}) as sup:
        assert sup.wait(timeout=5) == -9
        assert sup.resets == []


def test_unread_output_does_not_block_the_board(env):
    tmp_path, fs_dir = env
    # Nobody opens the pty: after a short stall the output is dropped, not queued forever.
    config = {"fs_dir": str(fs_dir), "spam_bytes": 200_000}
    with Supervisor(tmp_path / "run", config) as sup:
        wait_for_output(sup, b"main.py running")


def test_headless_done(env):
    tmp_path, fs_dir = env
    chunks = []
    config = {"fs_dir": str(fs_dir), "ctl_on_first_boot": "done 7"}
    with Supervisor(tmp_path / "run", config, transport=None, on_output=chunks.append) as sup:
        assert sup.port is None
        assert sup.wait(timeout=5) == 7
        assert b"boot.py ran, cause 1" in sup.output
        assert b"".join(chunks) == sup.output


def test_socket_transport(env):
    tmp_path, fs_dir = env
    with Supervisor(tmp_path / "run", {"fs_dir": str(fs_dir)}, transport="socket") as sup:
        assert sup.port.startswith("socket://127.0.0.1:")
        wait_for_output(sup, b"main.py running")
        assert mpremote(sup.port, "exec", "print(1+1)") == b"2\n"
        assert mpremote(sup.port, "resume", "exec", "print(3*3)") == b"9\n"


def test_registry_lists_running_boards(board, env):
    tmp_path, _ = env
    assert running_boards() == [
        {"port": board.port, "pid": os.getpid(), "run_dir": str(tmp_path / "run")}
    ]
    board.stop()
    assert running_boards() == []


def test_baud_limit(env):
    tmp_path, fs_dir = env
    with Supervisor(tmp_path / "run", {"fs_dir": str(fs_dir)}, baud=BAUD) as sup:
        wait_for_output(sup, b"main.py running")
        # child -> host: 20,000 bytes of output take >= 1.7 s at 11,520 bytes/s
        # (and about 0.3 s unlimited).
        n_bytes = 20_000
        t0 = time.monotonic()
        out = mpremote(sup.port, "resume", "exec", f"print('x' * {n_bytes})")
        assert out.count(b"x") == n_bytes
        assert time.monotonic() - t0 >= n_bytes / BYTES_PER_S

        # host -> child: the script itself is 10,000 bytes long.
        n_bytes = 10_000
        script = "#" + "-" * (n_bytes - 20) + "\nprint('ok')"
        t0 = time.monotonic()
        assert mpremote(sup.port, "resume", "exec", script) == b"ok\n"
        assert time.monotonic() - t0 >= len(script) / BYTES_PER_S


# A runner that takes Ctrl-C as the real one does (_vworld.take_ctrl_c): from the FIFO, at
# a point of its choosing. The unix port's own SIGINT would raise KeyboardInterrupt from a
# signal handler anywhere in C code (inside the garbage collector it leaves the heap
# locked; inside malloc it deadlocks); the supervisor sends one only if the FIFO's Ctrl-C
# is not taken within a second.
FIFO_RUNNER = """\
import json, os, select, sys, time
_cfg = json.load(open(os.getenv("MICROSTIM_VB_CONFIG")))
kbd = open(_cfg["kbd_path"], "rb")
p = select.poll()
p.register(kbd, select.POLLIN)
with open(_cfg["ctl_path"], "w") as f:
    f.write("up\\n")
print("main.py running")
via = "signal"
try:
    while True:
        if p.poll(0):
            kbd.read(1)
            via = "FIFO"
            raise KeyboardInterrupt
        time.sleep_ms(2)
except KeyboardInterrupt:
    print("taken from the " + via)
"""


def test_ctrl_c_reaches_a_running_script_through_the_fifo_and_input_waits_for_it(tmp_path, monkeypatch):
    device = tmp_path / "device"
    device.mkdir()
    (device / "_vrunner.py").write_text(FIFO_RUNNER)
    monkeypatch.setenv("MICROSTIM_VB_DEVICE_DIR", str(device))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with Supervisor(tmp_path / "run", {}) as sup:
        wait_for_output(sup, b"main.py running")
        with serial.Serial(sup.port, timeout=5) as port:
            t0 = time.monotonic()
            # mpremote's way in: Ctrl-C, then at once what the REPL is to read.
            port.write(b"\r\x03print(6*7)\r")
            wait_for_output(sup, b"42")
            took_s = time.monotonic() - t0
        out = sup.output
    assert b"taken from the FIFO" in out
    assert took_s < 0.5  # not the SIGINT fallback, which comes after 1 s
    # The script never saw the REPL's input: it waited behind the Ctrl-C.
    assert out.index(b"taken from the FIFO") < out.index(b"42")

"""Unmodified mpremote drives the virtual board running the real firmware, as it would a
board on a USB-UART: exec, fs cp both ways, soft-reset, repl."""

import os
import pty
import select
import subprocess
import sys
import time

from conftest import mpremote


def test_exec_prints_2(vboard):
    vb = vboard()
    r = mpremote(vb.port, "exec", "print(1+1)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "2"


def test_firmware_is_on_the_flash_and_fs_cp_works_both_ways(vboard, tmp_path):
    vb = vboard()
    r = mpremote(vb.port, "fs", "ls", ":")
    assert r.returncode == 0, r.stderr
    # As a deploy leaves it: boot.py and main.py as source, the rest compiled to .mpy.
    for name in ("boot.py", "main.py", "safe.mpy", "board.json", "pins.csv", "msfw/"):
        assert name in r.stdout
    data = bytes(range(256)) * 20
    src = tmp_path / "blob.bin"
    src.write_bytes(data)
    assert mpremote(vb.port, "fs", "cp", str(src), ":blob.bin").returncode == 0
    back = tmp_path / "back.bin"
    r = mpremote(vb.port, "fs", "cp", ":blob.bin", str(back))
    assert r.returncode == 0, r.stderr
    assert back.read_bytes() == data
    # The file lives in the board's flash: it survives a hard reset.
    assert mpremote(vb.port, "reset").returncode == 0
    r = mpremote(vb.port, "exec", "import os; print(os.stat('blob.bin')[6])")
    assert r.stdout.strip() == str(len(data))


def test_soft_reset_restarts_the_firmware(vboard):
    vb = vboard()
    # Leave a mark in RAM; a soft reset must clear it and run boot.py again.
    r = mpremote(vb.port, "resume", "exec", "import sys; sys.modules['mark'] = 1; print(len(sys.modules))")
    assert r.returncode == 0, r.stderr
    r = mpremote(vb.port, "resume", "exec", "import sys; print('mark' in sys.modules)")
    assert r.stdout.strip() == "True"
    r = mpremote(vb.port, "soft-reset")
    assert r.returncode == 0, r.stderr
    r = mpremote(vb.port, "resume", "exec",
                 "import sys, machine; print('mark' in sys.modules, machine.reset_cause(), 'safe' in sys.modules)")
    # RAM is fresh, the reset cause is SOFT_RESET, and boot.py (which imports safe) ran.
    assert r.stdout.split() == ["False", "5", "True"]
    assert [c for c, _ in vb.supervisor.resets] == [5]  # `resume` never resets


def test_soft_reset_keeps_the_dac_and_boot_py_clears_it(vboard):
    vb = vboard()
    code = ("from machine import DAC, Pin; d = DAC(Pin(25)); d.write(180); "
            "Pin(27, Pin.OUT).value(1)")
    assert mpremote(vb.port, "exec", code).returncode == 0
    # A soft reset keeps DAC and GPIO levels (as an ESP32 does); boot.py must clear them.
    r = mpremote(vb.port, "soft-reset", "exec", "import _vworld; w = _vworld.world(); print(w.dac[25], w.output_level(27))")
    assert r.stdout.split() == ["0", "0"], r.stdout + r.stderr
    # Without boot.py the levels survive the soft reset: the test above can fail.
    assert mpremote(vb.port, "fs", "rm", ":boot.py").returncode == 0
    assert mpremote(vb.port, "exec", code).returncode == 0
    r = mpremote(vb.port, "soft-reset", "exec", "import _vworld; w = _vworld.world(); print(w.dac[25], w.output_level(27))")
    assert r.stdout.split() == ["180", "1"], r.stdout + r.stderr


def test_repl_is_interactive(vboard):
    vb = vboard()
    # mpremote's repl wants a terminal: give it one.
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "mpremote", "connect", vb.port, "repl"],
                         stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    seen = b""
    try:
        deadline = time.time() + 20
        sent = False
        while time.time() < deadline and b"42" not in seen.split(b"6*7")[-1]:
            r, _, _ = select.select([master], [], [], 0.2)
            if r:
                seen += os.read(master, 4096)
            if not sent and b"to exit this shell" in seen:
                time.sleep(0.3)
                os.write(master, b"\r\x03")  # stop main.py, as a user would
                time.sleep(0.5)
                os.write(master, b"print(6*7)\r")
                sent = True
        assert b"42" in seen.split(b"6*7")[-1], seen[-500:]
        os.write(master, b"\x1d")  # Ctrl-]
        p.wait(timeout=10)
    finally:
        p.kill()
        os.close(master)


def test_ctrl_c_from_a_host_tool_leaves_the_output_off(vboard):
    # Stimulation running (button pressed by the scenario), then mpremote connects: its
    # Ctrl-C interrupts main.py, whose finally drives the output safe.
    vb = vboard(scenario=[{"at_s": 0.5, "event": "press"}], device_config={"duration_s": 600})
    time.sleep(4.0)
    r = mpremote(vb.port, "resume", "exec",
                 "import _vworld; w = _vworld.world(); print(w.dac.get(25, 0), w.output_level(27))")
    assert r.stdout.split() == ["0", "0"], r.stdout + r.stderr
    trace = vb.trace()
    assert len(trace.phases) > 10  # it really was stimulating before


def test_socket_transport(vboard):
    vb = vboard(transport="socket")
    assert vb.port.startswith("socket://")
    r = mpremote(vb.port, "exec", "print(1+1)")
    assert r.stdout.strip() == "2", r.stderr

"""Finding the board: known USB bridges and running virtual boards; --port, then
MICROSTIM_PORT, then the only candidate; clear errors for none, several, busy, denied."""

import errno
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import serial
from microstim import ports
from microstim.errors import DeviceError, UsageError


def fake_comports(monkeypatch, entries):
    items = [SimpleNamespace(device=d, vid=v, pid=p, serial_number="SN" + d[-1]) for d, v, p in entries]
    monkeypatch.setattr(serial.tools.list_ports, "comports", lambda: items)


def test_known_bridges_are_candidates_and_others_are_not(monkeypatch):
    fake_comports(monkeypatch, [("/dev/ttyUSB0", 0x10C4, 0xEA60), ("/dev/ttyACM0", 0x303A, 0x4001),
                                ("/dev/ttyACM1", 0x2341, 0x0043), ("/dev/ttyS0", None, None)])
    found = ports.candidates()
    assert [c.port for c in found] == ["/dev/ttyACM0", "/dev/ttyUSB0"]
    assert "CP210x" in found[1].description and "Espressif" in found[0].description


def test_port_option_then_environment_then_the_only_candidate(monkeypatch):
    fake_comports(monkeypatch, [("/dev/ttyUSB0", 0x1A86, 0x55D4)])
    monkeypatch.delenv(ports.ENV_PORT, raising=False)
    assert ports.resolve() == "/dev/ttyUSB0"
    monkeypatch.setenv(ports.ENV_PORT, "/dev/ttyX")
    assert ports.resolve() == "/dev/ttyX"
    assert ports.resolve("/dev/ttyY") == "/dev/ttyY"


def test_several_candidates_are_listed_none_is_explained(monkeypatch):
    monkeypatch.delenv(ports.ENV_PORT, raising=False)
    fake_comports(monkeypatch, [("/dev/ttyUSB0", 0x0403, 0x6001), ("/dev/ttyUSB1", 0x1A86, 0x7523)])
    with pytest.raises(UsageError) as e:
        ports.resolve()
    assert "/dev/ttyUSB0" in str(e.value) and "/dev/ttyUSB1" in str(e.value) and "--port" in str(e.value)
    fake_comports(monkeypatch, [])
    with pytest.raises(DeviceError, match="microstim sim"):
        ports.resolve()


def test_a_running_virtual_board_is_found(vboard, monkeypatch):
    monkeypatch.delenv(ports.ENV_PORT, raising=False)
    fake_comports(monkeypatch, [])
    vb = vboard()
    assert ports.resolve() == vb.port
    out = subprocess.run([sys.executable, "-m", "microstim.cli", "ports", "--json"],
                         capture_output=True, text=True, check=True).stdout
    assert {"port": vb.port, "kind": "virtual"}.items() <= json.loads(out)[0].items()


def test_busy_port_is_explained(vboard):
    vb = vboard()
    first = ports.open_port(vb.port)
    try:
        with pytest.raises(DeviceError, match="busy"):
            ports.open_port(vb.port)
    finally:
        first.close()


@pytest.mark.parametrize("err,words", [(errno.EACCES, "dialout"), (errno.ENOENT, "microstim ports")])
def test_open_errors_say_what_to_do(monkeypatch, err, words):
    def refuse(*a, **k):
        raise serial.SerialException(err, "could not open port")
    monkeypatch.setattr(serial, "serial_for_url", refuse)
    with pytest.raises(DeviceError, match=words):
        ports.open_port("/dev/ttyUSB9")

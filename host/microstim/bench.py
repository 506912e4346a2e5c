"""Bench verification: an independent ADS1115 on the host measures the current through a
reference resistor across the probes, and the device's error table is printed: setpoint,
bench-measured and device-reported current.

Real bench: Adafruit Blinka (`board`, `busio`) gives a busio.I2C on an FT232H or MCP2221
USB adapter (set BLINKA_FT232H=1 or BLINKA_MCP2221=1) or a Raspberry Pi, and Adafruit's
adafruit_ads1x15 driver reads the ADS1115 differentially across the resistor (AIN0 to
electrode A, AIN1 to electrode B, bench GND to the front end's ground). Install with
`pip install 'microstim[bench]'`.

Simulated bench (`--simulate`, and the tests): the very same driver and measurement code
on a busio.I2C-compatible bus whose ADS1115 is the virtual board's register model
(vboard/device/_ads1115.py, with its datasheet noise and conversion timing), fed with the
current the virtual board's analog model really delivered (its live Trace), sampled at the
conversion times; the device is a virtual board talking the real protocol.
"""

from __future__ import annotations

import importlib.util
import json
import math
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import numpy as np

from . import paths
from .errors import DeviceError, MicrostimError, UsageError

DEFAULT_SETPOINTS_UA = (50.0, 100.0, 200.0, 300.0, 400.0)
DEFAULT_REF_OHM = 2000.0
# ADS1115 full-scale ranges by the driver's gain setting.
FSR_BY_GAIN = {2 / 3: 6.144, 1: 4.096, 2: 2.048, 4: 1.024, 8: 0.512, 16: 0.256}
# A plateau sample is one within this fraction of the largest reading of its polarity:
# conversions straddling a pulse edge read less and are left out.
PLATEAU_FRACTION = 0.95


def pick_gain(max_v: float) -> float:
    """The most sensitive ADS1115 range that still holds max_v with 25 % headroom."""
    for gain in (16, 8, 4, 2, 1):
        if FSR_BY_GAIN[gain] >= 1.25 * max_v:
            return gain
    return 2 / 3


def plateau_amplitude(volts: np.ndarray) -> tuple[float, float, int]:
    """(positive plateau V, negative plateau V, samples used) of a biphasic train.

    Each polarity's plateau is the median of its readings within PLATEAU_FRACTION of that
    polarity's largest: readings inside a phase, not those straddling an edge or the rest."""
    v = np.asarray(volts, dtype=float)
    out = []
    used = 0
    for s in (1, -1):
        x = v[v * s > 0] * s
        if len(x) == 0:
            out.append(0.0)
            continue
        top = x[x >= PLATEAU_FRACTION * x.max()]
        used += len(top)
        out.append(float(np.median(top)))
    return out[0], out[1], used


class BenchADC:
    """The bench ADS1115 through Adafruit's driver, read differentially (AIN0 - AIN1)."""

    def __init__(self, i2c, *, address: int = 0x48, gain: float = 2, clock=time.monotonic, sync=None):
        from adafruit_ads1x15 import ADS1115, AnalogIn

        self.ads = ADS1115(i2c, gain=gain, data_rate=860, address=address)
        self.chan = AnalogIn(self.ads, 0, 1)
        self.clock = clock
        self._sync = sync

    def sample(self, seconds: float) -> np.ndarray:
        """Single-shot conversions back to back for `seconds` (about 800 a second)."""
        if self._sync is not None:
            self._sync()
        t_start = self.clock()
        t_end = t_start + seconds
        out = []
        while self.clock() < t_end:
            out.append(self.chan.voltage)
        self.last_window_s = (t_start, self.clock())
        return np.array(out)


@dataclass
class BenchRow:
    setpoint_ua: float
    bench_ua: float
    device_ua: float
    bench_pos_ua: float
    bench_neg_ua: float
    samples: int
    note: str = ""

    @property
    def device_err_ua(self) -> float:
        return self.device_ua - self.bench_ua

    @property
    def delivered_err_ua(self) -> float:
        return self.bench_ua - self.setpoint_ua

    def as_dict(self) -> dict:
        d = asdict(self)
        d["device_err_ua"] = self.device_err_ua
        d["delivered_err_ua"] = self.delivered_err_ua
        return d


def _status(dev) -> dict:
    return dev.request("status")


def _measure_one(dev, adc: BenchADC, sp: float, program: str, measure_s: float, settle_s: float,
                 start_timeout_s: float, sleep) -> tuple[np.ndarray, list]:
    dev.request("start", program=program, setpoint_ua=float(sp), duration_s=600)
    try:
        deadline = time.monotonic() + start_timeout_s
        st = _status(dev)
        while st.get("state") != "stimulating":
            if st.get("fault") not in (None, "none") or st.get("state") in ("fault", "idle"):
                raise DeviceError(f"setpoint {sp:g} uA: the device stopped ({st.get('state')}, "
                                  f"fault {st.get('fault')}); is the reference resistor connected?")
            if time.monotonic() > deadline:
                raise DeviceError(f"setpoint {sp:g} uA: no steady stimulation after "
                                  f"{start_timeout_s:g} s (state {st.get('state')})")
            sleep(0.2)
            st = _status(dev)
        sleep(settle_s)
        device_readings = [_status(dev).get("measured_ua")]
        volts = adc.sample(measure_s)
        device_readings.append(_status(dev).get("measured_ua"))
        return volts, device_readings
    finally:
        dev.request("stop")


def run_bench(dev, adc: BenchADC, *, setpoints=DEFAULT_SETPOINTS_UA, ref_ohm: float = DEFAULT_REF_OHM,
              program: str = "steady", measure_s: float = 2.0, settle_s: float = 0.5,
              start_timeout_s: float = 20.0, sleep=time.sleep, progress=None) -> list[BenchRow]:
    """For each setpoint: start a session, wait for steady stimulation, sample the bench ADC
    and the device's own reading, stop. `dev` is a connected microstim.device.Device.

    A session that faults before it is steady is reported in the row's note, the fault is
    cleared (`clear_fault`) and the setpoint tried once more."""
    rows = []
    for sp in setpoints:
        notes = []
        result = None
        for _attempt in range(2):
            try:
                result = _measure_one(dev, adc, sp, program, measure_s, settle_s, start_timeout_s, sleep)
                break
            except DeviceError as e:
                notes.append(str(e).split(": ", 1)[-1])
                st = _status(dev)
                if st.get("fault") in (None, "none"):
                    raise
                dev.request("clear_fault")
                sleep(0.5)
        if result is None:
            row = BenchRow(float(sp), math.nan, math.nan, math.nan, math.nan, 0, "; ".join(notes))
        else:
            volts, device_readings = result
            pos, neg, used = plateau_amplitude(volts)
            readings = [float(x) for x in device_readings if isinstance(x, (int, float))]
            row = BenchRow(float(sp), (pos + neg) / 2 / ref_ohm * 1e6,
                           statistics.fmean(readings) if readings else math.nan,
                           pos / ref_ohm * 1e6, neg / ref_ohm * 1e6, used,
                           ("retried after: " + "; ".join(notes)) if notes else "")
        rows.append(row)
        if progress:
            progress(row)
        sleep(0.5)
    return rows


def table(rows: list[BenchRow], ref_ohm: float) -> str:
    lines = [f"reference resistor {ref_ohm:g} ohm; bench = independent ADS1115 across it",
             "",
             "| setpoint (µA) | bench (µA) | device (µA) | device − bench (µA) | device − bench (%) "
             "| bench − setpoint (µA) | + / − phase (µA) | note |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pct = 100 * r.device_err_ua / r.bench_ua if r.bench_ua else math.nan
        lines.append(f"| {r.setpoint_ua:g} | {r.bench_ua:.2f} | {r.device_ua:.2f} | {r.device_err_ua:+.2f} | "
                     f"{pct:+.2f} | {r.delivered_err_ua:+.2f} | {r.bench_pos_ua:.1f} / {r.bench_neg_ua:.1f} | {r.note} |")
    return "\n".join(lines)


# ---- the simulated bench ----------------------------------------------------------------


def _ads_model():
    src = paths.vboard_device_dir() / "_ads1115.py"
    spec = importlib.util.spec_from_file_location("microstim._bench_ads1115", src)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class TraceWaveform:
    """The current the virtual board delivered, read live from its trace (phases.bin),
    as the voltage across a resistor: AIN0 = electrode A, AIN1 = electrode B."""

    def __init__(self, run_dir: Path, ref_ohm: float, *, common_mode_v: float = 0.4, wait_s: float = 30.0):
        self.path = Path(run_dir) / "trace" / "phases.bin"
        self.ref_ohm = ref_ohm
        self.vcm = common_mode_v  # BOTTOM sits on the 1 kΩ shunt
        self.wait_s = wait_s
        self.t0 = np.zeros(0)
        self.t1 = np.zeros(0)
        self.i = np.zeros(0)

    def reload(self) -> None:
        from .vboard.trace import PHASE_DTYPE

        raw = self.path.read_bytes() if self.path.exists() else b""
        p = np.frombuffer(raw[: len(raw) - len(raw) % PHASE_DTYPE.itemsize], dtype=PHASE_DTYPE)
        self.t0 = p["t_us"].astype(np.float64)
        self.t1 = self.t0 + p["dur_us"]
        self.i = p["i_mean_ua"].astype(np.float64) * 1e-6

    def latest_us(self) -> float:
        self.reload()
        return float(self.t1[-1]) if len(self.t1) else 0.0

    def covered(self, t_us: float) -> None:
        """Wait until the trace holds phases beyond t_us (the board writes it as it runs)."""
        deadline = time.monotonic() + self.wait_s
        while not len(self.t0) or self.t0[-1] <= t_us:
            if time.monotonic() > deadline:
                raise DeviceError("the virtual board's trace stopped growing (no output?)")
            time.sleep(0.05)
            self.reload()

    def ain_average(self, ch: int, t0_us: float, t1_us: float) -> float:
        if ch > 1:
            return 0.0
        self.covered(t1_us)
        lo = np.maximum(self.t0, t0_us)
        hi = np.minimum(self.t1, t1_us)
        ov = np.clip(hi - lo, 0, None)
        i = self.i if ch == 0 else -self.i
        v = np.where(i > 0, i, 0.0) * self.ref_ohm
        return self.vcm + float((v * ov).sum()) / max(1.0, t1_us - t0_us)


class BenchWorld:
    """What the ADS1115 model needs of a world: a clock, its inputs, noise."""

    def __init__(self, wave: TraceWaveform, seed: int = 7, noise: bool = True):
        self.wave = wave
        self.now_us = 0
        self.noise = noise
        self.ain_diff_offset_v = 0.0  # the bench ADS1115's own offset is not modelled
        self._rng = np.random.default_rng(seed)

    def ain_average(self, ch, t0_us, t1_us):
        return self.wave.ain_average(ch, t0_us, t1_us)

    def gauss(self) -> float:
        return float(self._rng.standard_normal())

    def _set_input_by_name(self, name, level):  # ALERT/RDY is not wired on the bench
        pass

    def sync(self) -> None:
        """Start the next measurement at the board's present (the trace's newest phase)."""
        self.now_us = max(self.now_us, int(self.wave.latest_us()))


class SimulatedI2C:
    """busio.I2C's surface (try_lock/unlock/writeto/readfrom_into/writeto_then_readfrom/
    scan) over the ADS1115 model; each transaction costs its bus time at `frequency`."""

    def __init__(self, world: BenchWorld, devices: dict, frequency: int = 100_000):
        self.world = world
        self.devices = devices
        self.frequency = frequency
        self._locked = False

    def _spend(self, nbytes: int) -> None:
        self.world.now_us += (nbytes + 1) * 9 * 1_000_000 // self.frequency + 10

    def _dev(self, address):
        dev = self.devices.get(address)
        if dev is None:
            raise OSError(19, f"No I2C device at address: 0x{address:x}")
        return dev

    def try_lock(self) -> bool:
        if self._locked:
            return False
        self._locked = True
        return True

    def unlock(self) -> None:
        self._locked = False

    def scan(self) -> list[int]:
        return sorted(self.devices)

    def writeto(self, address, buffer, *, start=0, end=None):
        data = bytes(memoryview(buffer)[start:end])
        self._spend(len(data))
        self._dev(address).write(data)

    def readfrom_into(self, address, buffer, *, start=0, end=None):
        mv = memoryview(buffer)[start:end]
        self._spend(len(mv))
        tmp = bytearray(len(mv))
        self._dev(address).read_into(tmp)
        mv[:] = tmp

    def writeto_then_readfrom(self, address, buffer_out, buffer_in, *, out_start=0, out_end=None,
                              in_start=0, in_end=None):
        self.writeto(address, buffer_out, start=out_start, end=out_end)
        self.readfrom_into(address, buffer_in, start=in_start, end=in_end)

    def deinit(self) -> None:
        pass


def simulated_adc(run_dir: Path, ref_ohm: float, *, gain: float, address: int = 0x48,
                  seed: int = 7) -> BenchADC:
    wave = TraceWaveform(run_dir, ref_ohm)
    world = BenchWorld(wave, seed=seed)
    model = _ads_model().ADS1115(world, address)
    bus = SimulatedI2C(world, {address: model})
    adc = BenchADC(bus, address=address, gain=gain, clock=lambda: world.now_us / 1e6, sync=world.sync)
    adc.world, adc.bus = world, bus
    return adc


@contextmanager
def simulated_bench(ref_ohm: float = DEFAULT_REF_OHM, *, board: str = "virtual", speed: float = 4.0,
                    calibrate: bool = True, gain: float | None = None, run_dir: str | Path | None = None):
    """A virtual board (calibrated as `microstim calibrate` would leave it) with the
    reference resistor across its probes, on a pty, and a simulated bench ADS1115 on its
    output. Yields (port, BenchADC, VirtualBoard)."""
    import tempfile

    from .boards import load as load_board
    from .vboard import VirtualBoard
    from .vboard.calibrated import calibrate as calibrate_board
    from .vboard.calibrated import resistor

    tmp = tempfile.TemporaryDirectory(prefix="microstim-bench-") if run_dir is None else None
    root = Path(run_dir or tmp.name)
    try:
        calib_file = None
        if calibrate:
            cal = calibrate_board(root / "calibrate", 10_000.0, board=board)
            if not (cal.get("result") or {}).get("ok"):
                raise DeviceError("virtual board calibration failed: " + json.dumps(cal.get("result")))
            calib_file = cal["file"]
        vb = VirtualBoard(root / "board", board, scenario=[resistor(ref_ohm)], speed=speed)
        if calib_file is not None:
            (Path(vb.config["flash"]["provision"]) / "calib.json").write_text(calib_file)
        b = load_board(board)
        adc = simulated_adc(vb.run_dir, ref_ohm, gain=gain or pick_gain(b.ceiling_ua * 1e-6 * ref_ohm))
        with vb:
            yield vb.port, adc, vb
    finally:
        if tmp is not None:
            tmp.cleanup()


def blinka_adc(*, address: int = 0x48, gain: float = 2) -> BenchADC:
    """The real bench: Blinka's busio.I2C on this computer's adapter."""
    try:
        import board  # Adafruit Blinka
        import busio

        i2c = busio.I2C(board.SCL, board.SDA)
    except Exception as e:  # noqa: BLE001 - Blinka raises many kinds when no adapter is found
        raise UsageError("the bench needs Adafruit Blinka and an I2C adapter: pip install "
                         "'microstim[bench]', then set BLINKA_FT232H=1 or BLINKA_MCP2221=1 for a USB "
                         f"adapter, or run on a Raspberry Pi ({type(e).__name__}: {e})") from None
    try:
        return BenchADC(i2c, address=address, gain=gain)
    except ValueError as e:
        raise UsageError(f"no ADS1115 answers at 0x{address:02x} on the bench I2C bus ({e})") from None


@click.command("bench")
@click.option("--port", default=None, help="The device (default: MICROSTIM_PORT or the only board).")
@click.option("--ref-ohm", default=DEFAULT_REF_OHM, show_default=True, type=float,
              help="Reference resistor across the probes.")
@click.option("--setpoints", default=",".join(f"{s:g}" for s in DEFAULT_SETPOINTS_UA), show_default=True,
              help="Comma-separated setpoints in µA (above the device's ceiling is refused by it).")
@click.option("--program", default="steady", show_default=True, help="Pulse program to measure.")
@click.option("--seconds", "measure_s", default=2.0, show_default=True, help="Bench sampling per setpoint.")
@click.option("--address", default="0x48", show_default=True, help="Bench ADS1115 I2C address.")
@click.option("--gain", type=float, default=None, help="ADS1115 gain (default: from ceiling x resistor).")
@click.option("--simulate", is_flag=True, help="A virtual board and a simulated bench ADS1115.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def bench_command(port, ref_ohm, setpoints, program, measure_s, address, gain, simulate, as_json):
    """The device's error table against an independent ADS1115 on this computer."""
    from .device import Device

    try:
        sps = [float(s) for s in setpoints.split(",") if s.strip()]
    except ValueError:
        click.echo(f"microstim: --setpoints: {setpoints!r} is not a list of numbers", err=True)
        sys.exit(UsageError.exit_code)
    addr = int(address, 0)
    progress = None if as_json else (lambda r: click.echo(
        f"  {r.setpoint_ua:g} uA: bench {r.bench_ua:.2f}, device {r.device_ua:.2f}", err=True))
    try:
        if simulate:
            with simulated_bench(ref_ohm, gain=gain) as (vport, adc, _vb):
                with Device(vport) as dev:
                    dev.connect()
                    rows = run_bench(dev, adc, setpoints=sps, ref_ohm=ref_ohm, program=program,
                                     measure_s=measure_s, progress=progress)
        else:
            adc = blinka_adc(address=addr, gain=gain or 2)
            with Device(port) as dev:
                dev.connect()
                rows = run_bench(dev, adc, setpoints=sps, ref_ohm=ref_ohm, program=program,
                                 measure_s=measure_s, progress=progress)
    except MicrostimError as e:
        click.echo(f"microstim: {e}", err=True)
        sys.exit(e.exit_code)
    if as_json:
        click.echo(json.dumps({"ref_ohm": ref_ohm, "rows": [r.as_dict() for r in rows]}, indent=2))
    else:
        click.echo(table(rows, ref_ohm))

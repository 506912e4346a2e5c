"""Bench verification: Adafruit's adafruit_ads1x15 driver on a simulated busio.I2C whose
ADS1115 is the register model, fed with what the virtual board delivered; the bench
measures the real output within a fraction of a percent, and the error table compares it
with the device's own reading through the real device protocol."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from microstim import bench
from microstim.vboard.trace import PHASE_DTYPE, Trace


def test_plateau_ignores_edges_and_rests():
    rng = np.random.default_rng(1)
    v = np.concatenate([
        0.8 + 0.0005 * rng.standard_normal(40),  # inside + phases
        -0.79 + 0.0005 * rng.standard_normal(40),  # inside - phases
        [0.0] * 60,  # rest between periods
        [0.3, 0.55, -0.2, -0.7],  # conversions straddling an edge
    ])
    pos, neg, used = bench.plateau_amplitude(rng.permutation(v))
    assert pos == pytest.approx(0.8, abs=0.0005)
    assert neg == pytest.approx(0.79, abs=0.0005)
    assert used == 80


def test_pick_gain_keeps_headroom():
    assert bench.pick_gain(0.8) == 4  # 400 uA x 2 kOhm into +-1.024 V
    assert bench.pick_gain(0.9) == 2
    assert bench.pick_gain(0.15) == 16  # +-0.256 V
    assert bench.pick_gain(5.0) == 2 / 3


def _write_trace(run_dir, phases):
    a = np.zeros(len(phases), dtype=PHASE_DTYPE)
    for k, (t, d, i) in enumerate(phases):
        a[k]["t_us"], a[k]["dur_us"], a[k]["i_mean_ua"], a[k]["i_peak_ua"] = t, d, i, abs(i)
    (run_dir / "trace").mkdir(parents=True, exist_ok=True)
    (run_dir / "trace" / "phases.bin").write_bytes(a.tobytes())


def test_driver_on_the_simulated_bus_reads_a_known_waveform(tmp_path):
    # 10 Hz biphasic, 20 ms phases of +250 / -250 uA, for 5 s, through 2 kOhm: 0.5 V plateaus.
    phases = []
    for n in range(50):
        t = n * 100_000
        phases += [(t, 20_000, 250.0), (t + 21_000, 20_000, -250.0)]
    _write_trace(tmp_path, phases)
    adc = bench.simulated_adc(tmp_path, 2000.0, gain=2)
    adc.world.now_us = 1_000_000  # start inside the recorded stretch
    adc._sync = None
    v = adc.sample(2.0)
    # 860 SPS single shot, each with bus transactions: several hundred conversions.
    assert 500 < len(v) < 1800
    pos, neg, used = bench.plateau_amplitude(v)
    lsb = 2.048 / 32768
    assert pos == pytest.approx(0.5, abs=2 * lsb) and neg == pytest.approx(0.5, abs=2 * lsb)
    # Samples in the rest read ~0, those inside phases ~+-0.5 V: duty 40 % of the time.
    inside = np.abs(np.abs(v) - 0.5) < 0.01
    assert 0.25 < inside.mean() < 0.45
    # The bus answers as a busio.I2C does.
    bus = adc.bus
    assert bus.scan() == [0x48]
    with pytest.raises(OSError):
        bus.writeto(0x49, b"\x00")


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    from microstim.device import Device

    root = tmp_path_factory.mktemp("bench")
    with bench.simulated_bench(2000.0, run_dir=root, speed=4.0) as (port, adc, vb):
        with Device(port) as dev:
            dev.connect()
            windows = []

            def progress(row):
                windows.append(adc.last_window_s)

            rows = bench.run_bench(dev, adc, setpoints=(100.0, 400.0), ref_ohm=2000.0,
                                   measure_s=1.5, progress=progress)
        trace = Trace.load(vb.run_dir)
    return rows, windows, trace


def test_bench_measures_what_the_board_delivered(bench_run):
    rows, windows, trace = bench_run
    assert [r.setpoint_ua for r in rows] == [100.0, 400.0]
    for r, (t0, t1) in zip(rows, windows, strict=True):
        truth = trace.summary(t0, t1)["amplitude_ua"]
        # The independent bench ADC agrees with the analog model's delivered current.
        assert r.bench_ua == pytest.approx(truth, rel=0.005, abs=0.3), (r, truth)
        # A calibrated board delivers its setpoint, and reports about what it delivers.
        assert r.bench_ua == pytest.approx(r.setpoint_ua, rel=0.02)
        assert abs(r.device_err_ua) <= max(2.0, 0.02 * r.bench_ua), r
        assert r.bench_pos_ua == pytest.approx(r.bench_neg_ua, rel=0.01)
        assert r.samples > 100


def test_error_table_lists_every_setpoint(bench_run):
    rows, _, _ = bench_run
    text = bench.table(rows, 2000.0)
    assert "| setpoint (µA) | bench (µA) | device (µA) |" in text
    for r in rows:
        assert f"| {r.setpoint_ua:g} | {r.bench_ua:.2f} | {r.device_ua:.2f} |" in text


def test_bench_command_simulated_json():
    r = CliRunner().invoke(bench.bench_command, ["--simulate", "--setpoints", "200", "--seconds", "1",
                                                 "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output[r.output.index("{"):])
    (row,) = out["rows"]
    assert row["bench_ua"] == pytest.approx(200.0, rel=0.02)
    assert row["device_err_ua"] == pytest.approx(row["device_ua"] - row["bench_ua"])


def test_bench_command_without_an_adapter_says_what_to_do(monkeypatch):
    monkeypatch.delenv("BLINKA_FT232H", raising=False)
    monkeypatch.delenv("BLINKA_MCP2221", raising=False)
    r = CliRunner().invoke(bench.bench_command, ["--setpoints", "100"])
    assert r.exit_code == 2
    assert "pip install 'microstim[bench]'" in r.output
    r = CliRunner().invoke(bench.bench_command, ["--setpoints", "a,b", "--simulate"])
    assert r.exit_code == 2 and "--setpoints" in r.output

"""Output characterisation (21 CFR 882.5891): the figures are computed right from phase
records, and the virtual board's figures are physically consistent: current at the
setpoint and under the board's ceiling, V = I·R plus no more than the DC-blocking
capacitor's ramp, balanced charge, the program's timing. The tables committed per board
are what a fresh run gives."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import ROOT
from microstim import characterise as ch
from microstim.vboard.trace import PHASE_DTYPE

C_BLOCK_F = 100e-6


def _phases(rows):
    a = np.zeros(len(rows), dtype=PHASE_DTYPE)
    for k, (t_us, dur_us, i_ua, v) in enumerate(rows):
        a[k]["t_us"], a[k]["dur_us"], a[k]["i_mean_ua"] = t_us, dur_us, i_ua
        a[k]["i_peak_ua"], a[k]["v_peak_v"], a[k]["i_cmd_ua"] = abs(i_ua), v, abs(i_ua)
    return a


def test_figures_from_known_phase_records():
    prog = ch.program_spec("steady")  # 10 Hz, 20 ms phases, 1 ms gap
    rows = []
    for n in range(100):  # 10 s of +300/-300 uA pairs, the negative one 1 % short
        t = 1_000_000 + n * 100_000
        rows.append((t, 20_000, 300.0, 0.7))
        rows.append((t + 21_000, 19_800, -300.0, 0.65))
    sel, window_s = ch.window_phases(_phases(rows), prog, 2.0)
    assert window_s == pytest.approx(6.0)
    assert len(sel) == 120 and sel["i_mean_ua"][0] > 0
    f = ch.figures(sel, prog, 2000.0, 0.5, window_s)
    assert f["i_max_ua"] == 300.0
    assert f["v_load_max_v"] == pytest.approx(0.6)
    assert f["v_out_max_v"] == pytest.approx(0.7)
    assert f["freq_hz"] == pytest.approx(10.0)
    assert f["pulse_width_us"] == pytest.approx(19_900)
    assert f["max_phase_charge_uc"] == pytest.approx(6.0)
    assert f["net_charge_per_pulse_uc"] == pytest.approx(300 * 200e-6)  # 0.06 uC
    assert f["avg_current_ua"] == pytest.approx(300 * 39_800e-6 * 10)
    assert f["dc_current_ua"] == pytest.approx(300 * 200e-6 * 10)
    assert f["density_peak_ma_cm2"] == pytest.approx(0.6)
    assert f["density_rms_ma_cm2"] == pytest.approx(math.sqrt(300 ** 2 * 0.398) / 1000 / 0.5)


def test_bursts_are_windowed_on_whole_cycles():
    prog = ch.program_spec("tone")  # 30 Hz in 2 s bursts, 1 s off
    rows = []
    for burst in range(6):
        b0 = 500_000 + burst * 3_000_000
        for n in range(60):
            t = b0 + n * 33_333
            rows.append((t, 5000, 200.0, 0.5))
            rows.append((t + 6000, 5000, -200.0, 0.5))
    sel, window_s = ch.window_phases(_phases(rows), prog, 2.0)
    assert window_s == pytest.approx(6.0)  # two whole 3 s cycles
    assert sel["t_us"][0] == 3_500_000 and len(sel) == 240
    f = ch.figures(sel, prog, 500.0, 1.0, window_s)
    assert f["freq_hz"] == pytest.approx(30.0, rel=1e-3)  # within bursts, not the burst rate
    assert f["net_charge_per_pulse_uc"] == pytest.approx(0.0)
    assert f["avg_current_ua"] == pytest.approx(200 * 0.010 * 120 / 6.0)


LIVE = ("steady", "fine", "pulse3")


@pytest.fixture(scope="module")
def virtual_result(tmp_path_factory):
    return ch.characterise("virtual", programs=LIVE, work_dir=tmp_path_factory.mktemp("char"), jobs=2)


def test_virtual_board_figures_are_consistent(virtual_result):
    res = virtual_result
    assert res.calibrated and res.setpoint_ua == res.ceiling_ua == 400.0
    assert [(r.program, r.load_ohm) for r in res.rows] == [(p, r) for p in LIVE for r in ch.LOADS_OHM]
    for r in res.rows:
        prog = ch.program_spec(r.program)
        assert r.delivered, r
        label = f"{r.program} {r.load_ohm:g}"
        # Calibrated: the maximum current is the setpoint, and never above the ceiling.
        assert abs(r.i_max_ua - r.setpoint_ua) <= 0.02 * r.setpoint_ua, label
        assert r.i_max_ua <= res.ceiling_ua * 1.05 <= res.hw_limit_ua, label
        # The output stage drives I·R plus the DC-blocking capacitor's voltage, which the
        # phases of one polarity (one, or train_n of them) move by at most n·I·t/C, and a
        # balanced train keeps centred.
        ramp_v = max(1, prog["train_n"]) * r.i_max_ua * 1e-6 * prog["phase_us"] * 1e-6 / C_BLOCK_F
        assert r.v_load_max_v == pytest.approx(r.i_max_ua * 1e-6 * r.load_ohm)
        assert r.v_load_max_v * 0.99 <= r.v_out_max_v <= r.v_load_max_v * 1.01 + ramp_v + 0.01, label
        # Timing is the program's.
        assert r.freq_hz == pytest.approx(prog["freq_hz"], rel=0.01), label
        assert r.pulse_width_us == pytest.approx(prog["phase_us"], rel=0.02), label
        assert r.max_phase_charge_uc == pytest.approx(r.i_max_ua * prog["phase_us"] * 1e-6, rel=0.02)
        # Charge balance: the net charge per pulse is a small fraction of a phase's.
        assert abs(r.net_charge_per_pulse_uc) <= 0.01 * r.max_phase_charge_uc, label
        # Average current is the duty cycle times the amplitude.
        # (a pair per period, or with trains one phase per period)
        per_period = 2 if prog["train_n"] <= 1 else 1
        duty = per_period * prog["phase_us"] * 1e-6 * prog["freq_hz"]
        assert r.avg_current_ua == pytest.approx(r.i_max_ua * duty, rel=0.03), label
        assert r.density_peak_ma_cm2 == pytest.approx(r.i_max_ua / 1000 / res.probe_area_cm2)
        assert r.density_rms_ma_cm2 <= r.density_peak_ma_cm2
        assert r.compliance_phases == 0


def _committed_rows(board):
    text = (ROOT / "boards" / board / "CHARACTERISATION.md").read_text()
    rows = {}
    for line in text.splitlines():
        m = re.match(r"\| (\w+) \| ([\d.]+) (k?)Ω \|(.*)", line)
        if m:
            load = float(m.group(2)) * (1000 if m.group(3) else 1)
            rows[(m.group(1), load)] = [c.strip() for c in m.group(4).strip().strip("|").split("|")]
    return text, rows


def test_committed_virtual_table_is_what_a_run_gives(virtual_result):
    _, rows = _committed_rows("virtual")
    for r in virtual_result.rows:
        cells = rows[(r.program, r.load_ohm)]
        v_load, v_out, i_max = (float(c) for c in cells[:3])
        assert v_load == pytest.approx(r.v_load_max_v, rel=0.01)
        assert v_out == pytest.approx(r.v_out_max_v, rel=0.02)
        assert i_max == pytest.approx(r.i_max_ua, rel=0.01)
        assert float(cells[8]) == pytest.approx(r.avg_current_ua, rel=0.02)


@pytest.mark.parametrize("board", sorted(p.parent.name for p in (ROOT / "boards").glob("*/board.json")))
def test_every_board_has_its_table(board):
    text, rows = _committed_rows(board)
    spec = json.loads((ROOT / "boards" / board / "board.json").read_text())
    assert set(rows) == {(p, r) for p in ch.PROGRAMS for r in ch.LOADS_OHM}
    assert f"Setpoint: {spec['frontend']['ceiling_ua']:g} µA, the board's ceiling" in text
    if board != "virtual":
        assert "the virtual board's analog model with " + board in text
        assert "real hardware needs the bench" in text
    for (prog, load), cells in rows.items():
        if cells[0] == "–":
            assert "no output" in cells[-1], (board, prog, load)
            continue
        i_max = float(cells[2])
        assert i_max <= spec["frontend"]["ceiling_ua"] * 1.05, (board, prog, load)
        assert float(cells[0]) == pytest.approx(i_max * 1e-6 * load, rel=0.01)


def test_characterise_command_json(tmp_path):
    r = CliRunner().invoke(ch.characterise_command, ["--board", "virtual", "--program", "steady",
                                                     "--probe-area-cm2", "0.5", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output[r.output.index("["):])
    rows = out[0]["rows"]
    assert [row["load_ohm"] for row in rows] == list(ch.LOADS_OHM)
    assert rows[0]["density_peak_ma_cm2"] == pytest.approx(rows[0]["i_max_ua"] / 1000 / 0.5)
    r = CliRunner().invoke(ch.characterise_command, ["--program", "zap"])
    assert r.exit_code == 2 and "no program 'zap'" in r.output


def test_a_software_switched_cycle_starting_early_stays_out_of_the_window():
    prog = ch.program_spec("lift")  # 0.5 Hz, 600 ms phases, switched by the app (ms timing)
    rows = []
    for n in range(8):
        t = 1_000_000 + n * 2_000_000 - (300 if n == 5 else 0)  # cycle 5 starts 0.3 ms early
        rows.append((t, 600_000, 400.0, 5.0))
        rows.append((t + 800_000, 600_000, -400.0, 5.0))
    sel, window_s = ch.window_phases(_phases(rows), prog, 4.0)
    assert window_s == pytest.approx(6.0) and sel["t_us"][0] == 5_000_000
    assert len(sel) == 6  # three whole cycles, not the early fourth one
    f = ch.figures(sel, prog, 10_000.0, 1.0, window_s)
    assert f["net_charge_per_pulse_uc"] == pytest.approx(0.0)

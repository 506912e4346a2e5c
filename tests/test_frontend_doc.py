"""The reference front end's documentation agrees with itself, with the board definitions
and with the virtual board's analog model: one set of component values (boards/frontend/
schematic.py), the figures they give, README.md, bom.csv, the generated schematic and the
wiring tables."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import sys

import pytest
from conftest import ROOT
from microstim import paths

FRONTEND = ROOT / "boards" / "frontend"
README = (FRONTEND / "README.md").read_text()


def _schematic():
    spec = importlib.util.spec_from_file_location("frontend_schematic", FRONTEND / "schematic.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


S = _schematic()
BOARDS = sorted(p.parent.name for p in (ROOT / "boards").glob("*/board.json"))


def _fe(board):
    return json.loads((ROOT / "boards" / board / "board.json").read_text())["frontend"]


def _close(a, b, rel):
    return abs(a - b) <= rel * abs(b)


@pytest.mark.parametrize("board", BOARDS)
def test_every_board_declares_what_the_circuit_gives(board):
    fe = _fe(board)
    g = S.derived()
    dual = (fe.get("dac") or {}).get("kind") == "internal_dual"
    gain = g["source_gain_dual_ua_per_v"] if dual else g["source_gain_ua_per_v"]
    assert _close(gain, fe["source_gain_ua_per_v"], 0.005), (gain, fe["source_gain_ua_per_v"])
    assert _close(g["hw_current_limit_ua"], fe["hw_current_limit_ua"], 0.01)
    # The limiter's worst case (tolerance, a warm case) stays below the absolute 1 mA.
    assert g["hw_current_limit_worst_ua"] < 1000.0
    assert g["shunt_ohm"] == fe["shunt_ohm"]
    assert g["dc_block_uf"] == fe["dc_block_uf"]
    assert _close(g["load_divider"], fe["load_divider"], 0.005)
    assert g["load_divider_b"] == g["load_divider"]  # the two electrode senses match
    # The load is sensed at the electrodes, differentially: AIN<load_channel> - AIN3.
    assert fe["adc"]["load_sense"] == "differential" and fe["adc"]["load_channel"] == 2
    assert _close(g["fast_load_divider"], fe["fast_load_divider"], 0.005)
    assert g["dac_vref_v"] == fe["dac_vref_v"]
    # Declared compliance is what is left of the rail at the ceiling, with some margin.
    assert fe["compliance_v"] <= g["compliance_at_ceiling_v"] < fe["compliance_v"] * 1.1
    assert fe["ceiling_ua"] <= g["full_scale_ua"]
    if dual:
        assert g["fine_ratio"] == fe["dac"]["fine_ratio"]


def test_the_virtual_boards_analog_model_runs_on_these_values():
    sys.path.insert(0, str(paths.vboard_device_dir()))
    try:
        import _vworld
    finally:
        sys.path.pop(0)
    fe = _fe("virtual")
    model = _vworld.FrontEnd(fe, {})  # as designed: no component errors
    g = S.derived()
    assert model.shunt_ohm == g["shunt_ohm"]
    assert _close(model.divider_a, g["load_divider"], 0.005)
    assert _close(model.divider_b, g["load_divider_b"], 0.005)
    assert _vworld.V_BIAS == pytest.approx(g["vbias_v"], abs=0.001)
    assert _close(model.fast_divider, g["fast_load_divider"], 0.005)
    assert model.c_block_f == pytest.approx(g["dc_block_uf"] * 1e-6)
    assert _close(model.hw_limit_ua, g["hw_current_limit_ua"], 0.01)
    assert model.compliance_v <= g["compliance_at_ceiling_v"]
    full = (1 << fe["dac_bits"]) - 1
    gain = g["source_gain_dual_ua_per_v"] if model.fine_ratio else g["source_gain_ua_per_v"]
    # Half-scale coarse code: the model's current is the circuit's (fine channel at 0).
    code = full // 2
    assert _close(model.source_ua(code), code / full * fe["dac_vref_v"] * gain, 0.005)
    if model.fine_ratio:
        assert model.fine_ratio == pytest.approx(g["fine_ratio"])


def test_readme_states_the_as_built_errors_of_sim_json():
    errors = json.loads((ROOT / "boards/virtual/sim.json").read_text())["errors"]
    assert f"source gain +{errors['source_gain'] * 100:g} %" in README
    assert f"source offset −{-errors['source_offset_ua']:g} µA" in README
    assert f"shunt +{errors['shunt'] * 100:g} %" in README
    assert f"sense dividers A −{-errors['divider_a'] * 100:g} % and B +{errors['divider_b'] * 100:g} %" in README
    # ...and within what the BOM's 0.1 % parts allow for a ratio (2 x 0.1 % x 15/16).
    assert abs(errors["divider_a"]) <= 0.0019 and abs(errors["divider_b"]) <= 0.0019


def test_electrode_sense_fits_the_ads1115_inputs():
    # Every node voltage the electrodes can take (from CBLOCK's full swing below ground to
    # above the rail) maps inside GND .. VDD at AIN2 / AIN3, and the compliance threshold
    # (90 % of compliance_v) is inside the +-2.048 V range the firmware reads it with.
    g = S.derived()
    k = g["load_divider"]
    vb = g["vbias_v"]
    for node_v in (-2.4 - 0.3, g["rail_v"] + 2.4):
        ain = vb + (node_v - vb) / k
        assert 0.05 < ain < S.DAC_VREF_V - 0.05, (node_v, ain)
    fe = _fe("virtual")
    assert 0.9 * fe["compliance_v"] / k < 2.048
    for line in ("AIN2 − AIN3", "MUX 011", "±2.048 V", "±0.256 V", "VBIAS"):
        assert line in README, line


def _table(heading):
    """Rows of the first markdown table after `heading` in README.md."""
    part = README.split(heading, 1)[1]
    rows = []
    for line in part.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set(cells[0]) <= {"-"}:
                continue
            rows.append(cells)
        elif rows:
            break
    return rows[1:]


def test_readme_component_table_is_schematic_py():
    rows = {r[0]: r[1] for r in _table("## Component values")}
    assert set(rows) == set(S.VALUES)
    for ref in S.VALUES:
        assert rows[ref] == S.fmt_value(ref), ref


def test_readme_figures_table_is_the_virtual_boards_definition():
    fe = _fe("virtual")
    rows = {r[0].split(" ")[0].strip("`"): r[2] for r in _table("## What the values give")}
    for field, value in rows.items():
        path = field.removeprefix("frontend.").split(".")
        v = fe
        for k in path:
            v = v[k]
        assert float(value) == pytest.approx(float(v)), field
    assert {"frontend.source_gain_ua_per_v", "frontend.hw_current_limit_ua", "frontend.shunt_ohm",
            "frontend.compliance_v", "frontend.dc_block_uf"} <= set(rows)


def test_bom_has_every_value_with_a_manufacturer_part_number():
    with open(FRONTEND / "bom.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    by_ref = {r["ref"]: r for r in rows}
    for ref in S.VALUES:
        assert ref in by_ref, ref
        assert by_ref[ref]["value"] == S.fmt_value(ref), ref
    for r in rows:
        assert r["manufacturer"].strip() and r["mpn"].strip(), r
        assert int(r["qty"]) >= 1
    # The parts the text names are the parts in the BOM.
    for mpn in ("OPA4192IPWR", "OPA2192IDGKR", "LM234Z-3/NOPB", "ADG5436FBRUZ", "ADS1115IDGSR", "MCP4725A0T-E/CH",
                "TPS61170DRVR", "UES1H101MHM"):
        assert any(r["mpn"] == mpn for r in rows), mpn
    for name in ("OPA4192", "LM234-3", "ADG5436F", "ADS1115", "MCP4725", "TPS61170"):
        assert name in README, name


def test_wiring_tables_are_generated_from_each_boards_pins():
    block = README.split(S.WIRING_BEGIN, 1)[1].split(S.WIRING_END, 1)[0].strip()
    assert block == S.wiring_section(), "stale: run python boards/frontend/schematic.py"
    for board in S.wiring_boards():
        pins = dict(reversed(r) for r in S.read_pins(board))
        table = block.split(f"#### {board} ", 1)[1].split("####", 1)[0]
        for gpio, name in pins.items():
            assert re.search(rf"\| {gpio} \| {name} \|", table), (board, name)
    assert set(S.wiring_boards()) == set(BOARDS) - {"virtual"}


def test_schematic_svg_is_drawn_from_schematic_py(tmp_path):
    pytest.importorskip("schemdraw", reason="pip install -e '.[test]' installs schemdraw")
    out = tmp_path / "schematic.svg"
    S.draw(out)
    committed = (FRONTEND / "schematic.svg").read_text()
    assert out.read_text() == committed, "stale: run python boards/frontend/schematic.py"
    for label in ("RSHUNT", "LM234-3", "CBLOCK", "ADG5436F", "R3", "electrode A", "RSA1", "RSB1",
                  "AIN2", "AIN3", "VBIAS"):
        assert label in committed, label


def test_bring_up_checklist_uses_the_host_tool():
    checklist = README.split("## Bring-up checklist", 1)[1]
    for cmd in ("microstim ports", "microstim flash", "microstim deploy", "microstim info",
                "microstim calibrate", "microstim bench", "microstim characterise",
                "microstim boards validate"):
        assert cmd in checklist, cmd

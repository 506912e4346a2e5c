"""The reference analog front end: component values, the figures they give, the schematic
(schematic.svg, drawn with schemdraw) and the per-board wiring tables in README.md.

    python boards/frontend/schematic.py          # writes schematic.svg and README tables

The component values live here once. README.md and bom.csv must agree with them, and the
figures derived from them (source gain, hardware limit, dividers, compliance) must agree
with the board definitions and the virtual board's analog model: tests/test_frontend_doc.py
checks all of that.
"""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BOARDS = HERE.parent

# Reference designator -> (value in SI units, unit, what it does). Resistors 0.1 % where
# they set a gain, 1 % elsewhere.
VALUES = {
    "R1": (10.0e3, "ohm", "low-side transconductance: I1 = V_dac / R1"),
    "R2": (3.60e3, "ohm", "mirror: V(R2) = I1 x R2 below the rail"),
    "R3": (2.00e3, "ohm", "high-side sense: I_out = V(R2) / R3"),
    "R4": (1.00e3, "ohm", "DAC_AMP input filter"),
    "C1": (10e-9, "F", "DAC_AMP input filter (10 us)"),
    "RSET": (84.5, "ohm", "LM234 hardware current limit: 67.7 mV / RSET at 25 C"),
    "RSHUNT": (1.00e3, "ohm", "current shunt into ADS1115 AIN0"),
    "CBLOCK": (100e-6, "F", "DC-blocking capacitor, bipolar (non-polar), 50 V"),
    # Electrode sense, after CBLOCK: one divider per electrode node to VBIAS, 0.1 %, buffered
    # (U7) into AIN2 / AIN3; the firmware reads AIN2 - AIN3.
    "RSA1": (1.50e6, "ohm", "electrode A sense divider top (to AIN2 through U7A)"),
    "RSA2": (100e3, "ohm", "electrode A sense divider bottom (to VBIAS)"),
    "RSB1": (1.50e6, "ohm", "electrode B sense divider top (to AIN3 through U7B)"),
    "RSB2": (100e3, "ohm", "electrode B sense divider bottom (to VBIAS)"),
    "RB1": (90.9e3, "ohm", "VBIAS divider top (from 3.3 V)"),
    "RB2": (10.0e3, "ohm", "VBIAS divider bottom; U1C buffers VBIAS"),
    "CB": (100e-9, "F", "VBIAS decoupling"),
    "RDIV3": (6.98e6, "ohm", "fast load-voltage divider top (to VLOAD_FAST)"),
    "RDIV4": (499e3, "ohm", "fast load-voltage divider bottom (VLOAD_FAST)"),
    "RFB1": (267e3, "ohm", "boost feedback top"),
    "RFB2": (10.0e3, "ohm", "boost feedback bottom"),
    "REN": (100e3, "ohm", "STIM_EN pull-down: an unconfigured pin means off"),
    # Two-DAC variant (frontend.dac.kind internal_dual): DAC_FINE sums into C1 through
    # RFINE, and R2 becomes R2D so the coarse gain stays 180 uA/V.
    "RFINE": (16.0e3, "ohm", "internal_dual only: DAC_FINE summing resistor (fine weight R4/RFINE)"),
    "R2D": (3.83e3, "ohm", "internal_dual only: R2 fitted instead of 3.60 kΩ"),
}

# Figures of the parts the values work with (datasheets).
LM234_VSET_V = 0.0677  # LM234 set voltage at 25 C (TI SNVS746)
LM234_SET_ERROR = 0.03  # LM234-3 initial set-current error
LM234_TEMPCO_PER_C = 0.0033  # set current is proportional to absolute temperature
TPS61170_VFB_V = 1.229  # TPS61170 feedback reference
DAC_VREF_V = 3.3  # ESP32 DAC and MCP4725 full scale (VDD = 3.3 V)
# Drops between the rail and the electrodes at the ceiling (400 uA): R3, BSS84 and LM234
# saturation, ADG5436F on-resistance (2 x 10 ohm) and the shunt.
CEILING_UA = 400.0
BSS84_SAT_V = 0.3
LM234_MIN_V = 1.0  # minimum operating voltage at about 1 mA
SWITCH_R_OHM = 2 * 10.0
PROBE_AREA_CM2 = 1.0  # contact area of each reference probe with gel (stated, not measured)
HOT_C = 45.0  # worst-case temperature inside a hand-held case for the limiter argument


def v(name: str) -> float:
    return VALUES[name][0]


def derived() -> dict:
    """The board-definition figures the component values give."""
    rail = TPS61170_VFB_V * (1 + v("RFB1") / v("RFB2"))
    i_lim_25 = LM234_VSET_V / v("RSET")
    i = CEILING_UA * 1e-6
    drops = (i * v("R3") + BSS84_SAT_V + LM234_MIN_V + i * SWITCH_R_OHM + i * v("RSHUNT"))
    return {
        "source_gain_ua_per_v": v("R2") / (v("R1") * v("R3")) * 1e6,
        "hw_current_limit_ua": i_lim_25 * 1e6,
        "hw_current_limit_worst_ua": i_lim_25 * (1 + LM234_SET_ERROR)
        * (1 + LM234_TEMPCO_PER_C * (HOT_C - 25)) * 1e6,
        "shunt_ohm": v("RSHUNT"),
        "dc_block_uf": v("CBLOCK") * 1e6,
        "load_divider": (v("RSA1") + v("RSA2")) / v("RSA2"),
        "load_divider_b": (v("RSB1") + v("RSB2")) / v("RSB2"),
        "vbias_v": DAC_VREF_V * v("RB2") / (v("RB1") + v("RB2")),
        "fast_load_divider": (v("RDIV3") + v("RDIV4")) / v("RDIV4"),
        "rail_v": rail,
        "compliance_at_ceiling_v": rail - drops,
        "dac_vref_v": DAC_VREF_V,
        # internal_dual: V at C1 = V_amp x RFINE/(R4+RFINE) + V_fine x R4/(R4+RFINE)
        "fine_ratio": v("R4") / v("RFINE"),
        "source_gain_dual_ua_per_v": v("RFINE") / (v("R4") + v("RFINE")) * v("R2D") / (v("R1") * v("R3")) * 1e6,
        "full_scale_ua": DAC_VREF_V * v("R2") / (v("R1") * v("R3")) * 1e6,
    }


def fmt_value(name: str) -> str:
    """How README.md and bom.csv write a value: 3.60 kΩ, 84.5 Ω, 100 µF, 10 nF."""
    val, unit, _ = VALUES[name]
    if unit == "ohm":
        for scale, prefix in ((1e6, "M"), (1e3, "k"), (1, "")):
            if val >= scale:
                x = val / scale
                s = f"{x:.3g}" if x >= 100 else f"{x:.3g}".ljust(4 if "." in f"{x:.3g}" else 0, "0")
                if "." not in s and x < 100:
                    s = f"{x:.2f}" if x < 10 else f"{x:.1f}"
                return f"{s} {prefix}Ω"
    for scale, prefix in ((1e-6, "µ"), (1e-9, "n"), (1e-12, "p")):
        if val >= scale * 0.999:
            return f"{val / scale:.3g} {prefix}F"
    raise ValueError(name)


# ---- per-board wiring ----------------------------------------------------------------

NETS = {
    "DAC_AMP": "DAC_AMP: R4 (1.00 kΩ) → C1 → U1A + input (amplitude, 0–3.3 V)",
    "DAC_FINE": "DAC_FINE: RFINE (16.0 kΩ) → C1, fine amplitude at 1/16 (internal_dual: fit R2D, not R2)",
    "STIM_EN": "EN: U3 (ADG5436F) EN, REN 100 kΩ to GND (high = current path closed)",
    "STIM_POL": "POL: U3 IN1 and IN2 (selects which electrode is the anode)",
    "I2C_SDA": "SDA: U4 (ADS1115) SDA",
    "I2C_SCL": "SCL: U4 (ADS1115) SCL",
    "ADS_ALERT": "ALERT: U4 ALERT/RDY (10 kΩ pull-up to 3.3 V)",
    "BUTTON": "button SW1 to GND (internal pull-up)",
    "USB_SENSE": "VBUS through 100 kΩ / 100 kΩ divider (high = USB power present)",
    "LED": "status LED1 through RLED (330 Ω) to GND",
    "BUZZER": "piezo buzzer BZ1 to GND",
    "VLOAD_FAST": "VLOAD_FAST: U1D buffer output of RDIV3/RDIV4 (fast load-voltage monitor)",
}


def read_pins(board: str) -> list[tuple[str, str]]:
    rows = []
    for line in (BOARDS / board / "pins.csv").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, gpio = line.split(",")
            rows.append((name.strip(), gpio.strip()))
    return rows


def wiring_boards() -> list[str]:
    return sorted(p.name for p in BOARDS.iterdir() if (p / "pins.csv").is_file() and p.name != "virtual")


def wiring_table(board: str) -> str:
    import json

    spec = json.loads((BOARDS / board / "board.json").read_text())
    dac = (spec["frontend"].get("dac") or {}).get("kind", "internal")
    lines = [f"#### {board} ({spec['chip']})", "", "| ESP32 pin | signal | front-end net |",
             "|---|---|---|"]
    for name, gpio in read_pins(board):
        lines.append(f"| {gpio} | {name} | {NETS.get(name, '(not used by the front end)')} |")
    if dac == "mcp4725":
        addr = (spec["frontend"].get("dac") or {}).get("address", 0x60)
        lines.append(f"| (I2C 0x{addr:02X}) | MCP4725 | U5 VOUT → R4 (1.00 kΩ) → C1 → U1A + input; "
                     "U5 on SDA/SCL with the ADS1115, VDD 3.3 V |")
    lines += ["", "Also: 3V3 → U4 VDD (and U5) and RB1 (VBIAS), GND → front-end ground (one star point "
              "at RSHUNT), VBAT → U6 VIN. On the front end itself: U4 AIN0 ← RSHUNT, AIN2 ← U7A (electrode A "
              "sense), AIN3 ← U7B (electrode B sense), AIN1 to GND."]
    return "\n".join(lines)


WIRING_BEGIN = "<!-- wiring tables: generated by schematic.py from boards/*/pins.csv -->"
WIRING_END = "<!-- end of wiring tables -->"


def wiring_section() -> str:
    return "\n\n".join(wiring_table(b) for b in wiring_boards())


def update_readme(path: Path = HERE / "README.md") -> bool:
    text = path.read_text()
    pat = re.compile(re.escape(WIRING_BEGIN) + ".*?" + re.escape(WIRING_END), re.S)
    new = pat.sub(lambda m: WIRING_BEGIN + "\n\n" + wiring_section() + "\n\n" + WIRING_END, text)
    if new != text:
        path.write_text(new)
        return True
    return False


# ---- schematic -----------------------------------------------------------------------


def draw(path: Path = HERE / "schematic.svg") -> str:
    """Draw schematic.svg (schemdraw's own SVG backend: no matplotlib)."""
    import schemdraw
    import schemdraw.elements as elm

    schemdraw.use("svg")
    fv = fmt_value
    g = derived()
    with schemdraw.Drawing(show=False) as d:
        d.config(unit=2.0, fontsize=10)
        rail = 13.0
        d += elm.Line().at((0, rail)).to((26, rail))
        d += elm.Label().at((0, rail + 0.5)).label(
            f"+34 V compliance rail: U6 TPS61170 boost from VBAT (RFB1 {fv('RFB1')} / RFB2 {fv('RFB2')}: "
            f"{g['rail_v']:.1f} V); also supplies U1 and U3", loc="right", halign="left")

        # Low-side stage: U1A and Q1 draw I1 = V_dac / R1 through R2 from the rail.
        d += elm.Dot(open=True).at((0, 5.87)).label("DAC_AMP\n(or MCP4725\nVOUT)", loc="left")
        d += elm.Resistor().right().at((0.3, 5.87)).label(f"R4\n{fv('R4')}")
        d += (n_in := elm.Dot())
        d += elm.Capacitor().down().at(n_in.center).label(f"C1\n{fv('C1')}", loc="bottom")
        d += elm.Ground()
        d += (u1a := elm.Opamp(leads=True).right().flip().anchor("out").at((8.2, 5.25)))
        d += elm.Label().at((u1a.out[0] - 2.2, u1a.out[1])).label("U1A")
        d += elm.Line().at(n_in.center).to(u1a.in2)
        d += (q1 := elm.NFet(bulk=False).reverse().anchor("drain").at((10, 6)).label("Q1\n2N7002", loc="right"))
        d += elm.Line().at(u1a.out).to(q1.gate)
        d += elm.Line().at(q1.source).to((10, 3.5))
        d += (fb := elm.Dot().at((10, 3.5)))
        d += elm.Resistor().down().at(fb.center).label(f"R1\n{fv('R1')}", loc="bottom")
        d += elm.Ground()
        d += elm.Line().at(fb.center).to((4.3, 3.5))
        d += elm.Line().to((4.3, u1a.in1[1]))
        d += elm.Line().to(u1a.in1)
        d += elm.Line().at(q1.drain).to((10, 8))
        d += (m := elm.Dot().at((10, 8)).label("M", loc="left"))
        d += elm.Resistor().up().at(m.center).toy(rail).label(f"R2\n{fv('R2')}", loc="top")

        # High-side stage: U1B holds V(R3) = V(R2), so Q2 delivers I = V_dac R2 / (R1 R3).
        d += elm.Resistor().down().at((16, rail)).toy(11).label(f"R3\n{fv('R3')}", loc="bottom")
        d += (s := elm.Dot().at((16, 11)))
        d += (u1b := elm.Opamp(leads=True).right().anchor("out").at((14.2, 9.25)))
        d += elm.Label().at((u1b.out[0] - 2.2, u1b.out[1])).label("U1B")
        d += elm.Line().at(m.center).to((10.4, 8))
        d += elm.Line().to((10.4, u1b.in2[1]))
        d += elm.Line().to(u1b.in2)
        d += elm.Line().at(s.center).to((10.4, 11))
        d += elm.Line().to((10.4, u1b.in1[1]))
        d += elm.Line().to(u1b.in1)
        d += (q2 := elm.PFet(bulk=False).reverse().anchor("source").at((16, 10)).label("Q2\nBSS84", loc="right"))
        d += elm.Line().at(s.center).to(q2.source)
        d += elm.Line().at(u1b.out).to(q2.gate)

        # Hardware limit: LM234-3 with RSET, a two-terminal current limiter in series.
        d += elm.SourceI().down().at(q2.drain).toy(6.8).label(
            f"U2 LM234-3\nRSET {fv('RSET')}\n≤ {g['hw_current_limit_worst_ua'] / 1000:.2f} mA", loc="bottom", ofst=0.2)
        d += (top := elm.Dot().at((16, 6.8)).label("TOP", loc="left"))

        d += elm.Line().at(top.center).to((22, 6.8))

        # Polarity: U3 ADG5436F, two SPDT switches; EN = STIM_EN, IN1 = IN2 = STIM_POL.
        d += (sa := elm.SwitchSpdt2(action="close").left().anchor("a").at((25, 6.4)).label("U3a", loc="bottom"))
        d += (sb := elm.SwitchSpdt2(action="open").left().anchor("a").at((25, 3.4)).label("U3b", loc="top"))
        d += elm.Line().at((22, 6.8)).to(sa.c)
        d += elm.Line().at((22, 6.8)).to((22, sb.b[1]))
        d += elm.Line().to(sb.b)
        d += elm.Dot().at((22, 6.8))
        d += elm.Line().at((23, 1.0)).to((23, sa.b[1]))
        d += elm.Line().to(sa.b)
        d += elm.Line().at((23, sb.c[1])).to(sb.c)
        d += elm.Dot().at((23, sb.c[1]))
        d += elm.Label().at((20.0, 8.6)).label("U3 ADG5436F: EN = STIM_EN\nIN1 = IN2 = STIM_POL", halign="left", fontsize=9)

        # Electrodes through the DC-blocking capacitor; the skin load between them.
        d += elm.Capacitor().right().at(sa.a).label(f"CBLOCK {fv('CBLOCK')}\nbipolar 50 V")
        d += elm.Line().to((29, 6.4))
        d += (ea := elm.Dot(open=True).label("electrode A", loc="top"))
        d += elm.Line().at(sb.a).to((29, 3.4))
        d += (eb := elm.Dot(open=True).label("electrode B", loc="bottom"))
        d += elm.Resistor().at(ea.center).to(eb.center).label("skin\n+ gel", loc="top", ofst=0.15)

        # Electrode sense after CBLOCK: each node through its divider to VBIAS, buffered
        # into the ADS1115; the firmware reads AIN2 - AIN3 (MUX 011), the voltage across
        # the probes with its sign.
        for node, y, top_r, bot_r, buf, ain in ((ea, 6.4, "RSA1", "RSA2", "U7A", "AIN2"),
                                                (eb, 3.4, "RSB1", "RSB2", "U7B", "AIN3")):
            d += elm.Line().at(node.center).to((30, y))
            d += elm.Resistor().right().label(f"{top_r}\n{fv(top_r)}", loc="top")
            d += (tap := elm.Dot())
            d += elm.Resistor().right().label(f"{bot_r}\n{fv(bot_r)}", loc="top")
            d += elm.Dot(open=True).label("VBIAS", loc="right")
            d += elm.Line().at(tap.center).down().length(0.8)
            d += elm.Dot(open=True).label(f"{buf} → {ain} (÷{g['load_divider']:.0f})", loc="bottom")

        # Return: BOTTOM through the shunt; AIN0 reads I x RSHUNT.
        d += (bot := elm.Dot().at((23, 1.0)).label("BOTTOM", loc="right"))
        d += elm.Resistor().down().at(bot.center).label(f"RSHUNT\n{fv('RSHUNT')}", loc="bottom")
        d += elm.Ground()
        d += elm.Line().at(bot.center).left().length(2.0)
        d += elm.Dot(open=True).label("ADS1115 AIN0", loc="left")

        d += elm.Label().at((0.0, -2.2)).label(
            f"I_out = V_dac × R2 / (R1 × R3) = {g['source_gain_ua_per_v']:.1f} µA/V "
            f"({g['full_scale_ua']:.0f} µA at 3.3 V).  U1 = OPA4192 (36 V, rail-to-rail in/out) on the "
            f"+34 V rail; U1D buffers RDIV3/RDIV4 ({fv('RDIV3')}/{fv('RDIV4')}, ÷15) to VLOAD_FAST. "
            f"STIM_EN has REN {fv('REN')} to GND.", loc="right", halign="left", fontsize=9)
        d += elm.Label().at((0.0, -3.0)).label(
            f"VBIAS = 3.3 V × RB2 / (RB1 + RB2) ({fv('RB1')} / {fv('RB2')}, CB {fv('CB')}) = "
            f"{g['vbias_v']:.3f} V, buffered by U1C.  U7 = OPA2192 on the +34 V rail; its outputs reach AIN2 / "
            f"AIN3 through RPROT 1.00 kΩ with BAT54S clamps.  AIN1 is grounded.", loc="right", halign="left",
            fontsize=9)
        svg = d.get_imagedata("svg")
    svg = svg.decode() if isinstance(svg, bytes) else svg
    path.write_text(svg)
    return svg


def main(argv: list[str]) -> int:
    draw()
    changed = update_readme()
    print(f"wrote {HERE / 'schematic.svg'}; README wiring tables {'updated' if changed else 'unchanged'}")
    d = derived()
    for k, val in d.items():
        print(f"  {k} = {val:.4g}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


def bom_rows() -> list[dict]:
    with open(HERE / "bom.csv", newline="") as f:
        return list(csv.DictReader(f))

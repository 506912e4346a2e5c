# The board-definition schema (board.json and pins.csv): fields with types, ranges and
# units, the chips' pin rules, and check(), which names the field, the value and the limit
# of every error. msfw.board imports it only while it validates a board and drops it again
# (it is ~15 KB of heap on an ESP32 that nothing needs after boot); the host imports this
# same file under CPython (microstim.boards), so both accept and refuse the same boards.
from micropython import const

from msfw.board import ABSOLUTE_MAX_UA

# Per chip (ESP32 technical reference manuals and MicroPython's ports/esp32): GPIOs that
# exist, input-only ones, pins the module's flash/PSRAM or native USB occupy, DAC pins,
# ADC1 pins (ADC2 is unusable with WiFi on), and the MicroPython image offset.
_CHIP_NAMES = const(("esp32", "esp32s2", "esp32s3", "esp32c3"))
CHIPS = {
    "esp32": {
        "gpios": tuple(range(0, 20)) + (21, 22, 23, 25, 26, 27) + tuple(range(32, 40)),
        "input_only": (34, 35, 36, 37, 38, 39),
        "reserved": {6: "SPI flash", 7: "SPI flash", 8: "SPI flash", 9: "SPI flash",
                     10: "SPI flash", 11: "SPI flash"},
        "dac": (25, 26),
        "adc1": tuple(range(32, 40)),
        "flash_offset": 0x1000,
    },
    "esp32s2": {
        "gpios": tuple(range(0, 22)) + tuple(range(26, 47)),
        "input_only": (46,),
        "reserved": {19: "native USB D-", 20: "native USB D+", 26: "flash/PSRAM",
                     27: "SPI flash", 28: "SPI flash", 29: "SPI flash", 30: "SPI flash",
                     31: "SPI flash", 32: "SPI flash"},
        "dac": (17, 18),
        "adc1": tuple(range(1, 11)),
        "flash_offset": 0x1000,
    },
    "esp32s3": {
        "gpios": tuple(range(0, 22)) + tuple(range(26, 49)),
        "input_only": (),
        "reserved": {19: "native USB D-", 20: "native USB D+", 26: "flash/PSRAM",
                     27: "SPI flash", 28: "SPI flash", 29: "SPI flash", 30: "SPI flash",
                     31: "SPI flash", 32: "SPI flash", 33: "octal PSRAM", 34: "octal PSRAM",
                     35: "octal PSRAM", 36: "octal PSRAM", 37: "octal PSRAM"},
        "dac": (),
        "adc1": tuple(range(1, 11)),
        "flash_offset": 0,
    },
    "esp32c3": {
        "gpios": tuple(range(0, 22)),
        "input_only": (),
        "reserved": {12: "SPI flash", 13: "SPI flash", 14: "SPI flash", 15: "SPI flash",
                     16: "SPI flash", 17: "SPI flash", 18: "native USB D-",
                     19: "native USB D+"},
        "dac": (),
        "adc1": (0, 1, 2, 3, 4),
        "flash_offset": 0,
    },
}

_DAC_KINDS = const(("internal", "internal_dual", "mcp4725"))

# The schema of board.json: (path, type, required, low, high, unit, meaning).
# type: "str", "bool", "int", "num", "enum" (low = the choices), "sha256", "dict".
# Ranges are inclusive. Cross-field rules (ceiling <= hardware limit <= 1 mA, DAC kind vs
# chip, pins) are in check() below.
FIELDS = (
    ("name", "str", True, None, None, "", "board name; the folder name under boards/"),
    ("description", "str", False, None, None, "", "what the board is, for people"),
    ("chip", "enum", True, _CHIP_NAMES, None, "", "the ESP32 family member"),
    ("flash_offset", "int", True, 0, 0x10000, "bytes",
     "where the MicroPython image is written: 0x1000 (4096) for ESP32/S2, 0 for S3/C3"),
    ("usb_isolated", "bool", True, None, None, "",
     "true only if the USB link is galvanically isolated; false inhibits stimulation on USB power"),
    ("micropython", "dict", True, None, None, "", "the MicroPython release to flash"),
    ("micropython.version", "str", True, None, None, "", "release, e.g. 1.29.0"),
    ("micropython.port_board", "str", True, None, None, "",
     "MicroPython board build, e.g. ESP32_GENERIC, ESP32_GENERIC_S2, ESP32_GENERIC_S3"),
    ("micropython.image", "str", False, None, None, "", "image file name"),
    ("micropython.url", "str", False, None, None, "", "where the image is downloaded from"),
    ("micropython.sha256", "sha256", False, None, None, "", "SHA-256 of the image, 64 hex digits"),
    ("frontend", "dict", True, None, None, "", "the analog front end"),
    ("frontend.dac", "dict", False, None, None, "", "the amplitude DAC"),
    ("frontend.dac.kind", "enum", False, _DAC_KINDS, None, "",
     "internal (ESP32/S2 DAC pin DAC_AMP), internal_dual (DAC_AMP coarse + DAC_FINE scaled by "
     "fine_ratio: about 12 bits) or mcp4725 (external 12-bit I2C DAC)"),
    ("frontend.dac.fine_ratio", "num", False, 0.002, 0.5, "",
     "internal_dual: how much the resistor network scales DAC_FINE against DAC_AMP at the "
     "source input (1/16 = 0.0625); calibration measures the real ratio"),
    ("frontend.dac.bits", "int", False, 8, 16, "bits", "DAC resolution; must equal dac_bits"),
    ("frontend.dac.address", "int", False, 0x60, 0x67, "", "MCP4725 I2C address (96..103)"),
    ("frontend.dac_vref_v", "num", True, 0.5, 5.5, "V", "DAC full-scale voltage"),
    ("frontend.dac_bits", "int", True, 8, 16, "bits", "DAC resolution"),
    ("frontend.source_gain_ua_per_v", "num", True, 1.0, 10000.0, "uA/V",
     "voltage-to-current source transconductance"),
    ("frontend.hw_current_limit_ua", "num", True, 1.0, 1e9, "uA",
     "current the hardware limiter allows under any single fault (at most 1000 uA)"),
    ("frontend.ceiling_ua", "num", True, 1.0, 1e9, "uA",
     "firmware ceiling for any setpoint; at most hw_current_limit_ua"),
    ("frontend.compliance_v", "num", True, 1.0, 100.0, "V", "source compliance (supply) voltage"),
    ("frontend.shunt_ohm", "num", True, 1.0, 1e6, "ohm", "current-sense shunt"),
    ("frontend.load_divider", "num", True, 1.0, 1000.0, "",
     "division ratio of each electrode's sense divider into the ADS1115 (RSA1/RSA2 = RSB1/RSB2)"),
    ("frontend.fast_load_divider", "num", False, 1.0, 1000.0, "",
     "division ratio of the load-voltage monitor into the ESP32 ADC (VLOAD_FAST)"),
    ("frontend.dc_block_uf", "num", True, 0.1, 10000.0, "uF", "DC-blocking capacitor in series"),
    ("frontend.adc", "dict", True, None, None, "", "the current/voltage ADC"),
    ("frontend.adc.kind", "enum", True, ("ads1115",), None, "", "only ads1115"),
    ("frontend.adc.i2c", "int", False, 0, 1, "", "I2C peripheral id"),
    ("frontend.adc.address", "int", False, 0x48, 0x4B, "", "ADS1115 I2C address (72..75)"),
    ("frontend.adc.shunt_channel", "int", False, 0, 2, "", "ADS1115 input with the shunt voltage"),
    ("frontend.adc.load_sense", "enum", True, ("differential",), None, "",
     "how the load voltage is read: differential = electrode A's sense minus electrode B's, "
     "after the DC-blocking capacitor (AIN<load_channel> - AIN3; boards/frontend/README.md)"),
    ("frontend.adc.load_channel", "int", True, 0, 2, "",
     "ADS1115 input with electrode A's sense; electrode B's is AIN3 (the ADS1115 pairs AIN3)"),
)

# pins.csv: names the firmware needs, and which of all known names drive an output.
REQUIRED_PINS = ("STIM_EN", "STIM_POL", "I2C_SDA", "I2C_SCL", "BUTTON")
_OUTPUT_PINS = const(("STIM_EN", "STIM_POL", "DAC_AMP", "DAC_FINE", "I2C_SDA", "I2C_SCL", "LED", "BUZZER"))
PINS = (
    ("STIM_EN", "output", "current source enable (high = on; pull-down on the front end)"),
    ("STIM_POL", "output", "polarity (H-bridge / analog switch select)"),
    ("DAC_AMP", "DAC", "amplitude, internal DAC only (ESP32 GPIO25/26, ESP32-S2 GPIO17/18)"),
    ("DAC_FINE", "DAC", "fine amplitude, the other internal DAC channel (internal_dual only)"),
    ("I2C_SDA", "I2C", "ADS1115 (and MCP4725) data"),
    ("I2C_SCL", "I2C", "ADS1115 (and MCP4725) clock"),
    ("ADS_ALERT", "input", "ADS1115 ALERT/RDY (optional)"),
    ("BUTTON", "input", "the device button to GND (internal pull-up)"),
    ("USB_SENSE", "input", "USB VBUS present, through a divider (optional)"),
    ("LED", "output", "status LED (optional)"),
    ("BUZZER", "output", "relocation cue buzzer (optional)"),
    ("VLOAD_FAST", "ADC1", "fast load-voltage monitor into an ADC1 pin (optional)"),
)


def _lookup(spec, path):
    d = spec
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d:
            return False, None
        d = d[part]
    return True, d


def _fmt(v):
    return repr(v) if isinstance(v, str) else str(v)


def _check_field(path, kind, lo, hi, unit, v):
    """None if `v` fits the field, else the message."""
    u = (" " + unit) if unit and unit != "bits" and unit != "bytes" else ""
    if kind == "str":
        if not isinstance(v, str):
            return "%s = %s: expected text" % (path, _fmt(v))
        return None
    if kind == "bool":
        if v is not True and v is not False:
            return "%s = %s: expected true or false" % (path, _fmt(v))
        return None
    if kind == "dict":
        if not isinstance(v, dict):
            return "%s: expected an object {...}" % path
        return None
    if kind == "enum":
        if v not in lo:
            return "%s = %s is not one of %s" % (path, _fmt(v), ", ".join(lo))
        return None
    if kind == "sha256":
        if not isinstance(v, str) or len(v) != 64 or [c for c in v.lower() if c not in "0123456789abcdef"]:
            return "%s = %s: expected 64 hex digits" % (path, _fmt(v))
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return "%s = %s: expected a number%s" % (path, _fmt(v), (" in" + u) if u else "")
    if kind == "int" and not isinstance(v, int):
        return "%s = %s: expected a whole number" % (path, _fmt(v))
    if v < lo or v > hi:
        return "%s = %s%s is outside %s..%s%s" % (path, _fmt(v), u, _fmt(lo), _fmt(hi), u)
    return None


def _walk(d, prefix, out):
    for k in d:
        p = prefix + k
        out.append(p)
        if isinstance(d[k], dict):
            _walk(d[k], p + ".", out)


def check(spec, pins):
    """Validate a board definition: (errors, warnings), each a list of messages.

    `spec` is board.json as parsed, `pins` the name -> GPIO map of pins.csv."""
    errors = []
    warnings = []
    if not isinstance(spec, dict):
        return ["board.json: expected an object {...}"], warnings
    for path, kind, required, lo, hi, unit, _ in FIELDS:
        found, v = _lookup(spec, path)
        if not found:
            if required:
                errors.append("%s: missing (%s)" % (path, _FIELD_HELP[path]))
            continue
        msg = _check_field(path, kind, lo, hi, unit, v)
        if msg:
            errors.append(msg)
    for path in ("frontend.hw_current_limit_ua", "frontend.ceiling_ua"):
        found, v = _lookup(spec, path)
        if found and isinstance(v, (int, float)) and not isinstance(v, bool) and v > ABSOLUTE_MAX_UA:
            # The one limit no board may raise (SAFETY.md: microcurrent is below 1 mA).
            errors.append("%s = %s exceeds the absolute maximum of %s uA (microcurrent is below 1 mA)"
                          % (path, float(v), ABSOLUTE_MAX_UA))
    seen = []
    _walk(spec, "", seen)
    for p in seen:
        if p not in _FIELD_HELP and not p.split(".")[-1].startswith("_"):
            warnings.append("%s: not a known field (ignored); a typo?" % p)
    if errors:
        return errors, warnings  # cross-field rules need well-typed fields

    fe = spec["frontend"]
    hw = fe["hw_current_limit_ua"]
    if fe["ceiling_ua"] > hw:
        errors.append("frontend.ceiling_ua = %s uA is above frontend.hw_current_limit_ua = %s uA"
                      % (_fmt(fe["ceiling_ua"]), _fmt(hw)))
    full_scale_ua = fe["dac_vref_v"] * fe["source_gain_ua_per_v"]
    if fe["ceiling_ua"] > full_scale_ua:
        errors.append(
            "frontend.ceiling_ua = %s uA cannot be reached: dac_vref_v x source_gain_ua_per_v = %s uA"
            % (_fmt(fe["ceiling_ua"]), _fmt(round(full_scale_ua, 1))))
    chip = spec["chip"]
    cinfo = CHIPS[chip]
    if spec["flash_offset"] != cinfo["flash_offset"]:
        errors.append("flash_offset = %d does not match chip %s (MicroPython images go at %d)"
                      % (spec["flash_offset"], chip, cinfo["flash_offset"]))
    dac = fe.get("dac") or {}
    dac_kind = dac.get("kind", "internal")
    if dac_kind == "internal_dual" and "fine_ratio" not in dac:
        errors.append("frontend.dac.fine_ratio: missing (internal_dual needs the fine channel's scale)")
    if dac_kind != "internal_dual" and "fine_ratio" in dac:
        errors.append("frontend.dac.fine_ratio is set but frontend.dac.kind is %r" % dac_kind)
    if dac_kind in ("internal", "internal_dual") and not cinfo["dac"]:
        errors.append("frontend.dac.kind = %r: chip %s has no DAC (use mcp4725)" % (dac_kind, chip))
    if dac_kind in ("internal", "internal_dual") and fe["dac_bits"] != 8:
        errors.append("frontend.dac_bits = %d: the internal DAC has 8 bits" % fe["dac_bits"])
    if dac_kind == "mcp4725" and fe["dac_bits"] != 12:
        errors.append("frontend.dac_bits = %d: the MCP4725 has 12 bits" % fe["dac_bits"])
    if "bits" in dac and dac["bits"] != fe["dac_bits"]:
        errors.append("frontend.dac.bits = %d differs from frontend.dac_bits = %d"
                      % (dac["bits"], fe["dac_bits"]))
    adc = fe["adc"]
    if adc.get("shunt_channel", 0) == adc["load_channel"]:
        errors.append("frontend.adc.load_channel = %d is the shunt channel too" % adc["load_channel"])
    if dac_kind == "mcp4725" and dac.get("address", 0x60) == adc.get("address", 0x48):
        errors.append("frontend.dac.address = %d collides with frontend.adc.address" % dac.get("address", 0x60))
    errors.extend(check_pins(chip, pins, dac_kind))
    return errors, warnings


def check_pins(chip, pins, dac_kind="internal"):
    """Messages for pins.csv against the chip: missing, nonexistent, reserved, misused."""
    errors = []
    c = CHIPS[chip]
    for name in REQUIRED_PINS:
        if name not in pins:
            errors.append("pins.csv: %s is missing (%s)" % (name, _PIN_HELP[name]))
    if dac_kind in ("internal", "internal_dual") and "DAC_AMP" not in pins:
        errors.append("pins.csv: DAC_AMP is missing (internal DAC)")
    if dac_kind == "internal_dual" and "DAC_FINE" not in pins:
        errors.append("pins.csv: DAC_FINE is missing (internal_dual: the second DAC channel)")
    used = {}
    for name in sorted(pins):  # sorted: the same messages on every interpreter
        g = pins[name]
        if g not in c["gpios"]:
            errors.append("pins.csv: %s = GPIO%d does not exist on %s" % (name, g, chip))
            continue
        if g in c["reserved"]:
            errors.append("pins.csv: %s = GPIO%d is taken by the module's %s" % (name, g, c["reserved"][g]))
        if name in _OUTPUT_PINS and g in c["input_only"]:
            errors.append("pins.csv: %s = GPIO%d is input-only on %s" % (name, g, chip))
        if g in used:
            errors.append("pins.csv: %s = GPIO%d is also %s" % (name, g, used[g]))
        used[g] = name
    for name in ("DAC_AMP", "DAC_FINE"):
        g = pins.get(name)
        if g is None:
            continue
        if dac_kind not in ("internal", "internal_dual") or (name == "DAC_FINE" and dac_kind != "internal_dual"):
            errors.append("pins.csv: %s is set but frontend.dac.kind is %r" % (name, dac_kind))
        elif g not in c["dac"]:
            errors.append("pins.csv: %s = GPIO%d is not a DAC pin on %s (DAC pins: %s)"
                          % (name, g, chip, ", ".join("GPIO%d" % p for p in c["dac"]) or "none"))
    g = pins.get("VLOAD_FAST")
    if g is not None and g in c["gpios"] and g not in c["adc1"]:
        errors.append("pins.csv: VLOAD_FAST = GPIO%d is not an ADC1 pin on %s (GPIO%d..%d)"
                      % (g, chip, c["adc1"][0], c["adc1"][-1]))
    return errors


_FIELD_HELP = {}
for _f in FIELDS:
    _FIELD_HELP[_f[0]] = _f[6]
_PIN_HELP = {}
for _p in PINS:
    _PIN_HELP[_p[0]] = _p[2]

# The board definition, as deployed to the device: /board.json (chip and front end) and
# /pins.csv (NAME,GPIOn). Validated on load; a board the firmware cannot run safely is
# refused with a message that names the field.
import json

# No board may declare a hardware current maximum above this: microcurrent is below 1 mA.
ABSOLUTE_MAX_UA = 1000.0

REQUIRED_PINS = ("STIM_EN", "STIM_POL", "I2C_SDA", "I2C_SCL", "BUTTON")


class BoardError(Exception):
    pass


def _num(d, key, lo, hi, where):
    v = d.get(key)
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise BoardError("%s.%s: missing or not a number" % (where, key))
    if v < lo or v > hi:
        raise BoardError("%s.%s = %s is outside %s..%s" % (where, key, v, lo, hi))
    return float(v)


class Board:
    def __init__(self, spec, pins):
        self.name = spec.get("name", "?")
        self.chip = spec.get("chip")
        if self.chip not in ("esp32", "esp32s2", "esp32s3", "esp32c3"):
            raise BoardError("chip: %r is not one of esp32, esp32s2, esp32s3, esp32c3" % self.chip)
        self.usb_isolated = spec.get("usb_isolated") is True
        fe = spec.get("frontend")
        if not isinstance(fe, dict):
            raise BoardError("frontend: missing")
        self.hw_limit_ua = _num(fe, "hw_current_limit_ua", 1.0, 1e9, "frontend")
        if self.hw_limit_ua > ABSOLUTE_MAX_UA:
            raise BoardError(
                "frontend.hw_current_limit_ua = %s exceeds the absolute maximum of %s uA"
                % (self.hw_limit_ua, ABSOLUTE_MAX_UA)
            )
        self.ceiling_ua = _num(fe, "ceiling_ua", 1.0, self.hw_limit_ua, "frontend")
        self.gain_ua_per_v = _num(fe, "source_gain_ua_per_v", 1.0, 10000.0, "frontend")
        self.dac_vref_v = _num(fe, "dac_vref_v", 0.5, 5.5, "frontend")
        self.dac_bits = int(_num(fe, "dac_bits", 8, 16, "frontend"))
        self.compliance_v = _num(fe, "compliance_v", 1.0, 100.0, "frontend")
        self.shunt_ohm = _num(fe, "shunt_ohm", 1.0, 1e6, "frontend")
        self.load_divider = _num(fe, "load_divider", 1.0, 1000.0, "frontend")
        dac = fe.get("dac") or {}
        self.dac_kind = dac.get("kind", "internal")
        self.dac_address = dac.get("address", 0x60)
        adc = fe.get("adc") or {}
        if adc.get("kind") != "ads1115":
            raise BoardError("frontend.adc.kind: only ads1115 is supported")
        self.adc_bus = adc.get("i2c", 0)
        self.adc_address = adc.get("address", 0x48)
        self.shunt_channel = adc.get("shunt_channel", 0)
        self.load_channel = adc.get("load_channel", 1)
        for name in REQUIRED_PINS:
            if name not in pins:
                raise BoardError("pins.csv: %s is missing" % name)
        if self.dac_kind == "internal" and "DAC_AMP" not in pins:
            raise BoardError("pins.csv: DAC_AMP is missing (internal DAC)")
        self.pins = pins

    def pin(self, name):
        return self.pins.get(name)


def parse_pins(text):
    pins = {}
    for n, line in enumerate(text.split("\n")):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(",")
        if len(parts) != 2 or not parts[1].startswith("GPIO"):
            raise BoardError("pins.csv line %d: expected NAME,GPIOn, got %r" % (n + 1, line))
        try:
            pins[parts[0]] = int(parts[1][4:])
        except ValueError:
            raise BoardError("pins.csv line %d: bad GPIO number %r" % (n + 1, parts[1]))
    return pins


def load(board_path="/board.json", pins_path="/pins.csv"):
    try:
        with open(board_path) as f:
            spec = json.loads(f.read())
    except OSError:
        raise BoardError("%s: not found (deploy the board definition)" % board_path)
    except ValueError as e:
        raise BoardError("%s: not valid JSON (%s)" % (board_path, e))
    try:
        with open(pins_path) as f:
            pins = parse_pins(f.read())
    except OSError:
        raise BoardError("%s: not found (deploy the board definition)" % pins_path)
    return Board(spec, pins)

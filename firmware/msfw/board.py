# The board definition, as deployed to the device: /board.json (chip and front end) and
# /pins.csv (NAME,GPIOn). Validated on load against the one schema (msfw/boardschema.py,
# which the host runs too): a board the firmware cannot run safely is refused with a
# message that names the field, the value and the limit.
import json

# No board may declare a hardware current maximum above this: microcurrent is below 1 mA.
ABSOLUTE_MAX_UA = 1000.0


class BoardError(Exception):
    pass


def _validate(spec, pins):
    """(errors, warnings) from the schema, which is imported for this and then dropped."""
    import gc
    import sys

    from msfw import boardschema

    try:
        return boardschema.check(spec, pins)
    finally:
        del boardschema
        sys.modules.pop("msfw.boardschema", None)
        try:
            import msfw

            del msfw.boardschema
        except Exception:  # noqa: BLE001 - not every port lets a module attribute go
            pass
        gc.collect()


class Board:
    def __init__(self, spec, pins):
        errors, self.warnings = _validate(spec, pins)
        if errors:
            raise BoardError(errors[0] if len(errors) == 1 else "; ".join(errors))
        self.name = spec["name"]
        self.chip = spec["chip"]
        self.flash_offset = spec["flash_offset"]
        self.usb_isolated = spec["usb_isolated"] is True
        fe = spec["frontend"]
        self.hw_limit_ua = float(fe["hw_current_limit_ua"])
        self.ceiling_ua = float(fe["ceiling_ua"])
        self.gain_ua_per_v = float(fe["source_gain_ua_per_v"])
        self.dac_vref_v = float(fe["dac_vref_v"])
        self.dac_bits = fe["dac_bits"]
        self.compliance_v = float(fe["compliance_v"])
        self.shunt_ohm = float(fe["shunt_ohm"])
        self.load_divider = float(fe["load_divider"])
        self.fast_load_divider = float(fe.get("fast_load_divider", 0.0))
        self.dc_block_uf = float(fe["dc_block_uf"])
        dac = fe.get("dac") or {}
        self.dac_kind = dac.get("kind", "internal")
        self.dac_address = dac.get("address", 0x60)
        self.dac_fine_ratio = float(dac.get("fine_ratio", 0.0))
        adc = fe["adc"]
        self.adc_bus = adc.get("i2c", 0)
        self.adc_address = adc.get("address", 0x48)
        self.shunt_channel = adc.get("shunt_channel", 0)
        self.load_channel = adc.get("load_channel", 1)
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
        if len(parts) != 2 or not parts[1].strip().startswith("GPIO"):
            raise BoardError("pins.csv line %d: expected NAME,GPIOn, got %r" % (n + 1, line))
        name = parts[0].strip()
        try:
            g = int(parts[1].strip()[4:])
        except ValueError:
            raise BoardError("pins.csv line %d: bad GPIO number %r" % (n + 1, parts[1]))
        if name in pins:
            raise BoardError("pins.csv line %d: %s appears twice" % (n + 1, name))
        pins[name] = g
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

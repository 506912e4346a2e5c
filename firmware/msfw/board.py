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

    import msfw
    from msfw import boardschema

    try:
        return boardschema.check(spec, pins)
    finally:
        del boardschema
        msfw.unload("boardschema")
        gc.collect()


def Board(spec, pins):  # noqa: N802 - builds the board, as a class would
    """The checked board (msfw.Board, whose class holds no code of this module: post.py
    drops this module after boot)."""
    import msfw

    b = msfw.Board()
    errors, b.warnings = _validate(spec, pins)
    if errors:
        raise BoardError(errors[0] if len(errors) == 1 else "; ".join(errors))
    b.name = spec["name"]
    b.chip = spec["chip"]
    b.flash_offset = spec["flash_offset"]
    b.usb_isolated = spec["usb_isolated"] is True
    fe = spec["frontend"]
    b.hw_limit_ua = float(fe["hw_current_limit_ua"])
    b.ceiling_ua = float(fe["ceiling_ua"])
    b.gain_ua_per_v = float(fe["source_gain_ua_per_v"])
    b.dac_vref_v = float(fe["dac_vref_v"])
    b.dac_bits = fe["dac_bits"]
    b.compliance_v = float(fe["compliance_v"])
    b.shunt_ohm = float(fe["shunt_ohm"])
    b.load_divider = float(fe["load_divider"])
    b.fast_load_divider = float(fe.get("fast_load_divider", 0.0))
    b.dc_block_uf = float(fe["dc_block_uf"])
    dac = fe.get("dac") or {}
    b.dac_kind = dac.get("kind", "internal")
    b.dac_address = dac.get("address", 0x60)
    b.dac_fine_ratio = float(dac.get("fine_ratio", 0.0))
    adc = fe["adc"]
    b.adc_bus = adc.get("i2c", 0)
    b.adc_address = adc.get("address", 0x48)
    b.shunt_channel = adc.get("shunt_channel", 0)
    b.load_channel = adc.get("load_channel", 1)
    b.pins = pins
    return b


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

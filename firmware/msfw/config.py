# The user configuration (/config.json on the device): one schema, used by the firmware
# when it loads or receives a config and by the host tool (imported under CPython) before
# it sends one. A value outside its range is refused with an error that names the field,
# the value and the limit; nothing is changed. The config can lower the board's ceilings,
# never raise them (SAFETY.md 1): the setpoint's upper limit IS the board's ceiling.
from micropython import const

from msfw import programs

_MAX_DURATION_S = const(1200)  # 20 minutes: the auto-off no config can lengthen (SAFETY.md 8)

DEFAULTS = {
    "program": programs.DEFAULT,
    "setpoint_ua": 200,
    "duration_s": 600,
    "cue_s": 5,
}

# field: (kind, low, high, unit, meaning). A high of None means "the board's ceiling".
FIELDS = {
    "program": ("program", None, None, "", "named pulse program"),
    "setpoint_ua": ("number", 10, None, "uA", "current at the top intensity level"),
    "duration_s": ("int", 10, _MAX_DURATION_S, "s", "auto-off after this long"),
    "cue_s": ("int", 2, 60, "s", "relocation beep interval"),
}


def program_names():
    return sorted(programs.PROGRAMS)


class ConfigError(ValueError):
    """A refused config value; `field`, `value` and `limit` say exactly what and why."""

    def __init__(self, field, value, limit, message):
        super().__init__(message)
        self.field = field
        self.value = value
        self.limit = limit

    def as_dict(self):
        return {"field": self.field, "value": self.value, "limit": self.limit,
                "message": self.args[0]}


def limits(board_ceiling_ua):
    out = {}
    for name, (kind, lo, hi, unit, meaning) in FIELDS.items():
        if name == "program":
            out[name] = {"kind": kind, "choices": program_names(), "meaning": meaning}
        else:
            out[name] = {"kind": kind, "min": lo,
                         "max": board_ceiling_ua if hi is None else hi,
                         "unit": unit, "meaning": meaning}
    return out


def check_field(name, value, board_ceiling_ua):
    """Return the value normalised, or raise ConfigError naming field, value and limit."""
    spec = FIELDS.get(name)
    if spec is None:
        raise ConfigError(name, value, sorted(FIELDS),
                          "%s: unknown setting (known: %s)" % (name, ", ".join(sorted(FIELDS))))
    kind, lo, hi, unit, _ = spec
    if kind == "program":
        choices = program_names()
        if not isinstance(value, str) or value not in choices:
            raise ConfigError(name, value, choices, "program = %r is not one of %s"
                              % (value, ", ".join(choices)))
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(name, value, None, "%s = %r is not a number" % (name, value))
    if kind == "int" and value != int(value):
        raise ConfigError(name, value, None, "%s = %r must be a whole number" % (name, value))
    if hi is None:
        hi = board_ceiling_ua
    if value < lo:
        raise ConfigError(name, value, lo, "%s = %s is below the minimum of %s %s"
                          % (name, value, lo, unit))
    if value > hi:
        what = "the board's ceiling" if spec[2] is None else "the maximum"
        raise ConfigError(name, value, hi, "%s = %s exceeds %s of %s %s"
                          % (name, value, what, hi, unit))
    return int(value) if kind == "int" else value


def validate(cfg, board_ceiling_ua, partial=False):
    """A complete, checked config from `cfg` (missing fields take defaults unless partial)."""
    if not isinstance(cfg, dict):
        raise ConfigError(None, cfg, None, "config must be a JSON object")
    out = {} if partial else dict(DEFAULTS)
    for name in cfg:
        out[name] = check_field(name, cfg[name], board_ceiling_ua)
    return out


CONFIG_PATH = "/config.json"


def load(board_ceiling_ua, path=CONFIG_PATH):
    """(config, problem) from the device's config file, checked against the board. A file
    that is missing gives the defaults and no problem; one that is not valid JSON or
    breaks the schema gives the defaults and the problem (a ValueError/ConfigError)."""
    import json

    try:
        with open(path) as f:
            user = json.loads(f.read())
    except OSError:
        return dict(DEFAULTS), None
    except ValueError as e:
        return dict(DEFAULTS), ValueError("%s: not valid JSON (%s)" % (path, e))
    try:
        return validate(user, board_ceiling_ua), None
    except ConfigError as e:
        return dict(DEFAULTS), e

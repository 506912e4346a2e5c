# The output's safe state, reachable with no other firmware module and nothing allocated
# beyond a few pins: boot.py calls it first, and every exit path of the app calls it.
#
# The reference front end also has a pull-down on STIM_EN, so an unconfigured (input)
# pin already means "off"; driving it low here covers a soft reset, which keeps levels.
#
# An external MCP4725 DAC (boards without a DAC, e.g. the S3) is powered from the 3V3
# rail, not reset with the ESP32: after a watchdog or hard reset, an exception or a
# Ctrl-C it still holds the amplitude it was given. all_off() writes it to 0.
from machine import I2C, WDT, Pin, Timer

_PINS = "/pins.csv"
_BOARD = "/board.json"
WATCHDOG_MS = 2000
FEED_MS = 500
# MCP4725 fast write (datasheet DS22039D §6.1.1): 0 0 PD1 PD0 D11..D8, D7..D0. PD = 00
# (normal), code 0: the DAC register at 0. A constant: writing it allocates nothing.
_MCP_ZERO = b"\x00\x00"

# The watchdog, once started, runs until the next hard reset (a soft reset keeps it).
# Two feeders: a soft timer that feeds only while the output is disarmed (so the REPL and
# host tools stay usable), and the app's main loop, the only one that feeds while the
# output is armed. A loop that stalls while stimulating therefore resets the board.
wdt = None
_armed = False
_feeder = None

# Resolved by the first all_off() (boot.py), so a later one (an exception handler, perhaps
# out of memory) reads no file and builds nothing: the GPIOs of STIM_EN, STIM_POL,
# DAC_AMP, DAC_FINE, I2C_SCL, I2C_SDA (None: absent), and the external DAC as
# (I2C bus, address), None when the board has none, 0 until resolved.
_gp = None
_mcp = 0


def set_armed(armed):
    global _armed
    _armed = armed


def _feed_if_disarmed(_t):
    if not _armed:
        wdt.feed()


def arm_watchdog():
    global wdt, _feeder
    wdt = WDT(timeout=WATCHDOG_MS)
    _feeder = Timer(0)
    _feeder.init(period=FEED_MS, mode=Timer.PERIODIC, callback=_feed_if_disarmed)


def _pins():
    names = ("STIM_EN", "STIM_POL", "DAC_AMP", "DAC_FINE", "I2C_SCL", "I2C_SDA")
    g = [None] * 6
    try:
        with open(_PINS) as f:
            for line in f:
                p = line.strip().split(",")
                if len(p) == 2 and p[0] in names and p[1][:4] == "GPIO":
                    g[names.index(p[0])] = int(p[1][4:])
    except OSError:
        pass
    return tuple(g)


def _external_dac(g):
    try:
        import json

        with open(_BOARD) as f:
            fe = json.load(f)["frontend"]
        d = fe["dac"]
        if d["kind"] == "mcp4725":
            # The ESP32 port's I2C(id) is one static object per bus: msfw.hw's later
            # I2C(id, ...) on the same pins re-initialises this same bus.
            return I2C(fe["adc"].get("i2c", 0), scl=Pin(g[4]), sda=Pin(g[5]), freq=400000), d.get("address", 0x60)
    except Exception:  # noqa: BLE001 - no board.json, no DAC entry, no I2C pins
        pass
    return None


def all_off():
    """Enable low first (the current path opens at once), then polarity and amplitude.
    Never raises: a DAC that does not answer must not stop the rest. True if every output
    was driven to its safe state."""
    global _gp, _mcp
    set_armed(False)
    ok = True
    try:
        if _gp is None:
            _gp = _pins()
        g = _gp
    except Exception:  # noqa: BLE001 - out of memory before the first call resolved them
        g = (None,) * 6
    for i in range(4):
        # STIM_EN, STIM_POL, then both internal amplitude channels (coarse, fine).
        if g[i] is None:
            ok = ok and i > 1
            continue
        try:
            if i < 2:
                Pin(g[i], Pin.OUT, value=0)
            else:
                from machine import DAC

                DAC(Pin(g[i])).write(0)  # creating a DAC writes 0 already; explicit
        except Exception:  # noqa: BLE001
            ok = False
    # The external DAC kept its register through whatever reset brought us here.
    try:
        if _mcp == 0:
            _mcp = _external_dac(g)
        if _mcp:
            _mcp[0].writeto(_mcp[1], _MCP_ZERO)
    except Exception:  # noqa: BLE001 - absent or NAKing (ENODEV), bus stuck (ETIMEDOUT)
        ok = False
        print("safe: MCP4725 did not take 0")
    if g[0] is None or g[1] is None:
        print("safe: /pins.csv lacks STIM_EN/STIM_POL")
    return ok

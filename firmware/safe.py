# The output's safe state, reachable with no other firmware module and nothing allocated
# beyond a few pins: boot.py calls it first, and every exit path of the app calls it.
#
# The reference front end also has a pull-down on STIM_EN, so an unconfigured (input)
# pin already means "off"; driving it low here covers a soft reset, which keeps levels.
from machine import WDT, Pin, Timer

_PINS = "/pins.csv"
WATCHDOG_MS = 2000
FEED_MS = 500

# The watchdog, once started, runs until the next hard reset (a soft reset keeps it).
# Two feeders: a soft timer that feeds only while the output is disarmed (so the REPL and
# host tools stay usable), and the app's main loop, the only one that feeds while the
# output is armed. A loop that stalls while stimulating therefore resets the board.
wdt = None
_armed = False
_feeder = None


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


def _gpio(name):
    try:
        with open(_PINS) as f:
            for line in f:
                parts = line.strip().split(",")
                if len(parts) == 2 and parts[0] == name and parts[1].startswith("GPIO"):
                    return int(parts[1][4:])
    except OSError:
        pass
    return None


def all_off():
    """Enable low first (the current path opens at once), then polarity and amplitude."""
    set_armed(False)
    ok = True
    for name in ("STIM_EN", "STIM_POL"):
        g = _gpio(name)
        if g is None:
            ok = False
            continue
        Pin(g, Pin.OUT, value=0)
    # Both amplitude channels: the coarse DAC and, on a coarse+fine board, the fine one.
    for name in ("DAC_AMP", "DAC_FINE"):
        g = _gpio(name)
        if g is None:
            continue
        try:
            from machine import DAC

            DAC(Pin(g)).write(0)  # creating a DAC writes 0 already; the write is explicit
        except (ImportError, ValueError):
            # No internal DAC on this chip (S3/C3): the external DAC powers up at 0 and
            # is cleared by the app; STIM_EN low keeps the output off regardless.
            pass
    if not ok:
        print("safe: /pins.csv lacks STIM_EN/STIM_POL; output held off by hardware pull-down")
    return ok

# Pulse timing: a biphasic program becomes a repeating pattern on STIM_EN (current on/off)
# and STIM_POL (H-bridge direction).
#
# From 1 Hz up, edges come from hardware: two looping RMT channels, one for EN, one for
# POL. Two RMT channels cannot be started in exact sync from MicroPython, so POL only
# ever changes in the middle of an EN-off interval: a start skew smaller than half the
# shortest off interval can never put a phase on the wrong polarity.
# Below 1 Hz (slow "lift" trains) the app switches EN/POL itself at millisecond accuracy:
# LEDC PWM has no sub-1 Hz, and RMT items max out at 32767 ticks.
import esp32
from micropython import const

_RMT_HZ = const(1000000)  # 1 µs ticks
_ITEM_MAX = const(32767)
_MIN_OFF_US = const(100)  # shortest EN-off interval: twice the worst RMT start skew we allow


class ProgramError(ValueError):
    pass


def pulses(freq_hz, phase_us, gap_us, train_n):
    """(start_us, width_us, sign) for one macro period, and the macro period in µs.

    train_n == 1: +phase, gap, -phase in each period. train_n > 1: N positive pulses,
    one per period, then N negative ones.
    """
    period_us = 1000000.0 / freq_hz
    if train_n <= 1:
        if 2 * phase_us + gap_us + _MIN_OFF_US > period_us:
            raise ProgramError("2 x phase_us + gap_us must leave %d us off in a period" % _MIN_OFF_US)
        if gap_us < _MIN_OFF_US:
            raise ProgramError("gap_us must be at least %d" % _MIN_OFF_US)
        return [(0.0, phase_us, 1), (phase_us + gap_us, phase_us, -1)], period_us
    if phase_us + _MIN_OFF_US > period_us:
        raise ProgramError("phase_us must leave %d us off in a period" % _MIN_OFF_US)
    seq = []
    for k in range(2 * train_n):
        seq.append((k * period_us, phase_us, 1 if k < train_n else -1))
    return seq, period_us * 2 * train_n


def _split(levels, durs, level, us):
    us = int(us + 0.5)
    while us > 0:
        d = _ITEM_MAX if us > _ITEM_MAX else us
        levels.append(level)
        durs.append(d)
        us -= d


def lead_us(seq, macro_us):
    """Where the first pulse starts in the RMT pattern: half the final off interval, so
    the POL edge at the pattern's wrap falls mid-way in an EN-off gap."""
    return (macro_us - (seq[-1][0] + seq[-1][1])) / 2


def rmt_patterns(seq, macro_us):
    """EN and POL (levels, durations) for RMT, with POL edges mid-way in EN-off gaps."""
    lead = lead_us(seq, macro_us)
    en_l, en_d = [], []
    t = 0.0
    _split(en_l, en_d, 0, lead)
    t = lead
    for start, width, _ in seq:
        s = lead + start
        if s > t:
            _split(en_l, en_d, 0, s - t)
        _split(en_l, en_d, 1, width)
        t = s + width
    _split(en_l, en_d, 0, macro_us - t)
    # POL: sign changes happen at the midpoint of the off interval before the pulse.
    pol_l, pol_d = [], []
    prev_end = 0.0
    cur = 1 if seq[0][2] > 0 else 0
    t = 0.0
    for start, width, sign in seq:
        lvl = 1 if sign > 0 else 0
        if lvl != cur:
            mid = lead + (prev_end + start) / 2
            _split(pol_l, pol_d, cur, mid - t)
            t = mid
            cur = lvl
        prev_end = start + width
    _split(pol_l, pol_d, cur, macro_us - t)
    return (en_l, en_d), (pol_l, pol_d)


class HardwareTimer:
    """Looping RMT on EN and POL: the pulse train runs with no CPU cost."""

    def __init__(self, en_pin, pol_pin, seq=None, macro_us=0):
        """seq, macro_us: a train whose patterns are made now, not at its first start."""
        self._en_pin = en_pin
        self._pol_pin = pol_pin
        self._en = None
        self._pol = None
        # (seq, macro_us, patterns): a restart of the same train reuses them
        self._pat = None if seq is None else (seq, macro_us, rmt_patterns(seq, macro_us))

    def start(self, seq, macro_us):
        pat = self._pat
        if pat is None or pat[0] is not seq or pat[1] != macro_us:
            pat = self._pat = (seq, macro_us, rmt_patterns(seq, macro_us))
        (en_l, en_d), (pol_l, pol_d) = pat[2]
        if len(en_l) > 126 or len(pol_l) > 126:
            raise ProgramError("pattern too long for a looping RMT channel")
        self.stop()
        self._pol = esp32.RMT(pin=self._pol_pin, resolution_hz=_RMT_HZ, idle_level=False)
        self._en = esp32.RMT(pin=self._en_pin, resolution_hz=_RMT_HZ, idle_level=False)
        self._pol.loop_count(-1)
        self._en.loop_count(-1)
        # POL first, EN second: EN lags by the start skew, which the pattern tolerates.
        self._pol.write_pulses(pol_d, pol_l)
        self._en.write_pulses(en_d, en_l)

    def stop(self):
        # EN first so the current path opens before POL is released.
        if self._en is not None:
            self._en.deinit()
            self._en = None
        if self._pol is not None:
            self._pol.deinit()
            self._pol = None
        self._en_pin.init(self._en_pin.OUT, value=0)
        self._pol_pin.init(self._pol_pin.OUT, value=0)


class SoftwareTimer:
    """Sub-1 Hz trains: the app calls update(sign) every loop with the sign the timeline
    gives for now (0 = off); edges land within one loop period (about a millisecond).
    on is the sign switched on (0: off) and t_on (ticks_us) when: the sampler times its
    conversions from the real edge, not the timeline's (a late loop moves both edges)."""

    def __init__(self, en_pin, pol_pin, ticks_us):
        self._en = en_pin
        self._pol = pol_pin
        self._ticks = ticks_us
        self.on = 0
        self.t_on = 0

    def start(self, seq, macro_us):
        self.on = 0

    def update(self, sign):
        if sign == self.on:
            return
        if self.on:
            # Off first: never reverse the bridge with current flowing, even if a loop was late.
            self._en.value(0)
            self.on = 0
        if sign:
            self._pol.value(1 if sign > 0 else 0)
            self._en.value(1)
            self.t_on = self._ticks()
            self.on = sign

    def stop(self):
        self._en.value(0)
        self._pol.value(0)
        self.on = 0

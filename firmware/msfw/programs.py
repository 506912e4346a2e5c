# Pulse programs, as data. Config selects one by name; every field is checked against the
# limits below, and a program the measurement cannot follow is refused, naming the field.
#
# Timing fields: freq_hz (pulse periods per second), phase_us (width of each phase),
# gap_us (between the + and - phase of a pair, train_n == 1), train_n (N positive pulses
# then N negative), train_on_ms / train_off_ms (bursts; 0 = continuous).
from micropython import const

_FREQ_MIN_HZ = const(0.3)
_FREQ_MAX_HZ = const(400.0)
_PHASE_MIN_US = const(100)
_GAP_MIN_US = const(100)  # POL changes in gaps: twice the worst RMT start skew
_CONVERSION_US = const(1163)  # one ADS1115 conversion at 860 SPS
# A phase long enough to hold two whole conversions (load, then current: 2 x 1.2 ms),
# with margin at both ends for the pattern's start uncertainty and the loop's latency.
_SYNC_PHASE_MIN_US = const(3500)
# Otherwise every conversion window must be at least this much "on" (dense trains).
_DENSE_MIN_ON_FRACTION = const(0.5)
# ... and some window must be this much one polarity: the sampler reads the load there.
_DENSE_ONE_POLARITY = const(0.75)

PROGRAMS = {
    # Slow "lift" train: long phases switched by the app (below 1 Hz, PWM and RMT cannot).
    "lift": {"freq_hz": 0.5, "phase_us": 600000, "gap_us": 200000, "train_n": 1,
             "train_on_ms": 0, "train_off_ms": 0},
    # Mid-frequency toning: 30 Hz biphasic, in 2 s bursts.
    "tone": {"freq_hz": 30, "phase_us": 5000, "gap_us": 1000, "train_n": 1,
             "train_on_ms": 2000, "train_off_ms": 1000},
    # Steady 10 Hz biphasic, the default.
    "steady": {"freq_hz": 10, "phase_us": 20000, "gap_us": 1000, "train_n": 1,
               "train_on_ms": 0, "train_off_ms": 0},
    # High-frequency: 400 Hz biphasic (phases shorter than an ADC conversion: dense).
    "fine": {"freq_hz": 400, "phase_us": 1000, "gap_us": 200, "train_n": 1,
             "train_on_ms": 0, "train_off_ms": 0},
    # Trains: 3 positive then 3 negative pulses at 100 Hz.
    "pulse3": {"freq_hz": 100, "phase_us": 4000, "gap_us": 0, "train_n": 3,
               "train_on_ms": 0, "train_off_ms": 0},
}

DEFAULT = "steady"


class ProgramError(ValueError):
    pass


def _field(p, name, lo, hi):
    v = p.get(name)
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise ProgramError("program.%s: missing or not a number" % name)
    if v < lo or v > hi:
        raise ProgramError("program.%s = %s is outside %s..%s" % (name, v, lo, hi))
    return v


def timeline(p):
    """(pulses, macro_us): pulses as (start_us, width_us, sign) within one macro period."""
    period = 1000000.0 / p["freq_hz"]
    ph = p["phase_us"]
    n = p["train_n"]
    if n <= 1:
        return [(0.0, ph, 1), (ph + p["gap_us"], ph, -1)], period
    seq = []
    for k in range(2 * n):
        seq.append((k * period, ph, 1 if k < n else -1))
    return seq, period * 2 * n


def _window_fractions(seq, macro_us, window_us):
    """(smallest on-fraction of any window of this length, largest fraction of a window
    that one polarity fills). Both extremes are reached with a window edge on a pulse edge."""
    edges = []
    for s, w, _ in seq:
        edges.append(s)
        edges.append(s + w)
    worst = 1.0
    best_one = 0.0
    for e in edges:
        for start in (e, e - window_us):
            pos = neg = 0.0
            for k in (-1, 0, 1):
                base = k * macro_us
                for s, w, sign in seq:
                    a = base + s
                    b = a + w
                    lo = a if a > start else start
                    hi = b if b < start + window_us else start + window_us
                    if hi > lo:
                        if sign > 0:
                            pos += hi - lo
                        else:
                            neg += hi - lo
            f = (pos + neg) / window_us
            if f < worst:
                worst = f
            one = (pos if pos > neg else neg) / window_us
            if one > best_one:
                best_one = one
    return worst, best_one


def min_on_fraction(seq, macro_us, window_us):
    """Smallest fraction of any window (of this length) during which the output is on."""
    return _window_fractions(seq, macro_us, window_us)[0]


def validate(p):
    """Check a program; returns it with derived fields (mode, duty)."""
    if not isinstance(p, dict):
        raise ProgramError("program: expected an object")
    f = _field(p, "freq_hz", _FREQ_MIN_HZ, _FREQ_MAX_HZ)
    ph = _field(p, "phase_us", _PHASE_MIN_US, 2000000)
    n = int(_field(p, "train_n", 1, 20))
    gap = _field(p, "gap_us", 0, 1000000)
    _field(p, "train_on_ms", 0, 60000)
    _field(p, "train_off_ms", 0, 60000)
    period = 1000000.0 / f
    if n == 1:
        if gap < _GAP_MIN_US:
            raise ProgramError("program.gap_us = %s: at least %d us between phases" % (gap, _GAP_MIN_US))
        if 2 * ph + gap + _GAP_MIN_US > period:
            raise ProgramError(
                "program.phase_us = %s: two phases and the gap must leave %d us in a %d us period"
                % (ph, _GAP_MIN_US, period))
    elif ph + _GAP_MIN_US > period:
        raise ProgramError("program.phase_us = %s: must leave %d us off in a %d us period"
                           % (ph, _GAP_MIN_US, period))
    seq, macro = timeline(p)
    on = 0.0
    for _, w, _ in seq:
        on += w
    out = dict(p)
    out["duty"] = on / macro
    out["software_timed"] = f < 1.0
    if ph >= _SYNC_PHASE_MIN_US:
        out["sampling"] = "sync"
    else:
        on_min, one_max = _window_fractions(seq, macro, _CONVERSION_US)
        if on_min < _DENSE_MIN_ON_FRACTION:
            raise ProgramError(
                "program.phase_us = %s: phases under %d us need a train dense enough that "
                "every %d us ADC window is at least half on" % (ph, _SYNC_PHASE_MIN_US, _CONVERSION_US))
        if one_max < _DENSE_ONE_POLARITY:
            # The load voltage (the short and contact checks) is read only in such a window.
            raise ProgramError(
                "program.phase_us = %s: a dense train must fill some %d us ADC window to 3/4 "
                "with one polarity, where the load voltage (the short check) is read"
                % (ph, _CONVERSION_US))
        out["sampling"] = "dense"
    return out


def get(name):
    p = PROGRAMS.get(name)
    if p is None:
        raise ProgramError("program: %r is not one of %s" % (name, ", ".join(sorted(PROGRAMS))))
    return validate(p)

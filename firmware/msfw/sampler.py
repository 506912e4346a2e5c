# When to measure, and what a measurement means.
#
# The firmware knows the pulse timeline exactly (it started the pattern), so it triggers
# single-shot ADS1115 conversions itself and knows which part of the pattern each one
# saw. "sync" programs (phases of 3.5 ms or more, room for two conversions): a conversion
# only starts if it fits inside one phase, so every sample is a true amplitude; each phase
# reads the load first, then the current (the load again at once if that first reading
# began late and reads like a short, or reads well below the last phase's: see poll), and
# the last conversion that fits reads the load again. A software-switched phase is timed
# from its real edges (the timer's), not the timeline's. "dense" programs (short phases,
# every window at least half on): conversions run one after another, each divided by the
# on-fraction of its window, computed from the timeline.
# Channels alternate: shunt (current), load voltage. The load voltage is electrode A minus
# electrode B, after the DC-blocking capacitor, each through its divider (ADS1115 AIN2 -
# AIN3 on the reference front end): signed, positive in a + phase, less the ADC's zero
# (the boot self-check's). Two ranges: up to 40 uA the PGA's +-0.256 V (+-4.1 V at the
# load, 0.13 mV rms of noise: 300 ohm x 5 uA is 1.5 mV), above it +-2.048 V (+-32.8 V,
# 1 mV rms). A dense window holding both polarities reads their difference, divided by
# the window's signed on-fraction. The load is read only in a window that starts inside
# its phase and is 5/8 that polarity: before a phase the skin's capacitance still holds
# the other polarity's charge, against the current, and a window from there can average
# across the skin's zero crossing to about 0 V (fine on 1k + 20k||47n read -140 ohm from
# 170 us before its - phase: a false short). From the phase's start the skin charges as
# an RC (concave: its mean is at least that of its ends), and after the phase (and early
# in the next) it holds this phase's charge, so the window reads about I x R_series or
# more; a short reads ~0 in any window. A conversion and its collection take 1.6 ms and
# the phases of fine start 1.2-1.3 ms apart, so the load is read every 3.7 ms there (the
# other polarity in turn), each time just after the current, which is timed to end where
# the load window begins: a current reading that spans the rest between periods (where
# the DAC changes: the soft start) would judge the load against an older level. Where a
# window lies still moves the reading (at 400 Hz, 2x over the phase): only one centred on
# its phase (within _CENTRE_US; a phase of 1.1 ms or more, not fine's) judges the impedance
# (v_z), and only if the level did not change in it.
#
# Hot path (poll): integers only, nothing allocated.
from array import array

from micropython import const

from msfw.ads1115 import FSR_V
from msfw.supervisor import Z_SHORT_OHM

_CONV_US = const(1163)  # 860 SPS
_WAKE_US = const(40)  # power-up from single-shot plus I2C latency
_MARGIN_US = const(150)  # pattern start uncertainty (RMT skew; software-switched: from the real edge)
_POLL_US = const(400)  # collecting a result and starting the next (two I2C transfers, the loop)
_REST_GUARD_US = const(60)  # software-switched phases move by up to a loop period
PGA_SHUNT = const(4)  # +-0.512 V: 512 uA through 1 kohm
_PGA_LOAD = const(2)  # +-2.048 V: +-32.8 V across the electrodes through 16:1 dividers
_PGA_LOAD_LO = const(5)  # +-0.256 V: +-4.1 V, for currents up to _LO_MAX_CU
_LO_MAX_CU = const(1280)  # 40 uA: 4.1 V is 102 kohm
_DENSE_LOAD_Q10 = const(640)  # 5/8 of a load window its phase's polarity (signed), from its start
_CENTRE_US = const(50)
_CYCLE_US = const(1600)  # a dense conversion's start to the next one's: the ADC, two reads, a write
_WRITE_US = const(60)  # a window starts at least this long after pos: the I2C write (90 us at 400 kHz)
_LATE_US = const(250)  # a phase's first conversion later than this past its margin: a late wake

CH_NONE = const(0)
CH_SHUNT = const(1)
CH_LOAD = const(2)


class Timeline:
    """On-intervals of one macro period in integer µs, from an origin in ticks_us."""

    def __init__(self, pulses, macro_us, lead_us, ticks_diff, ticks_add):
        self._diff = ticks_diff
        self._add = ticks_add
        self.set(pulses, macro_us, lead_us)

    def set(self, pulses, macro_us, lead_us=0):
        """(Re)defines the pattern (the engine reuses one Timeline for every recovery
        phase: nothing big is allocated while a session runs)."""
        self.macro_us = int(macro_us)
        iv = []
        for start, width, sign in pulses:
            a = int(start + lead_us)
            iv.append((a, a + int(width), sign))
        self.intervals = tuple(iv)
        # The rest of a period: after its last phase ends, before the next one's first.
        self.first_on = iv[0][0]
        last = 0
        for _, b, _ in iv:
            if b > last:
                last = b
        self.last_off = last
        self.origin = 0
        self.fit_start = 0  # start of the phase the last fits() found
        self.fit_end = 0  # and its end
        # Signed on-time at the pattern's extremes: the DC-blocking capacitor's charge
        # swings over [s_min, s_max] x current within a period (0 at its start and end).
        s = s_max = s_min = 0
        for a, b, sg in iv:
            s += (b - a) * sg
            if s > s_max:
                s_max = s
            if s < s_min:
                s_min = s
        self.s_mid = (s_max + s_min) // 2

    def start(self, origin_us):
        self.origin = origin_us

    def pos(self, now_us):
        # ticks_diff is only valid within half the ticks period (2**29 us on an ESP32,
        # 8.9 minutes): keep the origin within one macro period of now.
        m = self.macro_us
        d = self._diff(now_us, self.origin)
        if d >= m:
            k = d // m
            self.origin = self._add(self.origin, k * m)
            d -= k * m
        return d % m

    def in_rest(self, pos):
        """Between periods, with a guard for the pattern's start skew (tens of us)."""
        return pos < self.first_on - _REST_GUARD_US or pos >= self.last_off + _REST_GUARD_US

    def to_edge(self, pos):
        """Microseconds from pos to the next on or off edge."""
        best = self.macro_us - pos + self.first_on
        for a, b, _ in self.intervals:
            if a > pos and a - pos < best:
                best = a - pos
            if b > pos and b - pos < best:
                best = b - pos
        return best

    def signed_on(self, pos):
        """On-time (us) from the start of the period to pos, + phases adding and - phases
        subtracting: the charge into the DC-blocking capacitor is this x the current."""
        q = 0
        for a, b, s in self.intervals:
            if pos > a:
                q += ((b if pos > b else pos) - a) * s
        return q

    def sign_at(self, pos):
        for a, b, s in self.intervals:
            if a <= pos < b:
                return s
        return 0

    def fits(self, pos, length, margin):
        """Sign of the phase that holds [pos, pos+length] with `margin` at both ends."""
        for a, b, s in self.intervals:
            if a + margin <= pos and pos + length + margin <= b:
                self.fit_start = a
                self.fit_end = b
                return s
        return 0

    def centred(self, pos):
        """Sign of the phase whose centred conversion window starts within _CENTRE_US of
        pos, else 0."""
        m = self.macro_us
        for a, b, s in self.intervals:
            d = (pos - ((a + b - _CONV_US) >> 1)) % m
            if d <= _CENTRE_US or d >= m - _CENTRE_US:
                return s
        return 0

    def on_q10(self, pos, length, signed=False):
        """Fraction (Q10) of [pos, pos+length] during which the output is on; signed:
        + phases count positive, - phases negative."""
        on = 0
        end = pos + length
        m = self.macro_us
        for j in range(2):  # this macro period and the next (a tuple here would allocate)
            k = j * m
            for a, b, s in self.intervals:
                a += k
                b += k
                lo = a if a > pos else pos
                hi = b if b < end else end
                if hi > lo:
                    on += hi - lo if s > 0 or not signed else lo - hi
        return (on << 10) // length


class Sampler:
    CONV_WAIT_US = _CONV_US + _WAKE_US

    def __init__(self, board, adc, ticks_us, ticks_diff):
        self.adc = adc
        self.ticks_us = ticks_us
        self.diff = ticks_diff
        # ADS1115 MUX codes: the shunt single-ended, the load AIN<load_channel> - AIN3.
        self.shunt_mux = 4 + board.shunt_channel
        self.load_mux = board.load_channel + 1
        # raw code -> cu (1/32 uA) in Q8; raw code on the low range -> mV at the load in
        # Q12 (the high range is 8 x); the ADC's zero, mV at the load in Q12
        lsb_shunt_v = FSR_V[PGA_SHUNT] / 32768
        self.shunt_q8 = int(lsb_shunt_v / board.shunt_ohm * 1e6 * 32 * 256 + 0.5)
        self.div = board.load_divider
        self.load_q12 = int(FSR_V[_PGA_LOAD_LO] / 32768 * self.div * 1000 * 4096 + 0.5)
        self.zero_q12 = 0
        self.load_sh = 0  # 3 while a high-range load conversion runs
        self.cal_gain_q14 = 16384
        self.cal_offset_cu = 0
        self.timeline = None
        self.dense = False
        self.soft = None  # a software-switched pattern's timer (its real edges)
        self.busy = CH_NONE
        self.target_cu = 0  # the level a running conversion began at
        self.next_ch = CH_SHUNT
        self.phase_start = -1
        self.phase_pos = 0
        self.load_first = False
        self.phase_i = False  # the current has been read in this phase
        self.t_start = 0
        self.pos_start = 0
        self.sign = 0
        self.on_q10 = 1024  # for a load conversion: signed (its phase's sign, dense: the window's)
        # Latest results, read by the supervisor and the regulator.
        self.i_cu = 0  # amplitude (1/32 uA)
        self.i_sign = 0
        self.v_mv = 0  # load voltage during a phase (mV), in the phase's direction: < 0 opposes it
        self.v_z = True  # and whether it is good for judging the impedance
        self.late = 0  # the running load conversion is its phase's first (1), and started late (2)
        self.v_first = array("i", (0, 0))  # the last first-of-phase load reading, - and + phases
        self.z_next = True
        self.fresh = CH_NONE  # which channel the last poll() completed
        self.done_pos = 0  # where in the pattern the completed conversion started (us)
        self.stuck_us = 0  # how long a conversion has been overdue

    def set_calibration(self, gain_q14, offset_cu):
        self.cal_gain_q14 = gain_q14
        self.cal_offset_cu = offset_cu

    def set_zero(self, zero_uv):
        """The load sense's reading with the output off (uV at the ADC: its offset)."""
        self.zero_q12 = int(zero_uv * self.div * 4096 / 1000)

    def use(self, timeline, dense, soft, load_first):
        """soft: the SoftwareTimer of a software-switched pattern (None: hardware-timed).
        load_first: start every phase with the load channel (stimulating: a short or a
        lift shows there first); else with the current (probing: a stuck DAC does)."""
        self.timeline = timeline
        self.dense = dense
        self.load_first = load_first and not dense
        self.soft = soft
        self.v_first[0] = self.v_first[1] = 0
        self.on_q10 = 0  # (see stop)
        self.fresh = CH_NONE

    def stop(self):
        """A conversion still running saw the pattern that stopped: it is collected and
        dropped (its window's on-fraction set to 0), not abandoned. An ADS1115 ignores a
        start while it converts, so a new pattern's first reading would be that one."""
        self.timeline = None
        self.on_q10 = 0

    def poll(self, now, target_cu):
        """Collect a finished conversion and start the next when the pattern allows;
        target_cu: the current flowing (picks the load's range).

        Returns the channel completed now (CH_NONE if none). Allocation-free."""
        self.fresh = CH_NONE
        tl = self.timeline
        if tl is None:
            return CH_NONE
        adc = self.adc
        if self.busy != CH_NONE:
            late = self.diff(now, self.t_start) - (_CONV_US + _WAKE_US)
            if late < 0:
                return CH_NONE
            if adc.busy():
                self.stuck_us = late
                return CH_NONE
            self.stuck_us = 0
            raw = adc.read_raw()
            ch = self.busy
            self.busy = CH_NONE
            self.done_pos = self.pos_start
            f = self.on_q10
            if -256 < f < 256:  # too little of the window was on to mean anything
                self.fresh = CH_NONE
                return CH_NONE
            if ch == CH_SHUNT and target_cu != self.target_cu:
                # The level changed inside the window (a dense one can hold the rest between
                # periods, where the DAC changes): a mix of two currents, judged as neither
                # (an intensity wrap from 400 to 80 uA read 272 uA: a false overcurrent).
                ch = CH_NONE
            elif ch == CH_SHUNT:
                if raw < 0:
                    raw = 0
                cu = (raw * self.shunt_q8) >> 8
                cu = ((cu * self.cal_gain_q14) >> 14) + self.cal_offset_cu
                if f < 1024:
                    cu = (cu << 10) // f
                self.i_cu = cu
                self.i_sign = self.sign
            else:
                # mV, rounded (a floor, -0.5 mV on average, + phases down and - phases up, is
                # worth 50 ohm at 10 uA: with the sense's common-mode error it let a 500 ohm
                # load read like a short there)
                v = ((((raw << self.load_sh) * self.load_q12 - self.zero_q12) >> 2) + (f >> 1)) // f
                if self.late == 2 and (v if v > 0 else -v) * 1000 < Z_SHORT_OHM * self.i_cu // 32:
                    # It reads like a short, but it began late in its phase: the skin's
                    # voltage, against the current as the phase began (the other polarity's
                    # charge), may have crossed zero in the window and averaged out. Not
                    # reported: the load is read again at once, and that reading is judged
                    # (not for an impedance jump: no earlier period read the load there).
                    ch = CH_NONE
                    self.next_ch = CH_LOAD
                    self.z_next = False
                else:
                    self.v_mv = v
                    self.v_z = self.z_next and target_cu == self.target_cu  # (as above: the old level's)
                    self.z_next = True  # (a dense train sets it for each load window)
                    if self.late:
                        # A phase's first reading well below the last phase's of its sign:
                        # a short may have begun inside this window and be averaged with
                        # the skin before it. The load is read again at once (a phase with
                        # room for only two conversions would otherwise see it only in the
                        # next phase). Only after a reading with the current: the voltage
                        # only rises in a phase, so a window after one that averaged above
                        # zero is past the skin's zero crossing (a window straddling it
                        # would read like a short). A reading against the current (a big
                        # skin capacitance still charged from the other phase) is left to
                        # the phase's next load reading.
                        k = 1 if self.sign > 0 else 0
                        prev = self.v_first[k]
                        self.v_first[k] = v
                        if v > 0 and 4 * v < 3 * prev:
                            self.next_ch = CH_LOAD
                            self.z_next = False  # (judged for a short, as the late one's)
            self.fresh = ch
            # Where in the pattern we are is read again: collecting took two I2C transfers.
            now = self.ticks_us()
        # Start the next conversion if its whole window is usable.
        pos = tl.pos(now) + _WAKE_US
        if pos >= tl.macro_us:
            pos -= tl.macro_us
        ch = self.next_ch
        if self.dense:
            f = tl.on_q10(pos, _CONV_US)
            if f < 512:
                return self.fresh
            m = tl.macro_us
            p = (pos + _WRITE_US) % m
            sign = tl.sign_at(p)
            d = tl.to_edge(p)  # to the next phase's start
            if sign:
                d += tl.to_edge((p + d) % m)
            if ch == CH_LOAD and tl.on_q10(p, _CONV_US, True) * sign >= _DENSE_LOAD_Q10:
                self.z_next = tl.centred(p) != 0
            elif ch == CH_LOAD and d < _CONV_US:
                return self.fresh  # not a load window: it waits for the next phase's start
            else:
                # The current, timed to end where the load can be read next (the first phase
                # start a conversion cycle away, within _POLL_US / 2).
                while d < _CYCLE_US:
                    d += tl.to_edge((p + d) % m)
                    d += tl.to_edge((p + d) % m)
                if d > _CYCLE_US + _POLL_US // 2:
                    return self.fresh
                ch = CH_SHUNT
                sign = 1
        else:
            sign = tl.fits(pos, _CONV_US, _MARGIN_US)
            if sign == 0:
                return self.fresh
            f = 1024
            # How far into its phase the conversion starts (a software-switched phase:
            # from its real edge, which a late loop moves; the timeline's end stays: the
            # output goes off no earlier than it).
            since = pos - tl.fit_start
            sw = self.soft
            if sw is not None:
                if sw.on != sign:
                    return self.fresh
                since = self.diff(now, sw.t_on) + _WAKE_US
                if since < _MARGIN_US:
                    return self.fresh
        late = 0
        if not self.load_first and not self.dense and (tl.fit_start != self.phase_start or pos < self.phase_pos):
            ch = CH_SHUNT
        elif self.load_first and (tl.fit_start != self.phase_start or pos < self.phase_pos):
            # The first conversion of every phase reads the load: a short or a lift shows
            # there first; the current follows one conversion later.
            ch = CH_LOAD
            self.phase_i = False
            late = 2 if since > _MARGIN_US + _LATE_US else 1
        elif self.load_first and self.phase_i and pos + 2 * _CONV_US + _WAKE_US + _POLL_US + _MARGIN_US > tl.fit_end:
            # So does the last one that fits (once the current has been read): a short that
            # begins late in a phase is seen before the phase ends, not in the next one.
            ch = CH_LOAD
        self.late = late
        self.phase_start = tl.fit_start
        self.phase_pos = pos
        if ch == CH_SHUNT:
            adc.start(self.shunt_mux, PGA_SHUNT)
            self.next_ch = CH_LOAD
            self.phase_i = True
        else:
            lo = target_cu <= _LO_MAX_CU
            adc.start(self.load_mux, _PGA_LOAD_LO if lo else _PGA_LOAD)
            self.load_sh = 0 if lo else 3
            self.next_ch = CH_SHUNT
        t = self.ticks_us()
        self.busy = ch
        self.target_cu = target_cu
        self.t_start = t
        self.pos_start = pos
        self.sign = sign
        if self.dense:
            # The window really starts after the I2C write and the ADC's wake-up.
            p = tl.pos(t) + 25
            if p >= tl.macro_us:
                p -= tl.macro_us
            f = tl.on_q10(p, _CONV_US, ch == CH_LOAD)
        elif ch == CH_LOAD:
            f = 1024 * sign
        self.on_q10 = f
        return self.fresh

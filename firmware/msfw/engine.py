# A stimulation session: states, soft start, intensity, contact, auto-off, cue.
#
#   idle -> ramping -> stimulating -> done        (button, auto-off, host)
#                 \\-> paused (no contact) -> ramping again after stable contact
#   any -> fault (latched: the output stays off until a deliberate clear)
#
# tick() is the hot path: integers, no allocation, in steady state. Whatever has to be
# said (events) is queued as small ints and printed by the app's slow path.

import safe
from micropython import const

from msfw.sampler import CH_LOAD, CH_NONE, CH_SHUNT
from msfw.supervisor import (
    C_COMPLIANCE,
    C_LIFT,
    C_NONE,
    F_ADC,
    F_NONE,
    F_REGULATION,
    F_SELF_CHECK,
    F_USB,
)

S_IDLE = const(0)
S_RAMP = const(1)
S_STIM = const(2)
S_PAUSED = const(3)
S_DONE = const(4)
S_FAULT = const(5)
STATE_NAMES = ("idle", "ramping", "stimulating", "paused", "done", "fault")

# Events, queued as small ints on the hot path and named by the app's slow path.
E_STATE = const(0)
E_REFUSED = const(1)
E_INTENSITY = const(2)
E_END = const(3)
E_CLEARED = const(4)
E_FAULT = const(5)
E_CUE = const(6)
E_CONTACT_LOST = const(7)
E_CONTACT_OK = const(8)
EVENT_NAMES = ("state", "refused", "intensity", "end", "cleared", "fault", "cue",
               "contact_lost", "contact_ok")
END_BUTTON = const(0)
END_AUTO_OFF = const(1)
END_HOST = const(2)
END_NAMES = ("button", "auto_off", "host")
EVENT_SLOTS = const(32)

_PROBE_CU = const(320)  # 10 uA probe pulses while paused
_CONTACT_STABLE_MS = const(500)
_LEARN_MS = const(250)
_ADC_STUCK_US = const(4000)  # no ADC result for this long: the current is unknown (adc fault)
LEVELS = 5  # intensity steps: 1/5 .. 5/5 of the setpoint
# Charge recovery of the DC-blocking capacitor before a (re)start: one software-switched
# phase, skipped when shorter than REC_MIN_US, never longer than REC_MAX_US.
_REC_MIN_US = const(2000)
REC_MAX_US = const(3000000)


class Engine:
    def __init__(self, hw, cfg, cal="stored"):
        """cal: the device's calibration (calib.load()), read from flash by default
        (calib.STORED); None runs uncalibrated, at a reduced ceiling. The work is done by
        msfw.engsetup: it runs once per engine, so the app drops its code (heap)."""
        from msfw import engsetup

        engsetup.init(self, hw, cfg, cal)

    # ---- output control (not hot: runs on state changes) ---------------------------
    def _run(self, tl, timer):
        self._halt()
        self.tl = tl
        self.timer = timer
        self.software = tl.prog["software_timed"]
        now = self.hw.ticks_us()
        safe.set_armed(True)  # from here only the main loop feeds the watchdog
        timer.start(tl.seq, tl.macro_us)
        tl.start(now)
        self.sampler.use(tl, tl.prog["sampling"] == "dense", timer if self.software else None,
                         tl is self.main_tl)
        self.last_pos = 0

    def _halt(self, cut_pos=-1):
        """Output off at once: enable low first, then amplitude and polarity.

        cut_pos: where in the period the current stopped (default: now); the charge the
        cut period delivered stays on the DC-blocking capacitor and is booked."""
        hw = self.hw
        hw.en.value(0)
        tl = self.tl
        if tl is not None and self.lvl_cu and (self.burst_on or tl is not self.main_tl):
            # I x t / C, in 64 us steps so every product stays below 2**30
            pos = tl.pos(hw.ticks_us()) if cut_pos < 0 else cut_pos
            self.cb_uv += ((self.lvl_cu * (tl.signed_on(pos) >> 6)) << 1) // self.cb_c
        self.lvl_cu = 0
        self.rec_us = 0
        self.next_cu = -1
        hw.dac.write(0)
        self.dac_last = 0
        if self.timer is not None:
            self.timer.stop()
        self.timer = None
        self.tl = None
        self.sampler.stop()
        self.reg.set_target(0)
        self.reg.discard()
        safe.set_armed(False)

    def _emit(self, kind, value=0):
        n = self._ev_n
        if n < EVENT_SLOTS:
            self._ev_kind[n] = kind
            self._ev_val[n] = value
            self._ev_n = n + 1

    def drain(self):
        """The queued events as (kind, value) pairs; slow path (allocates)."""
        out = [(self._ev_kind[i], self._ev_val[i]) for i in range(self._ev_n)]
        self._ev_n = 0
        return out

    def _set_state(self, s):
        if s != self.state:
            self.state = s
            self._emit(E_STATE, s)

    def _ramp(self, now_ms, to_cu, fresh=False):
        """A soft start from the present target to to_cu, one step per macro period.

        fresh: the pattern has just (re)started with the output off; a software-timed one
        has not switched on yet, so its first step's code can be written now."""
        self.ramp_from = self.reg.target_cu
        self.ramp_to = to_cu
        self.ramp_t0 = now_ms
        self._set_state(S_RAMP)
        if fresh and self.software:
            self._ramp_step(now_ms)
            code = self.reg.dac_code()
            self.hw.dac.write(code)
            self.dac_last = code
            self.lvl_cu = self.reg.target_cu
        else:
            self.dac_pending = True  # the first step is taken in the next rest

    def _ramp_step(self, now_ms):
        """The level for the period that starts now: where the ramp is at its end."""
        el = self.hw.ticks_diff(now_ms, self.ramp_t0) + self.macro_ms
        if el >= self.ramp_ms:
            self.reg.set_target(self.ramp_to)
            self._set_state(S_STIM)
            self.reg.discard()
            self.last_learn = now_ms
        else:
            self.reg.set_target(self.ramp_from + (self.ramp_to - self.ramp_from) * el // self.ramp_ms)

    def level_target(self):
        t = self.setpoint_cu * self.level // LEVELS
        return t if t < self.limit_cu else self.limit_cu

    # ---- user and host actions ----------------------------------------------------------
    def start(self, now_ms):
        if self.state not in (S_IDLE, S_DONE):
            return False
        hw = self.hw
        if hw.usb_powered() and not hw.board.usb_isolated:
            self._emit(E_REFUSED, F_USB)
            return False
        if self.check_failed != F_NONE:
            self._emit(E_REFUSED, F_SELF_CHECK)
            return False
        self.t0_ms = now_ms
        self.ending = 0
        self.rec0_cu = 0
        self.last_cue = now_ms
        self.last_learn = now_ms
        self.burst_on = True
        self.burst_t0 = now_ms
        self.level = LEVELS
        self.limit_cu = self.setpoint_cu
        self.measured_q4 = self.level_target() << 4
        self.sup.reset_contact()
        self._begin(now_ms)
        return True

    def _begin(self, now_ms):
        """(Re)start the output. First one recovery phase brings the DC-blocking capacitor
        to the charge about which the program swings symmetrically at its full level: it
        drains whatever cut periods left (a lift, a pause, a stop) and centres the swing,
        so the capacitor never adds more than half a period's I x t / C to the voltage the
        source must drive (compliance; lift: 1.2 V at 400 uA, not 2.4 V). Its current is never above the soft start's first step (nor below the
        probe's 10 uA); then the soft start begins."""
        self.sup.reset_contact()  # nothing measured before is judged with what follows
        target = self.level_target()
        rec = self._rec_cu(target)
        if not self._recovery(self._centre(target) - self.cb_uv, rec, -1):
            self._main(now_ms)
            return
        if not self.rec0_cu:
            self.rec0_cu = rec
            self.rec0_code = self.dac_last
        self._set_state(S_RAMP)

    def _centre(self, target):
        """The capacitor voltage (uV) about which the program swings symmetrically."""
        return -((target * (self.main_tl.s_mid >> 6)) << 1) // self.cb_c

    def _rec_cu(self, target):
        """A recovery phase's current: the soft start's first step, at least the probe's."""
        rec = target * self.macro_ms // self.ramp_ms
        return rec if rec > _PROBE_CU else _PROBE_CU

    def _rec_us(self, err, rec):
        """How long a recovery phase at rec takes to move CBLOCK by err uV."""
        return abs(err) * self.cb_c * 32.0 / rec  # uV x uF / uA = us (off the hot path)

    def _recovery(self, err, rec, code):
        """Starts a recovery phase moving CBLOCK by err uV at rec (the DAC at code, or
        at what the regulator says if code < 0); False if too short to bother."""
        us = self._rec_us(err, rec)
        if us < _REC_MIN_US:
            return False
        us = int(us) if us < REC_MAX_US else REC_MAX_US
        sign = 1 if err > 0 else -1
        pattern = ((0, us, sign),)
        tl = self.rec_tl
        tl.set(pattern, us + 20000)
        tl.seq = tl.intervals
        self._run(tl, self.rec_timer)
        self.rec_us = us
        self.reg.set_target(rec)
        if code < 0:
            code = self.reg.dac_code()
        self.hw.dac.write(code)
        self.dac_last = code
        self.lvl_cu = rec
        self.timer.update(sign)  # on now, not at the next loop pass: timed from here
        self.rec_t0 = self.hw.ticks_us()
        return True

    def _main(self, now_ms):
        self._run(self.main_tl, self.main_timer)
        self.sup.reset_contact()
        self.reg.set_target(0)
        self.burst_on = True
        self.burst_t0 = now_ms
        self._ramp(now_ms, self.level_target(), True)

    def _recover(self, now_us, now_ms):
        """The recovery phase: current, lift and compliance checked as in stimulation."""
        hw = self.hw
        el = hw.ticks_diff(now_us, self.rec_t0)
        us = self.rec_us
        if el >= us:
            self._halt(el)  # booked as long as it really ran
            if self.ending == 2:
                self.stop(END_AUTO_OFF)
            else:
                self._main(now_ms)
            return
        tl = self.tl
        self.timer.update(tl.intervals[0][2])
        samp = self.sampler
        sup = self.sup
        ch = samp.poll(now_us, self.lvl_cu)
        if ch == CH_SHUNT:
            sup.check_current(samp.i_cu, 0, self.lvl_cu)
        elif ch == CH_LOAD:
            sup.check_load(samp.v_mv, samp.v_z)
        if samp.stuck_us > _ADC_STUCK_US:
            sup.trip(F_ADC, samp.stuck_us)
        if sup.fault != F_NONE:
            self._fault()
        elif sup.contact != C_NONE:
            if self.ending == 2:  # no contact to drain through: the session ends here
                self.stop(END_AUTO_OFF)
            else:
                self._pause(now_ms)

    def _drain(self):
        """The last recovery phase: CBLOCK back to 0 V, then auto-off."""
        self.ending = 2
        self._halt()
        self.sup.reset_contact()  # judged afresh at this current, as at a start
        rec = self.rec0_cu
        code = self.rec0_code
        if not rec:
            rec = self._rec_cu(self.level_target())
            code = -1
        if not self._recovery(-self.cb_uv, rec, code):
            self.stop(END_AUTO_OFF)

    def step_intensity(self, now_ms):
        """One step up; past the top it wraps to the lowest level, never higher."""
        if self.state not in (S_RAMP, S_STIM, S_PAUSED):
            return
        self.level = self.level + 1 if self.level < LEVELS else 1
        self._emit(E_INTENSITY, self.level)
        if self.state == S_PAUSED:
            return
        t = self.level_target()
        if t > self.reg.target_cu:
            self._ramp(now_ms, t)  # every increase gets a fresh soft start
        else:
            # A decrease takes effect where the DAC may change (the next rest): until then
            # the current flowing is still the old level's, and is judged against it.
            self.ramp_to = t
            self.next_cu = t
            self.dac_pending = True

    def stop(self, reason=END_BUTTON):
        if self.state in (S_RAMP, S_STIM, S_PAUSED):
            self._halt()
            self._emit(E_END, reason)
            self._set_state(S_DONE)

    def clear_fault(self):
        if self.state == S_FAULT:
            self.sup.fault = F_NONE
            self._emit(E_CLEARED, 0)
            self._set_state(S_IDLE)

    def apply_self_check(self, result):
        """The boot self-check's verdict (calib.self_check): a failure latches a fault and
        refuses every session until the next boot checks again."""
        if not result.get("ok", False):
            self.check_failed = F_SELF_CHECK
            self.trip(F_SELF_CHECK, result.get("code", 0))
        else:
            self.sampler.set_zero(result["adc_zero_uv"][1])

    def trip(self, code, value=0):
        """A fault from outside the hot checks (I2C error, USB power)."""
        self.sup.trip(code, value)
        self._fault()

    def _fault(self):
        self._halt()
        self._emit(E_FAULT, self.sup.fault)
        self._set_state(S_FAULT)

    # ---- the loop ---------------------------------------------------------------------
    def tick(self, now_us, now_ms):
        st = self.state
        if st == S_IDLE or st == S_DONE or st == S_FAULT:
            return
        hw = self.hw
        if hw.usb_powered() and not hw.board.usb_isolated:
            self.trip(F_USB)
            return
        el = hw.ticks_diff(now_ms, self.t0_ms)
        if el >= self.duration_ms:
            self.stop(END_AUTO_OFF)
            return
        if not self.ending and el >= self.duration_ms - self.drain_ms:
            self.ending = 1  # the drain begins where the running period ends
        if self.cue_ms and hw.ticks_diff(now_ms, self.last_cue) >= self.cue_ms:
            self.last_cue = now_ms
            self._emit(E_CUE, 0)
        tl = self.tl
        if st == S_PAUSED:
            self._probe(now_us, now_ms)
            return
        if self.rec_us:
            self._recover(now_us, now_ms)
            return
        pos = tl.pos(now_us)
        if pos < self.last_pos:
            self.sup.period_end()
            self.new_period = True
        self.last_pos = pos
        if self.ending == 1 and self.tl is self.main_tl and (not self.burst_on or tl.in_rest(pos)):
            self._drain()
            return
        if not self._burst(now_ms):
            return
        if self.software:
            self.timer.update(tl.sign_at(pos))
        sup = self.sup
        samp = self.sampler
        ch = samp.poll(now_us, self.lvl_cu)
        steady = st == S_STIM
        if ch == CH_SHUNT:
            sup.check_current(samp.i_cu, samp.i_sign, self.reg.target_cu)
            if steady:
                self.reg.sample(samp.i_cu)
                # What the firmware itself measures, smoothed over about 64 samples (Q4).
                self.measured_q4 += ((samp.i_cu << 4) - self.measured_q4) >> 6
        elif ch == CH_LOAD:
            sup.check_load(samp.v_mv, samp.v_z)
        if samp.stuck_us > _ADC_STUCK_US:
            sup.trip(F_ADC, samp.stuck_us)
        if sup.fault != F_NONE:
            self._fault()
            return
        if sup.contact != C_NONE:
            self._pause(now_ms)
            return
        # Learning in steady state; the soft start steps where the DAC is written below.
        if st == S_STIM and self.new_period and hw.ticks_diff(now_ms, self.last_learn) >= _LEARN_MS:
            # Learn where a period begins, just before its DAC code is computed: every
            # sample gathered since the last step was taken with the code that step set.
            self.last_learn = now_ms
            if not self.reg.learn(8):
                sup.trip(F_REGULATION, self.reg.gain_q14)
                self._fault()
                return
            sup.balance_window()
            if sup.fault != F_NONE:
                self._fault()
                return
        # The amplitude changes only in the rest between macro periods (each a +/- pair or
        # train): both polarities of a period get the same DAC code, so neither the soft
        # start, the dither nor a learning step can unbalance its charge. Where in the
        # pattern we are is read again now: the sampler's I2C transfers took time.
        if self.new_period:
            self.new_period = False
            self.dac_pending = True
        if self.dac_pending and tl.in_rest(tl.pos(hw.ticks_us())):
            self.dac_pending = False
            if self.next_cu >= 0:
                self.reg.set_target(self.next_cu)
                self.next_cu = -1
            if self.state == S_RAMP:
                # The target moves with the code, so the checks always judge the current
                # against the level it was set for.
                self._ramp_step(now_ms)
            code = self.reg.dac_code()
            if code != self.dac_last:
                # The latest current sample scaled to the new code: the next load sample
                # (the first of a phase) is judged against the current it will see, so a
                # ramp step is not taken for an impedance jump.
                if self.dac_last > 0:
                    sup.i_cu = sup.i_cu * code // self.dac_last
                hw.dac.write(code)
                self.dac_last = code
            self.lvl_cu = self.reg.target_cu

    def _burst(self, now_ms):
        """Burst programs: on for train_on_ms, off for train_off_ms (ms accuracy)."""
        on_ms = self.program["train_on_ms"]
        if not on_ms or self.tl is not self.main_tl:
            return True
        el = self.hw.ticks_diff(now_ms, self.burst_t0)
        # A burst ends only where a period begins: a +/- pair is never cut in half.
        if self.burst_on and el >= on_ms and self.new_period:
            self.burst_on = False
            self.burst_t0 = now_ms
            self.timer.stop()
            self.hw.en.value(0)
            self.sampler.on_q10 = 0  # a conversion running now is dropped (Sampler.stop)
            self.reg.discard()
        elif not self.burst_on and el >= self.program["train_off_ms"]:
            self.burst_on = True
            self.burst_t0 = now_ms
            self.timer.start(self.tl.seq, self.tl.macro_us)
            self.tl.start(self.hw.ticks_us())
            self.last_pos = 0
        return self.burst_on

    def wait_us(self, now_us):
        """How long the app may sleep: until the pending conversion is due; 200 us while
        a phase is on and the ADC idle (its first conversion starts early in the phase); 100 us
        in a dense train; else 1 ms; and never past the pattern's next edge (sync trains): a phase's first
        conversion starts as early in it as the margin allows (a short early in a 5 ms phase
        is then seen in that phase), and a software-timed program switches on time, so both
        edges of every phase land equally late and the + and - phases last the same."""
        samp = self.sampler
        tl = self.tl
        w = 1000
        if samp.dense:
            # A dense train's load waits for a window with one polarity in it, and its
            # short rests (where the DAC may change) must not be slept through.
            w = 100
        elif samp.busy:
            left = samp.CONV_WAIT_US - self.hw.ticks_diff(now_us, samp.t_start)
            if left < 1000:
                w = left if left > 50 else 50
        elif tl is not None and tl.sign_at(tl.pos(now_us)) != 0:
            w = 200
        if tl is not None and not samp.dense:
            e = tl.to_edge(tl.pos(now_us))
            if e < w:
                w = e if e > 0 else 1
        if self.rec_us:  # a recovery phase ends when its charge is there, not at an edge
            e = self.rec_us - self.hw.ticks_diff(now_us, self.rec_t0)
            if e < w:
                w = e if e > 0 else 1
        return w

    def _pause(self, now_ms):
        self.pause_reason = c = self.sup.contact
        self._emit(E_CONTACT_LOST, c)
        # A lift (or compliance) stopped the current before the conversion that saw it
        # ended: the period's charge is booked up to where that conversion began.
        samp = self.sampler
        self._halt(samp.done_pos if (c == C_LIFT or c == C_COMPLIANCE) and samp.fresh != CH_NONE else -1)
        self._set_state(S_PAUSED)
        self.sup.reset_contact()
        self.good_since = 0
        self.compliance_limited = False
        self._run(self.probe_tl, self.probe_timer)
        self.reg.set_target(_PROBE_CU)

    def _probe(self, now_us, now_ms):
        """Paused: 10 uA probe pulses until the contact has been good for a while."""
        samp = self.sampler
        ch = samp.poll(now_us, _PROBE_CU)
        hw = self.hw
        if samp.stuck_us > _ADC_STUCK_US:
            self.trip(F_ADC, samp.stuck_us)
            return
        tl = self.tl
        if tl.in_rest(tl.pos(hw.ticks_us())):  # probe pairs stay balanced too
            code = self.reg.dac_code()
            if code != self.dac_last:
                hw.dac.write(code)
                self.dac_last = code
            self.lvl_cu = self.reg.target_cu
        if ch == CH_NONE:
            return
        sup = self.sup
        good = True
        if ch == CH_SHUNT:
            # The probe current is checked like any other: a stuck DAC trips here too.
            sup.check_current(samp.i_cu, 0, _PROBE_CU)
            good = samp.i_cu * 10 >= _PROBE_CU * 7
        elif ch == CH_LOAD:
            v = samp.v_mv if samp.v_mv > 0 else -samp.v_mv
            good = v < sup.compliance_mv
            if good and sup.i_cu:
                sup.check_load(v)
        if sup.fault != F_NONE:
            self._fault()
            return
        sup.contact = C_NONE  # while paused, contact is judged here, not by the checks
        if not good:
            self.good_since = 0
            return
        if self.good_since == 0:
            self.good_since = now_ms
            return
        if hw.ticks_diff(now_ms, self.good_since) < _CONTACT_STABLE_MS:
            return
        # Stable contact: what current can this load take within compliance?
        if ch == CH_LOAD and samp.i_cu > 0:
            v = samp.v_mv if samp.v_mv > 0 else -samp.v_mv
            max_cu = self.sup.compliance_mv * 8 // 10 * _PROBE_CU // (v if v > 0 else 1)
            self.compliance_limited = max_cu < self.setpoint_cu
            self.limit_cu = max_cu if self.compliance_limited else self.setpoint_cu
        elif ch != CH_LOAD:
            return
        self._emit(E_CONTACT_OK, self.pause_reason)
        self._begin(now_ms)

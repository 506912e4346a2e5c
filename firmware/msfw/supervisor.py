# The safety supervisor: checks every fresh measurement against limits that come from
# the board and the firmware, never from user config (SAFETY.md guarantees 1, 2, 3, 5).
#
# check_current / check_load run on the hot path: integers only, nothing allocated.
# They only set codes; the session acts on them at once (output off) and the slow path
# turns them into events.
from micropython import const

# Faults latch: the output stays off until a deliberate user action clears them.
F_NONE = const(0)
_F_OVERCURRENT = const(1)  # above the setpoint margin or the ceiling (also a stuck DAC)
F_SHORT = const(2)  # load impedance below any skin's
F_ADC = const(3)  # the current cannot be measured
_F_CHARGE = const(4)  # the two polarities deliver different charge
F_REGULATION = const(5)  # the front end does not respond as its board says
F_USB = const(6)  # USB power on a board whose link is not isolated
F_SELF_CHECK = const(7)  # the boot self-check found the ADC zero or the DAC zero out of tolerance
F_HEAP = const(8)  # out of memory while the output was on: off, latched, reported

FAULT_NAMES = ("none", "overcurrent", "short_circuit", "adc", "charge_imbalance",
               "regulation", "usb_power", "self_check", "heap")

# Contact events pause the output; it resumes after stable contact, with a soft start.
C_NONE = const(0)
C_LIFT = const(1)  # current collapsed: the circuit opened
C_COMPLIANCE = const(2)  # the source ran out of voltage: lift-off or too high a load
_C_JUMP = const(3)  # the impedance rose suddenly: partial contact concentrates current

CONTACT_NAMES = ("none", "lift_off", "compliance", "impedance_jump")

Z_SHORT_OHM = const(300)  # lowest credible electrode-gel-skin impedance (msfw.sampler too)
_MARGIN_CU = const(320)  # 10 uA over the target is always allowed (noise, dither)
_MIN_CHECK_CU = const(160)  # below 5 uA a missing current is not yet meaningful
# Below 8 uA a load reading is not judged: the electrode sense's common-mode error (the
# dividers' 0.4 % worst-case mismatch x VBIAS, 1.3 mV) would leave 500 ohm x I too close
# to 300 ohm x I.
_MIN_LOAD_CU = const(256)
_JUMP_MIN_CU = const(640)  # 20 uA
_JUMP_NUM = const(8)  # impedance above 8/5 (1.6x) its reference is a jump
_JUMP_DEN = const(5)


class Supervisor:
    def __init__(self, board, ceiling_ua=None):
        """ceiling_ua: the ceiling in force (an uncalibrated board runs below the board's)."""
        self.ceiling_cu = int((board.ceiling_ua if ceiling_ua is None else ceiling_ua) * 32)
        self.compliance_mv = int(board.compliance_v * 900)  # 90 % of compliance
        self.fault = F_NONE
        self.fault_value = 0
        self.contact = C_NONE
        self.z_ref = 0  # reference impedance (ohm), 0 until known
        self.z_peak = 0  # highest impedance seen in the current macro period
        self.i_cu = 0
        self.pos_sum = 0
        self.pos_n = 0
        self.neg_sum = 0
        self.neg_n = 0
        self.imbalanced = 0

    def reset_contact(self):
        self.contact = C_NONE
        self.z_ref = 0
        self.z_peak = 0
        self.i_cu = 0  # a load sample must never be judged against a current from before

    def trip(self, code, value):
        if self.fault == F_NONE:
            self.fault = code
            self.fault_value = value

    def check_current(self, i_cu, sign, target_cu):
        """A fresh amplitude sample of the current."""
        self.i_cu = i_cu
        limit = target_cu + (target_cu >> 3) + _MARGIN_CU  # 112.5 % + 10 uA
        # The command never exceeds the ceiling; the trip allows the measurement's own
        # tolerance above it (5 % + 10 uA), so a setpoint at the ceiling can run.
        top = self.ceiling_cu + (self.ceiling_cu >> 5) + (self.ceiling_cu >> 6) + _MARGIN_CU
        if limit > top:
            limit = top
        if i_cu > limit:
            self.trip(_F_OVERCURRENT, i_cu)
            return
        if target_cu >= _MIN_CHECK_CU and i_cu < (target_cu >> 1):
            self.contact = C_LIFT
            return
        if sign > 0:
            self.pos_sum += i_cu
            self.pos_n += 1
        elif sign < 0:
            self.neg_sum += i_cu
            self.neg_n += 1

    def check_load(self, v_mv, z_ok=True):
        """A fresh sample of the load voltage, with the latest current sample.

        The reading is the voltage across the electrodes, after the DC-blocking capacitor
        (the sampler's v_mv, in the direction of the phase's current). Its size is judged:
        skin still charged from the other phase reads against the current for a moment,
        which no short can hold. A short is what no load of Z_SHORT_OHM or more can read.
        z_ok: the sample is good for judging the impedance (a jump) too."""
        if v_mv < 0:
            v_mv = -v_mv
        if v_mv >= self.compliance_mv:
            self.contact = C_COMPLIANCE
            return
        i = self.i_cu
        if i < _MIN_LOAD_CU:
            return
        if v_mv * 1000 < Z_SHORT_OHM * i // 32:  # uV; all below 2**30
            self.trip(F_SHORT, v_mv)
            return
        if i < _JUMP_MIN_CU or not z_ok:
            return  # a few uA give too coarse an impedance to judge a jump by
        z = (v_mv * 4000) // (i >> 3)  # ohm; every product stays below 2**30
        # Within a phase the impedance seen rises with the skin's capacitance, up to a
        # peak; the reference is that peak over earlier periods, so a single sample well
        # above it is already a jump: stop at once, not at the end of the period.
        ref = self.z_ref
        if ref and z * _JUMP_DEN > ref * _JUMP_NUM:
            self.contact = _C_JUMP
            return
        if z > self.z_peak:
            self.z_peak = z

    def period_end(self):
        """Once per macro period: impedance jump against the reference."""
        z = self.z_peak
        self.z_peak = 0
        if z == 0:
            return
        ref = self.z_ref
        if ref and z * _JUMP_DEN > ref * _JUMP_NUM:
            self.contact = _C_JUMP
            return
        # The reference follows slow drift (gel drying), not jumps.
        self.z_ref = z if ref == 0 else ref + ((z - ref) >> 3)

    def balance_window(self):
        """Once per regulation window: the two polarities must carry equal current."""
        pn = self.pos_n
        nn = self.neg_n
        if pn >= 4 and nn >= 4:
            a = self.pos_sum // pn
            b = self.neg_sum // nn
            hi = a if a > b else b
            if (a - b if a > b else b - a) * 20 > hi:  # more than 5 % apart
                self.imbalanced += 1
                if self.imbalanced >= 3:
                    self.trip(_F_CHARGE, a - b)
            else:
                self.imbalanced = 0
        self.pos_sum = self.neg_sum = self.pos_n = self.neg_n = 0

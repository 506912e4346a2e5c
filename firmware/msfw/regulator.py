# Closed-loop amplitude: feed-forward from the DAC-to-current line (the board's nominal
# gain, or the device's calibration), scaled by a correction the loop learns from measured
# amplitudes, dithered so the mean over a train is finer than one DAC step.
#
# Hot path (step, dac_code): integers only, nothing allocated; every intermediate stays
# below 2**30 so the ESP32's 31-bit small ints never spill into heap-allocated big ints.
# Units: current in cu = 1/32 uA (400 uA = 12800, 1 mA = 32000); DAC in Q8 codes.
from micropython import const

_CU_PER_UA = const(32)
_ONE_Q14 = const(16384)
# Learned gain correction bounds: outside them the front end is not what the board
# definition says, and the supervisor refuses to go on (fault "regulation").
_GAIN_MIN_Q14 = const(11469)  # 0.70
_GAIN_MAX_Q14 = const(23406)  # 1.43
_STEP_MAX_Q14 = const(328)  # at most 2 % per learning step
# Until it has learned, an uncalibrated loop assumes the source gives 8 % more than
# nominal: it approaches the target from below instead of overshooting by the board's
# gain error. A calibrated one knows the line to a fraction of a percent.
_START_GAIN_Q14 = const(15073)  # 0.92
_START_GAIN_CAL_Q14 = const(16056)  # 0.98


def fine_shift(ratio):
    """Bits a fine DAC channel scaled by `ratio` adds: the largest n with 2**n <= 1/ratio."""
    n = 0
    while n < 8 and (2 << n) * ratio <= 1.0001:
        n += 1
    return n


def dac_scale(board):
    """(max_code, codes per DAC full scale) of the amplitude DAC, as hw.py writes it."""
    if board.dac_kind == "internal_dual":
        n = 1 << fine_shift(board.dac_fine_ratio)
        return 255 * n + n - 1, 255 * n
    full = (1 << board.dac_bits) - 1
    return full, full


class Regulator:
    def __init__(self, board, ceiling_ua=None, cal=None):
        self.dac_max, full = dac_scale(board)
        if cal:
            ua_per_code = cal["dac_ua_per_code"]
            offset_ua = cal["dac_offset_ua"]
            start = _START_GAIN_CAL_Q14
        else:
            ua_per_code = board.gain_ua_per_v * board.dac_vref_v / full
            offset_ua = 0.0
            start = _START_GAIN_Q14
        ceiling = board.ceiling_ua if ceiling_ua is None else ceiling_ua
        # Never command more than the ceiling (plus 5 % for the learned gain).
        self.cmd_max_cu = int(ceiling * 1.05 * _CU_PER_UA)
        # Q8 DAC codes per cu, scaled by 2**ff_shift: dac_q8 = cmd_cu * ff >> ff_shift,
        # with the largest shift that keeps cmd_max x ff below 2**29.
        per_cu = 256 / (_CU_PER_UA * ua_per_code)
        sh = 16
        while sh > 0 and (self.cmd_max_cu + 64) * per_cu * (1 << sh) >= (1 << 29):
            sh -= 1
        self.ff_shift = sh
        self.ff = int(per_cu * (1 << sh) + 0.5)
        # current = ua_per_code x code + offset_ua, so code = (current - offset) / ua_per_code.
        self.offset_cu = -int(offset_ua * _CU_PER_UA + (0.5 if offset_ua >= 0 else -0.5))
        self.gain_q14 = start
        self.target_cu = 0
        self._sd = 0  # sigma-delta remainder (Q8)
        self._acc_cu = 0
        self._acc_n = 0
        self._acc_target = 0

    def set_target(self, target_cu):
        self.target_cu = target_cu

    def dac_code(self):
        """The DAC code for this instant: target x learned gain, dithered."""
        t = self.target_cu
        if t <= 0:
            self._sd = 0
            return 0
        cmd = t * self.gain_q14 >> 14
        if cmd > self.cmd_max_cu:
            cmd = self.cmd_max_cu
        cmd += self.offset_cu
        if cmd <= 0:
            return 0
        q8 = cmd * self.ff >> self.ff_shift
        code = q8 >> 8
        self._sd += q8 & 0xFF
        if self._sd >= 256:
            self._sd -= 256
            # One code up must keep the phase within 105 % of the mean it dithers around
            # (1 + 1/32 + 1/64 = 1.047): true wherever the mean is at least ~21 codes; below
            # that (an 8-bit DAC under ~50 uA) the phase stays at the lower code.
            if (code + 1) << 8 <= q8 + (q8 >> 5) + (q8 >> 6):
                code += 1
        if code > self.dac_max:
            code = self.dac_max
        return code

    def sample(self, amplitude_cu):
        """A measured amplitude while in steady contact at the present target."""
        self._acc_cu += amplitude_cu
        self._acc_n += 1
        self._acc_target += self.target_cu

    def discard(self):
        """Drop what was gathered: not steady (ramp, contact change, compliance)."""
        self._acc_cu = 0
        self._acc_n = 0
        self._acc_target = 0

    def learn(self, min_samples):
        """After enough steady samples, move the gain toward measured = target.

        Returns False when the correction would leave its bounds (a front-end fault)."""
        n = self._acc_n
        if n < min_samples:
            return True
        meas = self._acc_cu // n
        tgt = self._acc_target // n
        self.discard()
        if tgt <= 0 or meas <= 0:
            return True
        # gain' = gain * tgt / meas, limited per step; (gain >> 4) keeps products < 2**30.
        err = tgt - meas
        step = ((self.gain_q14 >> 4) * err // tgt) << 4
        step = step >> 1  # half the estimated error: noise does not rattle the gain
        if step > _STEP_MAX_Q14:
            step = _STEP_MAX_Q14
        elif step < -_STEP_MAX_Q14:
            step = -_STEP_MAX_Q14
        g = self.gain_q14 + step
        if g < _GAIN_MIN_Q14 or g > _GAIN_MAX_Q14:
            return False
        self.gain_q14 = g
        return True

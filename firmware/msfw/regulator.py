# Closed-loop amplitude: feed-forward from the board's nominal DAC-to-current gain,
# scaled by a correction the loop learns from measured amplitudes, dithered so the mean
# over a train is finer than one DAC step.
#
# Hot path (step, dac_code): integers only, nothing allocated; every intermediate stays
# below 2**30 so the ESP32's 31-bit small ints never spill into heap-allocated big ints.
# Units: current in cu = 1/32 uA (400 uA = 12800, 1 mA = 32000); DAC in Q8 codes.
from micropython import const

CU_PER_UA = const(32)
ONE_Q14 = const(16384)
# Learned gain correction bounds: outside them the front end is not what the board
# definition says, and the supervisor refuses to go on (fault "regulation").
GAIN_MIN_Q14 = const(11469)  # 0.70
GAIN_MAX_Q14 = const(23406)  # 1.43
STEP_MAX_Q14 = const(328)  # at most 2 % per learning step
# Until it has learned, the loop assumes the source gives 8 % more than nominal: it
# approaches the target from below instead of overshooting by the board's gain error.
START_GAIN_Q14 = const(15073)  # 0.92


class Regulator:
    def __init__(self, board, cal_gain_q14=START_GAIN_Q14, cal_offset_cu=0):
        ua_per_code = board.gain_ua_per_v * board.dac_vref_v / ((1 << board.dac_bits) - 1)
        # Q8 DAC codes per cu, in Q12: dac_q8 = cmd_cu * ff_q12 >> 12
        self.ff_q12 = int(4096 * 256 / (CU_PER_UA * ua_per_code) + 0.5)
        self.dac_max = (1 << board.dac_bits) - 1
        # Never command more than the board's ceiling (plus 5 % for the learned gain).
        self.cmd_max_cu = int(board.ceiling_ua * 1.05 * CU_PER_UA)
        self.gain_q14 = cal_gain_q14
        self.offset_cu = cal_offset_cu
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
        cmd = (t * self.gain_q14 >> 14) + self.offset_cu
        if cmd > self.cmd_max_cu:
            cmd = self.cmd_max_cu
        if cmd <= 0:
            return 0
        q8 = cmd * self.ff_q12 >> 12
        code = q8 >> 8
        self._sd += q8 & 0xFF
        if self._sd >= 256:
            self._sd -= 256
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
        if step > STEP_MAX_Q14:
            step = STEP_MAX_Q14
        elif step < -STEP_MAX_Q14:
            step = -STEP_MAX_Q14
        g = self.gain_q14 + step
        if g < GAIN_MIN_Q14 or g > GAIN_MAX_Q14:
            return False
        self.gain_q14 = g
        return True

# The device application: one cooperative loop (no threads, no asyncio) so the order of
# safety checks is fixed and every step is visible in virtual time.
#
# This is the foundation version: button-started sessions with soft start, a simple
# measured-current correction, auto-off and relocation cue. The regulator and the safety
# supervisor grow in msfw.regulator / msfw.supervisor.
import json

from msfw import VERSION, pulse
from msfw import board as boardmod
from msfw.ads1115 import pga_for, rate_code
from msfw.hw import Hardware

DEFAULTS = {
    "setpoint_ua": 200,
    "freq_hz": 10,
    "phase_us": 20000,
    "gap_us": 1000,
    "train_n": 1,
    "duration_s": 600,
    "cue_s": 5,
    "soft_start_ms": 2000,
}
MAX_DURATION_S = 1200  # auto-off: never more than 20 minutes
LOOP_MS = 1


def load_config(board):
    cfg = dict(DEFAULTS)
    try:
        with open("/config.json") as f:
            user = json.loads(f.read())
        for k in DEFAULTS:
            if k in user:
                cfg[k] = user[k]
    except (OSError, ValueError):
        pass
    # Config can lower the ceilings, never raise them.
    if cfg["setpoint_ua"] > board.ceiling_ua:
        cfg["setpoint_ua"] = board.ceiling_ua
    if cfg["duration_s"] > MAX_DURATION_S:
        cfg["duration_s"] = MAX_DURATION_S
    return cfg


def emit(kind, **fields):
    fields["ev"] = kind
    print(json.dumps(fields))


class Session:
    """One stimulation session: soft start, correction from the shunt, auto-off."""

    def __init__(self, hw, cfg):
        self.hw = hw
        self.cfg = cfg
        b = hw.board
        self.ua_per_code = b.gain_ua_per_v * b.dac_vref_v / ((1 << b.dac_bits) - 1)
        self.setpoint_ua = cfg["setpoint_ua"]
        seq, macro_us = pulse.pulses(cfg["freq_hz"], cfg["phase_us"], cfg["gap_us"], cfg["train_n"])
        self.seq = seq
        self.macro_us = macro_us
        on_us = 0
        for _, w, _ in seq:
            on_us += w
        self.duty = on_us / macro_us
        if cfg["freq_hz"] >= 1:
            self.timer = pulse.HardwareTimer(hw.en, hw.pol)
            self.soft = None
        else:
            self.timer = None
            self.soft = pulse.SoftwareTimer(hw.en, hw.pol)
        self.code_f = 0.0
        self.acc_v = 0.0
        self.acc_n = 0
        self.sum_ua = 0.0
        self.sum_n = 0
        self.state = "idle"
        self.t0 = 0
        self.last_cue = 0
        self.window_ms = max(50, int(macro_us // 1000))
        self.win_t0 = 0

    def start(self, now):
        hw = self.hw
        pga = pga_for(self.hw.board.ceiling_ua * 1.5e-6 * hw.board.shunt_ohm)
        hw.adc.configure(hw.board.shunt_channel, pga, rate_code(860), True)
        hw.dac.write(0)
        if self.timer is not None:
            self.timer.start(self.seq, self.macro_us)
        else:
            self.soft.start(self.seq, self.macro_us, now)
        self.state = "ramping"
        self.t0 = now
        self.last_cue = now
        self.win_t0 = now
        emit("session_start", setpoint_ua=self.setpoint_ua, freq_hz=self.cfg["freq_hz"])

    def target_ua(self, elapsed_ms):
        ramp = self.cfg["soft_start_ms"]
        if elapsed_ms >= ramp:
            return self.setpoint_ua
        return self.setpoint_ua * elapsed_ms / ramp

    def stop(self, reason):
        hw = self.hw
        if self.timer is not None:
            self.timer.stop()
        if self.soft is not None:
            self.soft.stop()
        hw.output_off()
        if hw.buzzer is not None:
            hw.buzzer.tone(False)
        mean = self.sum_ua / self.sum_n if self.sum_n else 0.0
        emit("session_end", reason=reason, measured_ua=round(mean, 2), setpoint_ua=self.setpoint_ua)
        self.state = "done"

    def step(self, now):
        hw = self.hw
        elapsed = hw.ticks_diff(now, self.t0)
        if elapsed >= self.cfg["duration_s"] * 1000:
            self.stop("auto_off")
            return
        if self.soft is not None:
            self.soft.update(elapsed)
        target = self.target_ua(elapsed)
        if self.state == "ramping" and elapsed >= self.cfg["soft_start_ms"]:
            self.state = "stimulating"
        # Shunt voltage, averaged over whole pulse periods: mean |I| = duty x amplitude.
        self.acc_v += hw.adc.read_v()
        self.acc_n += 1
        if hw.ticks_diff(now, self.win_t0) >= self.window_ms:
            mean_ua = self.acc_v / self.acc_n / hw.board.shunt_ohm * 1e6 / self.duty
            self.acc_v = 0.0
            self.acc_n = 0
            self.win_t0 = now
            if self.state == "stimulating":
                self.sum_ua += mean_ua
                self.sum_n += 1
            if mean_ua > hw.board.ceiling_ua * 1.1 or mean_ua > target * 1.2 + 10:
                self.stop("overcurrent")
                return
            if target > 20 and mean_ua > 0:
                # Integral correction toward the target, limited per step (no wind-up:
                # nothing is integrated while the reading is near zero).
                err_codes = (target - mean_ua) / self.ua_per_code
                if err_codes > 2:
                    err_codes = 2.0
                self.code_f += 0.5 * err_codes
        # Feed-forward from the nominal gain plus the correction; dither the fraction.
        code_f = target / self.ua_per_code + self.code_f
        code = int(code_f)
        if (code_f - code) * 16 > (now & 15):
            code += 1
        top = int(self.hw.board.ceiling_ua / self.ua_per_code)
        if code > top:
            code = top
        if code < 0:
            code = 0
        hw.dac.write(code)
        if hw.buzzer is not None:
            if hw.ticks_diff(now, self.last_cue) >= self.cfg["cue_s"] * 1000:
                self.last_cue = now
                hw.buzzer.tone(True)
            elif hw.ticks_diff(now, self.last_cue) >= 100:
                hw.buzzer.tone(False)


def run():
    try:
        board = boardmod.load()
    except boardmod.BoardError as e:
        emit("board_error", message=str(e))
        return
    hw = Hardware(board)
    hw.output_off()
    cfg = load_config(board)
    emit("boot", version=VERSION, board=board.name)
    session = None
    was_down = False
    while True:
        now = hw.ticks_ms()
        down = hw.button_down()
        pressed = down and not was_down
        was_down = down
        if session is None or session.state == "done":
            if pressed:
                if hw.usb_powered() and not board.usb_isolated:
                    emit("refused", reason="usb_power")
                else:
                    session = Session(hw, cfg)
                    session.start(now)
        elif pressed:
            session.stop("button")
        else:
            session.step(now)
        hw.sleep_ms(LOOP_MS)

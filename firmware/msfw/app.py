# The device application: one cooperative loop (no threads, no asyncio), so the order of
# safety checks is fixed and every step is visible in virtual time. Works with no host.
#
# Button: a short press starts a session, or steps the intensity while one runs (past the
# top it wraps to the lowest); a long press (1 s) stops it, or clears a latched fault.
# LED: idle slow blink, stimulating on, paused (no contact) fast blink, fault flicker.
# Buzzer: the relocation cue every cue_s seconds (default 5).
import gc
import json

from msfw import VERSION, programs
from msfw import board as boardmod
from msfw import engine as E
from msfw.hw import Hardware
from msfw.supervisor import CONTACT_NAMES, F_ADC, FAULT_NAMES

DEFAULTS = {
    "program": programs.DEFAULT,
    "setpoint_ua": 200,
    "duration_s": 600,
    "cue_s": 5,
}
LOOP_MS = 1
WATCHDOG_MS = 2000  # a loop stalled this long resets the board; boot leaves it off
LONG_PRESS_MS = 1000
DEBOUNCE_MS = 30
CUE_MS = 120


def load_config():
    cfg = dict(DEFAULTS)
    try:
        with open("/config.json") as f:
            user = json.loads(f.read())
        for k in DEFAULTS:
            if k in user:
                cfg[k] = user[k]
    except OSError:
        pass
    except ValueError as e:
        emit("config_error", message=str(e))
    return cfg


def emit(kind, **fields):
    fields["ev"] = kind
    print(json.dumps(fields))


class Button:
    """Debounced presses: short (on release) and long (fires once while held)."""

    def __init__(self, hw):
        self.hw = hw
        self.down_since = -1
        self.long_fired = False
        self.last_change = 0
        self.level = False

    def poll(self, now):
        down = self.hw.button_down()
        if down != self.level:
            if self.hw.ticks_diff(now, self.last_change) < DEBOUNCE_MS:
                return None
            self.level = down
            self.last_change = now
            if down:
                self.down_since = now
                self.long_fired = False
            else:
                held = self.hw.ticks_diff(now, self.down_since)
                if not self.long_fired and held < LONG_PRESS_MS:
                    return "short"
            return None
        if down and not self.long_fired and self.hw.ticks_diff(now, self.down_since) >= LONG_PRESS_MS:
            self.long_fired = True
            return "long"
        return None


def led_level(state, now):
    if state == E.S_STIM or state == E.S_RAMP:
        return 1
    if state == E.S_PAUSED:
        return (now >> 7) & 1  # 4 Hz
    if state == E.S_FAULT:
        return (now >> 5) & 1  # 16 Hz flicker
    if state == E.S_IDLE:
        return 1 if (now & 1023) < 100 else 0
    return 0


def report(eng, now):
    for kind, value in eng.drain():
        name = E.EVENT_NAMES[kind]
        if kind == E.E_STATE:
            emit("state", state=E.STATE_NAMES[value], t_ms=now)
        elif kind == E.E_FAULT:
            emit("fault", fault=FAULT_NAMES[value], value=eng.sup.fault_value, t_ms=now)
        elif kind == E.E_CONTACT_LOST or kind == E.E_CONTACT_OK:
            emit(name, reason=CONTACT_NAMES[value], t_ms=now,
                 compliance_limited=eng.compliance_limited)
        elif kind == E.E_END:
            emit("session_end", reason=E.END_NAMES[value], t_ms=now,
                 measured_ua=round(eng.measured_q4 / 512, 2), setpoint_ua=eng.setpoint_cu / 32,
                 learned_gain=round(eng.reg.gain_q14 / 16384, 4))
        elif kind == E.E_REFUSED:
            emit("refused", reason=FAULT_NAMES[value], t_ms=now)
        elif kind != E.E_CUE:
            emit(name, value=value, t_ms=now)


def run():
    try:
        board = boardmod.load()
    except boardmod.BoardError as e:
        emit("board_error", message=str(e))
        return
    hw = Hardware(board, watchdog_ms=WATCHDOG_MS)
    hw.output_off()
    cfg = load_config()
    try:
        eng = E.Engine(hw, cfg)
    except (programs.ProgramError, ValueError) as e:
        emit("config_error", message=str(e))
        eng = E.Engine(hw, dict(DEFAULTS))
    gc.collect()
    emit("boot", version=VERSION, board=board.name, program=eng.program.get("freq_hz"),
         mem_free=gc.mem_free(), mem_alloc=gc.mem_alloc())
    button = Button(hw)
    cue_until = 0
    led = hw.led
    buzzer = hw.buzzer
    wdt = hw.wdt
    while True:
        now = hw.ticks_ms()
        press = button.poll(now)
        if press == "short":
            if eng.state in (E.S_IDLE, E.S_DONE):
                eng.start(now)
            else:
                eng.step_intensity(now)
        elif press == "long":
            if eng.state == E.S_FAULT:
                eng.clear_fault()
            else:
                eng.stop()
        t_us = hw.ticks_us()
        try:
            eng.tick(t_us, now)
        except OSError as e:
            # The ADC or DAC stopped answering on I2C: the current is unknown.
            eng.trip(F_ADC, e.args[0] if e.args else 0)
        if eng._ev_n:
            for kind in eng._ev_kind[: eng._ev_n]:
                if kind == E.E_CUE and buzzer is not None:
                    buzzer.tone(True)
                    cue_until = now + CUE_MS
            report(eng, now)
        if cue_until and hw.ticks_diff(now, cue_until) >= 0:
            cue_until = 0
            buzzer.tone(False)
        if led is not None:
            led.value(led_level(eng.state, now))
        if wdt is not None:
            wdt.feed()
        # Sleep until the next conversion is due (at most 1 ms): a channel is revisited
        # every ~2.5 ms, which bounds how long a fault can go unseen.
        hw.sleep_us(eng.wait_us(hw.ticks_us()))

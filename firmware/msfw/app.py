# The device application: one cooperative loop (no threads, no asyncio), so the order of
# safety checks is fixed and every step is visible in virtual time. Works with no host.
#
# Button: a short press starts a session, or steps the intensity while one runs (past the
# top it wraps to the lowest); a long press (1 s) stops it, or clears a latched fault.
# LED: idle slow blink, stimulating on, paused (no contact) fast blink, fault flicker.
# Buzzer: the relocation cue every cue_s seconds (default 5).
#
# Memory: the firmware must run a session in a 96 KB heap. What a session does not need
# (config checks, boot work, the host's config/info/calibration/log operations) lives in
# msfw.appops, imported on first use and dropped again when a session starts.
import gc
import json

from micropython import const

import msfw
from msfw import VERSION
from msfw import engine as E
from msfw.supervisor import CONTACT_NAMES, F_ADC, F_HEAP, FAULT_NAMES

# The log and the protocol are imported by App.run() once the engine is built (building
# it needs the config, calibration and program modules for a moment, and that is the
# heap's peak at boot; with these not yet loaded the peak is some 20 KB lower).
logstore = None
proto = None

_LOOP_MS = const(1)
_LONG_PRESS_MS = const(1000)
_DEBOUNCE_MS = const(30)
_CUE_MS = const(120)


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
            if self.hw.ticks_diff(now, self.last_change) < _DEBOUNCE_MS:
                return None
            self.level = down
            self.last_change = now
            if down:
                self.down_since = now
                self.long_fired = False
            else:
                held = self.hw.ticks_diff(now, self.down_since)
                if not self.long_fired and held < _LONG_PRESS_MS:
                    return "short"
            return None
        if down and not self.long_fired and self.hw.ticks_diff(now, self.down_since) >= _LONG_PRESS_MS:
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


def load_config(ceiling_ua):
    """The user config (/config.json) checked against the board; the defaults, and a
    config_error event, when it is refused."""
    from msfw import config

    cfg, problem = config.load(ceiling_ua)
    if problem is not None:
        emit("config_error", message=str(problem), field=getattr(problem, "field", None))
    return cfg


def mem_free():
    """Free heap after a collection (slow: only where the output is off)."""
    gc.collect()
    return gc.mem_free()


def trim():
    """Drop the modules a session does not need (they are imported again when used)."""
    for name in LAZY:
        msfw.unload(name)
    gc.collect()


def _ops():
    from msfw import appops

    return appops


# Modules a running session never needs: imported when used, dropped when a session starts.
# (msfw.logflash stays: every session ends with a flush, and a fragmented heap may not
# have the contiguous room to import it again.)
LAZY = ("appops", "config", "protofs", "calib", "calrun", "programs", "engsetup", "logopen")
# Host operations served by msfw.appops (not needed while the output is on).
_RARE_OPS = const(("config_get", "config_set", "info", "calibrate", "log_list", "log_read"))


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
                 learned_gain=round(eng.reg.gain_q14 / 16384, 4), mem_free=mem_free())
        elif kind == E.E_REFUSED:
            emit("refused", reason=FAULT_NAMES[value], t_ms=now)
        elif kind != E.E_CUE:
            emit(name, value=value, t_ms=now)


# Host operations served by App itself (op_<name>); the rare ones are msfw.appops's.
_LIVE_OPS = const(("status", "start", "stop", "clear_fault", "intensity", "telemetry"))


class _Ops:
    """The application's protocol operations for proto.Server, found when asked for."""

    def __init__(self, app):
        self.app = app

    def get(self, name):
        if name in _LIVE_OPS:
            return getattr(self.app, "op_" + name)
        if name in _RARE_OPS:
            app = self.app
            return lambda req: getattr(_ops(), "op_" + name)(app, req)
        return None

    def __iter__(self):
        return iter(_LIVE_OPS + _RARE_OPS)


_FAULT_HISTORY = const(16)
RUNNING = (E.S_RAMP, E.S_STIM, E.S_PAUSED)


class App:
    """The device: engine, button, LED, buzzer, and the host protocol's operations."""

    def __init__(self, board, hw, self_check=None):
        self.board = board
        self.hw = hw
        self.self_check = self_check  # msfw.post's verdict: a failure refuses sessions
        self.cfg = load_config(board.ceiling_ua)
        trim()
        self.pending_cfg = None  # a config set while a session runs, used once it ends
        self.eng = self.engine(self.cfg)
        trim()
        self.log = None  # App.run(): boot()
        self.faults = []  # [name, value, uptime_ms], newest last
        self.tel_hz = 0
        self.tel_next = 0
        self.tel_until = 0
        self.t_boot = hw.ticks_ms()
        self.link = None
        self.server = None
        self.log_buf = None
        self.mem_free_boot = 0

    def boot(self):
        """The log: opened (and if need be repaired), the boot recorded, then its RAM queue
        grown for a whole session while the heap still has pieces that big, and kept.
        (Here, not in msfw.appops: importing that at boot costs more than these lines.)"""
        global logstore
        import machine

        try:
            from msfw import logstore as _ls

            logstore = _ls
            from msfw import logflash  # noqa: F401 - resident (see LAZY)

            self.log = log = _ls.LogStore(queue_bytes=_ls.QUEUE_IDLE)
            log.open(rtc_s())
            log.boot(rtc_s(), machine.reset_cause(), VERSION, self.board.name)
            log.flush()
        except (OSError, MemoryError) as e:  # no filesystem or no heap: it works, without a log
            emit("log_error", errno=e.args[0] if isinstance(e, OSError) and e.args else 0,
                 message=repr(e))
            self.log = None
        trim()
        if self.log is not None:
            # Last at boot, once what boot needs only for a moment is gone: the chunks
            # then come out of whole pieces, and the session's own room is checked.
            self.log.reserve(self.eng.duration_ms // 1000)

    def engine(self, cfg):
        try:
            eng = E.Engine(self.hw, cfg)
        except ValueError as e:  # programs.ProgramError, or a value out of range
            emit("config_error", message=str(e))
            eng = E.Engine(self.hw, _ops().defaults())
        sc = getattr(self, "self_check", None)
        if sc is not None:
            eng.apply_self_check(sc)
        return eng

    def serve_host(self):
        """The host protocol. First of boot's work after the engine: the clean-up walks the
        whole filesystem (a path string per file), boot's largest passing need, which then
        finds the heap before the log's code and queue have cut it up."""
        global proto
        from msfw import proto as _pr

        proto = _pr
        _pr.cleanup()
        try:
            self.link = _pr.Link()
        except (AttributeError, OSError, TypeError, MemoryError) as e:  # no console: standalone
            emit("proto_off", message=repr(e))
            return
        self.server = proto.Server(self.link, self.hello_info, _Ops(self),
                                   bulk_ok=lambda: self.eng.state not in RUNNING)


    def prepare_session(self):
        """Before a start, with the output still off: free what a running session does not
        use, and top the log's RAM queue up if this session needs more than boot gave it."""
        self.log_buf = None
        if self.server is not None:
            self.server.buf = None
        trim()
        if self.log is not None:
            self.log.reserve(self.eng.duration_ms // 1000)

    # ---- protocol operations (PROTOCOL.md) ---------------------------------------------
    def hello_info(self):
        return {"app": True, "firmware": VERSION, "board": self.board.name,
                "chip": self.board.chip, "uid": uid_hex(),
                "state": E.STATE_NAMES[self.eng.state]}

    def op_status(self, req):
        eng = self.eng
        now = self.hw.ticks_ms()
        running = eng.state in RUNNING
        elapsed = self.hw.ticks_diff(now, eng.t0_ms) if running else 0
        return {
            "state": E.STATE_NAMES[eng.state],
            "program": eng.cfg["program"],  # a start's override included
            "level": eng.level, "levels": E.LEVELS,
            "setpoint_ua": eng.setpoint_cu / 32,
            "target_ua": eng.level_target() / 32 if running else 0,
            "measured_ua": round(eng.measured_q4 / 512, 2) if running else 0,
            "load_ohm": eng.sup.z_ref if running else None,
            "contact": CONTACT_NAMES[eng.pause_reason] if eng.state == E.S_PAUSED else None,
            "compliance_limited": eng.compliance_limited,
            "fault": FAULT_NAMES[eng.sup.fault] if eng.state == E.S_FAULT else None,
            "elapsed_s": elapsed // 1000,
            "remaining_s": (eng.duration_ms - elapsed) // 1000 if running else None,
            "usb_power": self.hw.usb_powered(),
            "uptime_s": self.hw.ticks_diff(now, self.t_boot) // 1000,
            "mem_free": gc.mem_free(),
        }

    def op_start(self, req):
        eng = self.eng
        if eng.state in RUNNING:
            raise proto.Error("busy", "a session is already running (state %s)"
                              % E.STATE_NAMES[eng.state])
        if eng.state == E.S_FAULT:
            raise proto.Error("fault", "a %s fault is latched: clear it first (clear_fault or a "
                              "long button press)" % FAULT_NAMES[eng.sup.fault])
        over = {}
        for k in ("program", "setpoint_ua", "duration_s"):
            if k in req:
                over[k] = req[k]
        if over:
            cfg = dict(self.cfg)
            cfg.update(_ops().checked(self, over))
            self.eng = eng = self.engine(cfg)
        self.prepare_session()
        try:
            started = eng.start(self.hw.ticks_ms())
        except MemoryError:
            gc.collect()
            eng.trip(F_HEAP, 0)
            raise proto.Error("fault", "out of memory starting the output: a heap fault is "
                              "latched (clear it; a restart frees the heap)")
        if not started:
            if self.hw.usb_powered() and not self.board.usb_isolated:
                raise proto.Error("refused", "USB power is present and this board's USB link is "
                                  "not isolated: unplug USB and use the button (SAFETY.md 7)")
            raise proto.Error("refused", "the engine refused to start")
        return {"state": E.STATE_NAMES[eng.state]}

    def op_stop(self, req):
        self.eng.stop(E.END_HOST)
        return {"state": E.STATE_NAMES[self.eng.state]}

    def op_clear_fault(self, req):
        if self.eng.state != E.S_FAULT:
            raise proto.Error("no_fault", "no fault is latched (state %s)"
                              % E.STATE_NAMES[self.eng.state])
        self.eng.clear_fault()
        return {"state": E.STATE_NAMES[self.eng.state]}

    def op_intensity(self, req):
        eng = self.eng
        level = proto._int(req, "level", 1, E.LEVELS)
        if eng.state not in RUNNING:
            raise proto.Error("not_running", "no session is running")
        now = self.hw.ticks_ms()
        # Step like the button does: every increase gets its own soft start.
        while eng.level != level:
            eng.step_intensity(now)
        return {"level": eng.level}

    def op_telemetry(self, req):
        hz = proto._int(req, "hz", 0, 50)
        ttl = proto._int(req, "ttl_s", 1, 600, 10)
        self.tel_hz = hz
        now = self.hw.ticks_ms()
        self.tel_next = now
        self.tel_until = now + ttl * 1000
        return {"hz": hz, "ttl_s": ttl}

    # ---- the loop -----------------------------------------------------------------------
    def telemetry(self, now):
        if self.hw.ticks_diff(now, self.tel_until) >= 0:
            self.tel_hz = 0  # the host stopped renewing: it went away
            return
        if self.hw.ticks_diff(now, self.tel_next) < 0:
            return
        self.tel_next = now + 1000 // self.tel_hz
        eng = self.eng
        running = eng.state in RUNNING
        emit("tel", t_ms=now, state=E.STATE_NAMES[eng.state], level=eng.level,
             target_ua=eng.level_target() / 32 if running else 0,
             i_ua=round(eng.measured_q4 / 512, 2) if running else 0,
             z_ohm=eng.sup.z_ref if running else None,
             cl=eng.compliance_limited)

    def note_events(self, now):
        eng = self.eng
        log = self.log
        for i in range(eng._ev_n):
            kind = eng._ev_kind[i]
            val = eng._ev_val[i]
            if kind == E.E_FAULT:
                self.faults.append([FAULT_NAMES[val], eng.sup.fault_value,
                                    self.hw.ticks_diff(now, self.t_boot)])
                if len(self.faults) > _FAULT_HISTORY:
                    self.faults.pop(0)
            if log is None:
                continue
            t = rtc_s()
            if kind == E.E_STATE and val == E.S_RAMP and not log.in_session:
                log.session_start(t, now, logstore.program_info(eng.cfg["program"], eng.program),
                                  int(eng.setpoint_cu / 32), eng.duration_ms // 1000,
                                  eng.cue_ms // 1000, eng.level)
            elif kind == E.E_END:
                log.session_end(t, now, val, eng.reg.gain_q14)
            elif kind == E.E_FAULT:
                log.event(logstore.EV_FAULT, t, now, val, eng.sup.fault_value)
                if log.in_session:
                    log.session_end(t, now, logstore.END_FAULT, eng.reg.gain_q14)
            elif kind == E.E_CONTACT_LOST:
                log.event(logstore.EV_CONTACT_LOST, t, now, val)
            elif kind == E.E_CONTACT_OK:
                log.event(logstore.EV_CONTACT_OK, t, now, val)
            elif kind == E.E_INTENSITY:
                log.event(logstore.EV_INTENSITY, t, now, val)
            elif kind == E.E_CLEARED:
                log.event(logstore.EV_FAULT_CLEARED, t, now)
            elif kind == E.E_REFUSED:
                log.event(logstore.EV_REFUSED, t, now, val)

    def record(self, now):
        """Once per loop pass: the 1 Hz summaries while a session runs (allocation-free,
        into RAM); the flash writes only while the output is off."""
        log = self.log
        eng = self.eng
        if eng.state in RUNNING:
            if log.in_session:
                log.sample(eng.measured_q4 >> 4)
                log.tick(now, eng.state, eng.sup.z_ref, eng.level_target())
        elif log.pending():
            try:
                log.flush(512)
            except MemoryError:  # the records stay queued; the next pass tries again
                gc.collect()

    def session_over(self):
        """The output is off: a config set during the session is saved and applied now."""
        if self.pending_cfg is not None and self.eng.state not in RUNNING:
            self.cfg = self.pending_cfg
            self.pending_cfg = None
            try:
                _ops().save_config(self.cfg)
            except (OSError, MemoryError) as e:
                emit("config_error", message="not saved: %r" % (e,))
            self.rebuild(self.cfg)

    def rebuild(self, cfg):
        """A new engine for a new config (the output is off). The old one's memory goes
        first: the heap may not hold two. If even then it does not fit, the config is
        saved: a restart applies it, with the heap whole (no stimulation follows a reset
        without a user action)."""
        self.eng = None
        gc.collect()
        try:
            self.eng = self.engine(cfg)
        except MemoryError:
            import machine

            emit("restart", reason="no heap for the new config's engine")
            machine.soft_reset()

    def run(self):
        hw = self.hw
        self.serve_host()
        self.boot()
        trim()
        self.mem_free_boot = gc.mem_free()
        emit("boot", version=VERSION, board=self.board.name, program=self.cfg["program"],
             mem_free=self.mem_free_boot, mem_alloc=gc.mem_alloc())
        link = self.link
        server = self.server
        button = Button(hw)
        cue_until = 0
        led = hw.led
        buzzer = hw.buzzer
        wdt = hw.wdt
        while True:
            eng = self.eng
            now = hw.ticks_ms()
            press = button.poll(now)
            if press == "short":
                if eng.state in (E.S_IDLE, E.S_DONE):
                    self.prepare_session()
                    try:
                        eng.start(hw.ticks_ms())
                    except MemoryError:
                        gc.collect()
                        eng.trip(F_HEAP, 0)
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
            except MemoryError:
                # A state change (a pause, a restart) found no heap: the output goes off and
                # the fault is latched and reported; the device goes on (not a dead app).
                gc.collect()
                eng.trip(F_HEAP, 0)
            if eng._ev_n:
                for kind in eng._ev_kind[: eng._ev_n]:
                    if kind == E.E_CUE and buzzer is not None:
                        buzzer.tone(True)
                        cue_until = now + _CUE_MS
                self.note_events(now)
                report(eng, now)
                self.session_over()
            if self.log is not None:
                self.record(now)
            if cue_until and hw.ticks_diff(now, cue_until) >= 0:
                cue_until = 0
                buzzer.tone(False)
            if led is not None:
                led.value(led_level(eng.state, now))
            if link is not None:
                # A few bytes per pass while the output is on, so a request never holds
                # up a sample; bulk transfers are refused until the output is off.
                try:
                    line = link.pump(now, 16 if eng.state in RUNNING else 256)
                    if line is not None:
                        server.handle(line)
                except MemoryError:
                    # No heap to read or answer a request (the Error path's answer found
                    # none either): it goes unanswered, the session and the loop go on.
                    gc.collect()
                if server.done:
                    server.done = False  # "bye" ends nothing here; "reset" does
                    if getattr(server, "reset_kind", None):
                        eng.stop(E.END_HOST)
                        proto.after(server)
                if self.tel_hz:
                    self.telemetry(now)
            if wdt is not None:
                wdt.feed()
            # Sleep until the next conversion is due (at most 1 ms): a channel is revisited
            # every ~2.5 ms, which bounds how long a fault can go unseen.
            hw.sleep_us(eng.wait_us(hw.ticks_us()))


def rtc_s():
    import time

    return time.time()


def uid_hex():
    import machine

    return "".join("%02x" % b for b in machine.unique_id())


def run(board=None, hw=None, self_check=None):
    """The device. main.py passes what msfw.post set up before this module loaded."""
    if board is None:
        from msfw import post

        powered = post.run()
        if powered is None:
            return
        board, hw, self_check = powered
    App(board, hw, self_check).run()

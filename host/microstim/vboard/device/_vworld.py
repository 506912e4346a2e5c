# The virtual board's world: virtual clock, GPIO levels and the waveforms that drive them,
# the reference analog front end, the skin-electrode load, scripted events, the watchdog
# and the trace of what was really delivered.
#
# Runs inside the MicroPython unix port (and imports under CPython for model tests).
# The fake machine/esp32/time modules are thin faces over this one object, so the
# firmware's ESP32 code path is the code under test.
#
# Simulated hardware does its own arithmetic (floats allocate on the unix port); that
# work is not the firmware's, so every entry point the firmware can reach releases any
# heap lock around it (release()/restore()). The firmware's own allocations still raise.
import math
import struct
import sys
from array import array

try:
    import micropython
    _heap_lock = micropython.heap_lock
    _heap_unlock = micropython.heap_unlock
except (ImportError, AttributeError):  # CPython
    micropython = None

try:
    import utime as _rt  # the real clock, even when `time` is the virtual one
except ImportError:
    import time as _rt

try:
    import json
except ImportError:  # pragma: no cover
    import ujson as json

MICROPYTHON = sys.implementation.name == "micropython"

# ESP32 ticks wrap at 2**30 (ticks_us every 17.9 minutes): emulated so wrap bugs show up.
TICKS_PERIOD = 1 << 30
TICKS_MASK = TICKS_PERIOD - 1
TICKS_HALF = TICKS_PERIOD >> 1

# machine.reset_cause() values on the ESP32 port (brown-out reports PWRON_RESET).
PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5

FOREVER = 1 << 62
EXIT_FIRMWARE_ENDED = 70  # headless run: main.py returned or raised
STATE_PAD_BYTES = 1024  # the saved state is far smaller
_BLANKS = b" " * 64
FLUSH_EVERY_US = 250000

# The front end's electrode sense (boards/frontend/README.md): VBIAS = 3.3 V x RB2 /
# (RB1 + RB2) = 3.3 x 10.0 / (90.9 + 10.0); the analog switch's on-resistance (ADG5436F);
# the highest an ADS1115 input gets (3.3 V + a BAT54S clamp diode).
V_BIAS = 0.327
SWITCH_OHM = 10.0
AIN_CLAMP_V = 3.6

# Flags of a phase record in the trace.
F_COMPLIANCE = 1  # source at its compliance voltage: delivered < commanded
F_OPEN = 2  # no load connected (lift-off)
F_SHORT = 4

# One record per phase (interval with the output enabled):
# t_us, dur_us, i_mean_ua (signed), i_peak_ua, v_peak_v, i_cmd_ua, flags
PHASE_FMT = "<qifffffB3x"
PHASE_SIZE = struct.calcsize(PHASE_FMT)


def release():
    """Lift any heap lock held by the firmware; returns what restore() needs.

    Every entry point the firmware can reach starts here, so this is also where a Ctrl-C
    from the host lands (see take_ctrl_c)."""
    if micropython is None:
        return 0
    _heap_lock()
    depth = _heap_unlock()
    n = depth
    while n:
        _heap_unlock()
        n -= 1
    if _kbd_poll is not None:
        take_ctrl_c(depth)
    return depth


# A host's Ctrl-C. A board's UART schedules KeyboardInterrupt into the VM, which raises it
# between bytecodes. The unix port raises it from its SIGINT handler, in the middle of
# whatever C code runs: inside the garbage collector it leaves the heap locked for good,
# inside malloc it deadlocks the interpreter. So while a script runs the supervisor sends
# Ctrl-C down a FIFO instead, and the firmware takes it at its next call into the
# simulated hardware (it calls the clock continuously), at most every KBD_CHECK_US of
# wall time, with the world consistent and the heap as the firmware left it.
KBD_CHECK_US = 1000
_kbd_poll = None
_kbd_file = None
_kbd_due = 0


def open_ctrl_c(path):
    global _kbd_poll, _kbd_file
    import select

    _kbd_file = open(path, "rb")  # the supervisor holds the write end: this does not block
    _kbd_poll = select.poll()
    _kbd_poll.register(_kbd_file, select.POLLIN)


def take_ctrl_c(depth):
    """Raise KeyboardInterrupt if the host sent Ctrl-C; called with the heap unlocked,
    re-locks it to `depth` before raising."""
    global _kbd_due
    now = _rt.ticks_us()
    if _rt.ticks_diff(now, _kbd_due) < 0:
        return
    _kbd_due = _rt.ticks_add(now, KBD_CHECK_US)
    if _kbd_poll.poll(0):
        _kbd_file.read(1)
        e = KeyboardInterrupt()
        restore(depth)
        raise e


def restore(depth):
    while depth:
        _heap_lock()
        depth -= 1


def _wall_us():
    if MICROPYTHON:
        return _rt.time_ns() // 1000
    return int(_rt.monotonic() * 1e6)


# ---------------------------------------------------------------------------------------
# Waveform sources: what drives an output pin over time.


class Static:
    """A level set by software (Pin.value): changes only when the firmware writes it."""

    kind = "static"

    def __init__(self, level=0):
        self.level = level

    def level_at(self, t_us):
        return self.level

    def next_edge(self, t_us):
        return FOREVER


class PWMWave:
    """LEDC PWM: integer frequency, duty as a 16-bit fraction, free-running from t0."""

    kind = "pwm"

    def __init__(self, t0_us, freq_hz, duty_u16):
        self.t0 = t0_us
        self.period = 1e6 / freq_hz
        self.high = self.period * duty_u16 / 65535.0

    def level_at(self, t_us):
        if self.high <= 0:
            return 0
        if self.high >= self.period:
            return 1
        return 1 if (t_us - self.t0) % self.period < self.high else 0

    def next_edge(self, t_us):
        if self.high <= 0 or self.high >= self.period:
            return FOREVER
        ph = (t_us - self.t0) % self.period
        base = t_us - ph
        if ph < self.high:
            e = base + self.high
        else:
            e = base + self.period
        e = int(math.ceil(e))
        return e if e > t_us else t_us + 1


class RMTWave:
    """RMT transmission: (level, duration) items, once, n times or looped forever."""

    kind = "rmt"

    def __init__(self, t0_us, levels, durs_us, loops, idle_level):
        self.t0 = t0_us
        self.levels = levels
        self.durs = durs_us
        self.total = sum(durs_us)
        self.loops = loops  # -1 forever, else number of repetitions (>= 1)
        self.idle = idle_level
        ends = []
        acc = 0.0
        for d in durs_us:
            acc += d
            ends.append(acc)
        self.ends = ends

    def end_us(self):
        if self.loops < 0:
            return FOREVER
        return self.t0 + self.total * self.loops

    def _locate(self, t_us):
        rel = t_us - self.t0
        if rel < 0:
            return None, 0
        n = int(rel // self.total)
        if self.loops >= 0 and n >= self.loops:
            return None, 0
        r = rel - n * self.total
        i = 0
        ends = self.ends
        while i < len(ends) - 1 and r >= ends[i]:
            i += 1
        return i, self.t0 + n * self.total

    def level_at(self, t_us):
        i, _ = self._locate(t_us)
        return self.idle if i is None else self.levels[i]

    def next_edge(self, t_us):
        i, base = self._locate(t_us)
        if i is None:
            return FOREVER if t_us >= self.t0 else self.t0
        e = int(math.ceil(base + self.ends[i]))
        return e if e > t_us else t_us + 1

    def done(self, t_us):
        return self.loops >= 0 and t_us >= self.end_us()


# ---------------------------------------------------------------------------------------
# Load and front end.


class Load:
    """Skin-electrode load: series R (gel, tissue) + (R || C) stratum corneum.

    Values are for full contact; `area` (0..1] scales R down and C up. `open` is lift-off.
    """

    def __init__(self, r_series_ohm=2000.0, r_parallel_ohm=30000.0, c_parallel_f=0.1e-6):
        self.base_rs = r_series_ohm
        self.base_rp = r_parallel_ohm
        self.base_cp = c_parallel_f
        self.area = 1.0
        self.open = False
        self.short = False
        self.drift_from_us = 0
        self.drift_over_us = 0
        self.drift_factor = 1.0

    def factor(self, t_us):
        if self.drift_over_us <= 0:
            return self.drift_factor
        x = (t_us - self.drift_from_us) / self.drift_over_us
        if x <= 0:
            return 1.0
        if x >= 1:
            return self.drift_factor
        return 1.0 + (self.drift_factor - 1.0) * x

    def values(self, t_us):
        """(r_series, r_parallel, c_parallel) now; r_parallel may be 0 (pure resistor)."""
        if self.short:
            return 10.0, 0.0, 0.0
        k = self.factor(t_us) / self.area
        return self.base_rs * k, self.base_rp * k, self.base_cp / k


class FrontEnd:
    """Reference analog front end, as built, with its component errors.

    DAC code -> DAC volts (internal_dual: coarse + fine_ratio x fine channel) ->
    voltage-to-current source (gain, offset, hardware limit, compliance voltage) ->
    shunt (unipolar side) -> H-bridge (EN gates, POL picks sign)
    -> DC-blocking capacitor (in series with electrode A) -> electrodes -> load.
    Monitors (boards/frontend/README.md): AIN0 = shunt voltage; AIN2 / AIN3 = electrode
    A / B node through its own divider to VBIAS, buffered (the firmware reads AIN2 - AIN3:
    the voltage across the load); AIN1 is not connected (grounded); VLOAD_FAST = the
    output voltage through RDIV3/RDIV4.
    """

    def __init__(self, fe, errors):
        self.dac_vref_v = fe.get("dac_vref_v", 3.3)
        self.dac_bits = fe.get("dac_bits", 8)
        dac = fe.get("dac") or {}
        # internal_dual: the second DAC channel reaches the source input through a
        # resistor network that scales it by fine_ratio (nominally 1/16); the resistors'
        # tolerance makes the real ratio differ, and the fine channel has its own offset.
        self.fine_ratio = 0.0
        if dac.get("kind") == "internal_dual":
            self.fine_ratio = dac.get("fine_ratio", 0.0625) * (1.0 + errors.get("fine_ratio", 0.0))
        self.fine_offset_v = errors.get("fine_dac_offset_v", 0.0)
        self.gain_ua_per_v = fe["source_gain_ua_per_v"] * (1.0 + errors.get("source_gain", 0.0))
        self.offset_ua = errors.get("source_offset_ua", 0.0)
        self.dac_gain = 1.0 + errors.get("dac_gain", 0.0)
        self.dac_offset_v = errors.get("dac_offset_v", 0.0)
        self.hw_limit_ua = fe["hw_current_limit_ua"]
        self.compliance_v = fe["compliance_v"]
        self.shunt_ohm = fe["shunt_ohm"] * (1.0 + errors.get("shunt", 0.0))
        # The electrode sense: one divider per electrode node, each with its own error
        # (1 % resistors: the two ratios differ, which is what turns the electrodes'
        # common-mode voltage into a differential error).
        self.divider_a = fe["load_divider"] * (1.0 + errors.get("divider_a", 0.0))
        self.divider_b = fe["load_divider"] * (1.0 + errors.get("divider_b", 0.0))
        # CBLOCK as built: a bipolar electrolytic is +-20 % (errors["dc_block"]).
        self.c_block_f = fe["dc_block_uf"] * 1e-6 * (1.0 + errors.get("dc_block", 0.0))
        self.ain_offset_v = errors.get("ain_offset_v", 0.0)  # every input, single-ended
        self.ain_diff_offset_v = errors.get("ain_diff_offset_v", 0.0)  # a differential conversion
        self.fast_divider = fe.get("fast_load_divider", 15.0)
        self.fast_gain = 1.0 + errors.get("fast_adc_gain", 0.0)

    def source_ua(self, dac_code, fine_code=0):
        full = (1 << self.dac_bits) - 1
        v = dac_code * self.dac_vref_v / full
        v = v * self.dac_gain + self.dac_offset_v
        if self.fine_ratio:
            v += self.fine_ratio * (fine_code * self.dac_vref_v / full * self.dac_gain + self.fine_offset_v)
        if v < 0:
            v = 0.0
        i = v * self.gain_ua_per_v + self.offset_ua
        if i < 0:
            return 0.0
        if i > self.hw_limit_ua:
            return self.hw_limit_ua
        return i


# ---------------------------------------------------------------------------------------
# The world.

_world = None


def world():
    return _world


class World:
    def __init__(self, cfg, reset_cause=PWRON_RESET, state=None):
        global _world
        _world = self
        self.cfg = cfg
        board = cfg["board"]
        self.board = board
        sim = cfg.get("sim", {})
        self.reset_cause = reset_cause
        self.pins_by_name = cfg.get("pins", {})  # name -> gpio number
        self.valid_gpios = set(cfg.get("gpios", list(range(40))))
        self.speed = cfg.get("speed")  # None: as fast as possible; 1.0: real time
        self.seed = sim.get("seed", 1)
        self._rng_state = (self.seed * 2654435761 + 1) & 0xFFFFFFFF or 1
        self.noise = sim.get("noise", True)

        st = state or {}
        self.now_us = st.get("now_us", 0) + (sim.get("boot_us", 300000) if state else 0)
        self.boots = st.get("boots", 0) + 1
        self._wall0 = _wall_us()
        self._virt0 = self.now_us

        # GPIO: gpio -> level source (outputs) or input level (inputs)
        self.out = {}
        self.inputs = {}
        self.irq = {}  # gpio -> (handler, trigger, pin object)
        self.dac = {}  # gpio -> code
        self.wdt_timeout_us = 0
        self.wdt_fed_us = 0
        # Chips powered from the board's rail, not reset with the ESP32 (an external DAC):
        # key -> device with state(); each restores itself from restored_chip(key), and
        # decides by the reset cause what it keeps (every cause but a power-on keeps all).
        self.chips = {}
        self._chip_state = st.get("chips", {})
        if state and reset_cause == SOFT_RESET:
            # A soft reset keeps DAC levels and GPIO output levels, and a started watchdog
            # keeps running (the ESP32 port never removes its task-WDT user); timers stop.
            for k, v in st.get("dac", {}).items():
                self.dac[int(k)] = v
            for k, v in st.get("levels", {}).items():
                self.out[int(k)] = Static(v)
            self.wdt_timeout_us = st.get("wdt_timeout_us", 0)
            self.wdt_fed_us = st.get("wdt_fed_us", 0)

        fe = board["frontend"]
        self.fe = FrontEnd(fe, sim.get("errors", {}))
        self.ain_diff_offset_v = self.fe.ain_diff_offset_v  # the ADS1115 model's, differential
        self.gpio_en = self.pins_by_name.get("STIM_EN")
        self.gpio_pol = self.pins_by_name.get("STIM_POL")
        self.gpio_dac = self.pins_by_name.get("DAC_AMP")
        self.gpio_dac_fine = self.pins_by_name.get("DAC_FINE") if self.fe.fine_ratio else None
        self.dac_stuck = False

        ld = sim.get("load", {})
        self.load = Load(
            ld.get("r_series_ohm", 2000.0),
            ld.get("r_parallel_ohm", 30000.0),
            ld.get("c_parallel_f", 0.1e-6),
        )
        # Analog state: skin capacitor and DC-block capacitor voltages.
        self.v_cp = 0.0
        self.v_cb = 0.0
        self.v_out_abs = 0.0  # |output voltage| now (0 while the source is disabled)
        self.gpio_fast_sense = self.pins_by_name.get("VLOAD_FAST")
        self.phys_t = self.now_us
        # Recent segments for the ADC's averaging window (a conversion spans a few):
        # parallel ring buffers, as arrays so they hold no boxed floats.
        n = 64
        self._seg_n = n
        self._seg_t0 = array("q", [0] * n)
        self._seg_t1 = array("q", [0] * n)
        self._seg_i = array("d", [0.0] * n)  # |current| in A, constant over a segment
        self._seg_a0 = array("d", [0.0] * n)  # electrode A's node (V) at start and end
        self._seg_a1 = array("d", [0.0] * n)
        self._seg_b0 = array("d", [0.0] * n)  # electrode B's node
        self._seg_b1 = array("d", [0.0] * n)
        self._seg_w = 0

        self.i2c = {}  # bus id -> {addr: device}
        adc = board["frontend"].get("adc", {})
        if adc.get("kind") == "ads1115":
            import _ads1115

            bus = adc.get("i2c", 0)
            addr = adc.get("address", 0x48)
            self.i2c.setdefault(bus, {})[addr] = _ads1115.ADS1115(self, addr)
        self.timers = []  # [due_us, period_us or 0, callback, arg, key]
        self._in_callback = False
        # In time order; events at the same time in the scenario's order (MicroPython's
        # list.sort is not stable: the index breaks ties).
        keyed = [(int(ev.get("at_s", 0) * 1e6), k, ev) for k, ev in enumerate(cfg.get("scenario", []))]
        keyed.sort(key=lambda e: (e[0], e[1]))
        self._events = [(at, ev) for at, _, ev in keyed]
        self._ev_i = 0

        self.ctl = None
        ctl_path = cfg.get("ctl_path")
        if ctl_path:
            self.ctl = open(ctl_path, "w")
        if cfg.get("kbd_path") and MICROPYTHON:
            open_ctrl_c(cfg["kbd_path"])
        # Host files are opened now: once the flash is mounted at "/" they are out of reach.
        self.state_file = None
        sp = cfg.get("state_path")
        if sp:
            try:
                self.state_file = open(sp, "r+b")
            except OSError:
                self.state_file = open(sp, "w+b")
        self.trace = None
        self.events_log = None
        tdir = cfg.get("trace_dir")
        if tdir:
            self.trace = open(tdir + "/phases.bin", "ab")
            self.events_log = open(tdir + "/events.jsonl", "a")
        self._flushed_us = self.now_us
        self._ph = None  # the phase being recorded
        self._tbuf = bytearray(PHASE_SIZE * 32)
        self._tn = 0

        self.usb_present = sim.get("usb_present", False)
        # Inputs at power-on: button released (pull-up), USB sense per config.
        self._set_input_by_name("BUTTON", 1)
        self._set_input_by_name("USB_SENSE", 1 if self.usb_present else 0)
        self._set_input_by_name("ADS_ALERT", 1)

        self.log("boot", cause=reset_cause, boots=self.boots)
        # Replay past scenario events' lasting effects (load, faults) after a reset.
        while self._ev_i < len(self._events) and self._events[self._ev_i][0] <= self.now_us:
            self._apply(self._events[self._ev_i][1], replay=True)
            self._ev_i += 1

    # ---- clock ---------------------------------------------------------------------
    def ticks_us(self):
        return self.now_us & TICKS_MASK

    def spend_us(self, us):
        """Time consumed by an operation (bus transfer, CPU). Runs what falls due."""
        self.advance_to(self.now_us + us)

    def sleep_us(self, us):
        if us > 0:
            self.advance_to(self.now_us + us)
        else:
            self.spend_us(1)

    def advance_to(self, t_us):
        if self.speed is not None:
            wall_now = self._virt0 + int((_wall_us() - self._wall0) * self.speed)
            if wall_now > t_us:
                t_us = wall_now
        while True:
            due = self._next_due()
            if due > t_us:
                break
            if due > self.now_us:
                self.now_us = due
            self._fire_due()
        if t_us > self.now_us:
            self.now_us = t_us
        if self.now_us - self._flushed_us >= FLUSH_EVERY_US:
            # Keep the physics and the trace on disk current for live readers.
            self._flushed_us = self.now_us
            self.flush()

    def pace_wait_us(self):
        """Wall time to wait before virtual time may be `now` (paced runs), else 0.

        The waiting itself is done by the caller in bytecode (time.py), where a Ctrl-C
        interrupts it as it interrupts time.sleep_ms on a board.
        """
        if self.speed is None:
            return 0
        wait = self._wall0 + int((self.now_us - self._virt0) / self.speed) - _wall_us()
        return wait if wait > 0 else 0

    def _next_due(self):
        due = FOREVER
        if self._ev_i < len(self._events):
            due = self._events[self._ev_i][0]
        for t in self.timers:
            if t[0] < due:
                due = t[0]
        if self.wdt_timeout_us:
            w = self.wdt_fed_us + self.wdt_timeout_us
            if w < due:
                due = w
        return due

    def _fire_due(self):
        now = self.now_us
        if self.wdt_timeout_us and self.wdt_fed_us + self.wdt_timeout_us <= now:
            self.log("wdt_expired", starved_us=now - self.wdt_fed_us)
            self.reset(WDT_RESET)
        if self._ev_i < len(self._events) and self._events[self._ev_i][0] <= now:
            ev = self._events[self._ev_i][1]
            self._ev_i += 1
            self._apply(ev)
            return
        for t in self.timers:
            if t[0] <= now:
                if t[1]:
                    t[0] += t[1]
                else:
                    self.timers.remove(t)
                self._callback(t[2], t[3])
                return

    def _callback(self, cb, arg):
        # Soft IRQs run between bytecodes; one at a time, never nested.
        if self._in_callback:
            return
        self._in_callback = True
        try:
            cb(arg)
        finally:
            self._in_callback = False

    # ---- GPIO ------------------------------------------------------------------------
    def check_gpio(self, gpio):
        if gpio not in self.valid_gpios:
            raise ValueError("invalid pin")

    def set_output(self, gpio, source):
        if gpio == self.gpio_en or gpio == self.gpio_pol:
            self.sync()
        self.out[gpio] = source

    def output_level(self, gpio):
        src = self.out.get(gpio)
        return src.level_at(self.now_us) if src is not None else None

    def input_level(self, gpio):
        lvl = self.output_level(gpio)
        if lvl is not None:
            return lvl
        return self.inputs.get(gpio, 0)

    def release_output(self, gpio):
        if gpio in self.out:
            self.set_output(gpio, None)
            del self.out[gpio]

    def _set_input_by_name(self, name, level):
        g = self.pins_by_name.get(name)
        if g is not None:
            self._set_input(g, level)

    def _set_input(self, gpio, level):
        old = self.inputs.get(gpio)
        self.inputs[gpio] = level
        h = self.irq.get(gpio)
        if h is not None and old is not None and old != level:
            handler, trigger, pin = h
            # Pin.IRQ_FALLING = 2, Pin.IRQ_RISING = 1 on the ESP32 port
            if (level == 0 and trigger & 2) or (level == 1 and trigger & 1):
                self._callback(handler, pin)

    def set_dac(self, gpio, code):
        if gpio == self.gpio_dac or (gpio == self.gpio_dac_fine and gpio is not None):
            self.sync()
        self.dac[gpio] = code

    # ---- analog ----------------------------------------------------------------------
    def source_ua(self):
        code = self.dac.get(self.gpio_dac, 0)
        if self.dac_stuck:  # the coarse (or only) DAC stuck at full scale
            code = (1 << self.fe.dac_bits) - 1
        fine = self.dac.get(self.gpio_dac_fine, 0) if self.gpio_dac_fine is not None else 0
        return self.fe.source_ua(code, fine)

    def _wave(self, gpio):
        src = self.out.get(gpio)
        return src if src is not None else _LOW

    def sync(self):
        """Bring the analog state up to now."""
        t = self.phys_t
        end = self.now_us
        if end <= t:
            return
        en_w = self._wave(self.gpio_en)
        pol_w = self._wave(self.gpio_pol)
        i_cmd = self.source_ua() * 1e-6
        while t < end:
            tn = en_w.next_edge(t)
            tp = pol_w.next_edge(t)
            if tp < tn:
                tn = tp
            if tn > end:
                tn = end
            self._segment(t, tn, en_w.level_at(t), pol_w.level_at(t), i_cmd)
            t = tn
        self.phys_t = end

    def _segment(self, t0, t1, en, pol, i_cmd):
        dt = (t1 - t0) * 1e-6
        load = self.load
        fe = self.fe
        rs, rp, cp = load.values(t0)
        if rp <= 0 or cp <= 0:
            # No skin R||C in the path (a short or a pure resistor): nothing is stored.
            self.v_cp = 0.0
        s = 1.0 if pol else -1.0
        if not en or i_cmd <= 0.0:
            self._end_phase()
            # Output disconnected: the skin capacitance relaxes through its own R; the
            # electrodes float, held at VBIAS by the sense dividers.
            v_cp0 = self.v_cp
            if rp > 0 and cp > 0:
                self.v_cp *= math.exp(-dt / (rp * cp))
            h0 = v_cp0 / 2
            h1 = self.v_cp / 2
            self._push(t0, t1, 0.0, V_BIAS + h0, V_BIAS + h1, V_BIAS - h0, V_BIAS - h1, 0.0)
            return
        vc = fe.compliance_v
        cb = fe.c_block_f
        v_cb0 = self.v_cb
        if load.open:
            # The source saturates: the anode side at the rail, the cathode side at ground.
            a, b = self._nodes(s, 0.0, s * vc - v_cb0, v_cb0)
            self._push(t0, t1, 0.0, a, a, b, b, vc)
            self._phase(t0, t1, 0.0, 0.0, vc, i_cmd, F_OPEN, s)
            return
        v_cp0 = self.v_cp
        i = s * i_cmd
        # Unsaturated: exact solution for a constant current.
        if rp > 0 and cp > 0:
            tau = rp * cp
            target = i * rp
            v_cp1 = target + (v_cp0 - target) * math.exp(-dt / tau)
        else:
            v_cp1 = i * rp
        v_cb1 = v_cb0 + i * dt / cb
        v0 = i * rs + v_cp0 + v_cb0
        v1 = i * rs + v_cp1 + v_cb1
        if abs(v0) <= vc and abs(v1) <= vc:
            self.v_cp = v_cp1
            self.v_cb = v_cb1
            a0 = abs(v0)
            a1 = abs(v1)
            na0, nb0 = self._nodes(s, i_cmd, i * rs + v_cp0, v_cb0)
            na1, nb1 = self._nodes(s, i_cmd, i * rs + v_cp1, v_cb1)
            self._push(t0, t1, i_cmd, na0, na1, nb0, nb1, a1)
            self._phase(t0, t1, i * 1e6, i_cmd * 1e6, a0 if a0 > a1 else a1, i_cmd, 0, s)
            return
        # At compliance: the output voltage is pinned at +-vc; integrate in substeps.
        n = 16
        h = dt / n
        q = 0.0
        i_peak = 0.0
        v_cp = v_cp0
        v_cb = v_cb0
        for _ in range(n):
            ii = (s * vc - v_cp - v_cb) / rs if rs > 0 else i
            if ii * s < 0:
                ii = 0.0
            if abs(ii) > i_cmd:
                ii = i
            if rp > 0 and cp > 0:
                tgt = ii * rp
                v_cp = tgt + (v_cp - tgt) * math.exp(-h / (rp * cp))
            else:
                v_cp = ii * rp
            v_cb += ii * h / cb
            q += ii * h
            if abs(ii) > i_peak:
                i_peak = abs(ii)
        self.v_cp = v_cp
        self.v_cb = v_cb
        i_mean = q / dt if dt > 0 else 0.0
        im = abs(i_mean)
        na0, nb0 = self._nodes(s, im, s * vc - v_cb0, v_cb0)
        na1, nb1 = self._nodes(s, im, s * vc - v_cb, v_cb)
        self._push(t0, t1, im, na0, na1, nb0, nb1, vc)
        self._phase(t0, t1, i_mean * 1e6, i_peak * 1e6, vc, i_cmd, F_COMPLIANCE, s)

    def _nodes(self, s, i_abs, v_load, v_cb):
        """(electrode A, electrode B) node voltages against ground with the bridge closed.

        v_load: across the load, A minus B; v_cb: CBLOCK, its switch side minus electrode
        A. The cathode's switch connects to BOTTOM, i_abs x (RSHUNT + one switch) above
        ground; CBLOCK sits between electrode A and its switch, so it shifts the nodes
        (their common mode) only while A is the cathode, never their difference."""
        low = i_abs * (self.fe.shunt_ohm + SWITCH_OHM)
        if s > 0:
            return low + v_load, low
        a = low - v_cb
        return a, a - v_load

    def _push(self, t0, t1, i_abs, a0, a1, b0, b1, v_out):
        self.v_out_abs = v_out
        w = self._seg_w % self._seg_n
        self._seg_t0[w] = t0
        self._seg_t1[w] = t1
        self._seg_i[w] = i_abs
        self._seg_a0[w] = a0
        self._seg_a1[w] = a1
        self._seg_b0[w] = b0
        self._seg_b1[w] = b1
        self._seg_w += 1

    def ain_average(self, ch, t0_us, t1_us):
        """Mean voltage at ADS1115 input `ch` (0..3, single-ended) over [t0, t1] µs.

        AIN0: the shunt. AIN2 / AIN3: electrode A / B through its divider to VBIAS and a
        buffer (whose output stays within 0 V .. VDD + 0.3 V, the BAT54S clamp). AIN1:
        grounded (the front end leaves it unused)."""
        if t1_us > self.now_us:
            t1_us = self.now_us
        self.sync()
        if t1_us <= t0_us:
            t0_us = t1_us - 1
        fe = self.fe
        if ch == 1:
            return fe.ain_offset_v
        if ch == 2:
            v0s = self._seg_a0
            v1s = self._seg_a1
        else:
            v0s = self._seg_b0
            v1s = self._seg_b1
        total = 0.0
        covered = 0
        n = self._seg_n
        w = self._seg_w
        k = 0
        while k < n and k < w:
            j = (w - 1 - k) % n
            a = self._seg_t0[j]
            b = self._seg_t1[j]
            k += 1
            if b <= t0_us:
                break
            if a >= t1_us:
                continue
            lo = a if a > t0_us else t0_us
            hi = b if b < t1_us else t1_us
            covered += hi - lo
            if ch == 0:
                total += self._seg_i[j] * fe.shunt_ohm * (hi - lo)
            else:
                # Linear interpolation of the node across the segment, averaged over the overlap.
                span = b - a
                va = v0s[j]
                vb = v1s[j]
                fa = (lo - a) / span
                fb = (hi - a) / span
                total += (va + (vb - va) * (fa + fb) / 2) * (hi - lo)
        dur = t1_us - t0_us
        if ch == 0:
            return total / dur + fe.ain_offset_v
        v = (total + V_BIAS * (dur - covered)) / dur  # before any segment: floating
        v = V_BIAS + (v - V_BIAS) / (fe.divider_a if ch == 2 else fe.divider_b)
        if v < 0.0:
            v = 0.0  # the buffer's output cannot go below its ground rail
        elif v > AIN_CLAMP_V:
            v = AIN_CLAMP_V
        return v + fe.ain_offset_v

    def adc_uv(self, gpio, atten):
        """ESP32 ADC1 reading (read_uv) of a pin: the fast load-voltage monitor, or 0.

        The ADC samples the instant it is read; read_uv applies the factory calibration,
        which leaves about 1 % gain error (per-board, seeded) and a few mV of noise.
        """
        v = 0.0
        if gpio == self.gpio_fast_sense:
            self.sync()
            v = self.v_out_abs / self.fe.fast_divider * self.fe.fast_gain
        lo, hi = _ADC_RANGE_V[atten]
        if self.noise:
            v += 0.002 * self.gauss()
        if v < lo:
            v = lo if v > 0.05 else 0.0
        if v > hi:
            v = hi
        return int(v * 1e6)

    def gauss(self):
        """Standard normal deviate from a seeded xorshift (deterministic per run)."""
        u1 = self._uniform()
        u2 = self._uniform()
        return math.sqrt(-2.0 * math.log(u1)) * math.cos(6.283185307179586 * u2)

    def _uniform(self):
        x = self._rng_state
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self._rng_state = x
        return (x + 1) / 4294967297.0

    # ---- trace -------------------------------------------------------------------------
    def _phase(self, t0, t1, i_mean_ua, i_peak_ua, v_peak, i_cmd_a, flags, sign):
        """Add a segment with the output on; contiguous same-sign segments (split by a DAC
        write, say) make one phase record."""
        if self.trace is None:
            return
        ph = self._ph
        if ph is not None and ph[1] == t0 and ph[7] == sign:
            ph[1] = t1
            ph[2] += i_mean_ua * (t1 - t0)
            if i_peak_ua > ph[3]:
                ph[3] = i_peak_ua
            if v_peak > ph[4]:
                ph[4] = v_peak
            if i_cmd_a * 1e6 > ph[5]:
                ph[5] = i_cmd_a * 1e6
            ph[6] |= flags
            return
        self._end_phase()
        self._ph = [t0, t1, i_mean_ua * (t1 - t0), i_peak_ua, v_peak, i_cmd_a * 1e6, flags, sign]

    def _end_phase(self):
        ph = self._ph
        if ph is None:
            return
        self._ph = None
        dur = ph[1] - ph[0]
        struct.pack_into(
            PHASE_FMT, self._tbuf, self._tn * PHASE_SIZE,
            ph[0], dur, ph[2] / dur, ph[3], ph[4], ph[5], 0.0, ph[6],
        )
        self._tn += 1
        if self._tn * PHASE_SIZE >= len(self._tbuf):
            self._write_trace()

    def _write_trace(self):
        if self.trace is not None and self._tn:
            self.trace.write(memoryview(self._tbuf)[: self._tn * PHASE_SIZE])
            self.trace.flush()
            self._tn = 0

    def flush(self):
        """Physics up to now, then everything recorded onto disk."""
        self.sync()
        self._write_trace()
        if self.events_log is not None:
            self.events_log.flush()

    def log(self, event_name, **kw):
        if self.events_log is None:
            return
        kw["t_us"] = self.now_us
        kw["event"] = event_name
        self.events_log.write(json.dumps(kw) + "\n")

    # ---- scenario ----------------------------------------------------------------------
    def _apply(self, ev, replay=False):
        kind = ev["event"]
        load = self.load
        self.sync()
        if kind == "lift":
            load.open = True
        elif kind == "contact":
            load.open = False
            load.short = False
            load.area = ev.get("area", 1.0)
        elif kind == "load":
            load.base_rs = ev.get("r_series_ohm", load.base_rs)
            load.base_rp = ev.get("r_parallel_ohm", load.base_rp)
            load.base_cp = ev.get("c_parallel_f", load.base_cp)
        elif kind == "gel_drying":
            load.drift_from_us = int(ev.get("at_s", 0) * 1e6)
            load.drift_over_us = int(ev.get("over_s", 300) * 1e6)
            load.drift_factor = ev.get("factor", 3.0)
        elif kind == "short":
            load.short = True
        elif kind == "dac_stuck":
            self.dac_stuck = ev.get("on", True)
        elif kind in ("i2c_nack", "adc_stuck"):
            for bus in self.i2c.values():
                for dev in bus.values():
                    if ev.get("address", dev.address) == dev.address:
                        dev.fault = None if not ev.get("on", True) else kind[4:] if kind == "i2c_nack" else "stuck"
        elif kind == "button":
            self._set_input_by_name("BUTTON", 0 if ev.get("down", True) else 1)
        elif kind == "press":
            if not replay:
                self._set_input_by_name("BUTTON", 0)
                hold = int(ev.get("hold_s", 0.15) * 1e6)
                at = self.now_us + hold
                j = self._ev_i  # after every pending event due at or before it (stable)
                while j < len(self._events) and self._events[j][0] <= at:
                    j += 1
                self._events.insert(j, (at, {"event": "button", "down": False}))
        elif kind == "usb":
            self.usb_present = ev.get("present", True)
            self._set_input_by_name("USB_SENSE", 1 if self.usb_present else 0)
        elif kind in ("brownout", "power_cut"):
            if not replay:
                self.log(kind)
                self.power_off(int(ev.get("off_s", 0.5) * 1e6))
        elif kind == "stop":
            if not replay:
                self.log("stop")
                self.finish(ev.get("code", 0))
        else:
            raise ValueError("unknown scenario event %r" % kind)
        if not replay:
            self.log("scenario", what=kind, spec=ev)

    # ---- resets and power ---------------------------------------------------------------
    def restored_chip(self, key):
        """The saved state of a separately powered chip (None: first power-on)."""
        return self._chip_state.get(key)

    def save_state(self, keep_outputs):
        """What survives this power cycle: virtual time, boot count, the separately
        powered chips' state (always: they decide what a power-on clears), and on a soft
        reset the DAC and GPIO output levels. Padded in place (files cannot be truncated)."""
        if self.state_file is None:
            return
        st = {"now_us": self.now_us, "boots": self.boots,
              "chips": {k: d.state() for k, d in self.chips.items()}}
        if keep_outputs:
            st["wdt_timeout_us"] = self.wdt_timeout_us
            st["wdt_fed_us"] = self.wdt_fed_us
            st["dac"] = {str(k): v for k, v in self.dac.items()}
            st["levels"] = {str(k): s.level_at(self.now_us) for k, s in self.out.items() if s is not None}
        data = json.dumps(st).encode()
        f = self.state_file
        f.seek(0)
        f.write(data)
        # Blank out a longer previous state (files cannot be truncated); small writes,
        # so a tight firmware heap is not asked for one big buffer.
        pad = STATE_PAD_BYTES - len(data)
        while pad > 0:
            n = pad if pad < 64 else 64
            f.write(_BLANKS[:n])
            pad -= n
        f.flush()

    def _hand_over(self, msg, keep_outputs=False):
        self.sync()
        self._end_phase()
        self.flush()
        self.save_state(keep_outputs)
        if self.ctl is None:
            raise SystemExit(msg)
        self.ctl.write(msg + "\n")
        # The supervisor kills this process now; nothing after this line runs.
        while True:
            _rt.sleep_ms(1000)

    def reset(self, cause):
        self.log("reset", cause=cause)
        self._hand_over("reset %d" % cause)

    def soft_reset(self):
        self.log("reset", cause=SOFT_RESET)
        self._hand_over("soft", keep_outputs=True)

    def power_off(self, off_us):
        # Everything stops at the cut: record up to now, then let the off time pass
        # with no output at all (the next power cycle starts after it).
        self.sync()
        self._end_phase()
        self.flush()
        self.now_us += off_us
        self.phys_t = self.now_us
        self._hand_over("poweroff %d" % off_us)

    def finish(self, code=0):
        self._hand_over("done %d" % code)

    def at_exit(self):
        # Interpreter exits on Ctrl-D at the REPL: a soft reset keeps outputs.
        self.sync()
        self._end_phase()
        self.flush()
        self.save_state(keep_outputs=True)

    def repl_started(self):
        self.flush()
        if self.cfg.get("headless"):
            # Nobody will type at this REPL: main.py ended (or crashed), so the run is over.
            self.log("firmware_exited")
            self.finish(EXIT_FIRMWARE_ENDED)


_LOW = Static(0)

# ESP32 ADC linear ranges by attenuation (0, 2.5, 6, 11 dB), volts.
_ADC_RANGE_V = ((0.1, 0.95), (0.1, 1.25), (0.15, 1.75), (0.15, 2.45))


def boot(cfg_path, reset_cause):
    with open(cfg_path) as f:
        cfg = json.loads(f.read())
    state = None
    sp = cfg.get("state_path")
    if sp:
        try:
            with open(sp) as f:
                state = json.loads(f.read())
        except (OSError, ValueError):  # first power-on: nothing saved yet
            state = None
    w = World(cfg, reset_cause, state)
    if MICROPYTHON:
        sys.atexit(lambda: w.at_exit())
    return w


# ---------------------------------------------------------------------------------------
# Flash: LittleFS on a file-backed block device, like an ESP32's vfs partition.


class PowerCut(OSError):
    """The flash lost power in the middle of an operation (raised by FileBlockDev)."""


class FileBlockDev:
    """NOR-flash-like block device over a host file (4096-byte erase blocks).

    Power cuts: with `cut_after` set to N, the device programs (and erases) N more bytes,
    then loses power: the operation in flight is torn (only its first bytes land, an
    erase leaves only the start of its block erased) and it and every later operation
    raise PowerCut (an OSError, EIO), as a flash chip that lost power would stop answering.
    An erase counts as block_size bytes, so a cut at a random byte lands in erases in
    proportion to the time a chip spends erasing. `programmed` counts bytes since creation.

    Time: with a world, each operation stalls the CPU for the time a typical ESP32
    module's SPI NOR flash takes (sector erase 45 ms, page program 0.7 ms per 256-byte
    page; reads are not charged): the clock jumps forward without running soft timers,
    as a stalled CPU runs none; what fell due runs late, at the next clock advance."""

    ERASE_US = 45000
    PAGE_US = 700
    PAGE = 256

    def __init__(self, f, block_size, blocks, world=None):
        self.f = f
        self.bs = block_size
        self.n = blocks
        self._erased = b"\xff" * block_size  # one buffer for every erase
        self.world = world
        self.cut_after = -1  # bytes still allowed before the power cut; -1: never
        self.dead = False
        self.programmed = 0
        self.erases = 0
        self.stall_us = 0

    def _stall(self, us):
        self.stall_us += us
        w = self.world
        if w is not None:
            w.now_us += us

    def _allow(self, nbytes):
        """How many of nbytes land before the power cut (nbytes when there is none)."""
        if self.dead:
            raise PowerCut(5, "flash: power cut")
        if self.cut_after < 0 or nbytes < self.cut_after:
            if self.cut_after >= 0:
                self.cut_after -= nbytes
            self.programmed += nbytes
            return nbytes
        k = self.cut_after
        self.cut_after = 0
        self.programmed += k
        self.dead = True
        return k

    def readblocks(self, block, buf, off=0):
        if self.dead:
            raise PowerCut(5, "flash: power cut")
        self.f.seek(block * self.bs + off)
        self.f.readinto(buf)

    def writeblocks(self, block, buf, off=None):
        if off is None:
            # Simple interface: erase then program whole blocks.
            off = 0
        n = len(buf)
        k = self._allow(n)
        self.f.seek(block * self.bs + off)
        if k == n:
            self.f.write(buf)
        else:
            self.f.write(memoryview(buf)[:k])  # torn: only the first k bytes landed
            raise PowerCut(5, "flash: power cut while programming")
        first = (block * self.bs + off) // self.PAGE
        last = (block * self.bs + off + n - 1) // self.PAGE
        self._stall((last - first + 1) * self.PAGE_US)

    def ioctl(self, op, arg):
        if op == 3:  # sync
            # Every write already reached the host file (unix-port files are unbuffered);
            # flush() would fsync the host disk, 10-50x slower and no safer here.
            if self.dead:
                raise PowerCut(5, "flash: power cut")
            return 0
        if op == 4:
            return self.n
        if op == 5:
            return self.bs
        if op == 6:  # erase
            k = self._allow(self.bs)
            self.f.seek(arg * self.bs)
            self.erases += 1
            if k == self.bs:
                self.f.write(self._erased)
                self._stall(self.ERASE_US)
                return 0
            self.f.write(memoryview(self._erased)[:k])  # torn erase
            raise PowerCut(5, "flash: power cut while erasing")
        return None


def _copy_tree(os, src, dst):
    for name in os.listdir(src):
        s = src + "/" + name
        d = dst + "/" + name
        if os.stat(s)[0] & 0x4000:
            try:
                os.mkdir(d)
            except OSError:
                pass
            _copy_tree(os, s, d)
        else:
            with open(s, "rb") as fi:
                data = fi.read()
            with open(d, "wb") as fo:
                fo.write(data)


def signal_up(w):
    """Tell the supervisor the board is up: the flash is mounted at "/" and a Ctrl-C now
    lands in the firmware (before this, host input is held back: a Ctrl-C between boot and
    the mount would leave the host's own filesystem at "/")."""
    if w.ctl is not None:
        w.ctl.write("up\n")  # unbuffered; flush() would fsync, which a FIFO refuses


def mount_flash(w):
    import os

    fcfg = w.cfg.get("flash", {})
    path = fcfg.get("image")
    if not path:
        return
    bs = 4096
    blocks = fcfg.get("size_kb", 1536) * 1024 // bs
    try:
        f = open(path, "r+b")
        fresh = False
    except OSError:
        # A new flash is built under another name and renamed into place when complete:
        # a Ctrl-C (or a kill) during provisioning leaves no half-provisioned image.
        f = open(path + ".new", "w+b")
        fresh = True
    bdev = FileBlockDev(f, bs, blocks)
    if fresh:
        for _ in range(blocks):
            f.write(bdev._erased)
        f.flush()
    if fresh:
        os.VfsLfs2.mkfs(bdev)
    try:
        vfs = os.VfsLfs2(bdev)
    except OSError:
        # Like the ESP32's _boot.py: an unreadable filesystem is recreated.
        os.VfsLfs2.mkfs(bdev)
        vfs = os.VfsLfs2(bdev)
    prov = fcfg.get("provision")
    if prov and fresh:  # a new flash gets the deployed firmware; later boots keep what is there
        os.mount(vfs, "/flash")
        _copy_tree(os, prov, "/flash")
        os.umount("/flash")
    if fresh:
        f.flush()
        os.rename(path + ".new", path)
    os.umount("/")
    os.mount(vfs, "/")
    w.flash_file = f
    # From here flash writes cost virtual time (provisioning stands for a deploy, not a boot).
    bdev.world = w
    w.flash = bdev


_ballast = None


def reserve_firmware_heap(fw_heap_bytes):
    """Leave the firmware exactly `fw_heap_bytes` of free heap.

    The simulated hardware lives in the same MicroPython heap as the firmware, which a
    board would not carry; the interpreter is started with room for both, and what
    exceeds the firmware's budget is pinned here. The simulator's transient garbage
    still competes with the firmware, so this is stricter than a board, not looser."""
    global _ballast
    import gc

    gc.collect()
    # In small pieces, first fit: they fill the holes the simulator's setup left before
    # they reach the untouched end of the heap, so what stays free for the firmware is one
    # contiguous region (a board's heap is, at boot) rather than the holes between the
    # simulator's objects. Pieces below 256 bytes' worth of holes stay free (a few).
    piece = 256
    extra = gc.mem_free() - fw_heap_bytes
    _ballast = [None] * (extra // piece + 16)
    k = 0
    while k < len(_ballast):
        extra = gc.mem_free() - fw_heap_bytes
        if extra <= 64:
            break
        try:
            _ballast[k] = bytearray(piece if extra > piece + 64 else extra - 64)
        except MemoryError:
            break
        k += 1

# machine, as the ESP32 port provides it, for the virtual board.
#
# Same signatures and the same limits as ports/esp32 (PWM refuses < 1 Hz, DAC only on its
# pins and 8 bits, Timer callbacks soft, WDT resets when starved), backed by _vworld.
# Only what the ESP32 has is here: code that runs on the virtual board runs on a board.
import _vworld
from _vworld import release, restore

# Static levels are immutable: one object each, made at import (before the firmware's heap
# is set aside), so a pin write allocates nothing in it, as on a board.
_STATIC = (_vworld.Static(0), _vworld.Static(1))

PWRON_RESET = _vworld.PWRON_RESET
HARD_RESET = _vworld.HARD_RESET
WDT_RESET = _vworld.WDT_RESET
DEEPSLEEP_RESET = _vworld.DEEPSLEEP_RESET
SOFT_RESET = _vworld.SOFT_RESET

_ENODEV = 19
_ETIMEDOUT = 116


def _w():
    return _vworld.world()


# Per chip (ports/esp32 and the chips' reference manuals): input-only GPIOs and the ADC1
# channels' GPIOs. What exists at all comes from the run config (the board's chip).
_INPUT_ONLY = {"esp32": (34, 35, 36, 37, 38, 39), "esp32s2": (46,), "esp32s3": (), "esp32c3": ()}
_ADC1 = {"esp32": tuple(range(32, 40)), "esp32s2": tuple(range(1, 11)),
         "esp32s3": tuple(range(1, 11)), "esp32c3": (0, 1, 2, 3, 4)}


def _chip():
    return _w().board.get("chip", "esp32")


# A board without a DAC has an external one on its I2C bus; it is there from power-on,
# like the ADS1115, and a soft reset of the ESP32 does not touch it.
# (Imported only for such a board: model tests load this module without the device dir.)
if _vworld.world() is not None and (_vworld.world().board.get("frontend", {}).get("dac") or {}).get("kind") == "mcp4725":
    import _mcp4725

    _mcp4725.attach(_vworld.world())


class Pin:
    IN = 1
    OUT = 3
    OPEN_DRAIN = 7
    PULL_UP = 1
    PULL_DOWN = 2
    IRQ_RISING = 1
    IRQ_FALLING = 2
    DRIVE_0 = 0
    DRIVE_1 = 1
    DRIVE_2 = 2
    DRIVE_3 = 3

    def __init__(self, id, mode=-1, pull=-1, *, value=None, drive=None, hold=None):
        w = _w()
        w.check_gpio(id)
        self._id = id
        self._mode = None
        self.init(mode, pull, value=value)

    def init(self, mode=-1, pull=-1, *, value=None, drive=None, hold=None):
        d = release()
        try:
            w = _w()
            if mode != -1 and mode is not None:
                if mode in (Pin.OUT, Pin.OPEN_DRAIN):
                    if self._id in _INPUT_ONLY.get(_chip(), ()):
                        raise ValueError("pin can only be input")
                    lvl = value if value is not None else w.output_level(self._id) or 0
                    w.set_output(self._id, _STATIC[1 if lvl else 0])
                else:
                    w.release_output(self._id)
                self._mode = mode
            elif value is not None and self._mode in (Pin.OUT, Pin.OPEN_DRAIN):
                w.set_output(self._id, _STATIC[1 if value else 0])
        finally:
            restore(d)

    def value(self, v=None):
        d = release()
        try:
            w = _w()
            if v is None:
                return w.input_level(self._id)
            if self._mode in (Pin.OUT, Pin.OPEN_DRAIN):
                src = w.out.get(self._id)
                lvl = 1 if v else 0
                if src is None or src.kind != "static" or src.level != lvl:
                    w.set_output(self._id, _STATIC[lvl])
            return None
        finally:
            restore(d)

    def __call__(self, v=None):
        return self.value(v)

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    def irq(self, handler=None, trigger=3, *, wake=None, hard=False):
        d = release()
        try:
            w = _w()
            if handler is None:
                w.irq.pop(self._id, None)
            else:
                w.irq[self._id] = (handler, trigger, self)
        finally:
            restore(d)

    def __repr__(self):
        return "Pin(%d)" % self._id


class Signal:
    def __init__(self, pin, invert=False):
        self._pin = pin
        self._inv = invert

    def value(self, v=None):
        if v is None:
            return self._pin.value() ^ self._inv
        self._pin.value((1 if v else 0) ^ self._inv)

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)


def _pin_id(p):
    return p._id if isinstance(p, Pin) else int(p)


class PWM:
    """LEDC PWM: integer frequency 1 Hz..40 MHz, nothing below 1 Hz."""

    def __init__(self, dest, *, freq=None, duty_u16=None, duty_ns=None, invert=False):
        self._id = _pin_id(dest)
        _w().check_gpio(self._id)
        self._freq = 5000
        self._duty = 32768
        self._active = True
        self.init(freq=freq, duty_u16=duty_u16, duty_ns=duty_ns)

    def init(self, *, freq=None, duty_u16=None, duty_ns=None, invert=False):
        if freq is not None:
            self._check_freq(freq)
            self._freq = int(freq)
        if duty_u16 is not None:
            self._duty = max(0, min(65535, int(duty_u16)))
        if duty_ns is not None:
            self._duty = max(0, min(65535, int(duty_ns * self._freq * 65535 // 1000000000)))
        self._active = True
        self._apply()

    @staticmethod
    def _check_freq(freq):
        if freq < 1 or freq > 40000000:
            raise ValueError("frequency must be from 1Hz to 40MHz")

    def _apply(self):
        d = release()
        try:
            w = _w()
            w.set_output(self._id, _vworld.PWMWave(w.now_us, self._freq, self._duty))
        finally:
            restore(d)

    def freq(self, value=None):
        if value is None:
            return self._freq
        self._check_freq(value)
        self._freq = int(value)
        self._apply()

    def duty_u16(self, value=None):
        if value is None:
            return self._duty
        self._duty = max(0, min(65535, int(value)))
        self._apply()

    def deinit(self):
        d = release()
        try:
            _w().set_output(self._id, _STATIC[0])
        finally:
            restore(d)
        self._active = False


class DAC:
    """8-bit DAC on GPIO25/26 (ESP32) or GPIO17/18 (ESP32-S2); creating it writes 0."""

    _PINS = {"esp32": (25, 26), "esp32s2": (17, 18)}

    def __init__(self, pin):
        self._id = _pin_id(pin)
        w = _w()
        pins = self._PINS.get(w.board.get("chip", "esp32"), ())
        if self._id not in pins:
            raise ValueError("invalid Pin for DAC")
        self.write(0)

    def write(self, value):
        if value < 0 or value > 255:
            raise ValueError("value out of range")
        d = release()
        try:
            _w().set_dac(self._id, value)
        finally:
            restore(d)


class ADC:
    ATTN_0DB = 0
    ATTN_2_5DB = 1
    ATTN_6DB = 2
    ATTN_11DB = 3
    WIDTH_12BIT = 12

    def __init__(self, pin, *, atten=0):
        self._id = _pin_id(pin)
        if self._id not in _ADC1.get(_chip(), ()):
            raise ValueError("invalid Pin for ADC")
        self._atten = atten

    def atten(self, a):
        self._atten = a

    def read_uv(self):
        d = release()
        try:
            w = _w()
            w.spend_us(40)  # one-shot conversion, roughly as on an ESP32
            return w.adc_uv(self._id, self._atten)
        finally:
            restore(d)

    def read_u16(self):
        top = (950000, 1250000, 1750000, 2450000)[self._atten]
        return min(65535, self.read_uv() * 65535 // top)


class I2C:
    """Hardware I2C. Each transaction costs its bus time; a NACK raises OSError(ENODEV)."""

    def __init__(self, id=0, *, scl=None, sda=None, freq=400000, timeout=50000):
        self._bus = id
        self._freq = freq
        w = _w()
        if scl is not None:
            w.check_gpio(_pin_id(scl))
        if sda is not None:
            w.check_gpio(_pin_id(sda))
        w.i2c.setdefault(id, {})

    def _dev(self, addr, nbytes):
        w = _w()
        # start + address + data bytes + stop, 9 clocks a byte
        w.spend_us((nbytes + 1) * 9 * 1000000 // self._freq + 10)
        dev = w.i2c.get(self._bus, {}).get(addr)
        if dev is None or dev.fault == "nack":
            raise OSError(_ENODEV)
        return dev

    def scan(self):
        d = release()
        try:
            w = _w()
            w.spend_us(2000)
            return sorted(a for a, dev in w.i2c.get(self._bus, {}).items() if dev.fault != "nack")
        finally:
            restore(d)

    def writeto(self, addr, buf, stop=True):
        d = release()
        try:
            self._dev(addr, len(buf)).write(buf)
            return len(buf)
        finally:
            restore(d)

    def readfrom_into(self, addr, buf, stop=True):
        d = release()
        try:
            self._dev(addr, len(buf)).read_into(buf)
        finally:
            restore(d)

    def readfrom(self, addr, nbytes, stop=True):
        buf = bytearray(nbytes)
        self.readfrom_into(addr, buf)
        return bytes(buf)

    def writeto_mem(self, addr, memaddr, buf, *, addrsize=8):
        d = release()
        try:
            dev = self._dev(addr, len(buf) + 1)
            dev.write(bytes([memaddr]) + bytes(buf))
        finally:
            restore(d)

    def readfrom_mem_into(self, addr, memaddr, buf, *, addrsize=8):
        d = release()
        try:
            dev = self._dev(addr, len(buf) + 2)
            dev.write(bytes([memaddr]))
            dev.read_into(buf)
        finally:
            restore(d)

    def readfrom_mem(self, addr, memaddr, nbytes, *, addrsize=8):
        buf = bytearray(nbytes)
        self.readfrom_mem_into(addr, memaddr, buf)
        return bytes(buf)


SoftI2C = I2C


class Timer:
    """Always soft on the ESP32 port: callbacks run from the scheduler, not an interrupt."""

    ONE_SHOT = 0
    PERIODIC = 1

    def __init__(self, id=-1, **kw):
        self._id = id
        self._entry = None
        if kw:
            self.init(**kw)

    def init(self, *, mode=PERIODIC, period=-1, freq=-1, callback=None, hard=False):
        if hard:
            raise ValueError("hard Timers are not implemented")
        self.deinit()
        if freq > 0:
            period_us = 1000000 // freq
        else:
            period_us = period * 1000
        if period_us <= 0:
            raise ValueError("period must be positive")
        w = _w()
        self._entry = [w.now_us + period_us, period_us if mode == Timer.PERIODIC else 0, callback, self, self]
        w.timers.append(self._entry)

    def deinit(self):
        if self._entry is not None:
            try:
                _w().timers.remove(self._entry)
            except ValueError:
                pass
            self._entry = None


class WDT:
    """Cannot be stopped once started; a starved watchdog resets the board."""

    def __init__(self, id=0, timeout=5000):
        if timeout < 1:
            raise ValueError("timeout must be >= 1 ms")
        w = _w()
        w.wdt_timeout_us = timeout * 1000
        w.wdt_fed_us = w.now_us

    def feed(self):
        w = _w()
        w.wdt_fed_us = w.now_us


def reset_cause():
    return _w().reset_cause


def reset():
    _w().reset(HARD_RESET)


def soft_reset():
    _w().soft_reset()


def unique_id():
    return bytes(_w().cfg.get("unique_id", [0x24, 0x0A, 0xC4, 0x00, 0x00, 0x01]))


def freq(hz=None):
    if hz is None:
        return 160000000
    if hz not in (20000000, 40000000, 80000000, 160000000, 240000000):
        raise ValueError("frequency must be 20MHz, 40MHz, 80Mhz, 160MHz or 240MHz")


def idle():
    _w().spend_us(10)


def lightsleep(time_ms=None):
    if time_ms:
        _w().sleep_us(time_ms * 1000)


def disable_irq():
    return 0


def enable_irq(state=0):
    pass


def time_pulse_us(pin, pulse_level, timeout_us=1000000):
    return -1

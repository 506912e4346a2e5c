# esp32, as the ESP32 port provides it, for the virtual board: the RMT transmitter.
#
# RMT(channel, *, pin, resolution_hz | clock_div, idle_level, tx_carrier, num_symbols);
# durations 1..32767 ticks; loop_count(-1) loops in hardware; a looped sequence is
# limited to what fits in the channel's memory (ports/esp32/esp32_rmt.c).
import _vworld
from _vworld import release, restore

# Static levels are immutable: one object each, made at import (before the firmware's heap
# is set aside), so a pin write allocates nothing in it, as on a board.
_STATIC = (_vworld.Static(0), _vworld.Static(1))

_SOURCE_HZ = 80000000
_MEM_SYMBOLS = 64  # SOC_RMT_MEM_WORDS_PER_CHANNEL on the ESP32


class RMT:
    PULSE_MAX = 32767

    def __init__(self, id=-1, *, pin, resolution_hz=None, clock_div=None, idle_level=False,
                 tx_carrier=None, num_symbols=_MEM_SYMBOLS):
        if resolution_hz is not None and clock_div is not None:
            raise ValueError("resolution_hz and clock_div are mutually exclusive")
        if clock_div is not None:
            if clock_div < 1 or clock_div > 255:
                raise ValueError("clock_div must be between 1 and 255")
            resolution_hz = _SOURCE_HZ // clock_div
        elif resolution_hz is None:
            resolution_hz = _SOURCE_HZ // 8
        if resolution_hz <= 0:
            raise ValueError("resolution_hz must be positive")
        if num_symbols < _MEM_SYMBOLS or num_symbols % 2:
            raise ValueError("num_symbols must be even and at least %d" % _MEM_SYMBOLS)
        self._pin = pin._id if hasattr(pin, "_id") else int(pin)
        _vworld.world().check_gpio(self._pin)
        self._res = resolution_hz
        self._idle = 1 if idle_level else 0
        self._loop = 0
        self._num_symbols = num_symbols
        self._wave = None
        self._deinit = False

    def source_freq(self):
        return _SOURCE_HZ

    def clock_div(self):
        return _SOURCE_HZ // self._res

    def loop_count(self, n):
        self._live()
        if n < -1:
            raise ValueError("arg must be -1, 0 or positive")
        if n == 0 and self._loop != 0 and self.active():
            self._stop()
        self._loop = n

    def loop(self, enable):
        self.loop_count(-1 if enable else 0)

    def write_pulses(self, duration, data=True):
        self._live()
        d = release()
        try:
            if isinstance(duration, int):
                levels = [1 if b else 0 for b in data]
                durs = [duration] * len(levels)
            else:
                durs = list(duration)
                if isinstance(data, (list, tuple)):
                    if len(data) != len(durs):
                        raise ValueError("duration and data must have same length")
                    levels = [1 if b else 0 for b in data]
                else:
                    lv = 1 if data else 0
                    levels = []
                    for _ in durs:
                        levels.append(lv)
                        lv ^= 1
            if not durs:
                raise ValueError("No pulses")
            for t in durs:
                if t < 1 or t > RMT.PULSE_MAX:
                    raise ValueError("pulse duration out of range")
            if self._loop != 0 and len(durs) > 2 * self._num_symbols - 2:
                raise ValueError("looped sequence too long for the channel memory")
            w = _vworld.world()
            # A new sequence starts after the current loop iteration (we start it now).
            us_per_tick = 1e6 / self._res
            loops = -1 if self._loop == -1 else (self._loop if self._loop > 0 else 1)
            self._wave = _vworld.RMTWave(
                w.now_us, levels, [t * us_per_tick for t in durs], loops, self._idle
            )
            w.set_output(self._pin, self._wave)
            w.spend_us(20 + len(durs))
        finally:
            restore(d)

    def wait_done(self, *, timeout=0):
        self._live()
        w = _vworld.world()
        if self._wave is None:
            return True
        end = self._wave.end_us()
        if w.now_us >= end:
            return True
        if timeout and end != _vworld.FOREVER:
            if end - w.now_us <= timeout * 1000:
                w.advance_to(end)
                return True
        if timeout:
            w.sleep_us(timeout * 1000)
        return False

    def active(self, value=None):
        self._live()
        w = _vworld.world()
        if value is None:
            return self._wave is not None and not self._wave.done(w.now_us)
        if value:
            raise ValueError("activate by calling write_pulses()")
        self._stop()

    def _stop(self):
        d = release()
        try:
            w = _vworld.world()
            w.set_output(self._pin, _STATIC[1 if self._idle else 0])
            self._wave = None
        finally:
            restore(d)

    def deinit(self):
        if self._deinit:
            raise OSError("already deinitialized")
        self._stop()
        self._deinit = True

    def _live(self):
        if self._deinit:
            raise OSError("already deinitialized")

# time for the virtual board: the ticks and sleeps of a board, on the world's clock.
#
# Virtual time runs as fast as the code allows (tests: a 20-minute session in seconds)
# or is paced to wall time (interactive). ticks wrap at 2**30 like the ESP32 port's.
# Reading the clock costs 1 µs of virtual time, so a busy-wait on ticks terminates.
import _vworld
from _vworld import TICKS_HALF, TICKS_MASK, release, restore

try:
    import utime as _real
except ImportError:  # CPython
    import time as _real


def _w():
    return _vworld.world()


def ticks_us():
    w = _w()
    d = release()
    try:
        w.spend_us(1)
    finally:
        restore(d)
    return w.now_us & TICKS_MASK


def ticks_ms():
    w = _w()
    d = release()
    try:
        w.spend_us(1)
    finally:
        restore(d)
    return (w.now_us // 1000) & TICKS_MASK


def ticks_cpu():
    return ticks_us()


def ticks_add(ticks, delta):
    return (ticks + delta) & TICKS_MASK


def ticks_diff(end, start):
    return ((end - start + TICKS_HALF) & TICKS_MASK) - TICKS_HALF


def sleep_us(us):
    d = release()
    try:
        _w().sleep_us(int(us))
    finally:
        restore(d)


def sleep_ms(ms):
    d = release()
    try:
        _w().sleep_us(int(ms) * 1000)
    finally:
        restore(d)


def sleep(s):
    d = release()
    try:
        _w().sleep_us(int(s * 1000000))
    finally:
        restore(d)


# Calendar time: the board's RTC starts at the configured epoch and follows virtual time.
def time():
    w = _w()
    return w.cfg.get("epoch_s", 0) + w.now_us // 1000000


def time_ns():
    w = _w()
    return w.cfg.get("epoch_s", 0) * 1000000000 + w.now_us * 1000


def gmtime(secs=None):
    return _real.gmtime(time() if secs is None else secs)


localtime = gmtime


def mktime(t):
    return _real.mktime(t)

# time for the virtual board: the ticks and sleeps of a board, on the world's clock.
#
# Virtual time runs as fast as the code allows (tests: a 20-minute session in seconds)
# or is paced to wall time (interactive). ticks wrap at 2**30 like the ESP32 port's.
# Reading the clock costs 1 µs of virtual time, so a busy-wait on ticks terminates.
import _vworld
from _vworld import TICKS_HALF, TICKS_MASK, release, restore

try:
    import utime as _real

    _real_sleep_us = _real.sleep_us
except ImportError:  # CPython
    import time as _real

    def _real_sleep_us(us):
        _real.sleep(us / 1e6)


def _w():
    return _vworld.world()


def _read_clock_us():
    """Virtual time now; reading the clock costs 1 us, so a busy-wait on it ends."""
    w = _w()
    d = release()
    try:
        w.spend_us(1)
    finally:
        restore(d)
    return w.now_us


def ticks_us():
    return _read_clock_us() & TICKS_MASK


def ticks_ms():
    return (_read_clock_us() // 1000) & TICKS_MASK


def ticks_cpu():
    return ticks_us()


def ticks_add(ticks, delta):
    return (ticks + delta) & TICKS_MASK


def ticks_diff(end, start):
    return ((end - start + TICKS_HALF) & TICKS_MASK) - TICKS_HALF


def sleep_us(us):
    w = _w()
    d = release()
    try:
        w.sleep_us(int(us))
        wait = w.pace_wait_us()
    finally:
        restore(d)
    # Paced runs wait here, in small steps: a host's Ctrl-C (taken in release()) interrupts
    # a sleep as on a board.
    while wait > 0:
        step = wait if wait < 2000 else 2000
        _real_sleep_us(step)
        wait -= step
        restore(release())


def sleep_ms(ms):
    sleep_us(int(ms) * 1000)


def sleep(s):
    sleep_us(int(s * 1000000))


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

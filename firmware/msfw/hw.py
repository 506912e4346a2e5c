# Builds the firmware's peripherals from the board definition: the one place where
# machine/esp32 objects are created. Nothing is created at import time.
#
# The code below is written to the real ESP32 APIs (machine.Pin/DAC/I2C/PWM/WDT,
# esp32.RMT). On the virtual board the same calls reach the simulated hardware, so
# this is also the code every test runs.
import time

import safe
from machine import DAC, I2C, PWM, WDT, Pin

from msfw.ads1115 import ADS1115
from msfw.regulator import fine_shift


class InternalDAC:
    """The ESP32/ESP32-S2 8-bit DAC (GPIO25/26, GPIO17/18)."""

    def __init__(self, pin):
        self._dac = DAC(Pin(pin))
        self.max_code = 255
        self.full_scale = 255

    def write(self, code):
        self._dac.write(code)


class DualDAC:
    """Both 8-bit DAC channels of an ESP32/ESP32-S2, summed at the source input: DAC_AMP
    (coarse) plus DAC_FINE through a resistor network that scales it by fine_ratio (1/16):
    12 bits from two 8-bit DACs (0.15 uA a step instead of 2.5 uA on the reference front end).

    A code is coarse << shift | low; the fine channel gets low x fine_k (Q8), which
    calibration sets from the measured ratio (the resistors' tolerance). write() is on the
    hot path: integers only, nothing allocated."""

    def __init__(self, coarse_pin, fine_pin, fine_ratio):
        self._c = DAC(Pin(coarse_pin))
        self._f = DAC(Pin(fine_pin))
        self.shift = fine_shift(fine_ratio)
        n = 1 << self.shift
        self._mask = n - 1
        self.max_code = 255 * n + n - 1
        self.full_scale = 255 * n  # codes per DAC_AMP full scale (vref)
        self.fine_k_q8 = int(256 / (n * fine_ratio) + 0.5)  # nominal; calibration refines it
        self._last_c = 0
        self._last_f = 0

    def write(self, code):
        c = code >> self.shift
        f = ((code & self._mask) * self.fine_k_q8 + 128) >> 8
        if c > 255:
            c = 255
        if f > 255:
            f = 255
        # Of the two intermediate states, pass through the lower one: never a transient
        # above both the old and the new amplitude.
        if c > self._last_c:
            self._f.write(f)
            self._c.write(c)
        else:
            self._c.write(c)
            self._f.write(f)
        self._last_c = c
        self._last_f = f

    def write_channels(self, coarse, fine):
        """Both channels as given (calibration measures the fine channel's real ratio)."""
        self._c.write(0)
        self._f.write(fine)
        self._c.write(coarse)
        self._last_c = coarse
        self._last_f = fine


class MCP4725:
    """External 12-bit I2C DAC for chips without one (S3, C3); fast-write command."""

    def __init__(self, i2c, address=0x60):
        self._i2c = i2c
        self._addr = address
        self._b = bytearray(2)
        self.max_code = 4095
        self.full_scale = 4095
        self.write(0)

    def write(self, code):
        b = self._b
        b[0] = (code >> 8) & 0x0F
        b[1] = code & 0xFF
        self._i2c.writeto(self._addr, b)


class Buzzer:
    def __init__(self, pin):
        self._pin = pin
        self._pwm = None

    def tone(self, on, freq_hz=2700):
        if on:
            if self._pwm is None:
                self._pwm = PWM(Pin(self._pin), freq=freq_hz, duty_u16=32768)
        elif self._pwm is not None:
            self._pwm.deinit()
            self._pwm = None
            Pin(self._pin, Pin.OUT, value=0)


class Hardware:
    def __init__(self, board, watchdog_ms=0):
        self.board = board
        p = board.pin
        # Output gates first, driven low, before anything can move the amplitude.
        self.en = Pin(p("STIM_EN"), Pin.OUT, value=0)
        self.pol = Pin(p("STIM_POL"), Pin.OUT, value=0)
        self.i2c = I2C(board.adc_bus, scl=Pin(p("I2C_SCL")), sda=Pin(p("I2C_SDA")), freq=400000)
        if board.dac_kind == "internal_dual":
            self.dac = DualDAC(p("DAC_AMP"), p("DAC_FINE"), board.dac_fine_ratio)
        elif board.dac_kind == "internal":
            self.dac = InternalDAC(p("DAC_AMP"))
        else:
            self.dac = MCP4725(self.i2c, board.dac_address)
        self.adc = ADS1115(self.i2c, board.adc_address)
        self.button = Pin(p("BUTTON"), Pin.IN, Pin.PULL_UP)
        usb = p("USB_SENSE")
        self.usb_sense = Pin(usb, Pin.IN) if usb is not None else None
        led = p("LED")
        self.led = Pin(led, Pin.OUT, value=0) if led is not None else None
        buzzer = p("BUZZER")
        self.buzzer = Buzzer(buzzer) if buzzer is not None else None
        # boot.py started the watchdog (safe.wdt); without boot.py, start it here.
        self.wdt = safe.wdt if safe.wdt is not None else (WDT(timeout=watchdog_ms) if watchdog_ms else None)
        self.ticks_ms = time.ticks_ms
        self.ticks_us = time.ticks_us
        self.ticks_diff = time.ticks_diff
        self.ticks_add = time.ticks_add
        self.sleep_ms = time.sleep_ms
        self.sleep_us = time.sleep_us

    def usb_powered(self):
        return self.usb_sense is not None and self.usb_sense.value() == 1

    def button_down(self):
        return self.button.value() == 0

    def output_off(self):
        """Enable low opens the current path at once; then the amplitude goes to 0."""
        self.en.value(0)
        self.dac.write(0)
        self.pol.value(0)

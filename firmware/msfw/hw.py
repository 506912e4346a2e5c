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


class InternalDAC:
    """The ESP32/ESP32-S2 8-bit DAC (GPIO25/26, GPIO17/18)."""

    def __init__(self, pin):
        self._dac = DAC(Pin(pin))
        self.max_code = 255

    def write(self, code):
        self._dac.write(code)


class MCP4725:
    """External 12-bit I2C DAC for chips without one (S3, C3); fast-write command."""

    def __init__(self, i2c, address=0x60):
        self._i2c = i2c
        self._addr = address
        self._b = bytearray(2)
        self.max_code = 4095
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
        if board.dac_kind == "internal":
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

# TI ADS1115 16-bit delta-sigma ADC at I2C register level, for the virtual board.
#
# The firmware's driver reaches it through the fake machine.I2C exactly as it reaches the
# chip: a pointer byte, 16-bit registers MSB first, OS-bit polling, continuous conversions,
# ALERT/RDY. Conversions run on the world's virtual clock and are evaluated lazily: every
# transaction first completes whatever conversions have finished by `world.now_us`, so the
# model costs nothing between accesses.
#
# Section numbers refer to the datasheet SBAS444D (ADS1113/ADS1114/ADS1115, rev. D, 2018).
#
# Runs on the MicroPython unix port and imports under CPython (model tests).
import math

try:
    from micropython import const
except ImportError:  # CPython without Blinka's micropython shim

    def const(x):
        return x


# Address pointer register P[1:0] (§9.6.1).
REG_CONVERSION = const(0)
REG_CONFIG = const(1)
REG_LO_THRESH = const(2)
REG_HI_THRESH = const(3)

# Power-on values (§9.6): Config = single-shot, AIN0-AIN1, ±2.048 V, 128 SPS, comparator off.
_CONFIG_RESET = const(0x8583)
_LO_THRESH_RESET = const(0x8000)
_HI_THRESH_RESET = const(0x7FFF)

# Config register fields (§9.6.3).
_OS = const(0x8000)  # write 1: start a single-shot conversion; read 0: converting
_MODE_SINGLE = const(0x0100)  # 1: single-shot / power-down, 0: continuous
_COMP_POL_HIGH = const(0x0008)
_COMP_QUE_MASK = const(0x0003)  # 11: comparator off, ALERT/RDY high-Z

# Power-up from power-down before a single-shot conversion starts (§9.4.2.1: "approximately
# 25 µs").
_WAKEUP_US = const(25)

# MUX[2:0] -> (positive input, negative input); -1 is GND (§9.3.1, §9.6.3).
_MUX_INPUTS = ((0, 1), (0, 3), (1, 3), (2, 3), (0, -1), (1, -1), (2, -1), (3, -1))

# PGA[2:0] -> full-scale range in volts; 101, 110 and 111 are all ±0.256 V (§9.3.3).
_FSR_V = (6.144, 4.096, 2.048, 1.024, 0.512, 0.256, 0.256, 0.256)

# DR[2:0] -> samples per second; a conversion takes 1/DR (§9.3.6), here rounded up to a
# whole microsecond of virtual time so a result is never early.
_DR_SPS = (8, 16, 32, 64, 128, 250, 475, 860)
_PERIOD_US = tuple((1000000 + sps - 1) // sps for sps in _DR_SPS)

# Input-referred noise, µV rms, by PGA[2:0]: SBAS444D §8.1 Table 1 "Noise in μVRMS (μVPP)
# at VDD = 3.3 V" (the ADS1118's SBAS457 Table 1 is the same table). Its rms column is the
# same for all eight data rates: 187.5 / 125 / 62.5 / 31.25 / 15.62 / 7.81 µV for ±6.144 V
# ... ±0.256 V, i.e. one LSB (Table 2: 16 ENOB everywhere). Only the peak-to-peak column
# grows with DR (e.g. ±2.048 V: 62.5 µVpp up to 128 SPS, 118.63 µVpp at 860 SPS), so a
# Gaussian of this rms is the table's rms at every rate and somewhat noisier than a real part
# at the low rates.
_NOISE_RMS_UV = (187.5, 125.0, 62.5, 31.25, 15.62, 7.81, 7.81, 7.81)


class ADS1115:
    """One ADS1115 on a virtual I2C bus: machine.I2C calls write() and read_into()."""

    def __init__(self, world, address=0x48):
        self.world = world
        self.address = address
        # None, "nack" (machine.I2C raises ENODEV before reaching us) or "stuck" (no
        # conversion ever completes).
        self.fault = None
        # Level of the open-drain ALERT/RDY pin as the board sees it (pulled up when idle).
        self.alert_level = 1
        self._pointer = REG_CONVERSION
        self._config = _CONFIG_RESET & ~_OS  # OS is status, derived from _busy on read
        self._lo_thresh = _LO_THRESH_RESET
        self._hi_thresh = _HI_THRESH_RESET
        self._conversion = 0  # signed code; 0 until the first conversion (§9.6.2)
        # The conversion in progress: its window on the virtual clock and the Config bits
        # (MUX, PGA, DR) it started with.
        self._busy = False
        self._conv_start_us = 0
        self._conv_end_us = 0
        self._conv_config = 0
        # A completed result not yet read: asserts ALERT/RDY in conversion-ready mode.
        self._ready = False

    # ---- I2C transactions ----------------------------------------------------------------
    def write(self, buf):
        """Write transaction: a pointer byte, optionally followed by a register MSB, LSB."""
        n = len(buf)
        if n == 0:  # address-only probe (bus scans, adafruit_bus_device): just the ACK
            return
        self._advance()
        self._pointer = buf[0] & 3
        if n >= 3:
            value = (buf[1] << 8) | buf[2]
            reg = self._pointer
            if reg == REG_CONFIG:
                self._write_config(value)
            elif reg == REG_LO_THRESH:
                self._lo_thresh = value
            elif reg == REG_HI_THRESH:
                self._hi_thresh = value
            # The Conversion register is read-only (§9.6.2): a write to it changes nothing.
        self._update_alert()

    def read_into(self, buf):
        """Read transaction: the register the pointer selects, MSB first, repeated."""
        self._advance()
        reg = self._pointer
        if reg == REG_CONVERSION:
            value = self._conversion & 0xFFFF
            # Reading the result releases a latched ALERT/RDY (§9.3.7).
            self._ready = False
        elif reg == REG_CONFIG:
            # OS reads 0 while a conversion is in progress, which in continuous mode is
            # always (§9.6.3).
            value = self._config if self._busy else self._config | _OS
        elif reg == REG_LO_THRESH:
            value = self._lo_thresh
        else:
            value = self._hi_thresh
        msb = value >> 8
        lsb = value & 0xFF
        for i in range(len(buf)):
            buf[i] = lsb if i & 1 else msb
        self._update_alert()

    # ---- conversions ---------------------------------------------------------------------
    def _write_config(self, value):
        self._config = value & ~_OS
        if self._busy:
            # A conversion in progress finishes with the settings it started with; the new
            # ones apply from the next conversion, or the device powers down after it if
            # MODE is now single-shot (§9.4.2.2). Writing OS = 1 during a conversion has no
            # effect (§9.6.3).
            return
        if not value & _MODE_SINGLE:
            # Continuous mode: back-to-back conversions from now on (§9.4.2.2).
            self._start(self.world.now_us)
        elif value & _OS:
            self._start(self.world.now_us + _WAKEUP_US)

    def _start(self, start_us):
        self._busy = True
        self._ready = False
        self._conv_config = self._config
        self._conv_start_us = start_us
        self._conv_end_us = start_us + _PERIOD_US[(self._config >> 5) & 7]

    def _advance(self):
        """Complete every conversion that has finished by now on the virtual clock."""
        if self.fault == "stuck":
            return
        now = self.world.now_us
        while self._busy and self._conv_end_us <= now:
            end = self._conv_end_us
            if self._config & _MODE_SINGLE:
                # Single-shot, or continuous mode just left: power down after this one.
                self._complete(self._conv_start_us, end, self._conv_config)
                self._busy = False
                continue
            period = _PERIOD_US[(self._config >> 5) & 7]
            skipped = (now - end) // period
            if skipped:
                # Later conversions with the current settings have also finished; only the
                # newest shows in the Conversion register, so compute just that one.
                end += skipped * period
                self._complete(end - period, end, self._config)
            else:
                self._complete(self._conv_start_us, end, self._conv_config)
            self._conv_config = self._config
            self._conv_start_us = end
            self._conv_end_us = end + period

    def _complete(self, start_us, end_us, config):
        """Latch the result of a conversion over [start_us, end_us] with these settings.

        The result is the input averaged over the conversion (a delta-sigma modulator
        decimated once per conversion, §9.3.6), plus noise, quantised to LSB = FSR / 2**15
        and clipped at 0x7FFF / 0x8000 for inputs beyond full scale (§9.3.3). A
        differential MUX code (000..011) converts AINP - AINN, signed: negative when AINN
        is the higher input. The world's per-input offset (ain_offset_v) cancels there;
        the ADC's own offset in a differential conversion is ain_diff_offset_v.
        """
        w = self.world
        pos, neg = _MUX_INPUTS[(config >> 12) & 7]
        volts = w.ain_average(pos, start_us, end_us)
        if neg >= 0:
            volts -= w.ain_average(neg, start_us, end_us)
            volts += w.ain_diff_offset_v
        pga = (config >> 9) & 7
        if w.noise:
            volts += w.gauss() * _NOISE_RMS_UV[pga] * 1e-6
        code = int(math.floor(volts * 32768 / _FSR_V[pga] + 0.5))
        if code > 32767:
            code = 32767
        elif code < -32768:
            code = -32768
        self._conversion = code
        self._ready = True

    # ---- ALERT/RDY -----------------------------------------------------------------------
    def _update_alert(self):
        """Drive the ALERT/RDY pin from the comparator settings and the result state.

        Conversion-ready mode is Hi_thresh MSB = 1, Lo_thresh MSB = 0, COMP_QUE != 11
        (§9.3.8). The pin is asserted from the end of a conversion until the Conversion
        register is read or a new single-shot conversion starts. The chip's ~8 µs pulse per
        conversion in continuous mode is held as this level instead, because the model only
        runs when accessed. The threshold comparator is not modelled: with ordinary
        thresholds the pin stays inactive.
        """
        config = self._config
        if config & _COMP_QUE_MASK == _COMP_QUE_MASK:
            level = 1  # comparator off: high-Z, pulled up
        else:
            active = self._ready and self._hi_thresh & 0x8000 and not self._lo_thresh & 0x8000
            active_high = config & _COMP_POL_HIGH
            level = 1 if bool(active) == bool(active_high) else 0
        if level != self.alert_level:
            self.alert_level = level
            self.world._set_input_by_name("ADS_ALERT", level)

# ADS1115 driver for the firmware's hot path: every buffer is allocated once, reads go
# through readfrom_mem_into, nothing allocates per conversion (TI SBAS444, 9.6).
from micropython import const

_REG_CONV = const(0)
_REG_CONFIG = const(1)
_REG_LO = const(2)
_REG_HI = const(3)

# PGA full scale (V) by code, and data rate (SPS) by code.
FSR_V = (6.144, 4.096, 2.048, 1.024, 0.512, 0.256, 0.256, 0.256)
_RATES_SPS = const((8, 16, 32, 64, 128, 250, 475, 860))

_MUX_SINGLE = const((4, 5, 6, 7))  # AIN0..AIN3 against GND


def pga_for(full_scale_v):
    """Smallest PGA range that still covers full_scale_v."""
    best = 0
    for code in range(6):
        if FSR_V[code] >= full_scale_v:
            best = code
    return best


def rate_code(sps):
    for code in range(8):
        if _RATES_SPS[code] >= sps:
            return code
    return 7


class ADS1115:
    def __init__(self, i2c, address=0x48):
        self.i2c = i2c
        self.address = address
        self._b2 = bytearray(2)
        self._b3 = bytearray(3)
        self.lsb_v = FSR_V[2] / 32768
        self.config = 0x8583

    def _write(self, reg, value):
        b = self._b3
        b[0] = reg
        b[1] = (value >> 8) & 0xFF
        b[2] = value & 0xFF
        self.i2c.writeto(self.address, b)

    def _read(self, reg):
        b = self._b2
        self.i2c.readfrom_mem_into(self.address, reg, b)
        return (b[0] << 8) | b[1]

    def configure(self, channel, pga, rate, continuous):
        """Select AIN<channel> against GND; continuous mode starts converting at once."""
        cfg = (_MUX_SINGLE[channel] << 12) | (pga << 9) | (rate << 5) | 0x0003
        if continuous:
            # ALERT/RDY as conversion-ready: Hi_thresh MSB 1, Lo_thresh MSB 0 (9.3.8)
            self._write(_REG_HI, 0x8000)
            self._write(_REG_LO, 0x0000)
            cfg &= ~0x0003  # COMP_QUE = assert after one conversion
        else:
            cfg |= 0x0100
        self.config = cfg
        self.lsb_v = FSR_V[pga] / 32768
        self._write(_REG_CONFIG, cfg)

    def start_single(self):
        self._write(_REG_CONFIG, self.config | 0x8000)

    def start(self, channel, pga):
        """One single-shot conversion of AIN<channel> at 860 SPS (allocation-free)."""
        cfg = 0x8000 | (_MUX_SINGLE[channel] << 12) | (pga << 9) | 0x0100 | (7 << 5) | 0x0003
        self.config = cfg & 0x7FFF
        self._write(_REG_CONFIG, cfg)

    def busy(self):
        return not (self._read(_REG_CONFIG) & 0x8000)

    def read_raw(self):
        v = self._read(_REG_CONV)
        return v - 65536 if v & 0x8000 else v

    def read_v(self):
        return self.read_raw() * self.lsb_v

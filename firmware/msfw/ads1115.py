# ADS1115 driver for the firmware's hot path: every buffer is allocated once, reads go
# through readfrom_mem_into, nothing allocates per conversion (TI SBAS444, 9.6).
#
# Inputs are named by the Config register's MUX code (9.6.3): 0..3 differential (001:
# AIN0 - AIN3, 010: AIN1 - AIN3, 011: AIN2 - AIN3; signed), 4..7 AIN0..AIN3 against GND.
from micropython import const

_REG_CONV = const(0)
_REG_CONFIG = const(1)

# PGA full scale (V) by code.
FSR_V = (6.144, 4.096, 2.048, 1.024, 0.512, 0.256, 0.256, 0.256)


def pga_for(full_scale_v):
    """Smallest PGA range that still covers full_scale_v."""
    best = 0
    for code in range(6):
        if FSR_V[code] >= full_scale_v:
            best = code
    return best


class ADS1115:
    def __init__(self, i2c, address=0x48):
        self.i2c = i2c
        self.address = address
        self._b2 = bytearray(2)
        self._b3 = bytearray(3)

    def _read(self, reg):
        b = self._b2
        self.i2c.readfrom_mem_into(self.address, reg, b)
        return (b[0] << 8) | b[1]

    def start(self, mux, pga):
        """One single-shot conversion of input `mux` at 860 SPS, comparator off
        (allocation-free)."""
        cfg = 0x8000 | (mux << 12) | (pga << 9) | 0x0100 | (7 << 5) | 0x0003
        b = self._b3
        b[0] = _REG_CONFIG
        b[1] = cfg >> 8
        b[2] = cfg & 0xFF
        self.i2c.writeto(self.address, b)

    def busy(self):
        return not (self._read(_REG_CONFIG) & 0x8000)

    def read_raw(self):
        v = self._read(_REG_CONV)
        return v - 65536 if v & 0x8000 else v

# Microchip MCP4725 12-bit I2C DAC at command level, for boards whose chip has no DAC
# (ESP32-S3, -C3). Its output drives the front end exactly as the internal DAC pin does:
# the world's DAC table, under the board's DAC_AMP key (EXTERNAL_KEY when the board has
# no DAC pin).
#
# Datasheet DS22039D: fast write (C2 C1 = 00, 2 bytes: PD1 PD0 D11..D8, D7..D0) §6.1;
# write DAC register (C2 C1 C0 = 010) and write DAC register + EEPROM (011), 3 bytes
# (command/PD, D11..D4, D3..D0 x x x x) §6.2; a read returns 5 bytes (status with RDY and
# POR, DAC register D11..D4, D3..D0 0000, EEPROM PD1 PD0 x D11..D8, D7..D0) §6.3.
# Power-down (PD != 00) pulls VOUT to ground through 1k/100k/500k: no output. At power-on
# the DAC register loads from EEPROM (factory value 0, PD = 00).
EXTERNAL_KEY = -1


class MCP4725:
    def __init__(self, world, address=0x60):
        self.world = world
        self.address = address
        self.fault = None  # "nack" makes machine.I2C raise ENODEV, as for the ADS1115
        self.code = 0
        self.pd = 0
        self.eeprom = 0  # PD1 PD0 << 12 | code
        if world.gpio_dac is None:
            world.gpio_dac = EXTERNAL_KEY
        # A soft reset of the ESP32 does not touch this chip: keep what the world restored.
        self.code = world.dac.get(world.gpio_dac, 0)

    def _apply(self):
        self.world.set_dac(self.world.gpio_dac, 0 if self.pd else self.code)

    def write(self, buf):
        n = len(buf)
        if n == 0:  # address-only probe
            return
        c = buf[0]
        if c & 0xC0 == 0:  # fast write
            if n < 2:
                return
            self.pd = (c >> 4) & 3
            self.code = ((c & 0x0F) << 8) | buf[1]
            self._apply()
            return
        cmd = (c >> 5) & 7
        if cmd in (2, 3) and n >= 3:
            self.pd = (c >> 1) & 3
            self.code = (buf[1] << 4) | (buf[2] >> 4)
            if cmd == 3:
                self.eeprom = (self.pd << 12) | self.code
            self._apply()

    def read_into(self, buf):
        out = (
            0xC0 | (self.pd << 1),  # RDY = 1 (no EEPROM write pending), POR = 1
            self.code >> 4,
            (self.code & 0x0F) << 4,
            ((self.eeprom >> 12) << 5) | ((self.eeprom >> 8) & 0x0F),
            self.eeprom & 0xFF,
        )
        for i in range(len(buf)):
            buf[i] = out[i] if i < 5 else 0xFF


def attach(world):
    """Put the board's external DAC on its I2C bus (the ADS1115's), if it has one."""
    fe = world.board.get("frontend", {})
    dac = fe.get("dac") or {}
    if dac.get("kind") != "mcp4725":
        return None
    bus = (fe.get("adc") or {}).get("i2c", 0)
    dev = MCP4725(world, dac.get("address", 0x60))
    world.i2c.setdefault(bus, {})[dev.address] = dev
    return dev

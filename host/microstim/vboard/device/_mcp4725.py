# Microchip MCP4725 12-bit I2C DAC at command level, for boards whose chip has no DAC
# (ESP32-S3, -C3). Its output drives the front end exactly as the internal DAC pin does:
# the world's DAC table, under the board's DAC_AMP key (EXTERNAL_KEY when the board has
# no DAC pin).
#
# Datasheet DS22039D: fast write (C2 C1 = 00, 2 bytes: 0 0 PD1 PD0 D11..D8, D7..D0) §6.1.1;
# write DAC register (C2 C1 C0 = 010) and write DAC register + EEPROM (011), 3 bytes
# (command/PD, D11..D4, D3..D0 x x x x) §6.1.2; a read returns 5 bytes (status with RDY and
# POR, DAC register D11..D4, D3..D0 0000, EEPROM x PD1 PD0 x D11..D8, D7..D0) §6.2.
# Power-down (PD != 00) pulls VOUT to ground through 1k/100k/500k: no output.
#
# What survives what (the hazard this model must not hide): the chip is powered from the
# board's 3V3 rail, not by the ESP32's reset. A reset of the ESP32 of any kind (soft, hard
# or EN, watchdog, deep-sleep wake, an exception or Ctrl-C in the firmware) does not touch
# it: the DAC register keeps driving the current source at its last code until someone
# writes it (safe.all_off, from boot.py). Only a power cycle of the board (power cut,
# brown-out) resets it: at its power-on reset it loads the DAC register and PD bits from
# its EEPROM (§5.6; factory value 0, PD = 00). An EEPROM write (command 011) takes up to
# 50 ms (t_WRITE max, §1.0); RDY/BSY reads 0 meanwhile and any new write command, a fast
# write included, is IGNORED (§5.6) - the chip still acknowledges it.
#
# The register, PD bits and EEPROM go through the world's saved state (World.chips,
# saved by World.save_state at every reset and power cycle, and at once on an EEPROM
# write so it survives even a run that is killed).
EXTERNAL_KEY = -1
EEPROM_WRITE_US = 50000  # t_WRITE, DS22039D electrical characteristics: 25 ms typ, 50 ms max
PWRON_RESET = 1  # machine.PWRON_RESET of the ESP32 port: the board was powered up


class MCP4725:
    def __init__(self, world, address=0x60):
        self.world = world
        self.address = address
        self.key = "mcp4725@%d" % address
        self.fault = None  # "nack" makes machine.I2C raise ENODEV, as for the ADS1115
        self.busy_until_us = 0  # EEPROM write in progress until then
        if world.gpio_dac is None:
            world.gpio_dac = EXTERNAL_KEY
        saved = world.restored_chip(self.key)
        # EEPROM: non-volatile, survives everything (factory value 0, PD = 00).
        self.eeprom = saved.get("eeprom", 0) if saved else 0
        if world.reset_cause == PWRON_RESET or not saved:
            # Power-on reset of the chip: the DAC register loads from EEPROM.
            self.pd = self.eeprom >> 12
            self.code = self.eeprom & 0x0FFF
        else:
            # The ESP32 reset, this chip did not: it keeps what it was driving.
            self.pd = saved.get("pd", 0)
            self.code = saved.get("code", 0)
        world.chips[self.key] = self
        self._apply()

    def state(self):
        """What World.save_state stores for this chip."""
        return {"code": self.code, "pd": self.pd, "eeprom": self.eeprom}

    def _apply(self):
        self.world.set_dac(self.world.gpio_dac, 0 if self.pd else self.code)

    def busy(self):
        return self.world.now_us < self.busy_until_us

    def write(self, buf):
        n = len(buf)
        if n == 0:  # address-only probe
            return
        if self.busy():
            return  # EEPROM write in progress: acknowledged and ignored (§5.6)
        c = buf[0]
        if c & 0xC0 == 0:  # fast write; repeated pairs: the last one stands
            i = 0
            while i + 1 < n:
                c = buf[i]
                self.pd = (c >> 4) & 3
                self.code = ((c & 0x0F) << 8) | buf[i + 1]
                i += 2
            self._apply()
            return
        cmd = (c >> 5) & 7
        if cmd in (2, 3) and n >= 3:  # reserved commands (4..7) are ignored
            self.pd = (c >> 1) & 3
            self.code = (buf[1] << 4) | (buf[2] >> 4)
            self._apply()
            if cmd == 3:
                self.eeprom = (self.pd << 12) | self.code
                self.busy_until_us = self.world.now_us + EEPROM_WRITE_US
                self.world.save_state(keep_outputs=False)

    def read_into(self, buf):
        out = (
            # RDY/BSY (1: no EEPROM write pending), POR (1: not in power-on reset), PD1 PD0
            (0 if self.busy() else 0x80) | 0x40 | (self.pd << 1),
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

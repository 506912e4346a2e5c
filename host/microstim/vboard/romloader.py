"""The virtual board's serial ROM bootloader: what esptool talks to.

A real ESP32 enters its ROM's UART download mode when it is reset with GPIO0 held low
(the BOOT button, or esptool pulling DTR/RTS). A pseudo-terminal or a TCP socket has no
modem lines, so the virtual board takes the first frame every download starts with,
esptool's SLIP ``SYNC``, as that reset: the MicroPython child is stopped (the board is
reset) and from then on the host talks to this module instead, until download mode is
left (see :class:`DownloadMode`).

What is emulated, read from esptool's own client code (``esptool/loader.py``,
``esptool/targets/esp32.py``, ``esptool/cmds.py``, esptool 5):

* The ROM loader: ``SYNC`` (eight replies, non-zero value), ``READ_REG``/``WRITE_REG``
  with the registers esptool reads to identify an ESP32 (the chip-detect magic at
  0x40001000, the eFuse words for package, revision, MAC, security bits; the UART clock
  divider for the crystal; ``APB_CTL_DATE``), the SPI controller's user-command
  registers (``RDID`` answers a 4 MB Winbond flash, ``RDSFDP`` an SFDP header, ``RDSR``
  zero), ``SPI_SET_PARAMS``, ``SPI_ATTACH``, ``CHANGE_BAUDRATE``, ``MEM_BEGIN``/``DATA``/
  ``END`` (with the stub's upload checked block by block), ``FLASH_BEGIN``/``DATA``/
  ``END``, ``FLASH_DEFL_*`` (zlib), ``SPI_FLASH_MD5`` (hex, as the ROM sends it),
  ``READ_FLASH_SLOW``; ``GET_SECURITY_INFO`` is refused as the ESP32 ROM refuses it.
  ROM replies carry 4 status bytes.
* The flasher stub: once ``MEM_END`` starts the uploaded code the board answers
  ``OHAI`` and behaves as esptool's stub: 2 status bytes, ``ERASE_FLASH``,
  ``ERASE_REGION``, ``READ_FLASH`` (windowed, acknowledged, MD5 digest at the end),
  binary ``SPI_FLASH_MD5``, ``RUN_USER_CODE``; ``SYNC`` answers 0 ("stub running").

The virtual SPI flash is 4 MB, kept in ``spiflash.bin`` in the run directory, laid out
as MicroPython's ESP32 partition table lays out a 4 MB board (partitions-4MiBplus.csv):
the ``vfs`` partition starts at 0x200000. That partition is the LittleFS image the
MicroPython child mounts (``flash.img``): its bytes are read from and written back to that
file, so erasing the chip wipes the board's filesystem, as a real erase does.

The virtual board cannot execute the image it is given: leaving download mode, it checks
the image header at the board's offset (magic 0xE9, the extended header's chip id) as
the ROM and the second-stage bootloader do, and then boots its MicroPython; an erased or
foreign image keeps it in the ROM, printing what an ESP32 prints, until the next download.

Limits: only the ESP32's ROM is emulated (a virtual board defined with another chip still
answers as an ESP32, so `microstim flash` refuses it as a wrong chip); secure boot, flash
encryption, eFuse writes and USB-JTAG resets are not. Without modem lines the board
cannot see esptool's DTR/RTS resets: it enters download mode on SYNC and leaves it when
the port is closed, when the loader is told to run the app, or after DOWNLOAD_IDLE_S of
silence, where a real board would wait in its ROM until EN is pressed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import logging
import os
import struct
import time
import zlib
from pathlib import Path

log = logging.getLogger(__name__)

FLASH_SIZE = 4 * 1024 * 1024
SECTOR = 0x1000
# MicroPython's ports/esp32/partitions-4MiBplus.csv: vfs from 0x200000 to the end.
VFS_OFFSET = 0x200000

# Image header (esptool bin_image.py): magic, segment count, flash mode, size/freq, entry,
# then the 16-byte extended header whose chip id is the uint16 at byte 12 of the image.
IMAGE_MAGIC = 0xE9
CHIP_ID_OFFSET = 12
# esptool targets/*.py IMAGE_CHIP_ID.
IMAGE_CHIP_IDS = {"esp32": 0, "esp32s2": 2, "esp32c3": 5, "esp32s3": 9}

# Commands (esptool loader.py ESP_CMDS).
FLASH_BEGIN, FLASH_DATA, FLASH_END = 0x02, 0x03, 0x04
MEM_BEGIN, MEM_END, MEM_DATA = 0x05, 0x06, 0x07
SYNC, WRITE_REG, READ_REG = 0x08, 0x09, 0x0A
SPI_SET_PARAMS, SPI_ATTACH, READ_FLASH_SLOW, CHANGE_BAUDRATE = 0x0B, 0x0D, 0x0E, 0x0F
FLASH_DEFL_BEGIN, FLASH_DEFL_DATA, FLASH_DEFL_END, SPI_FLASH_MD5 = 0x10, 0x11, 0x12, 0x13
GET_SECURITY_INFO = 0x14
ERASE_FLASH, ERASE_REGION, READ_FLASH, RUN_USER_CODE = 0xD0, 0xD1, 0xD2, 0xD3

# The bytes every esptool SYNC frame starts with: SLIP END, direction 0, op 0x08, length
# 36, checksum 0, then 07 07 12 20 and 32 x 0x55.
SYNC_FRAME_START = b"\xc0\x00\x08\x24\x00\x00\x00\x00\x00\x07\x07\x12\x20\x55\x55\x55\x55"

# ROM error codes (esptool's serial protocol documentation) and stub error codes.
ROM_INVALID_MESSAGE, ROM_FAILED, ROM_BAD_CRC, ROM_DEFLATE_ERROR = 0x05, 0x06, 0x07, 0x0B
STUB_BAD_DATA_LEN, STUB_BAD_CHECKSUM, STUB_BAD_BLOCKSIZE = 0xC0, 0xC1, 0xC2
STUB_INVALID_COMMAND, STUB_NOT_IN_FLASH_MODE, STUB_INFLATE_ERROR = 0xC3, 0xC6, 0xC7
STUB_TOO_MUCH_DATA = 0xC9

# ESP32 registers esptool reads (targets/esp32.py).
CHIP_DETECT_MAGIC_REG = 0x40001000
ESP32_MAGIC = 0x00F01D83
EFUSE_BASE = 0x3FF5A000
UART_CLKDIV_REG = 0x3FF40014
APB_CTL_DATE_ADDR = 0x3FF6607C
RTCCALICFG1 = 0x3FF5F06C
GPIO_STRAP_REG = 0x3FF44038
SPI_BASE = 0x3FF42000
SPI_CMD, SPI_ADDR, SPI_USR2, SPI_W0 = SPI_BASE, SPI_BASE + 0x04, SPI_BASE + 0x24, SPI_BASE + 0x80
SPI_CMD_USR = 1 << 18
XTAL_HZ = 40_000_000
# JEDEC id of a 4 MB Winbond W25Q32 as esptool reads it: manufacturer, type, capacity 2^22.
FLASH_JEDEC_ID = 0x1640EF
# A host that sends nothing for this long while the board waits in download mode is taken
# to be gone (a fallback: a closed port is noticed at once).
DOWNLOAD_IDLE_S = 15.0

# What an ESP32's ROM prints after a power-on reset that boots from SPI flash.
_ROM_BANNER = (
    b"ets Jul 29 2019 12:21:46\r\n\r\n"
    b"rst:0x1 (POWERON_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n"
)


def slip_encode(packet: bytes) -> bytes:
    return b"\xc0" + packet.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc") + b"\xc0"


def checksum(data: bytes, state: int = 0xEF) -> int:
    for b in data:
        state ^= b
    return state


def image_chip(header: bytes) -> str | None:
    """The chip an image header is built for (None: not an image, or an unknown chip)."""
    if len(header) < CHIP_ID_OFFSET + 2 or header[0] != IMAGE_MAGIC:
        return None
    chip_id = struct.unpack_from("<H", header, CHIP_ID_OFFSET)[0]
    for chip, cid in IMAGE_CHIP_IDS.items():
        if cid == chip_id:
            return chip
    return None


class SpiFlash:
    """The board's 4 MB SPI flash: ``spiflash.bin``, with the vfs partition's bytes kept in
    the LittleFS image the MicroPython child mounts. Loaded into memory for a download
    session and written back (only what changed) when the session ends."""

    def __init__(self, path: Path, fs_path: Path | None, fs_size: int, chip: str, offset: int):
        self.path = Path(path)
        self.fs_path = Path(fs_path) if fs_path else None
        self.fs_size = min(fs_size, FLASH_SIZE - VFS_OFFSET) if fs_path else 0
        self.chip = chip
        self.offset = offset
        self.data = bytearray()
        self.dirty = False

    def ensure(self) -> None:
        """Create ``spiflash.bin`` for a board that was never flashed: erased, except for
        an image header at the board's offset standing in for the MicroPython image the
        virtual board runs (so a reset through download mode boots it again)."""
        if self.path.exists():
            return
        data = bytearray(b"\xff" * FLASH_SIZE)
        header = struct.pack("<BBBBI", IMAGE_MAGIC, 0, 2, 0x20, 0)
        header += struct.pack("<BBBBHBHH4sB", 0xEE, 0, 0, 0, IMAGE_CHIP_IDS[self.chip], 0, 0, 0xFFFF,
                              b"\0" * 4, 0)
        header += b"microstim virtual board: stand-in for the MicroPython image it runs\0"
        data[self.offset : self.offset + len(header)] = header
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(self.path)

    def load(self) -> None:
        self.ensure()
        self.data = bytearray(self.path.read_bytes()[:FLASH_SIZE].ljust(FLASH_SIZE, b"\xff"))
        if self.fs_size:
            fs = self.fs_path.read_bytes()[: self.fs_size] if self.fs_path.exists() else b""
            self.data[VFS_OFFSET : VFS_OFFSET + self.fs_size] = fs.ljust(self.fs_size, b"\xff")
        self.dirty = False

    def save(self) -> None:
        if not self.dirty:
            return
        self.path.write_bytes(self.data)
        if self.fs_size:
            # In place: the size the child's block device expects stays the same.
            with open(self.fs_path, "r+b" if self.fs_path.exists() else "w+b") as f:
                f.write(self.data[VFS_OFFSET : VFS_OFFSET + self.fs_size])
        self.dirty = False

    def read(self, addr: int, n: int) -> bytes:
        return bytes(self.data[addr : addr + n])

    def erase(self, addr: int, n: int) -> None:
        self.data[addr : addr + n] = b"\xff" * n
        self.dirty = True

    def program(self, addr: int, chunk: bytes) -> None:
        """NOR programming: bits only go from 1 to 0 (erase first, as every loader does)."""
        n = len(chunk)
        old = int.from_bytes(self.data[addr : addr + n], "little")
        self.data[addr : addr + n] = (old & int.from_bytes(chunk, "little")).to_bytes(n, "little")
        self.dirty = True

    def bootable(self) -> tuple[bool, str]:
        """Whether the ROM would boot what is at the board's offset, and what it prints."""
        head = self.read(self.offset, 24)
        if head[0] != IMAGE_MAGIC:
            word = struct.unpack_from("<I", head)[0]
            return False, f"invalid header: 0x{word:08x}\r\n"
        chip = image_chip(head)
        if chip != self.chip:
            found = struct.unpack_from("<H", head, CHIP_ID_OFFSET)[0]
            expected = IMAGE_CHIP_IDS[self.chip]
            return False, (f"E (31) boot_comm: mismatch chip ID, expected {expected}, "
                           f"found {found}\r\n")
        return True, ""


class RomLoader:
    """The ROM loader and, once started, the flasher stub, as one SLIP byte-stream machine.

    :meth:`feed` takes bytes from the host and returns bytes for the host. ``exit_reason``
    becomes non-None when the host asked the chip to leave download mode and run its app.
    ``on_baud(baud)`` is called after a baud rate change has been acknowledged.
    """

    def __init__(self, flash: SpiFlash, *, mac: bytes, baud: int = 115200, on_baud=None):
        self.flash = flash
        self.mac = bytes(mac)
        self.baud = baud
        self.on_baud = on_baud
        self.stub = False
        self.exit_reason: str | None = None
        self._buf: bytearray | None = None  # the frame being received
        self._regs: dict[int, int] = {}
        self._mem: dict | None = None
        self._write: dict | None = None
        self._read: dict | None = None
        self.commands: dict[int, int] = {}  # op -> count, for tests and diagnostics

    # -- SLIP -------------------------------------------------------------------------

    def feed(self, data: bytes) -> bytes:
        if self._buf is None:  # bytes before the first frame are line noise to the ROM
            at = data.find(b"\xc0")
            if at < 0:
                return b""
            data, self._buf = data[at + 1 :], bytearray()
        self._buf += data
        *frames, rest = self._buf.split(b"\xc0")
        self._buf = bytearray(rest)
        out = bytearray()
        for frame in frames:
            if frame:  # an empty piece is the gap between two frames' delimiters
                out += self._packet(bytes(frame).replace(b"\xdb\xdc", b"\xc0").replace(b"\xdb\xdd", b"\xdb"))
        return bytes(out)

    def _packet(self, pkt: bytes) -> bytes:
        if self._read is not None:
            return self._read_ack(pkt)
        if len(pkt) < 8 or pkt[0] != 0x00:
            return b""
        _, op, size, chk = struct.unpack_from("<BBHI", pkt)
        payload = pkt[8 : 8 + size]
        self.commands[op] = self.commands.get(op, 0) + 1
        handler = getattr(self, f"_op_{op:02x}", None)
        if handler is None or (op >= 0xD0 and not self.stub) or (op == READ_FLASH_SLOW and self.stub):
            return self._reply(op, error=STUB_INVALID_COMMAND if self.stub else ROM_INVALID_MESSAGE)
        try:
            return handler(op, payload, chk)
        except _Fail as e:
            return self._reply(op, error=e.code)
        except (struct.error, IndexError):
            return self._reply(op, error=STUB_BAD_DATA_LEN if self.stub else ROM_INVALID_MESSAGE)

    def _reply(self, op: int, value: int = 0, data: bytes = b"", error: int = 0) -> bytes:
        status = bytes([1 if error else 0, error])
        if not self.stub:
            status += b"\0\0"  # the ESP32 ROM sends two reserved bytes more
        body = data + status
        return slip_encode(struct.pack("<BBHI", 1, op, len(body), value) + body)

    def _fail(self, rom: int, stub: int):
        return _Fail(stub if self.stub else rom)

    # -- ROM commands -------------------------------------------------------------------

    def _op_08(self, op, payload, chk):  # SYNC
        if payload[:4] != b"\x07\x07\x12\x20":
            raise self._fail(ROM_INVALID_MESSAGE, STUB_BAD_DATA_LEN)
        value = 0 if self.stub else 0x20120707
        return self._reply(op, value) * 8

    def _op_0a(self, op, payload, chk):  # READ_REG
        (addr,) = struct.unpack_from("<I", payload)
        return self._reply(op, self._read_reg(addr))

    def _op_09(self, op, payload, chk):  # WRITE_REG: one or more (addr, value, mask, delay)
        for i in range(0, len(payload) - 15, 16):
            addr, value, mask, _delay = struct.unpack_from("<IIII", payload, i)
            old = self._regs.get(addr, 0)
            self._regs[addr] = (old & ~mask) | (value & mask)
            if addr == SPI_CMD and value & SPI_CMD_USR:
                self._spi_user_command()
        return self._reply(op)

    def _op_0b(self, op, payload, chk):  # SPI_SET_PARAMS
        struct.unpack_from("<IIIIII", payload)
        return self._reply(op)

    def _op_0d(self, op, payload, chk):  # SPI_ATTACH
        struct.unpack_from("<I", payload)
        return self._reply(op)

    def _op_0f(self, op, payload, chk):  # CHANGE_BAUDRATE (new, old)
        new_baud, _ = struct.unpack_from("<II", payload)
        # (esptool scales the rate it sends the ROM by the crystal the ROM measured,
        # ESP32ROM.change_baud; this ROM measured the right one, so no scaling shows.)
        out = self._reply(op)
        self.baud = new_baud
        if self.on_baud is not None:
            self.on_baud(new_baud)
        return out

    def _op_14(self, op, payload, chk):  # GET_SECURITY_INFO: not in the ESP32 ROM
        raise self._fail(ROM_INVALID_MESSAGE, STUB_INVALID_COMMAND)

    def _op_05(self, op, payload, chk):  # MEM_BEGIN
        size, blocks, blocksize, offset = struct.unpack_from("<IIII", payload)
        self._mem = {"size": size, "blocks": blocks, "blocksize": blocksize, "offset": offset,
                     "seq": 0, "got": 0}
        return self._reply(op)

    def _op_07(self, op, payload, chk):  # MEM_DATA
        size, seq, _, _ = struct.unpack_from("<IIII", payload)
        data = payload[16 : 16 + size]
        if self._mem is None:
            raise self._fail(ROM_FAILED, STUB_NOT_IN_FLASH_MODE)
        if len(data) != size:
            raise self._fail(ROM_INVALID_MESSAGE, STUB_BAD_DATA_LEN)
        if checksum(data) != chk & 0xFF:
            raise self._fail(ROM_BAD_CRC, STUB_BAD_CHECKSUM)
        if seq != self._mem["seq"] or size > self._mem["blocksize"]:
            raise self._fail(ROM_FAILED, STUB_BAD_BLOCKSIZE)
        self._mem["seq"] += 1
        self._mem["got"] += size
        return self._reply(op)

    def _op_06(self, op, payload, chk):  # MEM_END (no-execute flag, entry point)
        no_run, entry = struct.unpack_from("<II", payload)
        out = self._reply(op)
        if not no_run and entry and not self.stub:
            # The uploaded code runs: it is esptool's flasher stub, which greets the host.
            self.stub = True
            out += slip_encode(b"OHAI")
        return out

    def _op_02(self, op, payload, chk):  # FLASH_BEGIN
        return self._begin(op, payload, deflate=False)

    def _op_10(self, op, payload, chk):  # FLASH_DEFL_BEGIN
        return self._begin(op, payload, deflate=True)

    def _begin(self, op, payload, *, deflate):
        size, blocks, blocksize, offset = struct.unpack_from("<IIII", payload)
        # The stub is told the bytes to write and erases as it goes; the ROM erases up
        # front what it is told (for deflate, rounded up to whole blocks).
        total = size
        if offset + total > FLASH_SIZE:
            raise self._fail(ROM_FAILED, STUB_TOO_MUCH_DATA)
        if total:
            start = offset - offset % SECTOR
            end = -(-(offset + total) // SECTOR) * SECTOR
            self.flash.erase(start, min(end, FLASH_SIZE) - start)
        self._write = {"offset": offset, "size": total, "blocksize": blocksize, "seq": 0,
                       "written": 0, "z": zlib.decompressobj() if deflate else None}
        return self._reply(op)

    def _op_03(self, op, payload, chk):  # FLASH_DATA
        return self._data(op, payload, chk, deflate=False)

    def _op_11(self, op, payload, chk):  # FLASH_DEFL_DATA
        return self._data(op, payload, chk, deflate=True)

    def _data(self, op, payload, chk, *, deflate):
        size, seq, _, _ = struct.unpack_from("<IIII", payload)
        data = payload[16 : 16 + size]
        w = self._write
        if w is None or (w["z"] is not None) != deflate:
            raise self._fail(ROM_FAILED, STUB_NOT_IN_FLASH_MODE)
        if len(data) != size:
            raise self._fail(ROM_INVALID_MESSAGE, STUB_BAD_DATA_LEN)
        if checksum(data) != chk & 0xFF:
            raise self._fail(ROM_BAD_CRC, STUB_BAD_CHECKSUM)
        if seq != w["seq"]:
            raise self._fail(ROM_FAILED, STUB_BAD_BLOCKSIZE)
        if deflate:
            try:
                data = w["z"].decompress(data)
            except zlib.error:
                raise self._fail(ROM_DEFLATE_ERROR, STUB_INFLATE_ERROR) from None
        if w["written"] + len(data) > w["size"]:
            if deflate:
                raise self._fail(ROM_FAILED, STUB_TOO_MUCH_DATA)
            # The last raw block comes padded with 0xFF to the block size: nothing to program.
            data = data[: w["size"] - w["written"]]
        addr = w["offset"] + w["written"]
        data = data[: FLASH_SIZE - addr]
        self.flash.program(addr, data)
        w["written"] += len(data)
        w["seq"] += 1
        return self._reply(op)

    def _op_04(self, op, payload, chk):  # FLASH_END (0: reboot, 1: run user code / stay)
        return self._end(op, payload)

    def _op_12(self, op, payload, chk):  # FLASH_DEFL_END
        return self._end(op, payload)

    def _end(self, op, payload):
        (stay,) = struct.unpack_from("<I", payload) if payload else (1,)
        self._write = None
        out = self._reply(op)
        if self.stub:
            if not stay:
                # "soft resetting from the stub loader will re-load the ROM bootloader"
                self.stub = False
        else:
            # The ROM leaves download mode: it runs the app (1) or reboots into it (0).
            self.exit_reason = "run user code" if stay else "reboot"
        return out

    def _op_13(self, op, payload, chk):  # SPI_FLASH_MD5
        addr, size, _, _ = struct.unpack_from("<IIII", payload)
        if addr + size > FLASH_SIZE:
            raise self._fail(ROM_FAILED, STUB_TOO_MUCH_DATA)
        digest = hashlib.md5(self.flash.read(addr, size))
        data = digest.digest() if self.stub else digest.hexdigest().encode()
        return self._reply(op, data=data)

    def _op_0e(self, op, payload, chk):  # READ_FLASH_SLOW (ROM): 64 bytes a time
        addr, size = struct.unpack_from("<II", payload)
        if size > 64 or addr + size > FLASH_SIZE:
            raise self._fail(ROM_FAILED, ROM_FAILED)
        return self._reply(op, data=self.flash.read(addr, size).ljust(64, b"\xff"))

    # -- stub-only commands -------------------------------------------------------------

    def _op_d0(self, op, payload, chk):  # ERASE_FLASH
        self.flash.erase(0, FLASH_SIZE)
        return self._reply(op)

    def _op_d1(self, op, payload, chk):  # ERASE_REGION
        addr, size = struct.unpack_from("<II", payload)
        if addr % SECTOR or size % SECTOR or addr + size > FLASH_SIZE:
            raise self._fail(ROM_FAILED, STUB_BAD_DATA_LEN)
        self.flash.erase(addr, size)
        return self._reply(op)

    def _op_d2(self, op, payload, chk):  # READ_FLASH: windowed, acknowledged by the host
        addr, size, block, inflight = struct.unpack_from("<IIII", payload)
        if addr + size > FLASH_SIZE or block == 0:
            raise self._fail(ROM_FAILED, STUB_BAD_DATA_LEN)
        self._read = {"addr": addr, "size": size, "block": block, "inflight": max(1, inflight),
                      "sent": 0, "acked": 0, "md5": hashlib.md5()}
        return self._reply(op) + self._read_send()

    def _read_send(self) -> bytes:
        r, out = self._read, bytearray()
        while r["sent"] < r["size"] and r["sent"] - r["acked"] < r["block"] * r["inflight"]:
            chunk = self.flash.read(r["addr"] + r["sent"], min(r["block"], r["size"] - r["sent"]))
            r["md5"].update(chunk)
            r["sent"] += len(chunk)
            out += slip_encode(chunk)
        return bytes(out)

    def _read_ack(self, pkt: bytes) -> bytes:
        r = self._read
        if len(pkt) == 4:
            r["acked"] = struct.unpack("<I", pkt)[0]
        out = self._read_send()
        if r["acked"] >= r["size"]:
            out += slip_encode(r["md5"].digest())
            self._read = None
        return out

    def _op_d3(self, op, payload, chk):  # RUN_USER_CODE: no reply, the app starts
        self.exit_reason = "run user code"
        return b""

    # -- registers ------------------------------------------------------------------

    def _read_reg(self, addr: int) -> int:
        if addr in self._regs:
            return self._regs[addr]
        if addr == CHIP_DETECT_MAGIC_REG:
            return ESP32_MAGIC
        if EFUSE_BASE <= addr < EFUSE_BASE + 0x80:
            return self._efuse((addr - EFUSE_BASE) // 4)
        if addr == UART_CLKDIV_REG:
            return round(XTAL_HZ / self.baud) & 0xFFFFF
        if addr == APB_CTL_DATE_ADDR:
            return 0x80000000 | 0x16042000  # bit 31: chip revision 3
        if addr == RTCCALICFG1:
            return 2048 << 7  # with eFuse CK8M 50: the ROM computed a 40 MHz crystal
        if addr == GPIO_STRAP_REG:
            return 0x03  # GPIO0 low at reset: download boot
        return 0

    def _efuse(self, word: int) -> int:
        mac = self.mac
        if word == 1:  # MAC bytes 2..5
            return struct.unpack(">I", mac[2:6])[0]
        if word == 2:  # CRC byte, then MAC bytes 0..1 in the low half
            return (_mac_crc(mac) << 16) | (mac[0] << 8) | mac[1]
        if word == 3:  # package 1 (ESP32-D0WD), revision bit 0
            return (1 << 9) | (1 << 15)
        if word == 4:  # CK8M frequency calibration
            return 50
        if word == 5:  # revision bit 1
            return 1 << 20
        return 0

    def _spi_user_command(self) -> None:
        command = self._regs.get(SPI_USR2, 0) & 0xFFFF
        addr = self._regs.get(SPI_ADDR, 0) >> 8  # esptool puts 24-bit addresses MSB-first
        if command == 0x9F:  # RDID
            result = FLASH_JEDEC_ID
        elif command == 0x5A:  # RDSFDP: the SFDP header, then a parameter header
            sfdp = b"SFDP\x06\x01\x01\xff\x00\x06\x01\x10\x30\x00\x00\xff" + b"\xef\x00\x01\x03"
            result = int.from_bytes(sfdp[addr : addr + 4].ljust(4, b"\xff"), "little")
        else:  # RDSR/RDSR2/RDSR3 and anything else: no status bits set, no protection
            result = 0
        self._regs[SPI_W0] = result
        self._regs[SPI_CMD] = self._regs.get(SPI_CMD, 0) & ~SPI_CMD_USR  # done at once


class _Fail(Exception):
    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


def _mac_crc(mac: bytes) -> int:
    """CRC-8 (poly 0x8C reflected, as ESP32 eFuse MAC CRC) over the six MAC bytes."""
    crc = 0
    for b in mac:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8C if crc & 1 else crc >> 1
    return crc


# ---------------------------------------------------------------------------------------
# Port-close detection on a pty: inotify reports every close of the slave device.

_IN_CLOSE = 0x08 | 0x10  # IN_CLOSE_WRITE | IN_CLOSE_NOWRITE


class _CloseWatch:
    def __init__(self, path: str):
        self.fd: int | None = None
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
            if fd < 0:
                return
            if libc.inotify_add_watch(fd, os.fsencode(path), _IN_CLOSE) < 0:
                os.close(fd)
                return
            self.fd = fd
        except (OSError, AttributeError):  # no inotify here: the idle timeout still works
            self.fd = None

    def closed(self) -> bool:
        """Drain the events; True if the port was closed since the last call."""
        if self.fd is None:
            return False
        seen = False
        while True:
            try:
                buf = os.read(self.fd, 4096)
            except BlockingIOError:
                return seen
            if not buf:
                return seen
            off = 0
            while off + 16 <= len(buf):
                _wd, mask, _cookie, length = struct.unpack_from("iIII", buf, off)
                seen |= bool(mask & _IN_CLOSE)
                off += 16 + length

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# ---------------------------------------------------------------------------------------


class DownloadMode:
    """The supervisor's side of download mode (see supervisor.py for the few hooks).

    States: ``"app"`` (MicroPython runs; host bytes are scanned for a SYNC frame),
    ``"download"`` (the child is stopped; host bytes go to the :class:`RomLoader`),
    ``"halted"`` (download mode was left but the flash holds nothing the ROM boots: no
    child, host bytes other than a SYNC are dropped).

    Download mode is left, and the board powered on again, when the loader is told to run
    the app (ROM ``FLASH_END``/``RUN_USER_CODE``), when the host closes the port (esptool's
    hard reset over a pty or socket cannot pulse EN, but it closes the port right after),
    or after DOWNLOAD_IDLE_S with no byte from the host.
    """

    def __init__(self, supervisor, config: dict):
        self._sup = supervisor
        board = config.get("board", {})
        self.chip = board.get("chip", "esp32")
        fcfg = config.get("flash", {})
        image = fcfg.get("image")
        self.flash = SpiFlash(
            supervisor.run_dir / "spiflash.bin",
            Path(image) if image else None,
            int(fcfg.get("size_kb", 1536)) * 1024,
            self.chip,
            int(board.get("flash_offset", 0x1000 if self.chip in ("esp32", "esp32s2") else 0)),
        )
        self.mac = bytes(config.get("unique_id", [0x24, 0x0A, 0xC4, 0x00, 0x00, 0x01]))
        self.state = "app"
        self.loader: RomLoader | None = None
        self.sessions = 0
        self._tail = b""
        self._pending = bytearray()  # host bytes the (possibly paced) UART has not passed yet
        self._last_host_s = 0.0
        self._watch: _CloseWatch | None = None

    @property
    def active(self) -> bool:
        """True while the board has no MicroPython child because of download mode."""
        return self.state != "app"

    def wait_fd(self) -> int | None:
        return self._watch.fd if (self._watch is not None and self.state == "download") else None

    def timeout_s(self) -> float | None:
        if self.state != "download":
            return None
        idle_s = max(0.0, self._last_host_s + DOWNLOAD_IDLE_S - time.monotonic())
        if self._pending:  # wake up when the link's rate lets the next bytes through
            return min(idle_s, self._sup._rx_bucket.delay_s())
        return idle_s

    def from_host(self, data: bytes) -> bytes:
        """Bytes the host sent; returns what still goes to the MicroPython child."""
        if self.state == "download":
            self._last_host_s = time.monotonic()
            self._pending += data
            return b""
        window = self._tail + data
        at = window.find(SYNC_FRAME_START)
        if at < 0:
            self._tail = window[-(len(SYNC_FRAME_START) - 1) :]
            return b"" if self.state == "halted" else data
        self._tail = b""
        self._enter()
        self._pending += window[at:]
        self.tick(set())
        return b""

    def tick(self, readable: set[int]) -> None:
        """Called once per supervisor loop with the readable fds."""
        if self.state != "download":
            return
        # Host bytes reach the ROM at the link's rate (a --baud limited board is paced in
        # download mode too; CHANGE_BAUDRATE changes that rate).
        n_bytes = min(len(self._pending), self._sup._rx_bucket.available())
        if n_bytes:
            chunk = bytes(self._pending[:n_bytes])
            del self._pending[:n_bytes]
            self._sup._rx_bucket.consume(n_bytes)
            self._answer(chunk)
            if self.state != "download":
                return
        if self._watch is not None and self._watch.fd in readable and self._watch.closed():
            self.leave("the host closed the port")
        elif time.monotonic() - self._last_host_s >= DOWNLOAD_IDLE_S:
            self.leave(f"no byte from the host for {DOWNLOAD_IDLE_S:.0f} s")

    def host_closed(self) -> None:
        if self.state == "download":
            self.leave("the host closed the port")

    def _enter(self) -> None:
        log.debug("SYNC from the host: reset into download mode")
        self.state = "download"
        self.sessions += 1
        self._last_host_s = time.monotonic()
        self._sup._enter_download()  # stops the child: nothing else writes the flash
        self.flash.load()
        self.loader = RomLoader(self.flash, mac=self.mac, on_baud=self._sup._set_link_baud)
        if self._sup.transport == "pty" and self._sup.port:
            self._watch = _CloseWatch(self._sup.port)
            self._watch.closed()  # forget closes from before this session

    def _answer(self, data: bytes) -> None:
        reply = self.loader.feed(data)
        if reply:
            self._sup._to_host += reply
        if self.loader.exit_reason is not None:
            self.leave(self.loader.exit_reason)

    def leave(self, reason: str) -> None:
        log.debug("leaving download mode: %s", reason)
        self._pending.clear()
        self.flash.save()
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        self._sup._set_link_baud(None)  # a reset puts the UART back to its boot rate
        ok, message = self.flash.bootable()
        if ok:
            self.state = "app"
            self._sup._leave_download()
        else:
            self.state = "halted"
            self._sup._to_host += _ROM_BANNER + message.encode()

    def close(self) -> None:
        if self.state == "download":
            self.flash.save()
        if self._watch is not None:
            self._watch.close()
            self._watch = None

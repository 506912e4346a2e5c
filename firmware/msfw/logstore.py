# The session log: append-only, checksummed records in rotating segment files under /log.
# The format, the power-cut argument and the flush policy are in firmware/LOGFORMAT.md.
#
# Two sides, so logging never delays the stimulation hot path:
#   * the recording calls (event, sample, tick, session_start, session_end) are O(1) and
#     allocate nothing: they encode plain ints into a preallocated RAM queue;
#   * flush(max_bytes) writes queued records to flash, each committed (synced) on its
#     own, so a power cut loses at most the record in flight. On an ESP32 a flash erase
#     stalls the CPU for tens of ms: the app flushes only while the output is off.
# The checksum (CRC32) is computed at flush: binascii.crc32 returns a 32-bit value,
# which on a 32-bit port is a heap-allocated int three times in four.
#
# Imports under CPython too: the host decoder shares these constants and check_record().
import binascii

from micropython import const

try:
    import time as _time

    EPOCH_YEAR = _time.gmtime(0)[0]  # 2000 on the ESP32 port, 1970 on unix and CPython
except (ImportError, AttributeError):  # pragma: no cover
    EPOCH_YEAR = 2000

FORMAT_VERSION = 1
MAGIC = 0xA7
HDR = 7  # magic, type, payload length, seq (u32 LE)
TAIL = 4  # CRC32 (LE) of the header and the payload
OVERHEAD = HDR + TAIL
_MAX_PAYLOAD = const(255)

# Record types.
T_SEG = 1  # first record of every segment: log id, segment id, format, epoch
T_BOOT = 2
T_START = 3
T_SUMMARY = 4  # a block of 1 Hz summaries
T_END = 5
T_EVENT = 6
TYPE_NAMES = ("", "segment", "boot", "session_start", "summary", "session_end", "event")

# Event kinds (stable codes: the host decodes them by these numbers).
EV_CONTACT_LOST = 1  # value: contact reason (supervisor C_*)
EV_CONTACT_OK = 2  # value: the reason the contact had been lost
EV_INTENSITY = 3  # value: new level (1..5)
EV_FAULT = 4  # value: fault code (supervisor F_*), value2: the fault's measured value
EV_FAULT_CLEARED = 5
EV_USB_POWER = 6  # value: 1 present, 0 removed
EV_CALIBRATION = 7  # value: gain (Q14), value2: offset (1/32 uA)
EV_REFUSED = 8  # value: reason (supervisor F_*)
EV_CLOCK_SET = 9  # value: RTC before, value2: RTC after (device seconds)
EV_LOG_RECOVERY = 10  # value: torn bytes dropped, value2: segment id
EV_LOG_OVERFLOW = 11  # value: records dropped because the RAM queue was full
_EV_CONFIG_ERROR = const(12)
EVENT_NAMES = ("", "contact_lost", "contact_restored", "intensity", "fault", "fault_cleared",
               "usb_power", "calibration", "refused", "clock_set", "log_recovery",
               "log_overflow", "config_error")

# Session end reasons: 0..2 are the engine's END_* codes.
END_BUTTON = 0
END_AUTO_OFF = 1
END_HOST = 2
END_FAULT = 3
END_NAMES = ("button", "auto_off", "host", "fault")

# Program codes in a session start record (a config-defined program is "custom").
PROGRAM_NAMES = ("custom", "lift", "tone", "steady", "fine", "pulse3")

# Summary entry flags (low 3 bits: the engine state at the end of the second).
SF_NO_SAMPLES = 0x08  # no current sample in that second: no current fields follow
SF_TARGET = 0x10  # the commanded current changed: its delta follows
SF_SAME_I = 0x20  # mean, min and max as in the second before: no current fields follow
SF_SAME_Z = 0x40  # impedance as in the second before: no impedance field follows
_SUMMARY_MAX_S = const(32)  # seconds per summary block
_ENTRY_MAX = 1 + 5 + 5 + 5 + 5 + 5
_BLOCK_HDR_MAX = 5 + 5 + 1

# Flash: LittleFS blocks of 4096 bytes. A file of 4 blocks holds 4 x 4096 bytes less its
# skip-list pointers (12 bytes); a segment stays below that with margin.
FS_BLOCK = 4096
SEG_BYTES = 4 * FS_BLOCK - 64
BUDGET_BYTES = 512 * 1024
# Outside the segments: the /log directory (4 blocks by statvfs on LittleFS v2, measured:
# its metadata pair and what mkdir adds to the root's) and the
# block LittleFS copies an appended-to tail block into before it frees the old one.
RESERVE_BLOCKS = 5
_QUEUE_BYTES = const(8192)  # RAM queue's most: a 20-minute session's summaries fit (about 6 KB)
QUEUE_IDLE = 512  # the first chunk (boot record, events); reserve() adds a session's
# What a session adds to the queue, a chunk at a time: the largest that fit, down to a
# whole largest record (header + block header + a full block + checksum: 11 + 11 + 255).
# The first, 4 KB, is also the buffer a log pull reads through (logflash.scratch).
_CHUNK_SIZES = const((4096, 2048, 1024, 512, 384, 288))
_KEEP_FREE = const(4096)  # heap reserve() leaves for the session's own allocations...
_HEADROOM = const(256)  # ... of which _PIECES pieces this big (starting the output, a pause:
_PIECES = const(8)  # about 1.9 KB on the unix port, in objects of up to a few hundred bytes)
_CHUNK_SLACK = const(64)  # unused tail a chunk is left with, on average (half a summary record)
_QUEUE_PER_S = const(6)  # bytes of queue a session second may need (summaries: ~3-5 measured)

TICKS_PERIOD = 1 << 30  # ticks_ms wraps here on the ESP32 port
_TICKS_MASK = TICKS_PERIOD - 1
_TICKS_HALF = TICKS_PERIOD >> 1


def _diff(a, b):
    return ((a - b + _TICKS_HALF) & _TICKS_MASK) - _TICKS_HALF


def _put_uv(b, i, v):
    """Unsigned varint (LEB128), v >= 0."""
    while v >= 0x80:
        b[i] = (v & 0x7F) | 0x80
        v >>= 7
        i += 1
    b[i] = v
    return i + 1


def _put_sv(b, i, v):
    """Signed varint, sign-magnitude: the first byte holds the sign (bit 0) and 6 bits,
    the rest 7 bits each. Never forms 2 * v, so any small int encodes without a big int."""
    s = 0
    if v < 0:
        s = 1
        v = -v
    x = ((v & 0x3F) << 1) | s
    v >>= 6
    if v:
        x |= 0x80
    b[i] = x
    i += 1
    while v:
        x = v & 0x7F
        v >>= 7
        if v:
            x |= 0x80
        b[i] = x
        i += 1
    return i


def _put_u32(b, i, v):
    b[i] = v & 0xFF
    b[i + 1] = (v >> 8) & 0xFF
    b[i + 2] = (v >> 16) & 0xFF
    b[i + 3] = (v >> 24) & 0xFF
    return i + 4


def _u32(b, i):
    return b[i] | (b[i + 1] << 8) | (b[i + 2] << 16) | (b[i + 3] << 24)


def check_record(buf, pos, end):
    """The length of the valid record at buf[pos], 0 if it runs past `end` (incomplete),
    -1 if there is no valid record there (bad magic or checksum)."""
    if buf[pos] != MAGIC:
        return -1
    if pos + HDR > end:
        return 0
    n = OVERHEAD + buf[pos + 2]
    if pos + n > end:
        return 0
    crc = binascii.crc32(memoryview(buf)[pos:pos + n - TAIL]) & 0xFFFFFFFF
    return n if crc == _u32(buf, pos + n - TAIL) else -1


def record_seq(buf, pos):
    return _u32(buf, pos + 3)


def blocks_for(size):
    """LittleFS blocks a file of `size` bytes occupies (skip-list pointers included)."""
    b = (size + (size >> 9) + FS_BLOCK - 1) // FS_BLOCK
    return b if b > 0 else 1


def program_info(name, prog):
    """Slow path (at config load): the program as a tuple of ints for session_start."""
    code = 0
    if isinstance(name, str):
        for i in range(len(PROGRAM_NAMES)):
            if PROGRAM_NAMES[i] == name:
                code = i
    return (code, int(prog["freq_hz"] * 1000 + 0.5), int(prog["phase_us"]), int(prog["gap_us"]),
            int(prog["train_n"]), int(prog["train_on_ms"]), int(prog["train_off_ms"]))


def _flash():
    from msfw import logflash

    return logflash


def _mem_free():
    try:
        import gc

        return gc.mem_free()
    except (ImportError, AttributeError):  # CPython (host tests of the pure parts)
        return 1 << 30


class LogStore:
    def __init__(self, root="/log", budget_bytes=BUDGET_BYTES, seg_bytes=SEG_BYTES,
                 queue_bytes=_QUEUE_BYTES):
        self.root = root
        self.budget_blocks = budget_bytes // FS_BLOCK
        self.seg_bytes = seg_bytes
        # The RAM queue: chunks of records, filled in order (a record never spans two).
        # _q is the chunk being written, _qn its fill, _qcap its size; _fill[k] is the
        # fill of each chunk before _ci (the current one). A session's queue is several
        # kilobytes: as chunks it needs no contiguous block of that size in a heap that
        # boot has cut up.
        self._q = bytearray(queue_bytes)
        self._chunks = [self._q]
        self._fill = [0]
        self._ci = 0
        self._qcap = queue_bytes
        self._qn = 0
        self._rec = 0
        self._blk = bytearray(_MAX_PAYLOAD)  # the open summary block's entries
        self._bn = 0
        self._bcount = 0
        self.seq = 0  # sequence number of the next record written to flash
        self.log_id = 0
        self.dropped = 0  # records refused since the last flush (RAM queue full)
        self.write_error = 0  # errno of the last failed flash write, 0 if none
        self.recovered_bytes = 0
        self._ids = []
        self._sizes = []
        self._rtc = 0
        self._since_start = 0
        # Session and the second being summarised.
        self.in_session = False
        self._t0_ms = 0
        self._sec_t0 = 0
        self._sec_i = 0
        self._blk_t0 = 0
        self._n = 0
        self._sum = 0
        self._mn = 0
        self._mx = 0
        self._pmean = 0
        self._plo = 0
        self._phi = 0
        self._pz = 0
        self._ptgt = 0
        self._pstate = 0

    # ---- flash side (msfw.logopen at boot, msfw.logflash; never while the output is on) --
    def open(self, rtc_s=0):
        """Boot: find the segments, repair the newest if a power cut tore it, set the next
        sequence number. Returns the number of torn bytes dropped."""
        from msfw import logopen  # boot only: the app drops it after (msfw.app's LAZY)

        return logopen.open_store(self, rtc_s)

    def flush(self, max_bytes=-1):
        """Writes queued records to flash (see logflash.flush). Returns the bytes written."""
        return _flash().flush(self, max_bytes)

    def segments(self):
        """[(seg_id, size_bytes)], oldest first."""
        return [(self._ids[k], self._sizes[k]) for k in range(len(self._ids))]

    def read_into(self, seg_id, offset, buf):
        return _flash().read_into(self, seg_id, offset, buf)

    def _path(self, seg_id):
        return "%s/%08x.seg" % (self.root, seg_id)

    # ---- records --------------------------------------------------------------------
    def boot(self, rtc_s, reset_cause, version="", board=""):
        """The boot record (slow path): reset cause, firmware version, board name."""
        i = self._begin(T_BOOT, 4 + 1 + 2 + 2 + 32)
        if i < 0:
            return
        q = self._q
        i = _put_u32(q, i, rtc_s)
        q[i] = reset_cause & 0xFF
        q[i + 1] = EPOCH_YEAR & 0xFF
        q[i + 2] = EPOCH_YEAR >> 8
        i += 3
        for s in (version, board):
            s = s.encode()[:16]
            q[i] = len(s)
            i += 1
            for c in s:
                q[i] = c
                i += 1
        self._rtc = rtc_s
        self._end(i)

    # ---- recording: hot path, O(1), allocation-free ---------------------------------
    def _begin(self, rtype, maxlen):
        i = self._qn
        if i + OVERHEAD + maxlen > self._qcap:
            ci = self._ci + 1
            if ci >= len(self._chunks) or OVERHEAD + maxlen > len(self._chunks[ci]):
                self.dropped += 1
                return -1
            self._fill[self._ci] = i  # on to the next (empty) chunk
            self._ci = ci
            self._q = self._chunks[ci]
            self._qcap = len(self._q)
            i = 0
        q = self._q
        q[i] = MAGIC
        q[i + 1] = rtype
        self._rec = i
        return i + HDR  # seq and checksum are filled in at flush

    def _end(self, j):
        i = self._rec
        self._q[i + 2] = j - i - HDR
        self._qn = j + TAIL
        self._since_start += 1

    def event(self, kind, rtc_s, now_ms, value=0, value2=0):
        """An event; inside a session its time is also kept to the ms."""
        i = self._begin(T_EVENT, 1 + 4 + 5 + 5 + 5)
        if i < 0:
            return
        q = self._q
        q[i] = kind
        i = _put_u32(q, i + 1, rtc_s)
        self._rtc = rtc_s
        t = _diff(now_ms, self._t0_ms) + 1 if self.in_session else 0
        i = _put_uv(q, i, t if t > 0 else 0)
        i = _put_sv(q, i, value)
        i = _put_sv(q, i, value2)
        self._end(i)

    def session_start(self, rtc_s, now_ms, prog, setpoint_ua, duration_s, cue_s, level):
        """prog: program_info(...). Starts the 1 Hz summaries."""
        if self.in_session:
            self.session_end(rtc_s, now_ms, END_HOST, 0)
        i = self._begin(T_START, 4 + 1 + 6 * 5 + 3 * 5 + 1)
        self._since_start = 0
        if i >= 0:
            q = self._q
            i = _put_u32(q, i, rtc_s)
            q[i] = prog[0]
            i += 1
            for k in range(1, 7):
                i = _put_uv(q, i, prog[k])
            i = _put_uv(q, i, setpoint_ua)
            i = _put_uv(q, i, duration_s)
            i = _put_uv(q, i, cue_s)
            q[i] = level
            self._end(i + 1)
            self._since_start = 0
        self._rtc = rtc_s
        self.in_session = True
        self._t0_ms = now_ms
        self._sec_t0 = now_ms
        self._sec_i = 0
        self._bn = 0
        self._bcount = 0
        self._n = 0
        self._sum = 0
        self._pz = 0
        self._ptgt = 0
        self._pstate = 1  # ramping

    def sample(self, i_cu):
        """A measured current amplitude (1/32 uA), as the sampler produced it."""
        n = self._n
        if n == 0:
            self._mn = i_cu
            self._mx = i_cu
        elif i_cu < self._mn:
            self._mn = i_cu
        elif i_cu > self._mx:
            self._mx = i_cu
        self._n = n + 1
        self._sum += i_cu

    def tick(self, now_ms, state, z_ohm, target_cu):
        """Every loop pass during a session: closes the second when it is over."""
        if self.in_session and _diff(now_ms, self._sec_t0) >= 1000:
            self._sec_t0 = (self._sec_t0 + 1000) & _TICKS_MASK
            self._second(state, z_ohm, target_cu)

    def _second(self, state, z_ohm, target_cu):
        b = self._blk
        first = self._bcount == 0  # a block's first entry carries all its values
        if first:
            self._blk_t0 = self._sec_i
            self._pmean = 0
            self._pz = 0
            self._ptgt = 0
        i = self._bn
        j = i + 1
        n = self._n
        flags = state & 7
        if n == 0:
            flags |= SF_NO_SAMPLES
        else:
            mean = ((self._sum + (n >> 1)) // n + 4) >> 3  # quarter uA
            lo = mean - ((self._mn + 4) >> 3)
            hi = ((self._mx + 4) >> 3) - mean
            if not first and mean == self._pmean and lo == self._plo and hi == self._phi:
                flags |= SF_SAME_I  # a steady second costs one byte
            else:
                j = _put_sv(b, j, mean - self._pmean)
                j = _put_uv(b, j, lo)
                j = _put_uv(b, j, hi)
                self._pmean = mean
                self._plo = lo
                self._phi = hi
        z = (z_ohm + 8) >> 4  # 16-ohm units
        if not first and z == self._pz:
            flags |= SF_SAME_Z
        else:
            j = _put_sv(b, j, z - self._pz)
            self._pz = z
        tgt = (target_cu + 4) >> 3
        if tgt != self._ptgt:
            flags |= SF_TARGET
            j = _put_sv(b, j, tgt - self._ptgt)
            self._ptgt = tgt
        b[i] = flags
        self._pstate = state
        self._bn = j
        self._bcount += 1
        self._sec_i += 1
        self._n = 0
        self._sum = 0
        if self._bcount >= _SUMMARY_MAX_S or j + _ENTRY_MAX > _MAX_PAYLOAD - _BLOCK_HDR_MAX:
            self._seal()

    def _seal(self):
        """The open summary block becomes a record in the queue."""
        cnt = self._bcount
        if cnt == 0:
            return
        bn = self._bn
        i = self._begin(T_SUMMARY, _BLOCK_HDR_MAX + bn)
        self._bn = 0
        self._bcount = 0
        if i < 0:
            return
        q = self._q
        i = _put_uv(q, i, self._since_start + 1)  # seq distance back to the session start
        i = _put_uv(q, i, self._blk_t0)  # seconds since the session started
        q[i] = cnt
        i += 1
        b = self._blk
        for k in range(bn):
            q[i + k] = b[k]
        self._end(i + bn)

    def session_end(self, rtc_s, now_ms, reason, gain_q14=0):
        """Closes the last (partial) second, the summary block and the session."""
        if not self.in_session:
            return
        if self._n:  # the last, partial second
            self._second(self._pstate, self._pz << 4, self._ptgt << 3)
        self._seal()
        i = self._begin(T_END, 1 + 4 + 5 + 5 + 5)
        if i >= 0:
            q = self._q
            q[i] = reason
            i = _put_u32(q, i + 1, rtc_s)
            d = _diff(now_ms, self._t0_ms)
            i = _put_uv(q, i, d if d > 0 else 0)
            i = _put_uv(q, i, self._sec_i)
            i = _put_uv(q, i, gain_q14)
            self._end(i)
        self._rtc = rtc_s
        self.in_session = False

    # ---- flushing (slow path: only while the output is off) --------------------------
    def reserve(self, seconds):
        """Grow the RAM queue to hold `seconds` of summaries, in chunks of _CHUNK_SIZES
        bytes (slow path: the output is off). The app calls it once the boot is done, and
        keeps what it got for good: the session's records stay in RAM until the output is
        off, and later the heap is in pieces too small for a queue (idle work: a log pull,
        a config change). Before each session it is called again, to top up. The heap may
        not have room for all: the queue then takes what it gets (records beyond it are
        counted as dropped, and logged as an overflow). Returns the queue's capacity,
        less the tail each added chunk may leave unused (a record never spans chunks)."""
        want = QUEUE_IDLE + seconds * _QUEUE_PER_S
        if want > _QUEUE_BYTES:
            want = _QUEUE_BYTES
        have = self.capacity()
        n0 = len(self._chunks)
        # Largest pieces first; then the holes boot left, down to the size of the largest
        # record (a record never spans chunks).
        for size in _CHUNK_SIZES:
            while have < want:
                # Never the heap's last kilobytes: starting the output allocates too.
                if _mem_free() < size + _KEEP_FREE:
                    break
                try:
                    c = bytearray(size)
                except MemoryError:
                    break
                self._chunks.append(c)
                self._fill.append(0)
                have += size - _CHUNK_SLACK
        # The session allocates too (starting the output, a pause): the holes the chunks
        # took must leave _PIECES pieces of _HEADROOM, or the chunks just added go back.
        p = [None] * _PIECES
        while len(self._chunks) > n0:
            try:
                for k in range(_PIECES):
                    p[k] = bytearray(_HEADROOM)
                break
            except MemoryError:
                for k in range(_PIECES):
                    p[k] = None
                have -= len(self._chunks.pop()) - _CHUNK_SLACK
                self._fill.pop()
        return have

    def capacity(self):
        n = 0
        for c in self._chunks:
            n += len(c)
        return n

    def pending(self):
        """Bytes queued in RAM, not yet on flash."""
        n = self._qn
        for k in range(self._ci):
            n += self._fill[k]
        return n

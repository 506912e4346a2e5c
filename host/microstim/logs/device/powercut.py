# Power cuts against the firmware's session log, on the MicroPython unix port.
#
#   micropython powercut.py <device_dir> <firmware_dir> <image> <cuts> <seed> <seg_bytes> <budget_bytes>
#
# One process, one flash image (LittleFS on the virtual board's FileBlockDev). Each round
# arms a power cut at a random byte among the next few record writes, keeps recording
# (events, whole sessions with 1 Hz summaries, boots) and flushing one record at a time
# until the flash dies, then "powers up": a new block device on the same image, mount,
# LogStore.open() (recovery), and checks, against a checksum of every record it ever
# asked to write (by sequence number):
#   * corrupt: bytes in any segment that are not a valid record (must be 0);
#   * lost: committed records (their flush returned) that are gone (must be 0);
#   * wrong: records whose content is not what was written under that seq (must be 0);
#   * the record in flight is either there, whole, or gone;
#   * segment ids are contiguous (rotation only ever drops the oldest) and the log's
#     LittleFS blocks stay within the budget.
# Prints one JSON line with the counts.
import sys

_dev, _fw = sys.argv[1], sys.argv[2]
sys.path.insert(0, _dev)
import _vworld  # noqa: E402

sys.path.remove(_dev)  # the built-in time module from here, not the virtual board's
sys.path.insert(0, _fw)
import binascii  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
from array import array  # noqa: E402

from msfw import logstore as L  # noqa: E402

IMAGE = sys.argv[3]
CUTS = int(sys.argv[4])
SEED = int(sys.argv[5])
SEG = int(sys.argv[6])
BUDGET = int(sys.argv[7])
BS = 4096
NB = (BUDGET * 2 + 64 * 1024) // BS  # the log shares the flash with room to spare
MNT = "/pcflash"

_rng = [SEED * 2654435761 & 0xFFFFFFFF or 1]


def rand(n):
    x = _rng[0]
    x ^= (x << 13) & 0xFFFFFFFF
    x ^= x >> 17
    x ^= (x << 5) & 0xFFFFFFFF
    _rng[0] = x
    return x % n


f = open(IMAGE, "w+b")
for _ in range(NB):
    f.write(b"\xff" * BS)
f.flush()
bdev = _vworld.FileBlockDev(f, BS, NB)
os.VfsLfs2.mkfs(bdev)
os.mount(os.VfsLfs2(bdev), MNT)
base_free = os.statvfs(MNT)[3]

expected = array("L")  # CRC32 of the record written under each seq
PROG = L.program_info("steady", {"freq_hz": 10, "phase_us": 20000, "gap_us": 1000, "train_n": 1,
                                 "train_on_ms": 0, "train_off_ms": 0})
stats = {"cuts": 0, "lost": 0, "corrupt_bytes": 0, "wrong": 0, "in_flight_kept": 0,
         "in_flight_lost": 0, "records_committed": 0, "segments_dropped": 0,
         "over_budget": 0, "id_gaps": 0, "recovered_bytes": 0, "max_log_blocks": 0,
         "cut_during_recovery": 0, "rounds_without_cut": 0}


def flush_one(store):
    """Flush, recording the expected checksum of each record before it is attempted."""
    q = store._q
    pos = 0
    seq = store.seq
    while pos < store._qn:
        ln = L.OVERHEAD + q[pos + 2]
        b = bytearray(q[pos:pos + ln])
        L._put_u32(b, 3, seq)
        c = binascii.crc32(memoryview(b)[:ln - 4]) & 0xFFFFFFFF
        while len(expected) <= seq:
            expected.append(0)
        expected[seq] = c
        seq += 1
        pos += ln
    store.flush()


def check(store, committed_next, in_flight_seq):
    """After power-up: every committed record there and intact, nothing corrupt."""
    segs = store.segments()
    ids = [s[0] for s in segs]
    for k in range(1, len(ids)):
        if ids[k] != ids[k - 1] + 1:
            stats["id_gaps"] += 1
    seqs = []
    for sid, size in segs:
        buf = bytearray(size)
        n = store.read_into(sid, 0, buf) if size else 0
        pos = 0
        while pos < n:
            k = L.check_record(buf, pos, n)
            if k <= 0:
                stats["corrupt_bytes"] += 1
                pos += 1
                continue
            if buf[pos + 1] != L.T_SEG:
                s = L.record_seq(buf, pos)
                crc = L._u32(buf, pos + k - 4)
                if s >= len(expected) or expected[s] != crc:
                    stats["wrong"] += 1
                seqs.append(s)
            pos += k
    if not seqs:
        return
    for k in range(1, len(seqs)):
        if seqs[k] != seqs[k - 1] + 1:
            stats["lost"] += seqs[k] - seqs[k - 1] - 1
    hi = seqs[-1]
    if hi < committed_next - 1:
        stats["lost"] += committed_next - 1 - hi
    if in_flight_seq >= 0:
        if hi >= in_flight_seq:
            stats["in_flight_kept"] += 1
        else:
            stats["in_flight_lost"] += 1
    if hi > max(committed_next - 1, in_flight_seq):
        stats["wrong"] += 1  # a record nobody finished writing


def used_blocks():
    return base_free - os.statvfs(MNT)[3]


def power_up():
    """A fresh block device on the same image: what a board sees after the cut."""
    global bdev
    try:
        os.umount(MNT)
    except OSError:
        pass
    bdev = _vworld.FileBlockDev(f, BS, NB)
    os.mount(os.VfsLfs2(bdev), MNT)


def one_round(store, rtc):
    """Record until the flash dies (or a limit); returns (store, committed_next, in_flight)."""
    t = 0
    k = 0
    while not bdev.dead and k < 2000:
        k += 1
        r = rand(10)
        rtc += 1
        if r < 4:
            store.event(1 + rand(12), rtc, t, rand(100000) - 50000, rand(1000))
        elif r < 6:
            store.session_start(rtc, t, PROG, 100 + rand(300), 600, 5, 1 + rand(5))
            for _sec in range(rand(90)):
                for _j in range(10):
                    store.sample(6400 + rand(200) - 100)
                t += 1000
                store.tick(t, 2 if rand(8) else 3, 20000 + rand(3000), 6400)
                if store._qn:
                    flush_one(store)
                    if bdev.dead:
                        break
            if not bdev.dead:
                store.session_end(rtc, t, rand(4), 16000 + rand(800))
        else:
            store.boot(rtc, 1 + rand(5), "0.1.0", "virtual")
        if not bdev.dead and store._qn:
            flush_one(store)
        if not bdev.dead:
            n = used_blocks()
            if n > stats["max_log_blocks"]:
                stats["max_log_blocks"] = n
    return rtc


store = L.LogStore(MNT + "/log", BUDGET, SEG, 4096)
store.open(0)
rtc = 1000
for _round in range(CUTS):
    # A cut somewhere in the next few record writes (a record flush programs ~4-8 KB:
    # LittleFS copies the segment's tail block, then commits metadata).
    # One round in four runs long (up to ~100 record writes), so the log fills and rotates
    # and cuts also land in segment creation and deletion.
    bdev.cut_after = rand(3 * 8192) if rand(4) else rand(800 * 1024)
    rtc = one_round(store, rtc)
    if not bdev.dead:
        stats["rounds_without_cut"] += 1
        bdev.cut_after = -1
        continue
    stats["cuts"] += 1
    committed_next = store.seq  # every seq below this was committed (its flush returned)
    in_flight = store.seq if store._qn else -1
    power_up()
    store = L.LogStore(MNT + "/log", BUDGET, SEG, 4096)
    if rand(10) == 0:
        # Sometimes the power fails again while the board recovers and writes its boot.
        bdev.cut_after = rand(8192)
        try:
            store.open(rtc)
            store.boot(rtc, 1, "0.1.0", "virtual")
            flush_one(store)
        except OSError:
            pass
        if bdev.dead:
            stats["cut_during_recovery"] += 1
            if store.seq > committed_next:
                committed_next = store.seq
                in_flight = store.seq if store._qn else -1
            elif store._qn:
                in_flight = max(in_flight, store.seq)
            power_up()
            store = L.LogStore(MNT + "/log", BUDGET, SEG, 4096)
        bdev.cut_after = -1
    stats["recovered_bytes"] += store.open(rtc)
    check(store, committed_next, in_flight)
    stats["records_committed"] = committed_next
    if used_blocks() > BUDGET // BS:
        stats["over_budget"] += 1
    stats["segments_dropped"] = store.segments()[0][0] - 1 if store.segments() else 0

print(json.dumps(stats))

"""The device's session log (firmware/msfw/logstore.py) on the MicroPython unix port:
power cuts at random byte offsets during writes, recovery of a torn tail, rotation,
capacity, the allocation-free hot path, and a real engine session logged."""

import json
import subprocess
import textwrap
from pathlib import Path

import numpy as np
from conftest import MICROPYTHON, ROOT
from microstim import paths
from microstim.logs import data as D
from microstim.logs import format as F
from microstim.logs import generate as G

DEV = str(paths.vboard_device_dir())
FW = str(ROOT / "firmware")
POWERCUT = str(ROOT / "host/microstim/logs/device/powercut.py")

# A LittleFS image on the virtual board's FileBlockDev, mounted at /fl, and the store.
MP_SETUP = f"""
import sys, os
sys.path.insert(0, {DEV!r})
import _vworld
sys.path.remove({DEV!r})
sys.path.insert(0, {FW!r})
from msfw import logstore as L
BS = 4096
def make_flash(path, nb=128):
    f = open(path, "w+b")
    for _ in range(nb):
        f.write(b"\\xff" * BS)
    bd = _vworld.FileBlockDev(f, BS, nb)
    os.VfsLfs2.mkfs(bd)
    os.mount(os.VfsLfs2(bd), "/fl")
    return f, bd
def remount(f, nb=128):
    os.umount("/fl")
    bd = _vworld.FileBlockDev(f, BS, nb)
    os.mount(os.VfsLfs2(bd), "/fl")
    return bd
def dump(store, out):
    for sid, size in store.segments():
        buf = bytearray(size)
        n = store.read_into(sid, 0, buf)
        with open(out + "/%08x.seg" % sid, "wb") as fo:
            fo.write(memoryview(buf)[:n])
STEADY = L.program_info("steady", {{"freq_hz": 10, "phase_us": 20000, "gap_us": 1000, "train_n": 1,
                                   "train_on_ms": 0, "train_off_ms": 0}})
"""


def mp_run(code: str, tmp_path: Path, heap: str = "16m", timeout: float = 300) -> str:
    script = tmp_path / "t.py"
    script.write_text(MP_SETUP + textwrap.dedent(code))
    r = subprocess.run([MICROPYTHON, "-X", f"heapsize={heap}", str(script)], capture_output=True,
                       text=True, timeout=timeout, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def segments_in(d: Path) -> dict[int, bytes]:
    return {int(p.stem, 16): p.read_bytes() for p in sorted(d.glob("*.seg"))}


def test_crc32_and_varints_agree_with_cpython(tmp_path):
    """binascii.crc32 exists on the unix port (and the ESP32 port's build has it: EXTRA_FEATURES
    enables CRC32 and deflate) and matches zlib's; the varints decode on the host."""
    out = mp_run("""
import binascii
print(binascii.crc32(b"microstim") & 0xFFFFFFFF)
b = bytearray(64)
i = 0
for v in (0, 1, -1, 63, -64, 64, 8191, -8192, 1 << 29, -(1 << 29)):
    i = L._put_sv(b, i, v)
for v in (0, 127, 128, 300, 1 << 29):
    i = L._put_uv(b, i, v)
print(bytes(b[:i]).hex())
""", tmp_path)
    crc, hexs = out.split()
    import binascii
    assert int(crc) == binascii.crc32(b"microstim")
    b = bytes.fromhex(hexs)
    i = 0
    got = []
    for _ in range(10):
        v, i = F._sv(b, i)
        got.append(v)
    for _ in range(5):
        v, i = F._uv(b, i)
        got.append(v)
    assert got == [0, 1, -1, 63, -64, 64, 8191, -8192, 1 << 29, -(1 << 29), 0, 127, 128, 300, 1 << 29]


def test_summaries_decode_to_what_was_measured(tmp_path):
    """Known samples in, the host's decoded 1 Hz summaries out: mean, min, max (quarter uA),
    impedance (16 ohm), target and state per second, events at their ms."""
    out = mp_run("""
f, bd = make_flash("img")
s = L.LogStore("/fl/log"); s.open(0)
s.session_start(1000, 500, STEADY, 200, 600, 5, 5)
t = 500
for sec in range(70):
    for k in range(20):
        s.sample(6000 + (sec * 7 + k * 13) % 400)
    if sec == 40:
        s.event(L.EV_CONTACT_LOST, 1000 + sec, t + 300, 1, 0)
    t += 1000
    s.tick(t, 3 if 40 <= sec < 43 else 2, 20000 + sec * 40, 6400 if sec < 50 else 5120)
s.sample(6400)
s.session_end(1070, t + 400, L.END_BUTTON, 16100)
s.flush()
dump(s, ".")
""", tmp_path)
    del out
    d = D.load(segments_in(tmp_path))
    assert len(d.sessions) == 1
    sess = d.sessions[0]
    assert sess["program"] == "steady" and sess["end_reason"] == "button" and sess["seconds"] == 71
    m = d.summaries
    for sec in range(70):
        vals = [6000 + (sec * 7 + k * 13) % 400 for k in range(20)]
        mean_q = ((sum(vals) + 10) // 20 + 4) >> 3
        assert m["i_mean_ua"][sec] == mean_q / 4
        assert m["i_min_ua"][sec] == ((min(vals) + 4) >> 3) / 4
        assert m["i_max_ua"][sec] == ((max(vals) + 4) >> 3) / 4
        assert m["z_ohm"][sec] == ((20000 + sec * 40 + 8) >> 4) * 16
        assert m["target_ua"][sec] == (200 if sec < 50 else 160)
        assert m["state"][sec] == ("paused" if 40 <= sec < 43 else "stimulating")
    ev = d.events[d.events["kind"] == "contact_lost"]
    assert len(ev) == 1 and ev["t_ms"][0] == 40300 and ev["detail"][0] == "lift_off"
    assert abs(sess["gain"] - 16100 / 16384) < 1e-6


def test_hot_path_allocates_nothing(tmp_path):
    """sample, tick (closing seconds, sealing blocks), event, session start and end, under
    micropython.heap_lock(): a MemoryError would mean an allocation."""
    out = mp_run("""
import micropython, gc
f, bd = make_flash("img")
s = L.LogStore("/fl/log"); s.open(0)
def hot(n):
    t = 0
    s.session_start(1000, t, STEADY, 200, 600, 5, 5)
    for sec in range(n):
        for k in range(20):
            s.sample(6400 + ((sec * 31 + k * 17) % 97) - 48)
        if sec % 50 == 7:
            s.event(L.EV_CONTACT_LOST, 1000 + sec, t, 1, 123456)
            s.event(L.EV_FAULT, 1000 + sec, t, 3, -(1 << 29))
        t += 1000
        s.tick(t, 2, 20000 + sec * 16, 6400)
    s.session_end(1000 + n, t, L.END_AUTO_OFF, 16000)
gc.collect()
micropython.heap_lock()
try:
    hot(300)
    micropython.heap_unlock()
    print("ok", s.pending(), s.dropped)
except MemoryError:
    micropython.heap_unlock()
    print("ALLOCATED")
""", tmp_path)
    words = out.split()
    assert words[0] == "ok", out
    # It really recorded under the lock: ~10 summary blocks and the events, nothing dropped.
    assert int(words[1]) > 1000 and int(words[2]) == 0


def run_powercut(tmp_path, cuts, seed, seg_bytes, budget):
    r = subprocess.run([MICROPYTHON, "-X", "heapsize=16m", POWERCUT, DEV, FW, str(tmp_path / "pc.img"),
                        str(cuts), str(seed), str(seg_bytes), str(budget)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_power_cuts_lose_nothing_committed_and_corrupt_nothing(tmp_path):
    """60 power cuts at random byte offsets of flash programming/erasing, in realistic
    segments and in tiny ones that rotate all the time: after each, the board recovers on
    its own and every record whose write completed is there, intact; at most the record
    in flight is gone; no byte of any segment is corrupt; rotation drops only the oldest."""
    big = run_powercut(tmp_path, 60, 11, 16320, 512 * 1024)
    small = run_powercut(tmp_path, 60, 12, 2048, 32 * 1024)
    for st in (big, small):
        assert st["cuts"] >= 55, st
        assert st["lost"] == 0, st
        assert st["corrupt_bytes"] == 0, st
        assert st["wrong"] == 0, st
        assert st["id_gaps"] == 0, st
        assert st["over_budget"] == 0, st
        assert st["in_flight_kept"] + st["in_flight_lost"] >= st["cuts"] - st["cut_during_recovery"]
    assert small["segments_dropped"] > 10, small  # cuts landed while rotating, too
    assert small["max_log_blocks"] <= 8 and big["max_log_blocks"] <= 128
    assert big["records_committed"] > 300 and small["records_committed"] > 1000


def test_torn_tail_is_cut_at_boot_and_logged(tmp_path):
    """A file system without LittleFS's atomic commit can leave half a record: the next
    boot keeps every whole record, drops the torn bytes and says so in the log."""
    mp_run("""
f, bd = make_flash("img")
s = L.LogStore("/fl/log"); s.open(0)
for k in range(30):
    s.event(L.EV_INTENSITY, 1000 + k, 0, k % 5 + 1, k)
s.flush()
seg = s.segments()[-1][0]
good = s.segments()[-1][1]
# Half of a further record, then the power goes: append raw bytes behind LittleFS's back.
s.event(L.EV_USB_POWER, 2000, 0, 1, 0)
q = s._q
with open(s._path(seg), "ab") as fo:
    fo.write(bytes(q[:9]))
s2 = L.LogStore("/fl/log")
dropped = s2.open(3000)
s2.flush()
print(dropped, good, s2.segments())
dump(s2, ".")
""", tmp_path)
    segs = segments_in(tmp_path)
    sc = F.scan(segs[1], final=True)
    assert sc.corrupt == []
    kinds = [F.decode(r).get("kind") for r in sc.records if r.type == F.fw.T_EVENT]
    assert kinds[:30] == ["intensity"] * 30 and kinds[30] == "log_recovery"
    rec = F.decode(sc.records[-1])
    assert rec["value"] == 9 and rec["value2"] == 1
    seqs = [r.seq for r in sc.records if r.type != F.fw.T_SEG]
    assert seqs == list(range(len(seqs)))


def test_rotation_drops_the_oldest_only_and_stays_in_budget(tmp_path):
    out = mp_run("""
f, bd = make_flash("img", 64)
base = os.statvfs("/fl")[3]
s = L.LogStore("/fl/log", 48 * 1024, 4000, 4096); s.open(0)
peak = 0
for k in range(3000):
    s.event(L.EV_INTENSITY, 1000 + k, 0, k, 0)
    s.flush()
    used = base - os.statvfs("/fl")[3]
    peak = used if used > peak else peak
print(peak)
dump(s, ".")
""", tmp_path)
    assert int(out.split()[0]) <= 12  # 48 KB of 4 KB blocks, LittleFS's own overhead included
    segs = segments_in(tmp_path)
    ids = sorted(segs)
    assert ids[0] > 1 and ids == list(range(ids[0], ids[-1] + 1))  # oldest gone, no holes
    values = []
    for sid in ids:
        sc = F.scan(segs[sid], final=True)
        assert sc.corrupt == []
        values += [F.decode(r)["value"] for r in sc.records if r.type == F.fw.T_EVENT]
    # What is kept is exactly the newest records, in order, up to the last written.
    assert values == list(range(values[0], 3000)) and len(values) > 1000


def test_flush_respects_max_bytes_and_the_queue_overflow_is_logged(tmp_path):
    out = mp_run("""
f, bd = make_flash("img")
s = L.LogStore("/fl/log", queue_bytes=600); s.open(0)
for k in range(40):
    s.event(L.EV_INTENSITY, 1000 + k, 0, k, 0)
queued = s.pending()
dropped = s.dropped
w1 = s.flush(100)
left = s.pending()
w2 = s.flush()
print(queued, dropped, w1, left, w2, s.pending())
s.flush()
dump(s, ".")
""", tmp_path)
    queued, dropped, w1, left, w2, pend = map(int, out.split())
    # After the first flush freed room, the count of dropped records was queued as an event.
    assert 0 < w1 <= 100 and 0 < left - (queued - w1) <= 30 and w2 == left and pend == 0
    assert dropped > 0
    d = D.load(segments_in(tmp_path))
    ov = d.events[d.events["kind"] == "log_overflow"]
    assert len(ov) == 1 and ov["value"][0] == dropped
    assert (d.events["kind"] == "intensity").sum() == 40 - dropped


def test_flash_writes_cost_virtual_time(tmp_path):
    """With a world, an erase stalls the clock 45 ms and a page program 0.7 ms."""
    out = mp_run("""
import json
class W:
    pass
w = W()
w.now_us = 0
f, bd = make_flash("img")
bd.world = w
s = L.LogStore("/fl/log"); s.open(0)
e0 = bd.erases
for k in range(20):
    s.event(L.EV_INTENSITY, 1000, 0, 1, 0)
s.flush()
print(w.now_us, bd.erases - e0)
""", tmp_path)
    stall_us, erases = map(int, out.split())
    assert erases >= 1 and stall_us >= erases * 45000


def test_90_days_of_use_fit_in_512_kb(tmp_path):
    """90 days of realistic use (5/week, then 2-3/week; 10-minute sessions), written by the
    firmware's LogStore: nothing rotated away, and LittleFS blocks stayed under 512 KB."""
    g = G.generate(tmp_path, days=90, seed=3)
    assert g.figures["max_log_blocks"] * 4096 <= 512 * 1024
    assert min(g.segments) == 1  # the oldest segment is still there: nothing dropped
    d = D.load(g.segments)
    planned = [a for a in g.plan["actions"] if a["a"] == "session" and not a.get("cut")]
    assert len(d.sessions) == len(planned)
    days = (np.nanmax(d.sessions["start_s"]) - np.nanmin(d.sessions["start_s"])) / 86400
    assert days > 80
    assert d.corrupt == []


def test_a_real_engine_session_is_logged(tmp_path, mp):
    """The engine on the virtual board with the log hooks the app is to call: per fresh
    current sample, per loop pass (tick), per engine event; flushed when the output is off."""
    code = MP_SETUP + f"""
from msfw import board as boardmod
from msfw.hw import Hardware
from msfw import engine as E
from msfw.sampler import CH_SHUNT
import time
b = boardmod.load({str(ROOT / 'boards/virtual/board.json')!r}, {str(ROOT / 'boards/virtual/pins.csv')!r})
hw = Hardware(b)
f, bd = make_flash({str(tmp_path / 'img')!r})
log = L.LogStore("/fl/log"); log.open(time.time())
eng = E.Engine(hw, {{"program": "steady", "setpoint_ua": 200, "duration_s": 60, "cue_s": 5}})
prog = L.program_info("steady", eng.program)
now = hw.ticks_ms()
eng.start(now)
log.session_start(time.time(), now, prog, eng.setpoint_cu // 32, 60, 5, eng.level)
while eng.state != E.S_DONE:
    now = hw.ticks_ms()
    eng.tick(hw.ticks_us(), now)
    if eng.sampler.fresh == CH_SHUNT:
        log.sample(eng.sampler.i_cu)
    if eng._ev_n:
        for kind, value in eng.drain():
            if kind == E.E_CONTACT_LOST:
                log.event(L.EV_CONTACT_LOST, time.time(), now, value, 0)
            elif kind == E.E_CONTACT_OK:
                log.event(L.EV_CONTACT_OK, time.time(), now, value, 0)
            elif kind == E.E_END:
                log.session_end(time.time(), now, value, eng.reg.gain_q14)
    log.tick(now, eng.state, eng.sup.z_ref, eng.reg.target_cu)
    hw.sleep_us(eng.wait_us(hw.ticks_us()))
log.flush()
dump(log, {str(tmp_path)!r})
print("done")
"""
    # (The engine resumes about 25 s after this re-contact, on the virtual board as of now.)
    r = mp(code, scenario=[{"at_s": 10, "event": "lift"}, {"at_s": 12, "event": "contact", "area": 1.0}])
    assert r.returncode == 0 and "done" in r.stdout, r.stdout + r.stderr
    d = D.load(segments_in(tmp_path))
    s = d.sessions[0]
    assert s["end_reason"] == "auto_off" and 59 <= s["seconds"] <= 61
    m = d.summaries[d.summaries["state"] == "stimulating"]
    assert abs(np.median(m["i_mean_ua"]) - 200) < 5
    # The virtual skin: 2 kOhm in series with 30 kOhm || 0.1 uF, seen at 20 ms phases.
    assert 20000 < np.median(m["z_ohm"]) < 34000
    kinds = list(d.events["kind"])
    assert "contact_lost" in kinds and "contact_restored" in kinds
    assert (d.summaries["state"] == "paused").sum() >= 2


def test_a_session_queue_is_chunks_filled_without_allocating_and_flushed_in_order(tmp_path):
    """reserve() grows the RAM queue by chunks (4 KB first, then smaller: a boot-fragmented
    heap rarely has a session's 5-8 KB in one piece); records fill them in order under
    heap_lock, a partial flush stops mid-chunk and the rest follows, every record exactly
    once, in order; the chunks stay (the app keeps the queue for good)."""
    out = mp_run("""
import micropython
f, bd = make_flash("img")
s = L.LogStore("/fl/log", queue_bytes=L.QUEUE_IDLE); s.open(0)
s.flush()
cap = s.reserve(800)
sizes = [len(c) for c in s._chunks]
def fill(n):
    for k in range(n):
        s.event(L.EV_INTENSITY, 1000 + k, 0, k, 0)
micropython.heap_lock()
try:
    fill(250)
finally:
    micropython.heap_unlock()
chunks = len(s._chunks)
queued = s.pending()
dropped = s.dropped
w1 = s.flush(1500)
left = s.pending()
s.event(L.EV_INTENSITY, 5000, 0, 250, 0)  # written after the partial flush
w2 = s.flush()
print(cap, chunks, queued, dropped, w1, left, w2, s.pending(), len(s._chunks), max(sizes))
dump(s, ".")
""", tmp_path)
    cap, chunks, queued, dropped, w1, left, w2, pend, after, largest = map(int, out.split())
    assert cap >= 512 + 800 * 6 and chunks >= 3  # the idle chunk, 4 KB, and smaller ones
    assert largest == 4096  # the first session chunk is a pull's whole block (appops)
    assert dropped == 0 and queued > 4 * 1024  # the records span the chunks
    assert 0 < w1 <= 1500 and left == queued - w1 and pend == 0 and after == chunks
    d = D.load(segments_in(tmp_path))
    values = list(d.events[d.events["kind"] == "intensity"]["value"])
    assert values == list(range(251))  # all of them, once each, in order


def test_reserve_leaves_the_session_room_in_a_cut_up_heap(tmp_path):
    """reserve() takes the queue's chunks out of a heap that boot has cut into small
    pieces, but leaves the session its own room: eight 256-byte pieces (starting the
    output and a pause allocate about 1.9 KB in objects of up to a few hundred bytes; a
    pause that found none latched a heap fault). Only the chunks past that go back (one
    512-byte piece as the check, as before, gave all of them back here: no queue)."""
    out = mp_run("""
import gc
f, bd = make_flash("img")
s = L.LogStore("/fl/log", queue_bytes=L.QUEUE_IDLE); s.open(0)
s.flush()
free0 = cap = got = ok = k = 0  # globals made now: a new one later grows the dict
room = [None] * 8
# Cut the whole free heap into ~300-byte pieces pinned apart, then free 30 of them.
cut = [None] * 1500
pins = [None] * 1500
n = 0
gc.collect()
while n < 1500 and gc.mem_free() > 1024:
    cut[n] = bytearray(300)
    pins[n] = bytearray(8)
    n += 1
for k in range(30):
    cut[k * (n // 30)] = None
gc.collect()
free0 = gc.mem_free()
cap = s.reserve(1200)
got = len(s._chunks) - 1
gc.collect()
try:
    for k in range(8):
        room[k] = bytearray(256)
        ok += 1
except MemoryError:
    pass
print(n, free0, cap, got, ok)
""", tmp_path, heap="512k")
    n, free0, cap, got, ok = map(int, out.split())
    assert n < 1500 and 9 * 1024 < free0 < 13 * 1024  # a full heap, then 30 pieces freed
    assert got >= 5  # the queue took pieces...
    assert ok == 8  # ...and left the session its room

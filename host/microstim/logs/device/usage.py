# Days of device use, recorded by the firmware's own session log on the MicroPython unix
# port: the data behind the host tests, the report and the log benchmark.
#
#   micropython usage.py <device_dir> <firmware_dir> <plan.json> <image> <out_dir>
#
# The plan (made by microstim.logs.generate) lists boots, USB power, clock settings and
# sessions; each session is played second by second through LogStore's hot-path calls
# (sample per current measurement, tick per second, events) with the states, currents
# and impedances a session on the virtual board shows (soft start, pauses on lift-off,
# gel drying, intensity steps, a fault), and flushed when it ends, as the app does.
# A "cut" session loses power before its flush: its RAM records are lost, as on a board.
# Writes the segments to <out_dir>/<seg_id>.seg and prints one JSON line of figures.
import sys

_dev, _fw = sys.argv[1], sys.argv[2]
sys.path.insert(0, _dev)
import _vworld  # noqa: E402

sys.path.remove(_dev)
sys.path.insert(0, _fw)
import json  # noqa: E402
import os  # noqa: E402

from msfw import logstore as L  # noqa: E402

PLAN, IMAGE, OUT = sys.argv[3], sys.argv[4], sys.argv[5]
BS = 4096
NB = 1536 * 1024 // BS  # the virtual board's flash size
MNT = "/usageflash"
SAMPLES_PER_S = {"steady": 20, "lift": 1, "tone": 40, "fine": 60, "pulse3": 60}
S_RAMP, S_STIM, S_PAUSED = 1, 2, 3

with open(PLAN) as fp:
    plan = json.loads(fp.read())

f = open(IMAGE, "w+b")
for _ in range(NB):
    f.write(b"\xff" * BS)
bdev = _vworld.FileBlockDev(f, BS, NB)
os.VfsLfs2.mkfs(bdev)
os.mount(os.VfsLfs2(bdev), MNT)
base_free = os.statvfs(MNT)[3]

_rng = [plan.get("seed", 1) * 2654435761 & 0xFFFFFFFF or 1]


def rnd():
    """Uniform in [0, 1)."""
    x = _rng[0]
    x ^= (x << 13) & 0xFFFFFFFF
    x ^= x >> 17
    x ^= (x << 5) & 0xFFFFFFFF
    _rng[0] = x
    return x / 4294967296.0


def gauss():
    return (rnd() + rnd() + rnd() + rnd() - 2.0) * 1.732


ticks = [0]
store = L.LogStore(MNT + "/log")
store.open(0)
figures = {"sessions": 0, "records_lost_to_cuts": 0, "peak_pending": 0, "max_log_blocks": 0}


def boot(a):
    global store
    ticks[0] = 0
    store = L.LogStore(MNT + "/log")
    store.open(a["rtc"])
    store.boot(a["rtc"], a.get("cause", 1), "0.1.0", "virtual")
    store.flush()


def session(a):
    rtc0 = a["rtc"]
    prog = L.program_info(a["prog"], a["program"])
    sp_cu = a["setpoint"] * 32
    level = a["level"]
    now = ticks[0]
    store.session_start(rtc0, now, prog, a["setpoint"], a["dur"], 5, level)
    lifts = a.get("lifts", [])
    intens = a.get("intens", [])
    fault = a.get("fault")
    end_s = a.get("stop_s") or a["dur"]
    z0 = a["z0"]
    dry = a["dry"]
    noise_cu = a["noise_ua"] * 32
    per_s = SAMPLES_PER_S.get(a["prog"], 20)
    ramp_from = 0
    ramp_t = 0.0  # seconds into the current soft start; <0: not ramping
    paused_until = -1.0
    li = 0
    ii = 0
    state = S_RAMP
    target = 0
    reason = L.END_AUTO_OFF
    sec = 0
    while sec < end_s:
        t = float(sec)
        # Scripted happenings at this second.
        if li < len(lifts) and lifts[li][0] <= t:
            store.event(L.EV_CONTACT_LOST, rtc0 + sec, now, 1, 0)
            paused_until = lifts[li][0] + lifts[li][1] + 0.5
            state = S_PAUSED
            li += 1
        if ii < len(intens) and intens[ii][0] <= t:
            level = intens[ii][1]
            store.event(L.EV_INTENSITY, rtc0 + sec, now, level, 0)
            if state != S_PAUSED:
                ramp_from = target
                ramp_t = 0.0
                state = S_RAMP
            ii += 1
        if fault and fault[0] <= t:
            store.event(L.EV_FAULT, rtc0 + sec, now, fault[1], fault[2])
            reason = L.END_FAULT
            break
        if state == S_PAUSED and t >= paused_until:
            store.event(L.EV_CONTACT_OK, rtc0 + sec, now, 1, 0)
            ramp_from = 0
            ramp_t = 0.0
            state = S_RAMP
        goal = sp_cu * level // 5
        if state == S_RAMP:
            target = ramp_from + int((goal - ramp_from) * min(1.0, ramp_t / 1.5))
            ramp_t += 1.0
            if ramp_t > 1.5:
                state = S_STIM
        elif state == S_STIM:
            target = goal
        # The second's measurements, as the sampler would deliver them.
        z = z0 * (1.0 + (dry - 1.0) * t / a["dur"]) * (1.0 + 0.004 * gauss())
        if state == S_PAUSED:
            lifted = t < paused_until - 0.5
            for _ in range(5):
                store.sample(0 if lifted else int(320 + 6 * gauss()))
            z_ohm = 0
            tgt = 320
        else:
            for _ in range(per_s):
                v = int(target + noise_cu * gauss())
                store.sample(v if v > 0 else 0)
            z_ohm = int(z)
            tgt = target
        now = (now + 1000) & (L.TICKS_PERIOD - 1)
        store.tick(now, state, z_ohm, tgt)
        sec += 1
        p = store.pending()
        if p > figures["peak_pending"]:
            figures["peak_pending"] = p
    if a.get("stop_s"):
        reason = L.END_BUTTON
    store.session_end(rtc0 + sec, now, reason, 16000 + int(400 * gauss()))
    ticks[0] = (now + 5000) & (L.TICKS_PERIOD - 1)
    figures["sessions"] += 1
    if a.get("cut"):
        # The battery gave out before the output-off flush: what is in RAM is gone.
        figures["records_lost_to_cuts"] += store.pending()
        return
    if fault:
        store.event(L.EV_FAULT_CLEARED, rtc0 + sec + 20, ticks[0], 0, 0)
    store.flush()


for a in plan["actions"]:
    kind = a["a"]
    if kind == "boot":
        boot(a)
    elif kind == "session":
        session(a)
    elif kind == "usb":
        store.event(L.EV_USB_POWER, a["rtc"], ticks[0], a["v"], 0)
        store.flush()
    elif kind == "clock":
        store.event(L.EV_CLOCK_SET, a["new"], ticks[0], a["old"], a["new"])
        store.flush()
    elif kind == "cal":
        store.event(L.EV_CALIBRATION, a["rtc"], ticks[0], a["gain_q14"], a["offset_cu"])
        store.flush()
    used = base_free - os.statvfs(MNT)[3]
    if used > figures["max_log_blocks"]:
        figures["max_log_blocks"] = used

store.flush()
figures["segments"] = store.segments()
figures["flash_programmed"] = bdev.programmed
figures["erases"] = bdev.erases
figures["flash_stall_us"] = bdev.stall_us
for sid, size in store.segments():
    buf = bytearray(size)
    n = store.read_into(sid, 0, buf)
    with open(OUT + "/%08x.seg" % sid, "wb") as fo:  # noqa: UP031 (MicroPython)
        fo.write(memoryview(buf)[:n])
print(json.dumps(figures))

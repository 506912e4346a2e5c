# The session log's boot side: finding the segments, and repairing the newest if a power
# cut tore it. Loaded by LogStore.open() at boot and dropped after it (msfw.app's LAZY):
# a running device never needs it again. Every function takes the LogStore (st).
import os

from msfw.logflash import _create, scratch
from msfw.logstore import EV_LOG_RECOVERY, HDR, OVERHEAD, T_SEG, _u32, check_record, record_seq


def open_store(st, rtc_s=0):
    """Boot: find the segments, repair the newest if a power cut tore it, set the next
    sequence number. Reads the newest segment (at most seg_bytes). Returns the number
    of torn bytes dropped (also logged as a log_recovery event)."""
    st._rtc = rtc_s
    try:
        os.mkdir(st.root)
    except OSError:
        pass
    ids = []
    for name in os.listdir(st.root):
        if name.endswith(".tmp"):  # a repair that a power cut interrupted
            os.remove(st.root + "/" + name)
        elif name.endswith(".seg") and len(name) == 12:
            try:
                ids.append(int(name[:8], 16))
            except ValueError:
                pass
    ids.sort()
    st._ids = ids
    st._sizes = [os.stat(st._path(i))[6] for i in ids]
    if not ids:
        st.log_id = int.from_bytes(os.urandom(4), "little") & 0x3FFFFFFF
        _create(st, 1)
        return 0
    return _recover(st)


# Bytes of a segment in RAM at a time (boot scan, repair; a record is <= 266): the log's
# idle queue chunk (logflash.scratch), or a buffer of its own if records wait in it.
WINDOW = 1024
_MAXREC = OVERHEAD + 255


def _scan(st, seg_id):
    """(size, log id or -1, next seq or -1, end of the last valid record). Reads the
    segment through a small window: a segment is up to 16 KB, and at boot the heap has
    no room for it whole."""
    path = st._path(seg_id)
    size = os.stat(path)[6]
    buf = scratch(st) or bytearray(WINDOW)
    base = 0  # file offset of buf[0]
    n = 0  # bytes in buf
    pos = 0
    end_ok = 0
    log_id = -1
    nxt = -1
    with open(path, "rb") as f:
        while pos < size:
            if pos - base + _MAXREC > n and base + n < size:
                f.seek(pos)
                n = f.readinto(buf) or 0
                base = pos
            i = pos - base
            r = check_record(buf, i, n)
            if r <= 0:
                pos += 1  # resynchronise on the next valid record
                continue
            if buf[i + 1] == T_SEG:
                if pos == 0:
                    log_id = _u32(buf, i + HDR)
                if nxt < 0:
                    nxt = record_seq(buf, i)
            else:
                nxt = record_seq(buf, i) + 1
            pos += r
            end_ok = pos
    return size, log_id, nxt, end_ok


def _copy_prefix(st, src, dst, n):
    buf = scratch(st) or bytearray(WINDOW)
    mv = memoryview(buf)
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        while n > 0:
            k = fi.readinto(buf)
            if not k:
                break
            if k > n:
                k = n
            fo.write(mv[:k])
            n -= k
        fo.flush()


def _recover(st):
    seg_id = st._ids[-1]
    size, log_id, nxt, end_ok = _scan(st, seg_id)
    if log_id < 0 or nxt < 0:
        # No valid header: created, then cut before its header was committed.
        prev = _scan(st, st._ids[-2]) if len(st._ids) > 1 else None
        if prev is not None and prev[1] >= 0:
            log_id = prev[1]
            nxt = prev[2] if prev[2] >= 0 else 0
        elif log_id < 0:
            log_id = int.from_bytes(os.urandom(4), "little") & 0x3FFFFFFF
        if nxt < 0:
            nxt = 0
    st.log_id = log_id
    st.seq = nxt
    dropped = size - end_ok
    if end_ok == 0:
        # Nothing valid in it: start it afresh (its id is kept, never reused).
        st._ids.pop()
        st._sizes.pop()
        _create(st, seg_id, replace=True)
    elif dropped:
        # Torn tail: keep the valid prefix. Written aside, then renamed over the
        # segment: a power cut during the repair leaves the original (plus a .tmp
        # that the next boot removes), never half of each.
        tmp = st._path(seg_id)[:-4] + ".tmp"
        _copy_prefix(st, st._path(seg_id), tmp, end_ok)
        os.rename(tmp, st._path(seg_id))
        st._sizes[-1] = end_ok
    if dropped:
        st.recovered_bytes = dropped
        st.event(EV_LOG_RECOVERY, st._rtc, 0, dropped, seg_id)
    return dropped



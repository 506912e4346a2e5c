# The session log's flash side: finding and repairing segments at boot, writing the
# queued records, rotation, and reads for a pull. msfw.logstore (the recording side,
# which runs during a session) imports this on first use; the application drops it when
# a session starts, so a session's heap carries only the RAM queue and its encoder.
# Every function takes the LogStore (st) whose state it works on.
import binascii
import os

from msfw.logstore import (
    EPOCH_YEAR,
    EV_LOG_OVERFLOW,
    EV_LOG_RECOVERY,
    FORMAT_VERSION,
    HDR,
    MAGIC,
    OVERHEAD,
    RESERVE_BLOCKS,
    T_SEG,
    TAIL,
    _put_u32,
    _u32,
    blocks_for,
    check_record,
    record_seq,
)

# ---- boot (slow path) -----------------------------------------------------------


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


WINDOW = 1024  # bytes of a segment in RAM at a time (boot scan, repair): a record is <= 266
_MAXREC = OVERHEAD + 255


def _scan(st, seg_id):
    """(size, log id or -1, next seq or -1, end of the last valid record). Reads the
    segment through a small window: a segment is up to 16 KB, and at boot the heap has
    no room for it whole."""
    path = st._path(seg_id)
    size = os.stat(path)[6]
    buf = bytearray(WINDOW)
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


def _copy_prefix(src, dst, n):
    buf = bytearray(WINDOW)
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
        _copy_prefix(st._path(seg_id), tmp, end_ok)
        os.rename(tmp, st._path(seg_id))
        st._sizes[-1] = end_ok
    if dropped:
        st.recovered_bytes = dropped
        st.event(EV_LOG_RECOVERY, st._rtc, 0, dropped, seg_id)
    return dropped


def _create(st, seg_id, replace=False):
    """A new segment whose first record is its header; committed before use."""
    b = bytearray(OVERHEAD + 11)
    b[0] = MAGIC
    b[1] = T_SEG
    b[2] = 11
    _put_u32(b, 3, st.seq)  # the seq of the first record that will follow
    i = _put_u32(b, HDR, st.log_id)
    i = _put_u32(b, i, seg_id)
    b[i] = FORMAT_VERSION
    b[i + 1] = EPOCH_YEAR & 0xFF
    b[i + 2] = EPOCH_YEAR >> 8
    _put_u32(b, len(b) - TAIL, binascii.crc32(memoryview(b)[:len(b) - TAIL]) & 0xFFFFFFFF)
    path = st._path(seg_id)
    if replace:
        tmp = path[:-4] + ".tmp"
        with open(tmp, "wb") as f:
            f.write(b)
            f.flush()
        os.rename(tmp, path)
    else:
        with open(path, "wb") as f:
            f.write(b)
            f.flush()
    st._ids.append(seg_id)
    st._sizes.append(len(b))


def _cost_blocks(st):
    t = 0
    for s in st._sizes:
        t += blocks_for(s)
    return t


def _rotate(st):
    """The active segment is full: drop the oldest segments until a new full one fits
    in the budget, then start it."""
    new_id = st._ids[-1] + 1 if st._ids else 1
    seg_blocks = blocks_for(st.seg_bytes)
    while st._ids and _cost_blocks(st) + seg_blocks + RESERVE_BLOCKS > st.budget_blocks:
        os.remove(st._path(st._ids[0]))
        st._ids.pop(0)
        st._sizes.pop(0)
    _create(st, new_id)


def flush(st, max_bytes=-1):
    """Writes queued records, oldest first, each synced on its own (one LittleFS
    commit), until the queue is empty or the next record would pass max_bytes
    (-1: no limit). Returns the bytes written. A flash error stops it; the records
    stay queued and write_error holds the errno."""
    st._fill[st._ci] = st._qn
    chunks = st._chunks
    fill = st._fill
    wrote = 0
    done = 0  # chunks written out whole
    pos = 0  # bytes of chunk `done` written
    f = None
    full = False  # max_bytes reached
    try:
        while done <= st._ci and not full:
            q = chunks[done]
            n = fill[done]
            mv = memoryview(q)
            while pos < n:
                ln = OVERHEAD + q[pos + 2]
                if 0 <= max_bytes < wrote + ln:
                    full = True
                    break
                if not st._ids or st._sizes[-1] + ln > st.seg_bytes:
                    if f is not None:
                        f.close()
                        f = None
                    _rotate(st)
                seq = st.seq
                _put_u32(q, pos + 3, seq)
                _put_u32(q, pos + ln - TAIL, binascii.crc32(mv[pos:pos + ln - TAIL]) & 0xFFFFFFFF)
                if f is None:
                    f = open(st._path(st._ids[-1]), "ab")
                f.write(mv[pos:pos + ln])
                f.flush()  # LittleFS commits the file here: the record is durable
                st.seq = seq + 1
                st._sizes[-1] += ln
                pos += ln
                wrote += ln
            if not full:
                done += 1
                pos = 0
        st.write_error = 0
    except OSError as e:
        st.write_error = e.args[0] if e.args else -1
    finally:
        if f is not None:
            try:
                f.close()
            except OSError:
                pass
        _compact(st, done, pos)
    if st.dropped and st._qn + OVERHEAD + 20 <= st._qcap and not st.write_error:
        d = st.dropped
        st.dropped = 0
        st.event(EV_LOG_OVERFLOW, st._rtc, 0, d, 0)
    return wrote


def _compact(st, done, pos):
    """After a flush: the chunks written out whole go to the back, empty; the partly
    written one moves its rest to its front (in place: the heap may have no room)."""
    chunks = st._chunks
    fill = st._fill
    if done > st._ci:  # everything went
        for k in range(st._ci + 1):
            fill[k] = 0
        st._ci = 0
    else:
        if pos:
            q = chunks[done]
            mv = memoryview(q)
            n = fill[done]
            k = 0
            while k < n - pos:  # slices no longer than the shift never overlap
                c = n - pos - k
                if c > pos:
                    c = pos
                mv[k:k + c] = mv[k + pos:k + pos + c]
                k += c
            fill[done] = n - pos
        if done:
            for k in range(done):
                fill[k] = 0
            st._chunks = chunks[done:] + chunks[:done]
            st._fill = fill[done:] + fill[:done]
            st._ci -= done
    st._q = st._chunks[st._ci]
    st._qcap = len(st._q)
    st._qn = st._fill[st._ci]


# ---- reading, for a pull -------------------------------------------------------


def read_into(st, seg_id, offset, buf):
    """Reads segment bytes from offset into buf; returns how many (0 at its end)."""
    with open(st._path(seg_id), "rb") as f:
        f.seek(offset)
        n = f.readinto(buf)
    return n or 0

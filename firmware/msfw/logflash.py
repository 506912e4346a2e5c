# The session log's flash side: writing the queued records, rotation, and reads for a
# pull (finding and repairing the segments at boot is msfw.logopen's). msfw.logstore (the
# recording side, which runs during a session) imports this on first use; it stays
# resident (every session ends with a flush). Every function takes the LogStore (st).
import binascii
import os

from msfw.logstore import (
    EPOCH_YEAR,
    EV_LOG_OVERFLOW,
    FORMAT_VERSION,
    HDR,
    MAGIC,
    OVERHEAD,
    RESERVE_BLOCKS,
    T_SEG,
    TAIL,
    _put_u32,
    blocks_for,
)


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


def scratch(st):
    """The RAM queue's largest chunk while nothing is queued (else None): the buffer the
    boot scan and a pull read segments through, so they need no heap of their own. (A
    chunk holds at least a whole record.)"""
    if st.pending() or st.in_session:
        return None
    b = st._q
    for c in st._chunks:
        if len(c) > len(b):
            b = c
    return b


def read_into(st, seg_id, offset, buf):
    """Reads segment bytes from offset into buf; returns how many (0 at its end)."""
    with open(st._path(seg_id), "rb") as f:
        f.seek(offset)
        n = f.readinto(buf)
    return n or 0

"""`microstim logs pull`: fetch the records the host does not have yet, over the device
protocol, into the per-device archive (microstim.logs.archive).

Only bytes past the archive's high-water mark are requested. Requests are pipelined
(several `log_read`s in flight) so the link never idles between blocks, and every block
is verified and stored before the mark moves: a pull cut short resumes exactly where it
stopped and never stores a record twice (sequence numbers; see logs/archive.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from .device import HELLO_TIMEOUT, Device, RequestError
from .errors import DeviceError

CHUNK = 4096
WINDOW = 3  # log_read requests in flight


@dataclass
class PullResult:
    uid: str
    archive: str
    records: int = 0
    duplicates: int = 0
    bytes: int = 0
    seconds: float = 0.0  # port open to the last block stored
    transfer_s: float = 0.0  # first log_read sent to the last block stored
    corrupt: list[dict] = field(default_factory=list)
    missing: list[list[int]] = field(default_factory=list)
    lost_segments: list[int] = field(default_factory=list)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _hello_and_list(dev: Device) -> tuple[dict, dict]:
    """`hello` and `log_list` in one exchange (the list does not depend on the hello), so
    the first log bytes are asked for one round trip after the port opens. The archive
    code (which compiles the firmware's logstore.py) is imported while the device answers.
    A board that does not answer at once gets Device.connect()'s retry and messages."""
    dev.ser.reset_input_buffer()
    dev.buf.clear()
    h = dev.send("hello")
    ls = dev.send("log_list")
    from .logs import archive  # noqa: F401  (imported while the answers travel)

    try:
        try:
            dev.info = dev.receive(h, "hello", timeout=HELLO_TIMEOUT)[0]
        except DeviceError:
            dev.connect()  # says why if the firmware is not there; retries a booting board
            return dev.info, dev.request("log_list", timeout=10)
        return dev.info, dev.receive(ls, "log_list", timeout=10)[0]
    except RequestError as e:
        raise DeviceError(f"{dev.port}: {e}") from None


def pull(port: str | None = None, root: str | Path | None = None, *, progress: bool | None = None,
         stop_after_bytes: int | None = None, chunk: int = CHUNK) -> PullResult:
    """Pull new records; `stop_after_bytes` cuts the pull short (tests of resumption)."""
    from .progress import byte_progress

    t0 = time.monotonic()
    with Device(port) as dev:
        hi, lst = _hello_and_list(dev)
        uid = hi.get("uid")
        if not uid:
            raise DeviceError(f"{dev.port}: the device did not say its unique id")
        from .logs.archive import Archive, default_root, ingest

        arch = Archive(root or default_root(), uid)
        res = PullResult(uid, str(arch.dir))
        log_id, segs = lst["log_id"], [tuple(s) for s in lst["segments"]]
        hwm_seg, hwm_off = arch.resume_point(log_id)
        if segs and hwm_seg and segs[0][0] > hwm_seg:
            # Rotated out on the device before they were pulled: say so, never hide it.
            res.lost_segments = list(range(hwm_seg, segs[0][0]))
        plan = [(sid, hwm_off if sid == hwm_seg else 0, size) for sid, size in segs if sid >= hwm_seg]
        last_sid = segs[-1][0] if segs else None
        total = sum(max(0, size - start) for _, start, size in plan)
        reads = [(sid, off, min(chunk, size - off), size) for sid, start, size in plan
                 for off in range(start, size, chunk)]
        with byte_progress(total, "pull", progress) as advance:
            leftover: dict[int, tuple[int, bytes]] = {}
            inflight: list[tuple[int, tuple]] = []
            i = 0
            t_first = time.monotonic()
            while i < len(reads) or inflight:
                while i < len(reads) and len(inflight) < WINDOW:
                    sid, off, n, size = reads[i]
                    inflight.append((dev.send("log_read", {"seg": sid, "off": off, "n": n}), reads[i]))
                    i += 1
                rid, (sid, off, n, size) = inflight.pop(0)
                result, data = dev.receive(rid, "log_read", timeout=10)
                base, prev = leftover.get(sid, (off, b""))
                buf = prev + data
                sealed = sid != last_sid and off + len(data) >= size
                r = ingest(arch, sid, base, buf, log_id=log_id, sealed=sealed)
                res.records += r.accepted
                res.duplicates += r.duplicates
                res.corrupt += [c.__dict__ if hasattr(c, "__dict__") else c for c in r.corrupt]
                res.missing += [list(m) for m in r.missing]
                keep_from = max(r.resume[1], base) if r.resume[0] == sid else base + len(buf)
                leftover[sid] = (keep_from, buf[keep_from - base:])
                res.bytes += len(data)
                advance(len(data))
                if stop_after_bytes is not None and res.bytes >= stop_after_bytes:
                    for rid2, _ in inflight:  # drain what is already on its way
                        dev.receive(rid2, "log_read", timeout=10)
                    break
            if reads:
                res.transfer_s = time.monotonic() - t_first
    res.seconds = time.monotonic() - t0
    return res

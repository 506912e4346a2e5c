"""The device's log format, decoded on the host (CPython).

The constants and the record check come from the firmware's own module
(firmware/msfw/logstore.py, imported here under CPython), so the two sides cannot drift;
firmware/LOGFORMAT.md describes the bytes.
"""

from __future__ import annotations

import importlib.util
import marshal
import os
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from .. import paths


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "microstim" / "fwcode"


def _firmware_code(path: Path):
    """The firmware module's code object, compiled once per source text and Python version
    and kept in the user's cache (never next to the firmware, whose folder is deployed),
    as Python keeps a .pyc: compiling logstore.py costs a command start about 17 ms."""
    src = path.read_bytes()
    # Keyed like a .pyc (interpreter's magic number), by the source's length and CRC-32
    # instead of its mtime, so an edited firmware file is never served stale code.
    key = f"{importlib.util.MAGIC_NUMBER.hex()}-{len(src)}-{zlib.crc32(src):08x}"
    cached = _cache_dir() / f"{path.stem}-{key}.code"
    try:
        return marshal.loads(cached.read_bytes())
    except (OSError, ValueError, EOFError, TypeError):
        pass
    code = compile(src, str(path), "exec")
    if sys.dont_write_bytecode:  # PYTHONDONTWRITEBYTECODE / -B: no caches of compiled code
        return code
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(marshal.dumps(code))
        os.replace(tmp, cached)
    except OSError:
        pass  # a read-only home: compile every time
    return code


def _load_firmware_module():
    path = paths.firmware_dir() / "msfw" / "logstore.py"
    spec = importlib.util.spec_from_file_location("microstim._fw_logstore", path)
    mod = importlib.util.module_from_spec(spec)
    exec(_firmware_code(path), mod.__dict__)
    return mod


fw = _load_firmware_module()


def _firmware_tuple(module: str, name: str) -> tuple:
    """A tuple literal from a firmware module that only MicroPython can import."""
    import ast

    src = (paths.firmware_dir() / "msfw" / module).read_text()
    for node in ast.parse(src).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    raise LookupError(f"{name} not found in firmware/msfw/{module}")


# Names of faults, contact reasons and engine states, read from the firmware's sources
# when first asked for (module __getattr__): a pull only stores records and never needs them.
_TUPLES = {"FAULT_NAMES": "supervisor.py", "CONTACT_NAMES": "supervisor.py", "STATE_NAMES": "engine.py"}


def __getattr__(name: str):
    module = _TUPLES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = globals()[name] = _firmware_tuple(module, name)
    return value


def _names(name: str) -> tuple:
    return globals().get(name) or __getattr__(name)


RESET_CAUSES = {1: "power_on", 2: "hard", 3: "watchdog", 4: "deepsleep", 5: "soft"}
EPOCH_2000_UNIX = 946684800
VALID_AFTER_UNIX = 1577836800  # 2020-01-01: an RTC before this was never set


@dataclass
class Record:
    offset: int  # in its segment
    seq: int
    type: int
    payload: bytes
    raw: bytes

    @property
    def type_name(self) -> str:
        t = fw.TYPE_NAMES
        return t[self.type] if self.type < len(t) else f"type{self.type}"


@dataclass
class Corruption:
    """Bytes that do not form a valid record: never accepted, always reported."""

    seg_id: int
    offset: int
    length: int
    reason: str

    def __str__(self) -> str:
        return f"segment {self.seg_id} bytes {self.offset}..{self.offset + self.length}: {self.reason}"


@dataclass
class Scan:
    records: list[Record] = field(default_factory=list)
    corrupt: list[Corruption] = field(default_factory=list)
    end: int = 0  # offset after the last whole, verified record or corrupt run
    incomplete: int = 0  # bytes at the end that may be the start of a record not yet read


def scan(data: bytes, *, seg_id: int = 0, base: int = 0, final: bool = False) -> Scan:
    """Every valid record in data (segment bytes starting at offset `base`).

    A record that fails its checksum, or bytes that are no record, are reported as
    Corruption and skipped up to the next valid record. Bytes at the end that could be
    the start of a record still being transferred are left (`incomplete`), unless
    `final` (the data reaches the end of a sealed segment): then they are corruption."""
    out = Scan()
    n = len(data)
    pos = 0
    mv = memoryview(data)
    while pos < n:
        k = fw.check_record(data, pos, n)
        if k > 0:
            out.records.append(Record(base + pos, fw.record_seq(data, pos), data[pos + 1],
                                      bytes(mv[pos + fw.HDR:pos + k - fw.TAIL]), bytes(mv[pos:pos + k])))
            pos += k
            out.end = pos
            continue
        if k == 0 and not final:
            # Runs past the data: the rest of it has not been read yet.
            out.incomplete = n - pos
            break
        bad = pos
        pos += 1
        while pos < n and fw.check_record(data, pos, n) < 0:
            pos += 1  # resynchronise on the next record (or the start of an incomplete one)
        if k == 0:
            reason = "truncated record"
        elif data[bad] == fw.MAGIC:
            reason = "bad checksum"
        else:
            reason = "not a record"
        out.corrupt.append(Corruption(seg_id, base + bad, pos - bad, reason))
        out.end = pos
    return out


# ---- payloads --------------------------------------------------------------------------
def _uv(b: bytes, i: int) -> tuple[int, int]:
    v = 0
    shift = 0
    while True:
        x = b[i]
        i += 1
        v |= (x & 0x7F) << shift
        shift += 7
        if not x & 0x80:
            return v, i


def _sv(b: bytes, i: int) -> tuple[int, int]:
    x = b[i]
    i += 1
    neg = x & 1
    v = (x >> 1) & 0x3F
    shift = 6
    while x & 0x80:
        x = b[i]
        i += 1
        v |= (x & 0x7F) << shift
        shift += 7
    return (-v if neg else v), i


def _u32(b: bytes, i: int) -> int:
    return int.from_bytes(b[i:i + 4], "little")


def decode(rec: Record) -> dict:
    """The record's fields as a dict (raises ValueError on a malformed payload)."""
    p = rec.payload
    try:
        return _DECODERS.get(rec.type, _unknown)(p)
    except IndexError as e:
        raise ValueError(f"record seq {rec.seq}: payload too short for a {rec.type_name}") from e


def _unknown(p):
    return {}


def _seg(p):
    return {"log_id": _u32(p, 0), "seg_id": _u32(p, 4), "version": p[8],
            "epoch_year": p[9] | (p[10] << 8)}


def _boot(p):
    i = 4
    cause = p[i]
    epoch = p[i + 1] | (p[i + 2] << 8)
    i += 3
    strs = []
    for _ in range(2):
        n = p[i]
        strs.append(p[i + 1:i + 1 + n].decode("ascii", "replace"))
        i += 1 + n
    return {"rtc_s": _u32(p, 0), "reset_cause": cause, "epoch_year": epoch,
            "version": strs[0], "board": strs[1]}


def _start(p):
    d = {"rtc_s": _u32(p, 0), "program_code": p[4]}
    i = 5
    for k in ("freq_mhz", "phase_us", "gap_us", "train_n", "train_on_ms", "train_off_ms",
              "setpoint_ua", "duration_s", "cue_s"):
        d[k], i = _uv(p, i)
    d["level"] = p[i]
    names = fw.PROGRAM_NAMES
    d["program"] = names[d["program_code"]] if d["program_code"] < len(names) else "custom"
    return d


def _summary(p):
    back, i = _uv(p, 0)
    t0, i = _uv(p, i)
    cnt = p[i]
    i += 1
    rows = []
    mean = z = tgt = lo = hi = 0
    for k in range(cnt):
        flags = p[i]
        i += 1
        has = not flags & fw.SF_NO_SAMPLES
        if has and not flags & fw.SF_SAME_I:
            d, i = _sv(p, i)
            mean += d
            lo, i = _uv(p, i)
            hi, i = _uv(p, i)
        if not flags & fw.SF_SAME_Z:
            d, i = _sv(p, i)
            z += d
        if flags & fw.SF_TARGET:
            d, i = _sv(p, i)
            tgt += d
        rows.append((t0 + k, flags & 7, has, mean if has else 0, mean - lo if has else 0,
                     mean + hi if has else 0, z, tgt))
    if i != len(p):
        raise ValueError("summary block: trailing bytes")
    return {"back": back, "t0_s": t0, "rows": rows}


def _end(p):
    d = {"reason_code": p[0], "rtc_s": _u32(p, 1)}
    i = 5
    for k in ("duration_ms", "seconds", "gain_q14"):
        d[k], i = _uv(p, i)
    names = fw.END_NAMES
    d["reason"] = names[d["reason_code"]] if d["reason_code"] < len(names) else f"end{d['reason_code']}"
    return d


def _event(p):
    kind = p[0]
    rtc = _u32(p, 1)
    t, i = _uv(p, 5)
    v, i = _sv(p, i)
    v2, i = _sv(p, i)
    names = fw.EVENT_NAMES
    return {"kind_code": kind, "kind": names[kind] if kind < len(names) else f"event{kind}",
            "rtc_s": rtc, "t_ms": t - 1 if t else -1, "value": v, "value2": v2}


_DECODERS = {fw.T_SEG: _seg, fw.T_BOOT: _boot, fw.T_START: _start, fw.T_SUMMARY: _summary,
             fw.T_END: _end, fw.T_EVENT: _event}


def event_detail(kind_code: int, value: int) -> str:
    """The name behind an event's value (a fault, a contact reason), where it has one."""
    if kind_code in (fw.EV_FAULT, fw.EV_REFUSED):
        names = _names("FAULT_NAMES")
        return names[value] if 0 <= value < len(names) else str(value)
    if kind_code in (fw.EV_CONTACT_LOST, fw.EV_CONTACT_OK):
        names = _names("CONTACT_NAMES")
        return names[value] if 0 <= value < len(names) else str(value)
    return ""

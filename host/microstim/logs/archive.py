"""The host's archive of one device's logs, and ingest of pulled bytes into it.

Layout (a directory per device unique id, then one per device log, "epoch", which a
reflash or a wiped flash starts afresh with a new log id):

    <root>/<uid>/state.json                       high-water marks, written atomically
    <root>/<uid>/<log_id:08x>/<seg_id:08x>.seg    the device's verified records, raw
    <root>/<uid>/corruption.jsonl                 every corrupt byte range ever met

Only whole records whose CRC32 verifies are stored; each sequence number is stored once
(a record at or below the epoch's last stored seq is a duplicate), so a pull that is
interrupted and resumed from resume_point() stores every record exactly once. Bytes
that are no valid record are never stored and always reported.

Crash safety: segment files are appended and fsynced first, then state.json (which
records each file's length) replaces the old one atomically; on opening, any file
longer than state.json says (appended before a crash) is cut back.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from . import format as F


def default_root() -> Path:
    env = os.environ.get("MICROSTIM_ARCHIVE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "microstim" / "archive"


def uid_hex(unique_id: bytes | str) -> str:
    """machine.unique_id() (bytes) as the archive's directory name."""
    return unique_id if isinstance(unique_id, str) else bytes(unique_id).hex()


@dataclass
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    corrupt: list[F.Corruption] = field(default_factory=list)
    missing: list[tuple[int, int]] = field(default_factory=list)  # seq ranges never seen
    resume: tuple[int, int] = (0, 0)  # where the next pull of this log starts
    incomplete: int = 0  # bytes left at the end for the next pull

    def __int__(self) -> int:
        return self.accepted


class Archive:
    def __init__(self, root: str | Path, uid: str | bytes):
        self.uid = uid_hex(uid)
        self.dir = Path(root) / self.uid
        self.dir.mkdir(parents=True, exist_ok=True)
        self._state_path = self.dir / "state.json"
        self.state = {"uid": self.uid, "current": None, "order": [], "epochs": {}}
        if self._state_path.exists():
            self.state = json.loads(self._state_path.read_text())
        self._repair()

    # ---- state ---------------------------------------------------------------------
    def _repair(self) -> None:
        for key, ep in self.state["epochs"].items():
            for sid, length in ep["files"].items():
                p = self._seg_path(key, int(sid))
                if p.exists() and p.stat().st_size > length:
                    with open(p, "r+b") as f:
                        f.truncate(length)

    def _save(self) -> None:
        tmp = self._state_path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write(json.dumps(self.state, indent=1))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._state_path)

    def _seg_path(self, key: str, seg_id: int) -> Path:
        return self.dir / key / f"{seg_id:08x}.seg"

    def _epoch(self, log_id: int) -> tuple[str, dict]:
        key = f"{log_id:08x}"
        eps = self.state["epochs"]
        if key not in eps:
            eps[key] = {"log_id": log_id, "hwm": [0, 0], "last_seq": -1, "files": {}, "tail": None}
            self.state["order"].append(key)
            (self.dir / key).mkdir(exist_ok=True)
        self.state["current"] = key
        return key, eps[key]

    @property
    def log_id(self) -> int | None:
        cur = self.state["current"]
        return None if cur is None else self.state["epochs"][cur]["log_id"]

    def resume_point(self, log_id: int | None = None) -> tuple[int, int]:
        """(seg_id, offset) of the first byte of that device log not yet archived: a pull
        reads every listed segment with id >= seg_id, from offset in that one and from 0
        in later ones. (0, 0) for a log never seen."""
        key = f"{log_id:08x}" if log_id is not None else self.state["current"]
        ep = self.state["epochs"].get(key) if key else None
        return tuple(ep["hwm"]) if ep else (0, 0)

    def segment_files(self) -> list[tuple[str, int, Path]]:
        """(epoch key, seg_id, path) of every archived segment, in the order to read."""
        out = []
        for key in self.state["order"]:
            for sid in sorted(int(s) for s in self.state["epochs"][key]["files"]):
                out.append((key, sid, self._seg_path(key, sid)))
        return out

    def corruption_log(self) -> list[dict]:
        p = self.dir / "corruption.jsonl"
        if not p.exists():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]

    def _report(self, key: str, items: list[F.Corruption]) -> None:
        if not items:
            return
        seen = {(c["log"], c["seg_id"], c["offset"]) for c in self.corruption_log()}
        with open(self.dir / "corruption.jsonl", "a") as f:
            for c in items:
                if (key, c.seg_id, c.offset) not in seen:
                    f.write(json.dumps({"log": key, "seg_id": c.seg_id, "offset": c.offset,
                                        "length": c.length, "reason": c.reason}) + "\n")


def ingest(archive: Archive, seg_id: int, offset: int, data: bytes, *, log_id: int | None = None,
           sealed: bool = False) -> IngestResult:
    """Verifies and stores the bytes [offset, offset + len(data)) of device segment seg_id.

    log_id: the device log they belong to (a segment's header at offset 0 says it too;
    default: the log this archive last ingested). sealed: the segment is complete on the
    device (not the newest), so bytes at its end that are no whole record are corruption
    rather than a record still to come. Returns what was accepted and what was reported."""
    res = IngestResult()
    data = bytes(data)
    sc = F.scan(data, seg_id=seg_id, base=offset, final=sealed)
    header_log = None
    if sc.records and sc.records[0].type == F.fw.T_SEG and sc.records[0].offset == 0:
        hdr = F.decode(sc.records[0])
        header_log = hdr["log_id"]
        if hdr["seg_id"] != seg_id:
            sc.corrupt.append(F.Corruption(seg_id, 0, len(sc.records[0].raw),
                                           f"segment header says segment {hdr['seg_id']}"))
    if header_log is not None and log_id is not None and header_log != log_id:
        raise ValueError(f"segment {seg_id} belongs to log {header_log:08x}, not {log_id:08x}")
    lid = header_log if header_log is not None else log_id if log_id is not None else archive.log_id
    if lid is None:
        raise ValueError("unknown device log: pull a segment from offset 0 first, or pass log_id")
    key, ep = archive._epoch(lid)
    hwm_seg, hwm_off = ep["hwm"]
    if seg_id < hwm_seg or (seg_id == hwm_seg and offset + len(data) <= hwm_off and data):
        res.duplicates = sum(1 for r in sc.records if r.type != F.fw.T_SEG)
        res.resume = (hwm_seg, hwm_off)
        return res
    tail = ep.get("tail")
    if tail and seg_id > tail[0]:
        # The earlier segment is sealed now and its leftover bytes never became a record.
        sc.corrupt.insert(0, F.Corruption(tail[0], tail[1], tail[2], "segment ended inside a record"))
        ep["tail"] = None
    if seg_id == hwm_seg and offset > hwm_off:
        sc.corrupt.insert(0, F.Corruption(seg_id, hwm_off, offset - hwm_off, "bytes never pulled"))
    if seg_id == hwm_seg and offset < hwm_off:
        # Re-sent bytes before the mark were verified already (and may start mid-record).
        sc.corrupt = [c for c in sc.corrupt if c.offset + c.length > hwm_off]
    out = bytearray()
    path = archive._seg_path(key, seg_id)
    have = ep["files"].get(str(seg_id), 0)
    last = ep["last_seq"]
    for r in sc.records:
        if r.offset + len(r.raw) <= hwm_off and seg_id == hwm_seg:
            res.duplicates += r.type != F.fw.T_SEG
            continue
        if r.type == F.fw.T_SEG:
            if have == 0 and not out:
                out += r.raw
            continue
        if r.seq <= last:
            res.duplicates += 1
            continue
        if last >= 0 and r.seq > last + 1:
            res.missing.append((last + 1, r.seq - 1))
        out += r.raw
        last = r.seq
        res.accepted += 1
    if out:
        with open(path, "ab") as f:
            f.seek(0, 2)
            f.write(out)
            f.flush()
            os.fsync(f.fileno())
        ep["files"][str(seg_id)] = have + len(out)
    elif str(seg_id) not in ep["files"]:
        ep["files"][str(seg_id)] = have
        path.touch()
    ep["last_seq"] = last
    if res.missing:
        ep.setdefault("missing", []).extend([list(m) for m in res.missing])
    end = offset + sc.end
    if end < hwm_off and seg_id == hwm_seg:
        end = hwm_off
    ep["hwm"] = [seg_id, end]
    res.incomplete = sc.incomplete
    ep["tail"] = [seg_id, end, sc.incomplete] if sc.incomplete else None
    res.corrupt = sc.corrupt
    res.resume = (seg_id, end)
    archive._report(key, sc.corrupt)
    archive._save()
    return res


def ingest_segments(archive: Archive, segments: dict[int, bytes], log_id: int | None = None) -> IngestResult:
    """Every segment of a device (as generate() or a full copy returns them), the newest
    unsealed. Convenience for tests and for importing copied files."""
    total = IngestResult()
    ids = sorted(segments)
    if log_id is None and ids:
        sc = F.scan(segments[ids[0]][:64])
        if sc.records and sc.records[0].type == F.fw.T_SEG:
            log_id = F.decode(sc.records[0])["log_id"]
    for k, sid in enumerate(ids):
        start_seg, start_off = archive.resume_point(log_id)
        if sid < start_seg:
            continue
        off = start_off if sid == start_seg else 0
        r = ingest(archive, sid, off, segments[sid][off:], log_id=log_id, sealed=k < len(ids) - 1)
        total.accepted += r.accepted
        total.duplicates += r.duplicates
        total.corrupt += r.corrupt
        total.missing += r.missing
        total.resume = r.resume
        total.incomplete = r.incomplete
    return total

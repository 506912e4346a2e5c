"""Archived logs as numpy structured arrays: sessions, 1 Hz summaries, events, boots.

Times are Unix seconds (float, NaN where the device clock was never set). The device
stamps records with its RTC (seconds since its port's epoch: 2000 on an ESP32); an RTC
that was not set yet (after a power loss) is corrected when a clock_set event later in
the same boot tells by how much it was off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import format as F
from .archive import Archive

fw = F.fw

SESSION_DTYPE = np.dtype([
    ("seq", "i8"), ("log_id", "u4"), ("start_s", "f8"), ("program", "U8"), ("freq_hz", "f4"),
    ("phase_us", "u4"), ("setpoint_ua", "u2"), ("duration_cfg_s", "u4"), ("level", "u1"),
    ("end_reason", "U10"), ("duration_s", "f4"), ("seconds", "u4"), ("stim_s", "u4"),
    ("paused_s", "u4"), ("mean_ua", "f4"), ("z_median_ohm", "f4"), ("contact_losses", "u2"),
    ("intensity_changes", "u2"), ("faults", "u2"), ("gain", "f4"),
])
SUMMARY_DTYPE = np.dtype([
    ("session_seq", "i8"), ("t_s", "u4"), ("time_s", "f8"), ("state", "U11"),
    ("has_current", "?"), ("i_mean_ua", "f4"), ("i_min_ua", "f4"), ("i_max_ua", "f4"),
    ("target_ua", "f4"), ("z_ohm", "f4"),
])
EVENT_DTYPE = np.dtype([
    ("seq", "i8"), ("time_s", "f8"), ("session_seq", "i8"), ("t_ms", "i8"), ("kind", "U16"),
    ("detail", "U16"), ("value", "i8"), ("value2", "i8"),
])
BOOT_DTYPE = np.dtype([
    ("seq", "i8"), ("time_s", "f8"), ("reset_cause", "U10"), ("version", "U16"), ("board", "U16"),
])


@dataclass
class LogData:
    sessions: np.ndarray
    summaries: np.ndarray
    events: np.ndarray
    boots: np.ndarray
    corrupt: list = field(default_factory=list)
    missing: list = field(default_factory=list)

    def session_summaries(self, seq: int) -> np.ndarray:
        return self.summaries[self.summaries["session_seq"] == seq]

    def session_events(self, seq: int) -> np.ndarray:
        return self.events[self.events["session_seq"] == seq]


def _records_of(segments: list[tuple[str, int, bytes]]):
    """Verified records with their epoch key, and corruption found re-reading them."""
    recs, corrupt = [], []
    for key, sid, data in segments:
        sc = F.scan(data, seg_id=sid, final=True)
        corrupt += sc.corrupt
        for r in sc.records:
            recs.append((key, r))
    return recs, corrupt


def load(source: Archive | str | Path | dict) -> LogData:
    """An Archive (or its directory), or {seg_id: bytes} of one device log."""
    if isinstance(source, dict):
        segs = [("", sid, bytes(d)) for sid, d in sorted(source.items())]
        missing = []
        reported = []
    else:
        arch = source if isinstance(source, Archive) else Archive(Path(source).parent, Path(source).name)
        segs = [(key, sid, p.read_bytes()) for key, sid, p in arch.segment_files()]
        missing = [m for ep in arch.state["epochs"].values() for m in ep.get("missing", [])]
        reported = [F.Corruption(c["seg_id"], c["offset"], c["length"], c["reason"])
                    for c in arch.corruption_log()]
    recs, corrupt = _records_of(segs)
    return _build(recs, corrupt + reported, missing)


def _build(recs, corrupt, missing) -> LogData:
    # Decode, in order: epochs as archived, records by seq within each.
    rows = []
    epoch_off = 0
    for key, r in sorted(recs, key=lambda kr: (kr[0], kr[1].seq if kr[1].type != fw.T_SEG else kr[1].seq - 0.5)):
        try:
            d = F.decode(r)
        except ValueError as e:
            corrupt.append(F.Corruption(-1, r.offset, len(r.raw), str(e)))
            continue
        if r.type in (fw.T_SEG, fw.T_BOOT):
            epoch_off = F.EPOCH_2000_UNIX if d["epoch_year"] == 2000 else 0
        rows.append((key, r, d, epoch_off))
    # Clock corrections: within a boot, records before a clock_set with an unset RTC.
    boot_no = 0
    groups = []
    shift: dict[int, int] = {}
    for _key, r, d, _off in rows:
        if r.type == fw.T_BOOT:
            boot_no += 1
        groups.append(boot_no)
        if r.type == fw.T_EVENT and d["kind_code"] == fw.EV_CLOCK_SET and boot_no not in shift:
            shift[boot_no] = (d["value2"] - d["value"], d["value"])

    def unix(rtc, grp, off):
        if grp in shift and rtc <= shift[grp][1]:
            rtc += shift[grp][0]
        t = rtc + off
        return float(t) if t >= F.VALID_AFTER_UNIX else float("nan")

    sessions, summaries, events, boots = [], [], [], []
    open_s = None  # dict of the session being read
    by_seq = {}
    for (key, r, d, off), grp in zip(rows, groups, strict=True):
        if r.type == fw.T_BOOT:
            if open_s is not None:
                open_s["end_reason"] = "reset"
                open_s = None
            boots.append((r.seq, unix(d["rtc_s"], grp, off), F.RESET_CAUSES.get(d["reset_cause"], str(d["reset_cause"])),
                          d["version"], d["board"]))
        elif r.type == fw.T_START:
            s = {"seq": r.seq, "log_id": int(key, 16) if key else 0, "start_s": unix(d["rtc_s"], grp, off),
                 "program": d["program"], "freq_hz": d["freq_mhz"] / 1000, "phase_us": d["phase_us"],
                 "setpoint_ua": d["setpoint_ua"], "duration_cfg_s": d["duration_s"], "level": d["level"],
                 "end_reason": "open", "duration_s": np.nan, "gain": np.nan, "events": []}
            sessions.append(s)
            by_seq[r.seq] = s
            open_s = s
        elif r.type == fw.T_SUMMARY:
            sseq = r.seq - d["back"]
            s = by_seq.get(sseq)
            t0 = s["start_s"] if s else np.nan
            for t_s, st, has, mean, lo, hi, z, tgt in d["rows"]:
                summaries.append((sseq, t_s, t0 + t_s, F.STATE_NAMES[st] if st < len(F.STATE_NAMES) else str(st),
                                  has, mean / 4, lo / 4, hi / 4, tgt / 4, z * 16.0))
        elif r.type == fw.T_END:
            if open_s is not None:
                open_s["end_reason"] = d["reason"]
                open_s["duration_s"] = d["duration_ms"] / 1000
                open_s["gain"] = d["gain_q14"] / 16384
                open_s = None
        elif r.type == fw.T_EVENT:
            in_s = d["t_ms"] >= 0 and open_s is not None
            sseq = open_s["seq"] if in_s else -1
            events.append((r.seq, unix(d["rtc_s"], grp, off), sseq, d["t_ms"], d["kind"],
                           F.event_detail(d["kind_code"], d["value"]), d["value"], d["value2"]))
            if in_s:
                open_s["events"].append(d["kind_code"])
    summ = np.array(summaries, dtype=SUMMARY_DTYPE)
    out = []
    for s in sessions:
        m = summ[summ["session_seq"] == s["seq"]]
        stim = m[m["state"] == "stimulating"]
        zs = m["z_ohm"][(m["z_ohm"] > 0) & (m["state"] == "stimulating")]
        if s["end_reason"] == "reset" or np.isnan(s["duration_s"]):
            s["duration_s"] = float(len(m))
        ev = s["events"]
        out.append((s["seq"], s["log_id"], s["start_s"], s["program"], s["freq_hz"], s["phase_us"],
                    s["setpoint_ua"], s["duration_cfg_s"], s["level"], s["end_reason"], s["duration_s"],
                    len(m), len(stim), int((m["state"] == "paused").sum()),
                    float(stim["i_mean_ua"].mean()) if len(stim) else np.nan,
                    float(np.median(zs)) if len(zs) else np.nan,
                    ev.count(fw.EV_CONTACT_LOST), ev.count(fw.EV_INTENSITY), ev.count(fw.EV_FAULT),
                    s["gain"]))
    return LogData(np.array(out, dtype=SESSION_DTYPE), summ, np.array(events, dtype=EVENT_DTYPE),
                   np.array(boots, dtype=BOOT_DTYPE), corrupt, missing)

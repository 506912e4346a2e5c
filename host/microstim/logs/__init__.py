"""Session logs pulled from a device: decode, archive (per device), load as numpy arrays,
export. The device side is firmware/msfw/logstore.py; the format is firmware/LOGFORMAT.md.

    from microstim.logs import Archive, ingest, load
    arch = Archive(default_root(), machine_unique_id)
    seg, off = arch.resume_point(device_log_id)
    ... ingest(arch, seg_id, offset, data, log_id=device_log_id, sealed=not newest)
    data = load(arch)           # .sessions, .summaries, .events, .boots (structured arrays)

The names below are imported on first use, so `microstim logs pull` (which needs only
the archive) never loads numpy.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "Archive": "archive", "IngestResult": "archive", "default_root": "archive", "ingest": "archive",
    "ingest_segments": "archive", "uid_hex": "archive",
    "LogData": "data", "load": "data",
    "Corruption": "format",
}

__all__ = ["Archive", "Corruption", "IngestResult", "LogData", "default_root", "ingest",
           "ingest_segments", "load", "uid_hex"]


def __getattr__(name: str):
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

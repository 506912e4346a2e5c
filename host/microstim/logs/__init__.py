"""Session logs pulled from a device: decode, archive (per device), load as numpy arrays,
export. The device side is firmware/msfw/logstore.py; the format is firmware/LOGFORMAT.md.

    from microstim.logs import Archive, ingest, load
    arch = Archive(default_root(), machine_unique_id)
    seg, off = arch.resume_point(device_log_id)
    ... ingest(arch, seg_id, offset, data, log_id=device_log_id, sealed=not newest)
    data = load(arch)           # .sessions, .summaries, .events, .boots (structured arrays)
"""

from .archive import Archive, IngestResult, default_root, ingest, ingest_segments, uid_hex
from .data import LogData, load
from .format import Corruption

__all__ = ["Archive", "Corruption", "IngestResult", "LogData", "default_root", "ingest",
           "ingest_segments", "load", "uid_hex"]

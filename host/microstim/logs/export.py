"""Archived logs as files for spreadsheets and data tools: CSV always, Parquet when
pyarrow is installed (optional: pip install pyarrow)."""

from __future__ import annotations

import csv
import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .data import LogData

TABLES = ("sessions", "summaries", "events", "boots")


def iso(t: float) -> str:
    return "" if t is None or (isinstance(t, float) and math.isnan(t)) else \
        datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def _columns(arr: np.ndarray) -> tuple[list[str], list[list]]:
    names = list(arr.dtype.names)
    rows = []
    time_cols = [n for n in names if n in ("start_s", "time_s")]
    for rec in arr.tolist():
        row = []
        for v in rec:
            if isinstance(v, float) and math.isnan(v):
                v = ""
            row.append(v)
        row += [iso(rec[names.index(n)]) for n in time_cols]
        rows.append(row)
    return names + [n.replace("_s", "_utc") for n in time_cols], rows


def export_csv(data: LogData, out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in TABLES:
        header, rows = _columns(getattr(data, name))
        p = out / f"{name}.csv"
        with open(p, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)
        written.append(p)
    return written


def parquet_available() -> bool:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def export_parquet(data: LogData, out_dir: str | Path) -> list[Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in TABLES:
        arr = getattr(data, name)
        table = pa.table({n: arr[n] for n in arr.dtype.names})
        p = out / f"{name}.parquet"
        pq.write_table(table, p)
        written.append(p)
    return written

"""Adherence to the usage protocol: 5 sessions a week for the first 60 days, then 2-3
maintenance sessions a week (PRODUCT.md).

Weeks are 7-day windows from the day of the first session (UTC dates). A session counts
when it stimulated for at least MIN_STIM_S seconds. A week's phase is the phase of its
first day.
"""

from __future__ import annotations

import math

import numpy as np

INITIAL_DAYS = 60
INITIAL_PER_WEEK = (5, 5)
MAINTENANCE_PER_WEEK = (2, 3)
MIN_STIM_S = 60
DAY_S = 86400

WEEK_DTYPE = np.dtype([("week", "u2"), ("start_s", "f8"), ("phase", "U11"), ("sessions", "u2"),
                       ("target_min", "u1"), ("target_max", "u1"), ("status", "U7"),
                       ("complete", "?")])


def counted(sessions: np.ndarray) -> np.ndarray:
    ok = (sessions["stim_s"] >= MIN_STIM_S) & ~np.isnan(sessions["start_s"])
    return sessions[ok]


def weeks(sessions: np.ndarray, now_s: float | None = None) -> np.ndarray:
    """One row per protocol week from the first session to now (or the last session)."""
    s = counted(sessions)
    if len(s) == 0:
        return np.zeros(0, dtype=WEEK_DTYPE)
    day0 = math.floor(np.min(s["start_s"]) / DAY_S) * DAY_S
    last = now_s if now_s is not None else float(np.max(s["start_s"]))
    n_weeks = int((last - day0) // (7 * DAY_S)) + 1
    idx = ((s["start_s"] - day0) // (7 * DAY_S)).astype(int)
    counts = np.bincount(idx, minlength=n_weeks)
    rows = []
    for w in range(n_weeks):
        start = day0 + w * 7 * DAY_S
        initial = w * 7 < INITIAL_DAYS
        lo, hi = INITIAL_PER_WEEK if initial else MAINTENANCE_PER_WEEK
        c = int(counts[w])
        complete = start + 7 * DAY_S <= last or w < n_weeks - 1
        if c >= lo:
            status = "met"
        elif c == 0:
            status = "missed"
        else:
            status = "partial"
        if not complete and c < lo:
            status = "ongoing"
        rows.append((w, start, "initial" if initial else "maintenance", c, lo, hi, status, complete))
    return np.array(rows, dtype=WEEK_DTYPE)


def score(wk: np.ndarray) -> float:
    """Share of complete weeks that met the protocol (NaN before the first complete week)."""
    done = wk[wk["complete"]]
    return float(np.mean(done["status"] == "met")) if len(done) else float("nan")

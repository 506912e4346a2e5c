"""What the virtual board really delivered, as the simulator's analog model saw it.

The device side writes one fixed-size record per phase (an interval with the output
enabled) to trace/phases.bin and discrete events to trace/events.jsonl; numpy opens
both directly. These figures never come from the firmware's own readings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Mirrors PHASE_FMT = "<qifffffB3x" in device/_vworld.py.
PHASE_DTYPE = np.dtype(
    [
        ("t_us", "<i8"),
        ("dur_us", "<i4"),
        ("i_mean_ua", "<f4"),
        ("i_peak_ua", "<f4"),
        ("v_peak_v", "<f4"),
        ("i_cmd_ua", "<f4"),
        ("reserved", "<f4"),
        ("flags", "u1"),
        ("pad", "V3"),
    ]
)
assert PHASE_DTYPE.itemsize == 36

F_COMPLIANCE = 1
F_OPEN = 2


@dataclass
class Trace:
    phases: np.ndarray
    events: list[dict]

    @classmethod
    def load(cls, run_dir: Path) -> Trace:
        tdir = Path(run_dir) / "trace"
        raw = (tdir / "phases.bin").read_bytes() if (tdir / "phases.bin").exists() else b""
        usable = len(raw) - len(raw) % PHASE_DTYPE.itemsize
        phases = np.frombuffer(raw[:usable], dtype=PHASE_DTYPE)
        events = []
        if (tdir / "events.jsonl").exists():
            for line in (tdir / "events.jsonl").read_text().splitlines():
                if line.strip():
                    events.append(json.loads(line))
        return cls(phases, events)

    def events_of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e.get("event") == kind or e.get("what") == kind]

    def window(self, t0_s: float, t1_s: float) -> np.ndarray:
        p = self.phases
        return p[(p["t_us"] >= t0_s * 1e6) & (p["t_us"] < t1_s * 1e6)]

    def summary(self, t0_s: float = 0.0, t1_s: float = float("inf")) -> dict:
        """Amplitude, peak, charge balance and time stimulating over [t0, t1)."""
        p = self.window(t0_s, t1_s)
        if len(p) == 0:
            return {"phases": 0}
        dur_s = p["dur_us"].astype(np.float64) * 1e-6
        i = p["i_mean_ua"].astype(np.float64)
        charge_uc = i * dur_s
        contact = (p["flags"] & F_OPEN) == 0
        on_s = float(dur_s[contact].sum())
        amp = float(np.abs(charge_uc[contact]).sum() / on_s) if on_s > 0 else 0.0
        pos = charge_uc[charge_uc > 0].sum()
        return {
            "phases": int(len(p)),
            "stimulating_s": round(on_s, 3),
            "amplitude_ua": round(amp, 2),
            "peak_ua": round(float(p["i_peak_ua"].max()), 2),
            "net_charge_uc": round(float(charge_uc.sum()), 4),
            "phase_charge_uc": round(float(pos / max(1, (charge_uc > 0).sum())), 4),
            "compliance_limited_phases": int(((p["flags"] & F_COMPLIANCE) != 0).sum()),
        }

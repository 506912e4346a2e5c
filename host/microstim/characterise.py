"""Output characterisation: the table 21 CFR 882.5891's special controls ask for.

For each named pulse program at the board's maximum setpoint (its ceiling), into resistive
loads of 500 Ω, 2 kΩ and 10 kΩ: maximum voltage and current, pulse width, frequency, net
charge per pulse, maximum phase charge, current density for a stated probe area, and
average current.

The figures come from the virtual board: the unchanged firmware runs headless, calibrated
against a reference resistor first (as `microstim calibrate` would leave a real board), and
every figure is computed from the Trace, i.e. from what the simulator's analog model
really delivered, never from the firmware's own readings. A board other than the virtual
one is simulated with its own board definition (front-end values, DAC) and the virtual
board's as-built component errors; real hardware needs the bench (`microstim bench`).
"""

from __future__ import annotations

import json
import math
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
import numpy as np

from . import paths
from .errors import DeviceError, MicrostimError, UsageError

LOADS_OHM = (500.0, 2000.0, 10000.0)
# Contact area of each reference probe with gel, as boards/frontend/README.md states it.
DEFAULT_PROBE_AREA_CM2 = 1.0
CALIBRATION_REF_OHM = 10000.0
PRESS_S = 0.5
WARMUP_S = 4.0  # press, contact check, 1.5 s soft start, settled
MIN_WINDOW_S = 6.0
# The firmware's program table (firmware/msfw/programs.py) in the order it lists them.
PROGRAMS = ("lift", "tone", "steady", "fine", "pulse3")


def _programs_module():
    import importlib.util

    src = paths.firmware_dir() / "msfw" / "programs.py"
    spec = importlib.util.spec_from_file_location("microstim._firmware_programs", src)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def program_spec(name: str) -> dict:
    mod = _programs_module()
    if name not in mod.PROGRAMS:
        raise UsageError(f"no program {name!r} (known: {', '.join(mod.PROGRAMS)})")
    return dict(mod.PROGRAMS[name])


def cycle_s(prog: dict) -> float:
    """One whole repetition of the pattern: a burst cycle, a train of +N/-N, or a period."""
    if prog.get("train_on_ms"):
        return (prog["train_on_ms"] + prog["train_off_ms"]) / 1000.0
    n = max(1, prog.get("train_n", 1))
    return (2 * n if n > 1 else 1) / prog["freq_hz"]


@dataclass
class Row:
    program: str
    load_ohm: float
    setpoint_ua: float
    delivered: bool
    note: str = ""
    window_s: float = 0.0
    phases: int = 0
    i_max_ua: float = math.nan
    v_load_max_v: float = math.nan  # across the load resistor: I x R
    v_out_max_v: float = math.nan  # at the output stage, DC-blocking capacitor included
    pulse_width_us: float = math.nan
    freq_hz: float = math.nan
    net_charge_per_pulse_uc: float = math.nan
    max_phase_charge_uc: float = math.nan
    density_peak_ma_cm2: float = math.nan
    density_rms_ma_cm2: float = math.nan
    avg_current_ua: float = math.nan  # mean |I| over whole cycles
    dc_current_ua: float = math.nan  # mean signed I over whole cycles
    compliance_phases: int = 0


@dataclass
class Result:
    board: str
    model_note: str
    setpoint_ua: float
    ceiling_ua: float
    hw_limit_ua: float
    calibrated: bool
    probe_area_cm2: float
    rows: list[Row] = field(default_factory=list)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["rows"] = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
                     for r in d["rows"]]
        return d


def _faults(console: str) -> list[dict]:
    from .demo import firmware_events

    return [e for e in firmware_events(console) if e.get("ev") in ("fault", "pause", "refused")]


def window_phases(phases: np.ndarray, prog: dict, t_from_s: float) -> tuple[np.ndarray, float]:
    """The phases of whole cycles from the first cycle start at or after t_from_s, and the
    window length: at least MIN_WINDOW_S, a whole number of cycles."""
    cyc = cycle_s(prog)
    k = max(1, math.ceil(MIN_WINDOW_S / cyc))
    t = phases["t_us"].astype(np.int64)
    sign = np.sign(phases["i_mean_ua"])
    # A cycle starts with a positive phase that follows a negative one after a gap longer
    # than inside a train (for bursts, the off time).
    starts = []
    period_us = 1e6 / prog["freq_hz"]
    for i in range(1, len(phases)):
        if t[i] < t_from_s * 1e6 or sign[i] <= 0 or sign[i - 1] >= 0:
            continue
        if prog.get("train_on_ms") and t[i] - t[i - 1] < 1.5 * period_us:
            continue
        starts.append(i)
    if not starts:
        return phases[:0], 0.0
    t0 = t[starts[0]]
    t1 = t0 + k * cyc * 1e6
    # The next cycle starts at t1, give or take the timing of a software-switched program
    # (lift): a quarter period of margin keeps its first phase out.
    sel = (t >= t0) & (t < t1 - 0.25 * period_us)
    return phases[sel], k * cyc


def figures(phases: np.ndarray, prog: dict, load_ohm: float, probe_area_cm2: float,
            window_s: float) -> dict:
    """The characterisation figures from phase records over whole cycles."""
    dur_s = phases["dur_us"].astype(np.float64) * 1e-6
    i_mean = phases["i_mean_ua"].astype(np.float64)
    q = i_mean * dur_s  # µC per phase, signed
    pos = i_mean > 0
    i_max = float(np.abs(phases["i_peak_ua"]).max())
    starts = phases["t_us"][pos].astype(np.float64)
    gaps = np.diff(starts)
    if prog.get("train_on_ms") and len(gaps):
        gaps = gaps[gaps < 1.5e6 / prog["freq_hz"]]  # within bursts
    freq = float(1e6 / np.median(gaps)) if len(gaps) else math.nan
    rms_ua = math.sqrt(float((i_mean ** 2 * dur_s).sum()) / window_s)
    return {
        "phases": int(len(phases)),
        "i_max_ua": i_max,
        "v_load_max_v": i_max * 1e-6 * load_ohm,
        "v_out_max_v": float(phases["v_peak_v"].max()),
        "pulse_width_us": float(np.median(phases["dur_us"])),
        "freq_hz": freq,
        "net_charge_per_pulse_uc": float(q.sum() / max(1, int(pos.sum()))),
        "max_phase_charge_uc": float(np.abs(q).max()),
        "density_peak_ma_cm2": i_max / 1000.0 / probe_area_cm2,
        "density_rms_ma_cm2": rms_ua / 1000.0 / probe_area_cm2,
        "avg_current_ua": float(np.abs(q).sum() / window_s),
        "dc_current_ua": float(q.sum() / window_s),
        "compliance_phases": int(((phases["flags"] & 1) != 0).sum()),
    }


def _virtual_sim(board: str) -> dict:
    """The virtual board's as-built hardware (component errors, noise); USB power absent,
    so a board whose USB link is not isolated may stimulate."""
    sim = json.loads((paths.boards_dir() / "virtual" / "sim.json").read_text())
    sim.pop("_comment", None)
    sim["usb_present"] = False
    return sim


def run_one(board: str, program: str, load_ohm: float, setpoint_ua: float, calib_file: str | None,
            run_dir: Path, *, sim: dict | None = None, probe_area_cm2: float = DEFAULT_PROBE_AREA_CM2,
            timeout_s: float = 300.0) -> Row:
    """One headless session into a pure resistor; the figures from the delivered trace."""
    from .vboard.calibrated import resistor, run_headless_calibrated

    prog = program_spec(program)
    cyc = cycle_s(prog)
    k = max(1, math.ceil(MIN_WINDOW_S / cyc))
    stop_s = WARMUP_S + cyc * (k + 1) + 0.5
    scenario = [resistor(load_ohm), {"at_s": PRESS_S, "event": "press"}, {"at_s": stop_s, "event": "stop"}]
    cfg = {"program": program, "setpoint_ua": setpoint_ua, "duration_s": int(stop_s) + 60}
    trace, console, _ = run_headless_calibrated(
        run_dir, scenario, calib_file, board=board, sim=sim if sim is not None else _virtual_sim(board),
        device_config=cfg, timeout_s=timeout_s)
    row = Row(program, load_ohm, setpoint_ua, False)
    sel, window_s = window_phases(trace.phases, prog, WARMUP_S)
    faults = _faults(console)
    if len(sel) == 0:
        why = "; ".join(f"{e.get('fault') or e.get('reason') or e.get('ev')} at {e.get('t_ms', 0) / 1000:.2f} s"
                        for e in faults) or "no output"
        row.note = f"no output in the window: {why}"
        return row
    row.delivered = True
    row.window_s = window_s
    for k2, v in figures(sel, prog, load_ohm, probe_area_cm2, window_s).items():
        setattr(row, k2, v)
    if faults:
        row.note = "; ".join(f"{e.get('fault') or e.get('ev')} at {e.get('t_ms', 0) / 1000:.2f} s" for e in faults)
    return row


def characterise(board: str = "virtual", *, programs: tuple[str, ...] | None = None,
                 loads: tuple[float, ...] = LOADS_OHM, probe_area_cm2: float = DEFAULT_PROBE_AREA_CM2,
                 setpoint_ua: float | None = None, work_dir: str | Path | None = None,
                 jobs: int = 1, progress=None) -> Result:
    """Calibrate a virtual board with this board definition, then run every program into
    every load at the maximum setpoint (the board's ceiling unless given)."""
    from . import boards as boardsmod
    from .vboard.calibrated import calibrate

    b = boardsmod.load(board)
    programs = tuple(programs or PROGRAMS)
    for p in programs:
        program_spec(p)
    if probe_area_cm2 <= 0:
        raise UsageError("--probe-area-cm2 must be positive")
    sp = float(setpoint_ua if setpoint_ua is not None else b.ceiling_ua)
    if sp > b.ceiling_ua:
        raise UsageError(f"setpoint {sp:g} uA is above the board's ceiling of {b.ceiling_ua:g} uA")
    sim = _virtual_sim(board)
    note = ("the virtual board" if board == "virtual" else
            f"the virtual board's analog model with {board}'s board definition (front-end values, "
            f"{b.dac_kind} DAC) and the virtual board's as-built component errors; real hardware "
            "needs the bench (microstim bench)")
    tmp = None
    if work_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="microstim-characterise-")
        work_dir = tmp.name
    work = Path(work_dir)
    try:
        cal = calibrate(work / "calibrate", CALIBRATION_REF_OHM, board=board, sim=sim)
        ok = bool(cal.get("result") and cal["result"].get("ok") and cal.get("file"))
        calib_file = cal["file"] if ok else None
        result = Result(board, note, sp, b.ceiling_ua, b.hw_limit_ua, ok, probe_area_cm2)
        jobs_list = [(p, r) for p in programs for r in loads]

        def one(job):
            p, r = job
            row = run_one(board, p, r, sp, calib_file, work / f"{p}-{int(r)}", sim=sim,
                          probe_area_cm2=probe_area_cm2)
            if progress:
                progress(row)
            return row

        if jobs > 1:
            with ThreadPoolExecutor(jobs) as ex:
                result.rows = list(ex.map(one, jobs_list))
        else:
            result.rows = [one(j) for j in jobs_list]
        if not ok:
            result.model_note += ("; calibration failed, so the firmware ran at its reduced "
                                  "uncalibrated ceiling")
        return result
    finally:
        if tmp is not None:
            tmp.cleanup()


def _f(x: float, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}g}"


def markdown(res: Result) -> str:
    lines = [
        f"# Output characterisation: {res.board}",
        "",
        "Generated by `microstim characterise --board " + res.board + " --write`; do not edit by hand.",
        "",
        f"Source: {res.model_note}. Every figure is computed from the simulator's record of what "
        "its analog model delivered (the Trace), never from the firmware's own readings.",
        "",
        f"- Setpoint: {res.setpoint_ua:g} µA, the board's ceiling (hardware limit "
        f"{res.hw_limit_ua:g} µA); {'calibrated' if res.calibrated else 'NOT calibrated'} against a "
        f"{CALIBRATION_REF_OHM / 1000:g} kΩ reference first.",
        f"- Loads: pure resistors across the probes. Probe area: {res.probe_area_cm2:g} cm² per "
        "probe (boards/frontend/README.md).",
        "- Figures over whole cycles after the soft start (at least "
        f"{MIN_WINDOW_S:g} s). V load = I × R across the resistor; V out includes the 100 µF "
        "DC-blocking capacitor's voltage (what the output stage drives).",
        "- Net charge per pulse: signed charge of all phases / number of positive phases; "
        "average current: mean |I| over the window; current density: peak and r.m.s. current / "
        "probe area.",
        "",
        "| program | load | max V load (V) | max V out (V) | max I (µA) | pulse width (µs) | "
        "frequency (Hz) | net charge / pulse (nC) | max phase charge (µC) | density peak / rms "
        "(mA/cm²) | average current (µA) | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res.rows:
        load = f"{r.load_ohm / 1000:g} kΩ" if r.load_ohm >= 1000 else f"{r.load_ohm:g} Ω"
        if not r.delivered:
            lines.append(f"| {r.program} | {load} | – | – | – | – | – | – | – | – | – | {r.note} |")
            continue
        note = r.note
        if r.compliance_phases:
            note = (note + "; " if note else "") + f"{r.compliance_phases} phases at compliance"
        lines.append(
            f"| {r.program} | {load} | {_f(r.v_load_max_v)} | {_f(r.v_out_max_v)} | {_f(r.i_max_ua, 4)} | "
            f"{r.pulse_width_us:.0f} | {_f(r.freq_hz)} | {r.net_charge_per_pulse_uc * 1000:.3f} | "
            f"{_f(r.max_phase_charge_uc)} | {_f(r.density_peak_ma_cm2)} / {_f(r.density_rms_ma_cm2)} | "
            f"{_f(r.avg_current_ua)} | {note} |")
    return "\n".join(lines) + "\n"


def write_board_file(res: Result) -> Path:
    path = paths.boards_dir() / res.board / "CHARACTERISATION.md"
    path.write_text(markdown(res))
    return path


@click.command("characterise")
@click.option("--board", "board_names", multiple=True, default=("virtual",), show_default=True,
              help="Board definition(s) to characterise; 'all' for every board.")
@click.option("--program", "program_names", multiple=True, help="Program(s); default all.")
@click.option("--probe-area-cm2", default=DEFAULT_PROBE_AREA_CM2, show_default=True, type=float,
              help="Contact area of one probe, for the current density.")
@click.option("--setpoint", "setpoint_ua", type=float, default=None,
              help="Setpoint in µA (default: the board's ceiling, the maximum).")
@click.option("--jobs", default=1, show_default=True, help="Virtual boards run at once.")
@click.option("--write", is_flag=True, help="Write boards/<board>/CHARACTERISATION.md.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def characterise_command(board_names, program_names, probe_area_cm2, setpoint_ua, jobs, write, as_json):
    """The 21 CFR 882.5891 output table (500 Ω, 2 kΩ, 10 kΩ) from the virtual board."""
    from . import boards as boardsmod

    names = boardsmod.names() if "all" in board_names else list(board_names)
    out = []
    try:
        for name in names:
            res = characterise(name, programs=tuple(program_names) or None, probe_area_cm2=probe_area_cm2,
                               setpoint_ua=setpoint_ua, jobs=jobs,
                               progress=None if as_json else lambda r: click.echo(
                                   f"  {r.program} {r.load_ohm:g} ohm: "
                                   f"{'ok' if r.delivered else r.note}", err=True))
            if not res.rows:
                raise DeviceError(f"{name}: nothing ran")
            out.append(res)
            if write:
                click.echo(f"wrote {write_board_file(res)}", err=True)
            if not as_json:
                click.echo(markdown(res))
    except MicrostimError as e:
        click.echo(f"microstim: {e}", err=True)
        raise SystemExit(e.exit_code) from None
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in out], indent=2))

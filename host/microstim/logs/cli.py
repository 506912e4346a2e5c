"""`microstim logs ...`: what the archive holds. (`logs pull` fetches from a device.)"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..errors import MicrostimError, UsageError

# numpy, the decoder and the exporters are imported inside the commands that use them:
# `microstim logs pull` loads this group too, and must start fast.


def _fail(e: MicrostimError) -> None:
    click.echo(f"microstim: {e}", err=True)
    sys.exit(e.exit_code)


def pick_archive(root: Path | None, device: str | None):
    """The archive of `device` (a unique id or its prefix), or the only one there is."""
    from .archive import Archive, default_root

    root = Path(root) if root else default_root()
    uids = sorted(p.name for p in root.iterdir() if (p / "state.json").exists()) if root.is_dir() else []
    if device:
        uids = [u for u in uids if u.startswith(device.lower())]
        if not uids:
            raise UsageError(f"no logs for device {device} in {root}: run `microstim logs pull` first")
    if not uids:
        raise UsageError(f"no device logs in {root}: run `microstim logs pull` with the device connected")
    if len(uids) > 1:
        raise UsageError(f"logs of several devices in {root}: pick one with --device ({', '.join(uids)})")
    return Archive(root, uids[0])


archive_option = click.option("--archive", "root", type=click.Path(file_okay=False, path_type=Path),
                              help="Archive folder (default: $XDG_DATA_HOME/microstim/archive).")
device_option = click.option("--device", help="Device unique id (or a prefix) when the archive holds several.")


@click.group("logs")
def group() -> None:
    """Session logs: pull them from a device, look at them, export them.

    \b
    Examples:
      microstim logs pull                 fetch what is new from the connected device
      microstim logs show                 sessions, adherence and faults
      microstim logs export --out data/   CSV files (and Parquet with pyarrow)
    """


@group.command("show")
@archive_option
@device_option
@click.option("--last", default=20, show_default=True, help="How many recent sessions to list.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def show(root: Path | None, device: str | None, last: int, as_json: bool) -> None:
    """Sessions, adherence to the protocol, faults and log integrity."""
    import numpy as np

    from . import adherence
    from .data import load
    from .export import iso

    try:
        arch = pick_archive(root, device)
    except MicrostimError as e:
        _fail(e)
    d = load(arch)
    wk = adherence.weeks(d.sessions)
    faults = d.events[d.events["kind"] == "fault"]
    if as_json:
        click.echo(json.dumps({
            "device": arch.uid, "sessions": len(d.sessions), "adherence": adherence.score(wk),
            "faults": [{"time": iso(f["time_s"]), "fault": f["detail"], "value": int(f["value2"])} for f in faults],
            "corrupt": [str(c) for c in d.corrupt],
            "missing_seq_ranges": d.missing,
        }))
        return
    from rich.console import Console
    from rich.table import Table

    con = Console()
    con.print(f"[bold]device {arch.uid}[/]: {len(d.sessions)} sessions, "
              f"{len(d.summaries) / 60:.0f} minutes logged, adherence "
              f"{adherence.score(wk):.0%} of complete weeks met the protocol")
    t = Table("start (UTC)", "program", "µA", "min", "end", "mean µA", "impedance kΩ", "contact lost", title="sessions")
    for s in d.sessions[-last:]:
        t.add_row(iso(s["start_s"]), s["program"], str(s["setpoint_ua"]), f"{s['duration_s'] / 60:.1f}",
                  s["end_reason"], "" if np.isnan(s["mean_ua"]) else f"{s['mean_ua']:.1f}",
                  "" if np.isnan(s["z_median_ohm"]) else f"{s['z_median_ohm'] / 1000:.1f}",
                  str(s["contact_losses"]))
    con.print(t)
    if len(faults):
        ft = Table("time (UTC)", "fault", "value", title="faults")
        for f in faults:
            ft.add_row(iso(f["time_s"]), f["detail"], str(f["value2"]))
        con.print(ft)
    resets = d.boots[np.isin(d.boots["reset_cause"], ["watchdog", "hard"])]
    if len(resets):
        con.print(f"[yellow]{len(resets)} resets by watchdog or reset button[/]")
    if d.corrupt:
        con.print(f"[red]{len(d.corrupt)} corrupt byte ranges were found and left out:[/]")
        for c in d.corrupt:
            con.print(f"  {c}")
    if d.missing:
        con.print(f"[yellow]records never pulled (rotated out on the device first): {d.missing}[/]")


@group.command("export")
@archive_option
@device_option
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder to write (default: microstim-logs-<device>).")
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet", "all"]), default="all", show_default=True,
              help="all = CSV, and Parquet too when pyarrow is installed.")
def export(root: Path | None, device: str | None, out_dir: Path | None, fmt: str) -> None:
    """Sessions, 1 Hz summaries, events and boots as CSV (and Parquet) files."""
    from .data import load
    from .export import export_csv, export_parquet, parquet_available

    try:
        arch = pick_archive(root, device)
        if fmt == "parquet" and not parquet_available():
            raise UsageError("Parquet needs pyarrow: pip install pyarrow (or use --format csv)")
    except MicrostimError as e:
        _fail(e)
    d = load(arch)
    out_dir = out_dir or Path(f"microstim-logs-{arch.uid}")
    files = []
    if fmt in ("csv", "all"):
        files += export_csv(d, out_dir)
    if fmt == "parquet" or (fmt == "all" and parquet_available()):
        files += export_parquet(d, out_dir)
    for p in files:
        click.echo(str(p))

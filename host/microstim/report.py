"""`microstim report`: a field report of one device's archived logs, as one self-contained
HTML file (figures embedded as PNG data URIs, and also written next to it).

Contents: totals and log integrity; a calendar of sessions with adherence to the
protocol; sessions per week against the target; delivered current and impedance per
session over time; per-session traces (delivered current with its min-max band and the
commanded current, impedance, pauses shaded, events marked); fault and reset table;
the session table.
"""

from __future__ import annotations

import base64
import html
import io
import sys
from datetime import datetime, timezone
from pathlib import Path

import click
import numpy as np

from .errors import MicrostimError
from .logs import adherence
from .logs.archive import Archive
from .logs.cli import archive_option, device_option, pick_archive
from .logs.data import LogData, load
from .logs.export import iso

STATUS_COLORS = {"met": "#2e7d32", "partial": "#f9a825", "missed": "#c62828", "ongoing": "#90a4ae"}
EVENT_STYLE = {"contact_lost": ("#c62828", "v"), "contact_restored": ("#2e7d32", "^"),
               "intensity": ("#1565c0", "s"), "fault": ("black", "X"), "fault_cleared": ("#6d4c41", "o")}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def _date(t: float) -> datetime:
    return datetime.fromtimestamp(t, timezone.utc)


def fig_calendar(d: LogData, wk: np.ndarray):
    """Weeks down, weekdays across; a cell per day with its sessions' minutes; the
    week's count against the protocol's target at the right."""
    plt = _plt()
    n = max(len(wk), 1)
    fig, ax = plt.subplots(figsize=(8.5, 0.38 * n + 1.2))
    s = adherence.counted(d.sessions)
    day0 = wk["start_s"][0] if len(wk) else 0
    minutes = {}
    for row in s:
        k = int((row["start_s"] - day0) // 86400)
        minutes[k] = minutes.get(k, 0) + row["stim_s"] / 60
    cmap = plt.get_cmap("Blues")
    for w in range(len(wk)):
        for dd in range(7):
            k = w * 7 + dd
            m = minutes.get(k, 0)
            color = cmap(0.35 + 0.6 * min(m / 20, 1)) if m else "#f2f2f2"
            ax.add_patch(plt.Rectangle((dd, n - 1 - w), 0.92, 0.86, color=color))
            if m:
                ax.text(dd + 0.46, n - 1 - w + 0.43, f"{m:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if m > 8 else "black")
        row = wk[w]
        ax.add_patch(plt.Rectangle((7.3, n - 1 - w), 2.4, 0.86, color=STATUS_COLORS[row["status"]]))
        tgt = f"{row['target_min']}" if row["target_min"] == row["target_max"] else f"{row['target_min']}-{row['target_max']}"
        ax.text(8.5, n - 1 - w + 0.43, f"{row['sessions']} / {tgt}", ha="center", va="center",
                fontsize=8, color="white")
        ax.text(-0.15, n - 1 - w + 0.43, _date(row["start_s"]).strftime("%d %b"), ha="right", va="center", fontsize=8)
    first_wd = _date(day0).weekday() if len(wk) else 0
    names = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
    for dd in range(7):
        ax.text(dd + 0.46, n + 0.15, names[(first_wd + dd) % 7], ha="center", fontsize=8)
    ax.text(8.5, n + 0.15, "sessions / target", ha="center", fontsize=8)
    ax.set_xlim(-1.3, 9.9)
    ax.set_ylim(-0.2, n + 0.7)
    ax.axis("off")
    ax.set_title("Sessions (minutes of stimulation per day) and adherence per week", fontsize=10)
    return fig


def fig_weekly(wk: np.ndarray):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, 2.6))
    x = np.arange(len(wk))
    ax.bar(x, wk["sessions"], color=[STATUS_COLORS[s] for s in wk["status"]])
    ax.step(np.r_[x - 0.5, x[-1] + 0.5] if len(x) else [], np.r_[wk["target_min"], wk["target_min"][-1:]] if len(x) else [],
            where="post", color="black", lw=1, label="target (min)")
    ax.set_xlabel("week of use")
    ax.set_ylabel("sessions")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("Sessions per week against the protocol (5/week for 60 days, then 2-3/week)", fontsize=10)
    return fig


def fig_trends(d: LogData):
    plt = _plt()
    s = d.sessions[~np.isnan(d.sessions["start_s"])]
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(8.5, 4.2), sharex=True)
    t = [_date(v) for v in s["start_s"]]
    a1.plot(t, s["setpoint_ua"], "_", color="gray", ms=12, label="setpoint")
    a1.plot(t, s["mean_ua"], "o", color="#1565c0", ms=4, label="delivered (mean while stimulating)")
    a1.set_ylabel("µA")
    a1.legend(fontsize=8, loc="lower left")
    a2.plot(t, s["z_median_ohm"] / 1000, "o", color="#6a1b9a", ms=4)
    a2.set_ylabel("impedance kΩ (median)")
    fig.autofmt_xdate()
    a1.set_title("Delivered current and skin impedance per session", fontsize=10)
    return fig


def fig_session(d: LogData, s) -> object:
    plt = _plt()
    m = d.session_summaries(s["seq"])
    ev = d.session_events(s["seq"])
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(8.5, 3.6), sharex=True)
    t = m["t_s"].astype(float)
    has = m["has_current"]
    a1.fill_between(t, np.where(has, m["i_min_ua"], np.nan), np.where(has, m["i_max_ua"], np.nan),
                    color="#90caf9", step="mid", label="min-max")
    a1.plot(t, np.where(has, m["i_mean_ua"], np.nan), color="#1565c0", lw=1, label="delivered (mean)")
    a1.plot(t, m["target_ua"], "--", color="gray", lw=0.8, label="commanded")
    a1.set_ylabel("µA")
    z = np.where(m["z_ohm"] > 0, m["z_ohm"] / 1000, np.nan)
    a2.plot(t, z, color="#6a1b9a", lw=1)
    a2.set_ylabel("kΩ")
    a2.set_xlabel("seconds into the session")
    paused = m["state"] == "paused"
    for ax in (a1, a2):
        ax.fill_between(t, 0, 1, where=paused, transform=ax.get_xaxis_transform(), color="#ffcdd2",
                        alpha=0.6, step="mid", lw=0)
    seen = set()
    for e in ev:
        style = EVENT_STYLE.get(e["kind"])
        if style is None or e["t_ms"] < 0:
            continue
        x = e["t_ms"] / 1000
        a1.axvline(x, color=style[0], lw=0.8, alpha=0.7)
        a1.plot([x], [1.02], marker=style[1], color=style[0], transform=a1.get_xaxis_transform(),
                clip_on=False, ls="", label=None if e["kind"] in seen else e["kind"].replace("_", " "))
        seen.add(e["kind"])
    a1.legend(fontsize=7, loc="lower right", ncol=3)
    a1.set_title(f"{iso(s['start_s'])} UTC · {s['program']} · {s['setpoint_ua']} µA · "
                 f"{s['duration_s'] / 60:.1f} min · ended: {s['end_reason']}", fontsize=9)
    return fig


def _table(headers: list[str], rows: list[list], cls: str) -> str:
    h = "".join(f"<th>{html.escape(x)}</th>" for x in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>'


CSS = """body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}
table{border-collapse:collapse;font-size:13px;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 7px}
th{background:#eee}img{max-width:100%;display:block;margin:.5em 0 1.5em}.bad{color:#c62828}
.kpi{display:inline-block;margin:0 2em .5em 0}.kpi b{font-size:1.4em;display:block}"""

# Tells a browser test (and a reader with devtools) that every figure decoded.
CHECK_JS = """window.addEventListener('load',function(){var im=document.images,ok=0;
for(var i=0;i<im.length;i++){if(im[i].complete&&im[i].naturalWidth>0)ok++;}
document.body.setAttribute('data-images',im.length);document.body.setAttribute('data-images-loaded',ok);});"""


def write_report(arch: Archive, out_dir: str | Path, *, max_sessions: int = 12, now_s: float | None = None) -> Path:
    """Writes out_dir/report.html and out_dir/fig-*.png; returns the HTML path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    d = load(arch)
    wk = adherence.weeks(d.sessions, now_s)
    figs: list[tuple[str, str, bytes]] = []  # (file name, caption, png)

    def add(name, caption, fig):
        png = _png(fig)
        (out / name).write_bytes(png)
        figs.append((name, caption, png))
        return f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,' \
               f'{base64.b64encode(png).decode()}"><figcaption>{html.escape(caption)}</figcaption></figure>'

    parts = [f"<h1>Field report · device {html.escape(arch.uid)}</h1>"]
    s = d.sessions
    valid = s[~np.isnan(s["start_s"])]
    period = (f"{iso(valid['start_s'].min())[:10]} to {iso(valid['start_s'].max())[:10]}" if len(valid) else "no sessions")
    faults = d.events[d.events["kind"] == "fault"]
    score = adherence.score(wk)
    kpis = [("sessions", len(s)), ("period (UTC)", period),
            ("minutes of stimulation", f"{s['stim_s'].sum() / 60:.0f}"),
            ("weeks meeting the protocol", "n/a" if np.isnan(score) else f"{score:.0%}"),
            ("contact losses", int(s["contact_losses"].sum())), ("faults", len(faults))]
    parts.append("".join(f'<span class="kpi"><b>{html.escape(str(v))}</b>{html.escape(k)}</span>' for k, v in kpis))
    if d.corrupt or d.missing:
        parts.append(f'<p class="bad">Log integrity: {len(d.corrupt)} corrupt byte ranges left out'
                     f" ({'; '.join(html.escape(str(c)) for c in d.corrupt[:5])}); "
                     f"{len(d.missing)} ranges of records never pulled.</p>")
    else:
        parts.append("<p>Log integrity: every record verified (CRC32), no gaps in the sequence.</p>")
    parts.append("<h2>Calendar and adherence</h2>")
    if len(wk):
        parts.append(add("fig-calendar.png", "Calendar: minutes of stimulation per day; per week, sessions "
                         "against the protocol (green met, amber partial, red missed, grey ongoing).",
                         fig_calendar(d, wk)))
        parts.append(add("fig-weekly.png", "Sessions per week against the protocol's target.", fig_weekly(wk)))
    if len(valid):
        parts.append("<h2>Summary</h2>")
        parts.append(add("fig-trends.png", "Per session: setpoint and mean delivered current while "
                         "stimulating; median skin impedance.", fig_trends(d)))
    parts.append("<h2>Faults and resets</h2>")
    rows = [[iso(f["time_s"]), "fault", f["detail"], f["value2"], f["session_seq"]] for f in faults]
    for b in d.boots:
        if b["reset_cause"] in ("watchdog", "hard"):
            rows.append([iso(b["time_s"]), "reset", b["reset_cause"], "", ""])
    for e in d.events[np.isin(d.events["kind"], ["log_recovery", "log_overflow", "refused"])]:
        rows.append([iso(e["time_s"]), e["kind"], e["detail"], e["value"], e["session_seq"]])
    parts.append(_table(["time (UTC)", "what", "detail", "value", "session"], sorted(rows, key=lambda r: r[0]), "faults")
                 if rows else "<p>No faults, no resets.</p>")
    parts.append("<h2>Sessions</h2>")
    chosen = list(s[-max_sessions:]["seq"]) + [x for x in s[s["faults"] > 0]["seq"]]
    for row in s:
        if row["seq"] in chosen:
            parts.append(add(f"fig-session-{row['seq']}.png",
                             f"Session {iso(row['start_s'])}: delivered current (band: min-max of each second) "
                             "and impedance; pauses (no contact) shaded; events marked.", fig_session(d, row)))
    parts.append(_table(["start (UTC)", "program", "setpoint µA", "minutes", "ended", "mean µA", "impedance kΩ",
                         "contact losses", "intensity steps"],
                        [[iso(r["start_s"]), r["program"], r["setpoint_ua"], f"{r['duration_s'] / 60:.1f}", r["end_reason"],
                          "" if np.isnan(r["mean_ua"]) else f"{r['mean_ua']:.1f}",
                          "" if np.isnan(r["z_median_ohm"]) else f"{r['z_median_ohm'] / 1000:.1f}",
                          r["contact_losses"], r["intensity_changes"]] for r in s], "sessions"))
    gen = datetime.now(timezone.utc).replace(microsecond=0) if now_s is None else _date(now_s)
    parts.append(f"<p><small>Generated {gen.isoformat()} by microstim from the device's verified log records.</small></p>")
    doc = (f"<!doctype html><html><head><meta charset='utf-8'><title>microstim report {html.escape(arch.uid)}"
           f"</title><style>{CSS}</style><script>{CHECK_JS}</script></head><body>{''.join(parts)}</body></html>")
    path = out / "report.html"
    path.write_text(doc)
    return path


@click.command("report")
@archive_option
@device_option
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for report.html and its PNG figures (default: microstim-report-<device>).")
@click.option("--sessions", "max_sessions", default=12, show_default=True,
              help="Traces for this many recent sessions (and every session with a fault).")
def command(root: Path | None, device: str | None, out_dir: Path | None, max_sessions: int) -> None:
    """A field report (HTML with PNG figures) from a device's archived logs.

    \b
    Examples:
      microstim logs pull && microstim report     then open microstim-report-<id>/report.html
    """
    try:
        arch = pick_archive(root, device)
    except MicrostimError as e:
        click.echo(f"microstim: {e}", err=True)
        sys.exit(e.exit_code)
    path = write_report(arch, out_dir or Path(f"microstim-report-{arch.uid}"), max_sessions=max_sessions)
    click.echo(str(path))


__all__ = ["command", "write_report"]

"""The live terminal view of `microstim monitor` (rich): one status panel that updates in
place, and the latest events under it."""

from __future__ import annotations

import collections
import time

from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

STATE_STYLE = {"stimulating": "bold green", "ramping": "green", "paused": "yellow",
               "fault": "bold red", "idle": "dim", "done": "cyan"}


class LiveView:
    def __init__(self, events: int = 8):
        self.last: dict = {}
        self.events: collections.deque[str] = collections.deque(maxlen=events)
        self.live = Live(self.render(), refresh_per_second=8, transient=False)

    def __enter__(self) -> LiveView:
        self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.live.__exit__(*exc)

    def update(self, ev: dict) -> None:
        if ev.get("ev") == "tel":
            self.last = ev
        else:
            fields = " ".join(f"{k}={v}" for k, v in ev.items() if k not in ("ev", "t_ms"))
            self.events.append(f"{time.strftime('%H:%M:%S')}  {ev.get('ev')}  {fields}")
        self.live.update(self.render())

    def render(self):
        t = self.last
        grid = Table.grid(padding=(0, 2))
        grid.add_column(justify="right", style="bold")
        grid.add_column()
        state = t.get("state", "?")
        grid.add_row("state", Text(state, style=STATE_STYLE.get(state, "")))
        grid.add_row("delivered", f"{t.get('i_ua', 0):.1f} µA  (target {t.get('target_ua', 0):.1f} µA,"
                                  f" level {t.get('level', '?')})")
        z = t.get("z_ohm")
        grid.add_row("load", "—" if not z else f"{z / 1000:.1f} kΩ")
        if t.get("cl"):
            grid.add_row("", Text("compliance limited: the setpoint is not reached", style="yellow"))
        ev = Text("\n".join(self.events) or "no events yet", style="dim" if not self.events else "")
        return Group(Panel(grid, title="microstim monitor (Ctrl-C to quit)"),
                     Panel(ev, title="events"))

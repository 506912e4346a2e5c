"""Progress bars for long transfers: rich, on a terminal only (never in pipes or logs)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator


def wanted(progress: bool | None) -> bool:
    """None means "if stderr is a terminal"; --no-progress passes False."""
    return sys.stderr.isatty() if progress is None else progress


@contextlib.contextmanager
def byte_progress(total: int, label: str, progress: bool | None) -> Iterator[Callable[[int], None]]:
    if not wanted(progress) or total <= 0:
        yield lambda n: None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(), transient=True,
                  console=_console()) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def _console():
    from rich.console import Console

    return Console(stderr=True)

"""`microstim logs pull` against a virtual board: only new records, each exactly once,
resumption after an interrupted pull, data loadable as numpy arrays."""

from __future__ import annotations

import json
import time

from test_cli_device import ms, ok

from microstim.device import Device
from microstim.logpull import pull
from microstim.logs.archive import Archive
from microstim.logs.data import load


def _sessions(port: str, n: int, seconds: float = 2.5) -> None:
    with Device(port) as dev:
        dev.connect()
        for _ in range(n):
            dev.request("start", setpoint_ua=100)
            time.sleep(seconds)
            dev.request("stop")


def test_pull_fetches_only_new_records_and_loads_as_arrays(vboard, tmp_path):
    vb = vboard(board="virtual")
    _sessions(vb.port, 1)
    arch = tmp_path / "archive"
    first = json.loads(ok(ms("logs", "pull", "--archive", str(arch), "--json", port=vb.port)))
    assert first["records"] >= 4 and not first["corrupt"]
    again = json.loads(ok(ms("logs", "pull", "--archive", str(arch), "--json", port=vb.port)))
    assert again["records"] == 0 and again["bytes"] == 0  # nothing new: nothing fetched
    _sessions(vb.port, 1)
    third = json.loads(ok(ms("logs", "pull", "--archive", str(arch), "--json", port=vb.port)))
    assert third["records"] >= 3
    data = load(Archive(arch, first["uid"]))
    assert len(data.sessions) == 2
    assert data.summaries.dtype.names and len(data.summaries) >= 2  # numpy structured arrays


def test_interrupted_pull_resumes_with_every_record_exactly_once(vboard, tmp_path):
    vb = vboard(board="virtual")
    _sessions(vb.port, 2)
    whole = pull(vb.port, tmp_path / "whole", chunk=64)
    assert whole.records >= 7  # boot, then start, summaries, end per session
    parts = tmp_path / "parts"
    cut = pull(vb.port, parts, chunk=64, stop_after_bytes=100)
    assert 0 < cut.records < whole.records
    rest = pull(vb.port, parts, chunk=64)
    assert cut.records + rest.records == whole.records and rest.duplicates == 0
    a = load(Archive(tmp_path / "whole", whole.uid))
    b = load(Archive(parts, whole.uid))
    assert len(a.sessions) == len(b.sessions) == 2
    assert (a.summaries == b.summaries).all() and len(a.events) == len(b.events)

"""`microstim logs pull` against a virtual board: only new records, each exactly once,
resumption after an interrupted pull, data loadable as numpy arrays."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from microstim.device import Device
from microstim.logpull import _hello_and_list, pull
from microstim.logs.archive import Archive
from microstim.logs.data import load
from test_cli_device import HOST, ms, ok


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


def test_logs_pull_loads_only_what_it_needs_and_times_its_transfer(vboard, tmp_path):
    """The whole command is what a user waits for: `logs pull` must not load numpy, rich,
    matplotlib or the other commands' modules, and reports its transfer phase."""
    vb = vboard(board="virtual")
    _sessions(vb.port, 1)
    code = ("import atexit, sys\n"
            "heavy = ('numpy', 'rich', 'matplotlib', 'microstim.bench', 'microstim.flashing',"
            " 'microstim.report', 'microstim.characterise', 'microstim.logs.data')\n"
            "atexit.register(lambda: print('LOADED', [m for m in heavy if m in sys.modules],"
            " file=sys.stderr))\n"
            "from microstim.cli import main\n"
            "main()\n")
    env = os.environ | {"PYTHONPATH": HOST}
    r = subprocess.run([sys.executable, "-c", code, "logs", "pull", "--port", vb.port, "--archive",
                        str(tmp_path / "a"), "--json", "--no-progress"],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    assert "LOADED []" in r.stderr, r.stderr
    d = json.loads(r.stdout)
    assert d["records"] >= 4
    assert 0 < d["transfer_s"] <= d["seconds"]


class _ScriptedLink:
    """A serial port whose device answers hello and log_list from a script; `silent` drops
    that many requests first (a board still booting), `log` records writes and reads."""

    def __init__(self, silent: int = 0):
        self.silent = silent
        self.out = bytearray()
        self.log: list[str] = []
        self.timeout = 0.05

    def write(self, data: bytes) -> int:
        self.log.append("write")
        for line in data.splitlines():
            req = json.loads(line)
            if self.silent:
                self.silent -= 1
                continue
            result = ({"proto": 1, "app": True, "uid": "0011"} if req["op"] == "hello"
                      else {"log_id": 7, "segments": [[1, 100]], "pending": 0})
            self.out += json.dumps({"id": req["id"], "ok": True, "result": result}).encode() + b"\n"
        return len(data)

    @property
    def in_waiting(self) -> int:
        return len(self.out)

    def read(self, n: int) -> bytes:
        self.log.append("read")
        if not self.out:
            time.sleep(0.01)
        data = bytes(self.out[:n])
        del self.out[:n]
        return data

    def reset_input_buffer(self) -> None:
        self.out.clear()

    def close(self) -> None:
        pass


def test_hello_and_log_list_go_out_in_one_exchange():
    link = _ScriptedLink()
    dev = Device("scripted", ser=link)
    info, lst = _hello_and_list(dev)
    assert info["uid"] == "0011" and lst["segments"] == [[1, 100]]
    assert link.log[:2] == ["write", "write"]  # both requests before the first read
    assert dev.info == info


def test_a_board_that_answers_late_still_gets_its_log_listed():
    link = _ScriptedLink(silent=2)  # the first hello and log_list go unanswered
    dev = Device("scripted", ser=link)
    info, lst = _hello_and_list(dev)
    assert info["uid"] == "0011" and lst["log_id"] == 7

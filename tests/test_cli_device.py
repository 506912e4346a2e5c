"""The host tool end to end: the `microstim` CLI as a user runs it, against a virtual board
through its serial port; the device protocol's rules; where mpremote can see the same
thing, both must agree."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import mpremote
from microstim import build
from microstim.device import Device, RequestError, escape

HOST = str(Path(__file__).resolve().parent.parent / "host")


def ms(*args: str, port: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "microstim.cli", *args]
    if port:
        cmd += ["--port", port]
    env = os.environ | {"PYTHONPATH": HOST}
    env.pop("MICROSTIM_PORT", None)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


@pytest.fixture
def board(vboard):
    return vboard(board="virtual")


def test_session_from_the_cli_status_monitor_stop(board):
    port = board.port
    st = json.loads(ok(ms("status", "--json", port=port)))
    assert st["state"] == "idle" and st["setpoint_ua"] == 200
    assert json.loads(ok(ms("start", "--setpoint", "120", "--json", port=port)))["state"] == "ramping"
    lines = ok(ms("monitor", "--seconds", "3", "--hz", "10", port=port)).splitlines()
    tel = [json.loads(x) for x in lines if '"tel"' in x]
    assert len(tel) >= 15, lines  # piped: JSON lines
    last = tel[-1]
    assert last["state"] == "stimulating" and last["target_ua"] == 120
    assert abs(last["i_ua"] - 120) < 6, last  # the firmware's own reading, for the view
    assert 1000 < last["z_ohm"] < 100000
    st = json.loads(ok(ms("status", "--json", port=port)))
    assert st["state"] == "stimulating" and st["remaining_s"] > 0
    assert ok(ms("stop", port=port)).strip() == "done"
    assert json.loads(ok(ms("status", "--json", port=port)))["state"] == "done"


def test_a_start_override_is_what_status_and_the_log_report(board, tmp_path):
    # `start --program/--setpoint` runs that session without changing the config: status
    # and the session's log record name what runs, not the config's program.
    from microstim.logs.archive import Archive
    from microstim.logs.data import load

    port = board.port
    assert json.loads(ok(ms("status", "--json", port=port)))["program"] == "steady"
    ok(ms("start", "--program", "tone", "--setpoint", "60", "--json", port=port))
    st = json.loads(ok(ms("status", "--json", port=port)))
    assert (st["program"], st["setpoint_ua"]) == ("tone", 60), st
    ok(ms("stop", port=port))
    assert json.loads(ok(ms("config", "show", "--json", port=port)))["config"]["program"] == "steady"
    pulled = json.loads(ok(ms("logs", "pull", "--archive", str(tmp_path / "a"), "--json", port=port)))
    s = load(Archive(tmp_path / "a", pulled["uid"])).sessions
    assert list(s["program"]) == ["tone"] and abs(float(s["setpoint_ua"][0]) - 60) < 1, s


def test_config_refusals_name_field_value_limit_and_change_nothing(board):
    port = board.port
    before = json.loads(ok(ms("config", "show", "--json", port=port)))["config"]
    r = ms("config", "set", "setpoint_ua=999", port=port)
    assert r.returncode == 2
    assert "microstim: config refused: setpoint_ua = 999 exceeds the board's ceiling of 400.0 uA" in r.stderr
    r = ms("config", "set", "program=zap", port=port)
    assert r.returncode == 2 and "program = 'zap' is not one of fine, lift, pulse3, steady, tone" in r.stderr
    r = ms("config", "set", "duration_s=5000", port=port)
    assert r.returncode == 2 and "duration_s = 5000 exceeds the maximum of 1200 s" in r.stderr
    assert json.loads(ok(ms("config", "show", "--json", port=port)))["config"] == before
    # The device refuses by itself too (a host with no schema, or an older one).
    with Device(port) as dev:
        dev.connect()
        with pytest.raises(RequestError) as e:
            dev.request("config_set", values={"setpoint_ua": 401})
        assert e.value.error["field"] == "setpoint_ua" and e.value.error["limit"] == 400
    out = json.loads(ok(ms("config", "set", "setpoint_ua=150", "program=lift", "--json", port=port)))
    assert out["applied"] and out["config"]["setpoint_ua"] == 150
    shown = json.loads(ok(ms("config", "show", "--json", port=port)))["config"]
    assert shown == dict(before, setpoint_ua=150, program="lift")
    # mpremote reads the very file the device keeps (it interrupts the app: last step).
    r = mpremote(port, "fs", "cat", ":config.json")
    assert json.loads(r.stdout.strip().splitlines()[-1]) == shown


def test_config_validate_and_apply_files(board, tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"program": "tone", "setpoint_ua": 90, "duration_s": 300}))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"program": "tone", "setpoint_ua": 450}))
    ok(ms("config", "validate", str(good)))
    r = ms("config", "validate", str(bad))
    assert r.returncode == 2 and "setpoint_ua = 450 exceeds the board's ceiling of 400.0 uA" in r.stderr
    r = ms("config", "apply", str(bad), port=board.port)
    assert r.returncode == 2
    out = json.loads(ok(ms("config", "apply", str(good), "--json", port=board.port)))
    assert out["config"] == {"program": "tone", "setpoint_ua": 90, "duration_s": 300, "cue_s": 5}


def test_every_request_gets_exactly_one_response_and_bad_input_changes_nothing(board):
    with Device(board.port) as dev:
        dev.connect()
        raw = [b"not json", b"[1,2]", b'{"op":"status"}', b'{"id":7,"op":"warp"}',
               b'{"id":8,"op":"intensity","level":9}', b'{"id":9,"op":"telemetry","hz":"fast"}',
               b'{"id":10,"op":"status"}', b"{" + b"x" * 2000 + b"}"]
        for line in raw:
            dev.ser.write(line + b"\n")
        got = []
        deadline = time.monotonic() + 5
        while len(got) < len(raw) and time.monotonic() < deadline:
            obj = dev._parse(dev._line(deadline))
            if obj and "ok" in obj:
                got.append(obj)
        time.sleep(0.5)
        extra = dev.ser.read(dev.ser.in_waiting or 1)
        assert b'"ok"' not in extra  # no second response to anything
        assert [g["ok"] for g in got] == [False] * 6 + [True, False]
        codes = [g["error"]["code"] for g in got if not g["ok"]]
        assert codes == ["bad_json", "bad_json", "bad_request", "unknown_op", "bad_value",
                         "bad_request", "too_long"]
        assert "op 'warp' is not one of" in got[3]["error"]["message"]
        assert got[4]["error"]["field"] == "level" and got[4]["error"]["limit"] == [1, 5]
        assert dev.request("status")["state"] == "idle"  # nothing changed


def test_stop_works_while_telemetry_streams(board):
    with Device(board.port) as dev:
        dev.connect()
        dev.request("telemetry", hz=50)
        dev.request("start")
        time.sleep(1.0)  # telemetry piles up unread in the meantime
        t = time.monotonic()
        assert dev.request("stop")["state"] == "done"
        assert time.monotonic() - t < 1.0
        assert len(dev.queue) > 20  # the stream was running, and was not mistaken for replies
        assert dev.request("status")["state"] == "done"


def test_host_disconnect_mid_command_leaves_a_defined_safe_state(board):
    port = board.port
    with Device(port) as dev:
        dev.connect()
        dev.request("start")
        before = {p: sha for p, _, sha in []}
        dev.ser.write(b'{"id":1,"op":"sta')  # half a request, then the host vanishes
    time.sleep(1.5)
    with Device(port) as dev:
        dev.connect()
        assert dev.request("status")["state"] in ("ramping", "stimulating")  # unchanged
        dev.request("stop")
        files = {p: sha for p, _, sha in dev.request("fs_list")["files"]}
        data = b"\x03\x10 new engine " * 300
        dev.request("fs_put", path="/msfw/engine.mpy", size=len(data),
                    sha256=hashlib.sha256(data).hexdigest())
        block = data[:1024]
        esc = escape(block)
        import zlib

        # Announce a block, send half of it, and vanish.
        dev.ser.write(json.dumps({"id": 99, "op": "fs_data", "n": len(block), "e": len(esc),
                                  "crc": zlib.crc32(block)}).encode() + b"\n" + esc[:300])
    time.sleep(3)  # the device gives up on the missing bytes (2 s) and carries on
    with Device(port) as dev:
        dev.connect()
        after = {p: sha for p, _, sha in dev.request("fs_list")["files"]}
        assert after == files  # the old engine is whole; no .new file left behind
        assert not any(p.endswith(".new") for p in after)
        assert dev.request("status")["state"] == "done"
    del before


def test_deploy_sends_only_what_changed_and_agrees_with_mpremote(board, tmp_path):
    port = board.port
    r = json.loads(ok(ms("deploy", "--json", "--no-progress", port=port)))
    assert r["sent"] == [] and not r["restarted"]
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"setpoint_ua": 80}))
    r = json.loads(ok(ms("deploy", "--config", str(cfg), "--json", port=port)))
    assert r["sent"] == ["/config.json"] and r["restarted"] and r["firmware"]
    assert json.loads(ok(ms("status", "--json", port=port)))["setpoint_ua"] == 80
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"setpoint_ua": 4000}))
    r = ms("deploy", "--config", str(bad), port=port)
    assert r.returncode == 2 and "setpoint_ua = 4000" in r.stderr
    # Every file on the device hashes as mpremote sees it, and as the build says.
    items = {i.path: i.sha256 for i in build.firmware_items("virtual")}
    with Device(port) as dev:
        dev.connect()
        dev_side = {p: sha for p, _, sha in dev.request("fs_list")["files"]}
    for path in ("/msfw/engine.mpy", "/main.py", "/board.json"):
        assert dev_side[path] == items[path]
    out = mpremote(port, "fs", "sha256sum", ":msfw/engine.mpy", ":main.py")
    for path in ("/msfw/engine.mpy", "/main.py"):
        assert items[path] in out.stdout, out.stdout + out.stderr


def test_deploy_reaches_a_board_whose_app_is_not_running(board):
    port = board.port
    r = mpremote(port, "exec", "import os; os.remove('msfw/proto.mpy'); os.remove('main.py')")
    assert r.returncode == 0, r.stderr
    # A board with no app: the protocol module goes in through the raw REPL.
    r = json.loads(ok(ms("deploy", "--json", "--no-progress", port=port)))
    assert r["via"] == "raw REPL" and sorted(r["sent"]) == ["/main.py", "/msfw/proto.mpy"], r
    assert r["restarted"] and r["firmware"]
    assert json.loads(ok(ms("status", "--json", port=port)))["state"] == "idle"


def test_usb_power_inhibits_a_board_without_isolation(vboard):
    vb = vboard(board="esp32-devkitc", sim={"usb_present": True})  # plugged in
    r = ms("start", port=vb.port)
    assert r.returncode == 3
    assert "USB power is present and this board's USB link is not isolated" in r.stderr
    assert json.loads(ok(ms("status", "--json", port=vb.port)))["state"] == "idle"


def test_errors_say_what_to_do(tmp_path):
    r = ms("status", port=str(tmp_path / "ttyNOPE"))
    assert r.returncode == 3 and r.stderr.startswith("microstim: ")
    assert "no such port; `microstim ports` lists the boards it can see" in r.stderr
    r = ms("config", "set", "setpoint_ua", port=str(tmp_path / "ttyNOPE"))
    assert r.returncode in (2, 3)
    r = ms("monitor", "--hz", "500")
    assert r.returncode == 2


def test_commands_in_their_own_modules_are_listed_and_run():
    """The top-level group imports a command's module only when it is used; help still
    lists every command, and each one's own help works."""
    top = ok(ms("--help"))
    for name in ("bench", "boards", "calibrate", "characterise", "config", "demo", "deploy", "flash",
                 "info", "logs", "monitor", "ports", "report", "sim", "start", "status", "stop"):
        assert f"  {name} " in top, name
    logs = ok(ms("logs", "--help"))
    assert all(f"  {c} " in logs for c in ("export", "pull", "show"))
    assert "--archive" in ok(ms("logs", "pull", "--help"))
    assert "--board" in ok(ms("flash", "--help"))
    r = ms("nosuch")
    assert r.returncode == 2 and "No such command" in r.stderr


def test_a_config_set_while_stimulating_waits_in_ram_and_is_saved_when_the_output_is_off(board):
    """A flash write stalls the CPU: none may happen while the output is on. A config set
    during a session is kept in RAM (`pending`) and saved and applied when it ends."""
    flash = board.run_dir / "flash.img"
    with Device(board.port) as dev:
        dev.connect()
        dev.request("config_set", values={"setpoint_ua": 120, "duration_s": 120})
        dev.request("start")
        deadline = time.monotonic() + 10
        while dev.request("status")["state"] != "stimulating":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        before = hashlib.sha256(flash.read_bytes()).hexdigest()
        out = dev.request("config_set", values={"setpoint_ua": 80})
        assert out["applied"] is False
        got = dev.request("config_get")
        assert got["config"]["setpoint_ua"] == 120 and got["pending"]["setpoint_ua"] == 80
        time.sleep(0.5)
        assert dev.request("status")["state"] in ("ramping", "stimulating")
        assert hashlib.sha256(flash.read_bytes()).hexdigest() == before  # nothing written
        dev.request("stop")  # the output goes off: the config is saved and applied
        deadline = time.monotonic() + 10
        while dev.request("config_get")["pending"] is not None:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        got = dev.request("config_get")
        assert got["config"]["setpoint_ua"] == 80 and got["pending"] is None
    r = mpremote(board.port, "fs", "cat", ":config.json")
    assert json.loads(r.stdout.strip().splitlines()[-1])["setpoint_ua"] == 80


def test_a_board_left_at_the_repl_by_mpremote_is_restarted_into_the_firmware(board):
    """After `mpremote fs ls` the board sits at its REPL; the next microstim command
    soft-resets it into the firmware (which stays idle) instead of failing."""
    r = mpremote(board.port, "fs", "ls", ":")
    assert r.returncode == 0 and "main.py" in r.stdout
    out = json.loads(ok(ms("status", "--json", port=board.port)))
    assert out["state"] == "idle"
    assert 5 in [cause for cause, _ in board.supervisor.resets]  # a soft reset brought it back

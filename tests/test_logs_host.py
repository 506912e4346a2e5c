"""The host side of the session log: the archive keeps every verified record exactly once
across interrupted and resumed pulls, reports corruption and never stores it, loads as
numpy arrays, exports CSV; the decoder shares the firmware's constants."""

import csv
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import MICROPYTHON, ROOT
from microstim.logs import archive as A
from microstim.logs import cli as logs_cli
from microstim.logs import data as D
from microstim.logs import format as F
from microstim.logs import generate as G


@pytest.fixture(scope="module")
def month(tmp_path_factory):
    """A month of use written by the firmware's LogStore on the unix port."""
    return G.generate(tmp_path_factory.mktemp("gen"), days=30, seed=7)


def device_records(segs):
    out = {}
    for sid, data in segs.items():
        sc = F.scan(data, seg_id=sid, final=True)
        assert sc.corrupt == []
        for r in sc.records:
            if r.type != F.fw.T_SEG:
                out[r.seq] = r.raw
    return out


def archived_records(arch):
    seqs, raws = [], {}
    for _key, _sid, p in arch.segment_files():
        for r in F.scan(p.read_bytes(), final=True).records:
            if r.type != F.fw.T_SEG:
                seqs.append(r.seq)
                raws[r.seq] = r.raw
    return seqs, raws


def test_decoder_uses_the_firmware_module_and_its_names():
    assert F.fw.__file__ == str(ROOT / "firmware/msfw/logstore.py")
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'firmware')!r}); from msfw import supervisor as s; "
            "print(repr(s.FAULT_NAMES)); print(repr(s.CONTACT_NAMES))")
    r = subprocess.run([MICROPYTHON, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    faults, contacts = r.stdout.splitlines()
    assert eval(faults) == F.FAULT_NAMES and eval(contacts) == F.CONTACT_NAMES


def test_interrupted_and_resumed_pulls_store_every_record_exactly_once(month, tmp_path):
    """Pulls in random chunks, some cut mid-record, the host 'crashing' between chunks
    (a fresh Archive object each time, sometimes after appending but before saving its
    state), overlapping re-sends: the archive ends with each device record once."""
    segs = month.segments
    want = device_records(segs)
    rng = random.Random(3)
    root = tmp_path / "arch"
    ids = sorted(segs)
    log_id = F.decode(F.scan(segs[ids[0]][:64]).records[0])["log_id"]
    total_accepted = 0
    for _pull in range(200):
        arch = A.Archive(root, "dev1")
        seg, off = arch.resume_point(log_id)
        todo = [s for s in ids if s >= seg]
        if not todo:
            break
        sid = todo[0]
        start = off if sid == seg else 0
        if rng.random() < 0.2 and start > 0:
            start = max(0, start - rng.randrange(1, 300))  # a re-send overlapping what is stored
        end = min(len(segs[sid]), start + rng.randrange(1, 6000))
        res = A.ingest(arch, sid, start, segs[sid][start:end], log_id=log_id,
                       sealed=sid != ids[-1] and end == len(segs[sid]))
        assert res.corrupt == [], res.corrupt
        total_accepted += res.accepted
        if res.resume == (sid, len(segs[sid])) and sid != ids[-1]:
            # Done with this segment: the next pull starts the next one at offset 0.
            arch.state["epochs"][f"{log_id:08x}"]["hwm"] = [ids[ids.index(sid) + 1], 0]
            arch._save()
        if rng.random() < 0.1:
            # Crash after appending to a segment file, before state.json was replaced.
            p = arch._seg_path(f"{log_id:08x}", sid)
            with open(p, "ab") as f:
                f.write(segs[sid][: rng.randrange(1, 200)])
    arch = A.Archive(root, "dev1")
    seqs, raws = archived_records(arch)
    assert seqs == sorted(want) and len(seqs) == len(set(seqs)) == len(want)
    assert raws == want
    assert total_accepted == len(want)
    assert arch.corruption_log() == []


def test_a_second_pull_of_the_same_bytes_adds_nothing(month, tmp_path):
    arch = A.Archive(tmp_path, "dev")
    first = A.ingest_segments(arch, month.segments)
    again = A.ingest_segments(A.Archive(tmp_path, "dev"), month.segments)
    assert first.accepted == len(device_records(month.segments)) and again.accepted == 0


def test_corrupted_bytes_are_reported_and_never_stored(month, tmp_path):
    segs = dict(month.segments)
    sid = sorted(segs)[1]
    data = bytearray(segs[sid])
    recs = F.scan(bytes(data), final=True).records
    victims = [recs[5], recs[20]]
    data[victims[0].offset + 9] ^= 0x40  # a flipped bit in a payload
    data[victims[1].offset + 1] ^= 0xFF  # a mangled type byte
    segs[sid] = bytes(data)
    arch = A.Archive(tmp_path, "dev")
    res = A.ingest_segments(arch, segs)
    bad = sorted((c.seg_id, c.offset) for c in res.corrupt)
    assert bad == [(sid, victims[0].offset), (sid, victims[1].offset)]
    assert all(c.reason == "bad checksum" for c in res.corrupt)
    seqs, raws = archived_records(arch)
    assert victims[0].seq not in seqs and victims[1].seq not in seqs
    assert len(seqs) == len(device_records(month.segments)) - 2
    # Reported for good: in the archive's corruption log, in load(), in `logs show`.
    assert len(arch.corruption_log()) == 2
    d = D.load(arch)
    assert len(d.corrupt) == 2
    r = CliRunner().invoke(logs_cli.group, ["show", "--archive", str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.output)["corrupt"]) == 2
    # A record missing from the sequence is reported as such by ingest.
    assert any(lo <= victims[0].seq <= hi for lo, hi in res.missing)


def test_truncated_end_of_a_sealed_segment_is_corruption_not_silence(month, tmp_path):
    segs = dict(month.segments)
    sid = sorted(segs)[0]
    segs[sid] = segs[sid][:-7]
    res = A.ingest_segments(A.Archive(tmp_path, "dev"), segs)
    assert [c.reason for c in res.corrupt] == ["truncated record"]


def test_an_unsealed_tail_waits_for_the_next_pull(month, tmp_path):
    """The newest segment's last record half-read: not an error, pulled next time."""
    segs = month.segments
    last = sorted(segs)[-1]
    arch = A.Archive(tmp_path, "dev")
    cut = len(segs[last]) - 5
    res = A.ingest_segments(arch, {**segs, last: segs[last][:cut]})
    assert res.corrupt == [] and res.incomplete > 0
    seg, off = arch.resume_point()
    assert seg == last and off < cut
    res2 = A.ingest(arch, last, off, segs[last][off:])
    assert res2.accepted == 1 and res2.corrupt == []


def test_a_new_device_log_starts_a_new_epoch(month, tmp_path):
    arch = A.Archive(tmp_path, "dev")
    A.ingest_segments(arch, month.segments)
    other = G.generate(tmp_path / "g2", days=3, seed=9)  # a reflashed device: new log id
    res = A.ingest_segments(arch, other.segments)
    assert res.accepted == len(device_records(other.segments))
    assert len(arch.state["epochs"]) == 2
    d = D.load(arch)
    assert len(d.sessions) == len(D.load(month.segments).sessions) + len(D.load(other.segments).sessions)


def test_load_gives_structured_arrays_matching_the_plan(month, tmp_path):
    arch = A.Archive(tmp_path, "dev")
    A.ingest_segments(arch, month.segments)
    d = D.load(arch)
    for arr in (d.sessions, d.summaries, d.events, d.boots):
        assert isinstance(arr, np.ndarray) and arr.dtype.names
    planned = [a for a in month.plan["actions"] if a["a"] == "session" and not a.get("cut")]
    assert len(d.sessions) == len(planned)
    starts = sorted(a["rtc"] for a in planned)
    assert np.array_equal(np.sort(d.sessions["start_s"]), np.array(starts, float))
    assert list(d.sessions["program"]) == [a["prog"] for a in sorted(planned, key=lambda a: a["rtc"])]
    assert (d.sessions["end_reason"] == "fault").sum() == 1
    assert (d.events["kind"] == "fault").sum() == 1
    # The first boot happened before the clock was set: its time was corrected.
    assert not np.isnan(d.boots["time_s"][0]) and d.boots["time_s"][0] < d.sessions["start_s"].min()
    # Summaries: one row per second of each session.
    for s in d.sessions:
        assert len(d.session_summaries(s["seq"])) == s["seconds"]


def test_export_csv(month, tmp_path):
    arch = A.Archive(tmp_path / "a", "dev")
    A.ingest_segments(arch, month.segments)
    r = CliRunner().invoke(logs_cli.group, ["export", "--archive", str(tmp_path / "a"),
                                            "--out", str(tmp_path / "out"), "--format", "csv"])
    assert r.exit_code == 0, r.output
    d = D.load(arch)
    with open(tmp_path / "out" / "sessions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(d.sessions) and rows[0]["start_utc"].startswith("2026-")
    with open(tmp_path / "out" / "summaries.csv") as f:
        assert sum(1 for _ in f) == len(d.summaries) + 1
    r = CliRunner().invoke(logs_cli.group, ["show", "--archive", str(tmp_path / "a")])
    assert r.exit_code == 0 and "overcurrent" in r.output


def test_show_without_logs_says_what_to_do(tmp_path):
    r = CliRunner().invoke(logs_cli.group, ["show", "--archive", str(tmp_path / "none")])
    assert r.exit_code == 2 and "logs pull" in r.output


def test_firmware_code_cache_follows_the_source(tmp_path, monkeypatch):
    """logstore.py's compiled code is cached in the user's cache (never beside the firmware),
    keyed by the source: an edited file is compiled afresh, never served stale."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(F.sys, "dont_write_bytecode", False)
    src = tmp_path / "mod.py"
    src.write_text("X = 1\n")
    ns: dict = {}
    exec(F._firmware_code(src), ns)
    assert ns["X"] == 1 and len(list((tmp_path / "cache").rglob("*.code"))) == 1
    src.write_text("X = 2\n")  # same length, other text
    ns = {}
    exec(F._firmware_code(src), ns)
    assert ns["X"] == 2 and len(list((tmp_path / "cache").rglob("*.code"))) == 2
    # PYTHONDONTWRITEBYTECODE (-B) is honoured: nothing written.
    monkeypatch.setattr(F.sys, "dont_write_bytecode", True)
    src.write_text("X = 3\n")
    ns = {}
    exec(F._firmware_code(src), ns)
    assert ns["X"] == 3 and len(list((tmp_path / "cache").rglob("*.code"))) == 2
    assert not list((ROOT / "firmware").rglob("*.code"))


def test_log_names_load_on_first_use():
    """`microstim.logs` and the decoder's firmware names load lazily and are the firmware's."""
    code = ("import sys\n"
            "import microstim.logs as L\n"
            "assert 'numpy' not in sys.modules and 'microstim.logs.data' not in sys.modules\n"
            "from microstim.logs import Archive, load\n"
            "assert 'numpy' in sys.modules and callable(load) and Archive.__name__ == 'Archive'\n"
            "from microstim.logs import format as F\n"
            "print(F.FAULT_NAMES[1], F.STATE_NAMES[2], F.event_detail(F.fw.EV_FAULT, 1))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env=os.environ | {"PYTHONPATH": str(ROOT / "host")})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["overcurrent", "stimulating", "overcurrent"]

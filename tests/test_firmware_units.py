"""Firmware rules that need no session: run on the MicroPython unix port."""

import json

import pytest
from conftest import ROOT
from test_hot_path import SETUP


def test_board_above_1ma_is_refused(mp, tmp_path):
    spec = json.loads((ROOT / "boards/virtual/board.json").read_text())
    spec["frontend"]["hw_current_limit_ua"] = 1500
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(spec))
    r = mp(SETUP + f"""
try:
    boardmod.load({str(bad)!r}, {str(ROOT / 'boards/virtual/pins.csv')!r})
    print("accepted")
except boardmod.BoardError as e:
    print("refused:", e)
""")
    assert "refused: frontend.hw_current_limit_ua = 1500.0 exceeds the absolute maximum of 1000.0 uA" in r.stdout, r.stderr


def test_bad_programs_are_refused_naming_the_field(mp):
    r = mp(SETUP + """
from msfw import programs
base = {"freq_hz": 10, "phase_us": 20000, "gap_us": 1000, "train_n": 1, "train_on_ms": 0, "train_off_ms": 0}
for change in ({"freq_hz": 0.1}, {"freq_hz": 500}, {"phase_us": "long"}, {"gap_us": 10},
               {"phase_us": 60000}, {"freq_hz": 200, "phase_us": 300, "gap_us": 100}):
    p = dict(base); p.update(change)
    try:
        programs.validate(p); print("accepted")
    except programs.ProgramError as e:
        print("refused|" + str(e))
try:
    programs.get("zap")
except programs.ProgramError as e:
    print("refused|" + str(e))
""")
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 7 and all(x.startswith("refused|program") for x in lines), r.stdout + r.stderr
    assert "program.freq_hz = 0.1 is outside 0.3..400" in lines[0]
    assert "program.freq_hz = 500 is outside" in lines[1]
    assert "program.phase_us: missing or not a number" in lines[2]
    assert "program.gap_us = 10" in lines[3]
    assert "'zap' is not one of" in lines[6]


def test_relocation_cue_every_cue_s(mp):
    r = mp(SETUP + """
eng = E.Engine(hw, {"program": "steady", "setpoint_ua": 200, "duration_s": 600, "cue_s": 5})
eng.start(hw.ticks_ms())
cues = []
t0 = hw.ticks_ms()
while hw.ticks_diff(hw.ticks_ms(), t0) < 21000:
    eng.tick(hw.ticks_us(), hw.ticks_ms())
    for kind, value in eng.drain():
        if kind == E.E_CUE:
            cues.append(hw.ticks_diff(hw.ticks_ms(), t0))
    hw.sleep_ms(1)
print(len(cues), *cues)
""")
    out = r.stdout.split()
    assert out and out[0] == "4", r.stdout + r.stderr
    gaps = [int(b) - int(a) for a, b in zip(out[1:], out[2:], strict=False)]
    assert all(4990 <= g <= 5010 for g in gaps)


def test_a_dense_train_that_never_shows_one_polarity_long_enough_is_refused():
    """The load voltage (short and contact checks) is read in a dense train only where one
    polarity fills 3/4 of an ADC window; a train with no such window would run unchecked."""
    from microstim.api import firmware_module

    P = firmware_module("msfw.programs")
    base = {"freq_hz": 400, "train_n": 1, "train_on_ms": 0, "train_off_ms": 0}
    assert P.validate(dict(base, phase_us=880, gap_us=160))["sampling"] == "dense"
    with pytest.raises(P.ProgramError) as e:
        P.validate(dict(base, phase_us=870, gap_us=180))  # every window still half on
    assert "program.phase_us = 870" in str(e.value) and "3/4" in str(e.value)
    assert P.get("fine")["sampling"] == "dense"  # the library's dense program qualifies


def test_out_of_memory_while_stimulating_latches_a_heap_fault_and_the_app_goes_on(mp):
    """A MemoryError in the engine while the output is on (a pause or restart that found no
    heap) turns the output off, latches a `heap` fault and reports it; the loop goes on
    (before, the app ended: safe, but a dead device until reset)."""
    r = mp(SETUP + """
from msfw import app as A
from msfw.supervisor import FAULT_NAMES
a = A.App(b, hw)
a.boot = lambda: None  # no flash here (the host's own filesystem): no log, no protocol
a.serve_host = lambda: None
a.log = None
eng = a.eng
real_tick = eng.tick
n = [0]
def tick(now_us, now_ms):
    n[0] += 1
    if n[0] == 2000:
        raise MemoryError("memory allocation failed")
    return real_tick(now_us, now_ms)
eng.tick = tick
class Done(Exception):
    pass
real_sleep = hw.sleep_us
def sleep_us(us):
    if n[0] >= 2600:
        raise Done()
    real_sleep(us)
hw.sleep_us = sleep_us
a.prepare_session()
eng.start(hw.ticks_ms())
try:
    a.run()
except Done:
    pass
print("RESULT", E.STATE_NAMES[eng.state], FAULT_NAMES[eng.sup.fault], W.output_level(W.gpio_en), n[0])
""")
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT")]
    assert line, r.stdout + r.stderr
    state, fault, en, ticks = line[0].split()[1:]
    assert (state, fault, en) == ("fault", "heap", "0")
    assert int(ticks) >= 2600  # the loop kept running after the fault
    assert '"fault": "heap"' in r.stdout  # reported


def test_a_conversion_running_when_a_pattern_stops_is_not_read_as_the_next_patterns(mp):
    # fine's conversions run back to back. Before auto-off the engine stops the train in a
    # rest and starts a 10 uA recovery phase that drains CBLOCK, while the train's last
    # conversion is still running. An ADS1115 ignores a start while it converts: read as
    # the recovery's first current, that conversion (the train's 200 uA in part of its
    # window) tripped overcurrent. Each drain here starts at another place in the train.
    r = mp(SETUP + """
out = []
for k in range(8):
    eng = E.Engine(hw, {"program": "fine", "setpoint_ua": 200, "duration_s": 600, "cue_s": 5})
    eng.start(hw.ticks_ms())
    t_end = hw.ticks_add(hw.ticks_ms(), 2800)
    while hw.ticks_diff(t_end, hw.ticks_ms()) > 0:
        eng.tick(hw.ticks_us(), hw.ticks_ms())
        hw.sleep_us(eng.wait_us(hw.ticks_us()))
    t_end = hw.ticks_add(hw.ticks_us(), 313 * k)
    while hw.ticks_diff(t_end, hw.ticks_us()) > 0:
        eng.tick(hw.ticks_us(), hw.ticks_ms())
        hw.sleep_us(50)
    busy = eng.sampler.busy
    eng.ending = 1  # as at duration - drain_ms
    first = -1
    t_end = hw.ticks_add(hw.ticks_ms(), 500)
    while eng.state not in (E.S_DONE, E.S_FAULT) and hw.ticks_diff(t_end, hw.ticks_ms()) > 0:
        eng.tick(hw.ticks_us(), hw.ticks_ms())
        if eng.rec_us and first < 0 and eng.sampler.fresh == 1:
            first = eng.sampler.i_cu / 32
        hw.sleep_us(eng.wait_us(hw.ticks_us()))
    print(E.STATE_NAMES[eng.state], eng.sup.fault, busy, first, eng.rec0_cu / 32)
""")
    rows = [x.split() for x in r.stdout.strip().splitlines()]
    assert len(rows) == 8, r.stdout + r.stderr
    assert sum(int(b) != 0 for _, _, b, _, _ in rows) >= 4, rows  # a conversion was running
    for state, fault, _, first, rec in rows:
        assert (state, fault) == ("done", "0"), rows
        assert 0 <= float(first) <= 1.5 * float(rec) + 2, rows


def test_a_request_that_finds_no_heap_is_answered_or_dropped_never_fatal(mp):
    # A small heap, a big answer: an op that runs out of heap gets a no_memory error; if
    # not even the error fits, the request goes unanswered and handle() returns (the app's
    # loop, and a session it runs, go on).
    r = mp(f"""
import sys
sys.path.insert(0, {str(ROOT / 'firmware')!r})
from msfw import proto
class Link:
    full = False
    def __init__(self):
        self.out = []
    def write_line(self, obj):
        if self.full:
            raise MemoryError
        self.out.append(obj)
def hog(req):
    raise MemoryError
class Ops:
    def get(self, name):
        return hog if name == "hog" else None
    def __iter__(self):
        return iter(("hog",))
link = Link()
s = proto.Server(link, lambda: {{}}, Ops())
s.handle(b'{{"id": 1, "op": "hog"}}')
print("1", link.out[-1]["ok"], link.out[-1]["error"]["code"])
link.full = True
s.handle(b'{{"id": 2, "op": "hog"}}')
s.handle(b'{{"id": 3, "op": "nope"}}')
link.full = False
s.handle(b'{{"id": 4, "op": "hog"}}')
print("4", len(link.out), link.out[-1]["id"])
""")
    assert r.stdout.split() == ["1", "False", "no_memory", "4", "2", "4"], r.stdout + r.stderr

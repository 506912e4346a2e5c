# Building an engine (msfw.engine.Engine.__init__): it runs once per engine, so its code
# is loaded for that and dropped again (msfw.app LAZY): a session does not carry it.
from array import array

from micropython import const

from msfw import engine as E
from msfw import pulse
from msfw.regulator import Regulator
from msfw.sampler import Sampler, Timeline
from msfw.supervisor import C_NONE, F_NONE, Supervisor

_MAX_DURATION_MS = const(1200000)  # 20 minutes, whatever the config says
_SOFT_START_MS = const(1500)  # at least 1 s (SAFETY.md 4)
_RAMP_MIN_PERIODS = const(3)  # slow programs ramp over at least this many whole periods

# A 5 Hz biphasic probe, 3.5 ms phases: two whole conversions (current, then load) fit
# in each phase, so a stuck DAC is seen within the first probe phase it drives.
PROBE = {"freq_hz": 5, "phase_us": 3500, "gap_us": 200, "train_n": 1,
         "train_on_ms": 0, "train_off_ms": 0}


def timing(eng, prog, now=False):
    """now: make a hardware-timed train's RMT patterns at once (the probe's: a pause,
    which must not fail for want of heap, then allocates none)."""
    from msfw import programs

    seq, macro = programs.timeline(prog)
    hw = eng.hw
    if prog["software_timed"]:
        tl = Timeline(seq, macro, 0, hw.ticks_diff, hw.ticks_add)
        timer = pulse.SoftwareTimer(hw.en, hw.pol, hw.ticks_us)
    else:
        tl = Timeline(seq, macro, pulse.lead_us(seq, macro), hw.ticks_diff, hw.ticks_add)
        timer = pulse.HardwareTimer(hw.en, hw.pol, seq if now else None, macro)
    tl.prog = prog
    tl.seq = seq
    return tl, timer


def init(eng, hw, cfg, cal):
    from msfw import calib, programs

    board = hw.board
    eng.hw = hw
    eng.cfg = cfg
    prog = cfg["program"]
    eng.program = programs.validate(prog) if isinstance(prog, dict) else programs.get(prog)
    if cal == calib.STORED:
        cal = calib.load(board=board)
    eng.cal = cal or None
    eng.calibrated = eng.cal is not None
    # An uncalibrated board runs at a fraction of its ceiling: its current is only as
    # good as the nominal component values (issue 6; `info` says so).
    eng.ceiling_ua = board.ceiling_ua if eng.calibrated else board.ceiling_ua * calib.UNCALIBRATED_CEILING
    # Config can lower the ceiling, never raise it (SAFETY.md 1).
    sp = cfg["setpoint_ua"]
    eng.setpoint_capped = sp > eng.ceiling_ua
    if eng.setpoint_capped:
        sp = eng.ceiling_ua
    eng.setpoint_cu = int(sp * 32)
    dur = int(cfg["duration_s"] * 1000)
    eng.duration_ms = dur if dur < _MAX_DURATION_MS else _MAX_DURATION_MS
    eng.cue_ms = int(cfg["cue_s"] * 1000)
    eng.level = E.LEVELS
    eng.reg = Regulator(board, eng.ceiling_ua, eng.cal)
    eng.new_period = False
    eng.dac_pending = False
    eng.sup = Supervisor(board, eng.ceiling_ua)
    eng.sampler = Sampler(board, hw.adc, hw.ticks_us, hw.ticks_diff)
    if eng.cal:
        eng.sampler.set_calibration(*calib.sampler_terms(eng.cal))
        k = eng.cal.get("fine_k_q8")
        if k and hasattr(hw.dac, "fine_k_q8"):
            hw.dac.fine_k_q8 = k
    eng.check_failed = F_NONE  # a failed boot self-check refuses every session
    eng.main_tl, eng.main_timer = timing(eng, eng.program)
    # The soft start steps once per macro period (a whole +/- pair or train at one level),
    # so a slow program (lift: 2 s periods) ramps over several periods, not in one jump.
    macro_ms = eng.main_tl.macro_us // 1000
    eng.ramp_ms = _SOFT_START_MS if _SOFT_START_MS >= _RAMP_MIN_PERIODS * macro_ms else _RAMP_MIN_PERIODS * macro_ms
    eng.macro_ms = macro_ms
    eng.probe_tl, eng.probe_timer = timing(eng, programs.validate(PROBE), True)
    eng.tl = None
    eng.timer = None
    eng.software = False
    eng.state = E.S_IDLE
    eng._ev_kind = bytearray(E.EVENT_SLOTS)
    eng._ev_val = array("i", [0] * E.EVENT_SLOTS)
    eng._ev_n = 0
    eng.t0_ms = 0
    eng.ramp_from = 0
    eng.ramp_to = 0
    eng.ramp_t0 = 0
    eng.last_learn = 0
    eng.last_cue = 0
    eng.good_since = 0
    eng.last_pos = 0
    eng.dac_last = -1
    eng.pause_reason = C_NONE
    eng.limit_cu = eng.setpoint_cu  # lowered when the load needs more than compliance
    eng.compliance_limited = False
    eng.burst_on = True
    eng.burst_t0 = 0
    eng.measured_q4 = 0
    # The DC-blocking capacitor (in series with the electrodes): its voltage adds to
    # what the source must drive (compliance), not to the load reading (taken after
    # it). Tracked from the charge delivered: cb_uv at the start of the
    # running pattern's period (a whole period adds none), lvl_cu the current flowing.
    eng.cb_c = int(board.dc_block_uf + 0.5) or 1
    eng.cb_uv = 0
    eng.lvl_cu = 0
    eng.rec_us = 0  # > 0 while a recovery phase runs
    eng.next_cu = -1  # a lower target waiting for the next rest
    eng.rec_t0 = 0
    eng.rec_timer = pulse.SoftwareTimer(hw.en, hw.pol, hw.ticks_us)
    # A session that runs to auto-off ends with a recovery phase too: at the end of a
    # whole period (CBLOCK back at the centre), the start's recovery phase mirrored, at
    # the same DAC code, so the session leaves no net charge in the skin. It begins
    # early enough to end by the duration (a period to finish, then the mirror).
    eng.ending = 0  # 1: waiting for the period's end; 2: draining
    eng.rec0_cu = 0  # the start's recovery phase: nominal current and DAC code
    eng.rec0_code = 0
    us = eng._rec_us(eng._centre(eng.setpoint_cu), eng._rec_cu(eng.setpoint_cu))
    us = (int(us) if us < E.REC_MAX_US else E.REC_MAX_US) // 1000
    eng.drain_ms = us + (us >> 2) + eng.macro_ms + 5
    # The recovery phase's Timeline: made once, its pattern set for each phase.
    tl = eng.rec_tl = Timeline(((0, 1, 1),), 20001, 0, hw.ticks_diff, hw.ticks_add)
    tl.prog = {"software_timed": True, "sampling": "sync"}

# The application's occasional work, kept out of the heap while a session runs: reading
# and checking the config, the boot-time log and self-check, and the protocol operations
# a host uses with the output off (config, info, calibration, log transfer). msfw.app
# imports this module on first use and drops it when a session starts (msfw.unload), so
# a running session carries only the loop, the engine and the status/stop operations.
import gc
import json
import os

from micropython import const

from msfw import VERSION, logflash, logstore, proto
from msfw import engine as E
from msfw.app import RUNNING, rtc_s, uid_hex

_LOG_CHUNK = const(4096)


def defaults():
    from msfw import config as cfgmod

    return dict(cfgmod.DEFAULTS)


def save_config(cfg):
    """Atomically: a power cut leaves the old file or the new one, never half of one."""
    from msfw.config import CONFIG_PATH

    tmp = CONFIG_PATH + ".new"
    with open(tmp, "w") as f:
        f.write(json.dumps(cfg))
    os.rename(tmp, CONFIG_PATH)


def checked(app, values):
    from msfw import config as cfgmod

    try:
        return cfgmod.validate(values, app.board.ceiling_ua, partial=True)
    except cfgmod.ConfigError as e:
        raise proto.Error("bad_value", str(e), e.as_dict())


def op_config_get(app, req):
    from msfw import config as cfgmod

    return {"config": app.cfg, "pending": app.pending_cfg, "defaults": cfgmod.DEFAULTS,
            "limits": cfgmod.limits(app.board.ceiling_ua)}


def op_config_set(app, req):
    from msfw import config as cfgmod

    values = req.get("values")
    if not isinstance(values, dict) or not values:
        raise proto.Error("bad_request", "values: a non-empty object of settings is required",
                          {"field": "values"})
    base = dict(cfgmod.DEFAULTS) if req.get("replace") else dict(app.pending_cfg or app.cfg)
    base.update(checked(app, values))
    applied = app.eng.state not in RUNNING
    if applied:
        save_config(base)
        app.cfg = base
        app.pending_cfg = None
        app.rebuild(base)
    else:
        # No flash write while the output is on (a write stalls the CPU): the config waits
        # in RAM and is saved and applied when the session ends (App.session_over).
        app.pending_cfg = base
    return {"config": base, "applied": applied}


def op_info(app, req):
    import sys

    import machine

    gc.collect()
    return {
        "firmware": VERSION, "board": app.board.name, "chip": app.board.chip,
        "micropython": ".".join(str(x) for x in sys.implementation.version[:3]),
        "uid": uid_hex(), "reset_cause": machine.reset_cause(),
        "ceiling_ua": app.board.ceiling_ua, "usb_isolated": app.board.usb_isolated,
        "calibration": calibration_info(app), "self_check": app.self_check,
        "faults": app.faults, "config": app.cfg,
        "mem_free": gc.mem_free(), "mem_free_boot": app.mem_free_boot,
        "uptime_s": app.hw.ticks_diff(app.hw.ticks_ms(), app.t_boot) // 1000,
    }


def calibration_info(app):
    from msfw import calib

    cal, why = calib.check(app.board)
    eng = app.eng
    out = {"status": why, "ceiling_ua": eng.ceiling_ua, "calibrated": eng.calibrated}
    if cal is not None:
        out["values"] = cal
    elif why != "ok":
        out["note"] = ("uncalibrated: sessions are limited to %d%% of the board's ceiling; "
                       "run `microstim calibrate`" % int(calib.UNCALIBRATED_CEILING * 100))
    return out


def op_calibrate(app, req):
    from msfw import calib

    if app.eng.state in RUNNING:
        raise proto.Error("busy", "a session is running: stop it, put the reference "
                          "resistor across the probes, then calibrate")
    r = req.get("r_ref_ohm")
    if isinstance(r, bool) or not isinstance(r, (int, float)):
        raise proto.Error("bad_request", "r_ref_ohm: the reference resistor's value in ohm "
                          "is required", {"field": "r_ref_ohm"})
    if r < calib.R_REF_MIN_OHM or r > calib.R_REF_MAX_OHM:
        raise proto.Error("bad_value", "r_ref_ohm = %s is outside %d..%d" % (
            r, calib.R_REF_MIN_OHM, calib.R_REF_MAX_OHM),
            {"field": "r_ref_ohm", "value": r,
             "limit": [calib.R_REF_MIN_OHM, calib.R_REF_MAX_OHM]})
    app.eng.stop(E.END_HOST)
    try:
        res = calib.run(app.hw, r)
    finally:
        app.hw.output_off()
    if not res.get("ok"):
        raise proto.Error("calibration_failed", res.get("error", "calibration failed"))
    app.eng = app.engine(app.cfg)  # the new calibration applies from now on
    if app.log is not None:
        cal = res.get("values") or res
        app.log.event(logstore.EV_CALIBRATION, rtc_s(), app.hw.ticks_ms(),
                      int(cal.get("adc_gain", 1) * 16384),
                      int(cal.get("adc_offset_ua", 0) * 32))
    return res


def _log(app):
    if app.log is None:
        raise proto.Error("no_log", "this device has no session log (no filesystem)")
    return app.log


def op_log_list(app, req):
    log = _log(app)
    if app.eng.state not in RUNNING:
        log.flush()
    return {"log_id": getattr(log, "log_id", None), "segments": log.segments(),
            "pending": log.pending()}


def op_log_read(app, req):
    log = _log(app)
    if app.eng.state in RUNNING:
        raise proto.Error("busy", "the output is on: pull the log after the session")
    seg = proto._int(req, "seg", 0, 1 << 30)
    off = proto._int(req, "off", 0, 1 << 24)
    n = proto._int(req, "n", 1, _LOG_CHUNK)
    # Read through the log's own RAM queue while it is empty (its first session chunk is
    # 4 KB): the idle heap keeps no 4 KB buffer of its own, and the room stays the queue's.
    buf = logflash.scratch(log)
    if buf is None or len(buf) < n:
        buf = app.log_buf  # records wait in the queue, or it got no piece that big
        if buf is None or len(buf) < n:
            buf = app.log_buf = bytearray(_LOG_CHUNK)
    try:
        got = log.read_into(seg, off, memoryview(buf)[:n])
    except OSError:
        raise proto.Error("not_found", "segment %d is gone (rotated out)" % seg,
                          {"field": "seg", "value": seg})
    data = memoryview(buf)[:got]  # sent from the buffer: no 4 KB copies in a small heap
    return {"seg": seg, "off": off, "crc": proto.crc32(data), "_bin": data}

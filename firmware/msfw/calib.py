# Calibration: the boot self-check, and the two-point calibration of the current source
# and of its measurement against a reference resistor across the probes (issue 6).
#
# What is calibrated, and against what:
#   reference  the electrode sense (ADS1115 AIN2 - AIN3 through the front end's dividers,
#              after the DC-blocking capacitor: the voltage across the probes alone) with
#              a resistor of known value across them: current = V x divider / R_ref. Both
#              polarities, each read in the direction of its current: the ADC's offset
#              cancels.
#   DAC        current = dac_ua_per_code x code + dac_offset_ua (two points, plus the
#              fine channel's real ratio on an internal_dual DAC)
#   ADC        current = adc_gain x (the sampler's nominal shunt reading) + adc_offset_ua
# What is left (residual error sources): the reference resistor's tolerance, the mean of
# the two sense dividers' ratio errors (both enter the current one for one), the
# ADS1115's gain error between PGA ranges (0.01 % typical), the DAC's non-linearity
# between and beyond the two points (the fit's residual at a third point is reported),
# and drift with temperature since calibration.
#
# The routines that drive the output (self_check, run) live in msfw/calrun.py, imported
# only while they run and dropped after: the engine keeps only this module (load, the
# terms it applies), which saves about 5 KB of a 96 KB heap.
#
# Nothing here is on the hot path. Stored at /calib.json as {"data": "<json>", "sha256":
# "<hex of data>"}: a file whose checksum does not match, or made on another board, is
# refused and the board runs uncalibrated, at a reduced ceiling.
import json

from msfw.regulator import dac_scale

CALIB_PATH = "/calib.json"
VERSION = 1
STORED = "stored"  # Engine(cal=STORED): read the calibration from flash
UNCALIBRATED_CEILING = 0.5  # fraction of the board's ceiling an uncalibrated board may use

# Boot self-check tolerances (in the spirit of Stimjim's production self-test).
ADC_ZERO_MAX_UV = 500  # the ADS1115's own offset is a few uV; more is a front-end fault
DAC_ZERO_MAX_UA = 5.0  # current with the DAC at code 0
PGA_ZERO = 5  # +-0.256 V, 7.8 uV a count

R_REF_MIN_OHM = 1000
R_REF_MAX_OHM = 40000
# What the reference front end's parts let a calibration find (boards/frontend/README.md
# values, tolerances from bom.csv), worst case, added up. A calibration outside them did
# not measure the board against the stated resistor (no resistor, a wrong one, skin on the
# probes) or the board is not built as its definition says (e.g. R2 fitted for R2D: -6 %);
# calrun refuses it and keeps the old one, and load() refuses a stored one.
#   the reference path (current = V_load x divider / R_ref): RSA1/RSB1 1.50 Mohm and
#     RSA2/RSB2 100 kohm at 0.1 % -> each ratio 16.0 +-0.19 %, the reading their mean;
#     R_ref 0.1 % (2.00 kohm TNPW0603, the bring-up checklist's part); ADS1115 gain error
#     0.15 % max (SBAS444) per input range
#   the shunt reading: RSHUNT 1.00 kohm 0.1 %, the ADS1115's other channel 0.15 %
#   the source: R2 / (R1 x R3) = 3.60 kohm / (10.0 kohm x 2.00 kohm), each 0.1 % -> 0.3 %;
#     the DAC's full scale, i.e. its reference (the board's 3.3 V rail) and its own gain
#     error: 3 % together (the README gives no figure: MCP47x6/MCP4728 datasheets give
#     +-1.25 % gain error, a devkit's 3.3 V LDO 1-2 %)
# (Only the limits a stored calibration is held to live here; calrun.py has the rest.)
ADC_GAIN_TOLERANCE = 0.025  # 0.19 + 0.1 + 0.1 + 2 x 0.15 = 0.69 %, and the 1.8 % of 1 % dividers
DAC_GAIN_TOLERANCE = 0.055  # 0.3 + 3 + (0.19 + 0.1 + 0.15: the reference path) = 3.74 %, 1 % dividers 5.4 %
# Offsets: the DAC's (MCP4728: 20 mV max x 180 uA/V = 3.6 uA; the self-check allows
# DAC_ZERO_MAX_UA) and the shunt reading's (the self-check's ADC zero limit, 500 uV on
# 1 kohm = 0.5 uA, and as much again for the fit).
DAC_OFFSET_MAX_UA = 5.0
ADC_OFFSET_MAX_UA = 1.0
PAIRS = 16  # +/- pairs per measurement (two conversions each)


class CalibrationError(Exception):
    pass


# ---- storage ---------------------------------------------------------------------------

def _digest(text):
    import hashlib
    from binascii import hexlify

    return hexlify(hashlib.sha256(text.encode()).digest()).decode()


def save(result, path=CALIB_PATH):
    """Store a calibration (what run() returned) with its checksum; write-then-rename."""
    data = json.dumps(result)
    blob = json.dumps({"data": data, "sha256": _digest(data)})
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(blob)
    import os

    try:
        os.remove(path)
    except OSError:
        pass
    os.rename(tmp, path)


def check(board=None, path=CALIB_PATH):
    """(calibration or None, why): why is "ok", "missing", "corrupt" (checksum or format),
    "other_board" or "out_of_range"."""
    try:
        with open(path) as f:
            blob = json.loads(f.read())
        data = blob["data"]
        if _digest(data) != blob["sha256"]:
            return None, "corrupt"
        cal = json.loads(data)
    except OSError:
        return None, "missing"
    except (ValueError, KeyError, TypeError, AttributeError):
        return None, "corrupt"
    try:
        if cal["version"] != VERSION:
            return None, "corrupt"
        if board is not None:
            if cal["board"] != board.name:
                return None, "other_board"
            if not _plausible(board, cal):
                return None, "out_of_range"
        float(cal["dac_ua_per_code"])
        float(cal["adc_gain"])
    except (KeyError, TypeError, ValueError):
        return None, "corrupt"
    return cal, "ok"


def load(board=None, path=CALIB_PATH):
    """The stored calibration, or None (missing, corrupt, another board's)."""
    return check(board, path)[0]


def _nominal_ua_per_code(board):
    return board.gain_ua_per_v * board.dac_vref_v / dac_scale(board)[1]


def _plausible(board, cal):
    g = cal["dac_ua_per_code"] / _nominal_ua_per_code(board)
    return (abs(g - 1) <= DAC_GAIN_TOLERANCE and abs(cal["adc_gain"] - 1) <= ADC_GAIN_TOLERANCE
            and abs(cal["dac_offset_ua"]) <= DAC_OFFSET_MAX_UA
            and abs(cal["adc_offset_ua"]) <= ADC_OFFSET_MAX_UA)


def sampler_terms(cal):
    """(gain_q14, offset_cu) for Sampler.set_calibration."""
    off = cal["adc_offset_ua"] * 32
    return int(cal["adc_gain"] * 16384 + 0.5), int(off + (0.5 if off >= 0 else -0.5))



# ---- the routines (msfw/calrun.py, loaded for the call) ---------------------------------

def _call(name, *args):
    import sys

    import msfw
    from msfw import calrun

    try:
        return getattr(calrun, name)(*args)
    finally:
        sys.modules.pop("msfw.calrun", None)
        try:
            delattr(msfw, "calrun")
        except AttributeError:
            pass


def self_check(hw, dac_zero=True):
    """The boot self-check: ADC zero with the output off; DAC zero (code 0, one +/- pair
    of conversions) into whatever load is there. Returns {"ok", "faults",
    "adc_zero_uv": [shunt, load], "dac_zero_ua", "value"}; out-of-tolerance values are
    named in "faults" (adc_zero_shunt, adc_zero_load, dac_zero).

    The DAC-zero pair is the only output a self-check makes: 2 x 1.6 ms at code 0."""
    return _call("self_check", hw, dac_zero)


def run(hw, r_ref_ohm, save_to=CALIB_PATH, pairs=PAIRS):
    """Calibrate with a resistor of r_ref_ohm across the probes (nobody touching them).

    Drives the output itself: short biphasic pairs, never above the uncalibrated ceiling
    (and within 80 % of compliance), every current reading checked against a trip level.
    Returns the result ({"ok": True, ...}, stored at save_to unless it is None), or
    {"ok": False, "error": "<what to do>"}; the output is off when it returns."""
    return _call("run", hw, r_ref_ohm, save_to, pairs)

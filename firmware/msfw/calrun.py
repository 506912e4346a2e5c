# The calibration routines behind msfw.calib.self_check and msfw.calib.run (see calib.py
# for what is calibrated against what). Slow path only; imported for one call and dropped.
from micropython import const

from msfw.ads1115 import FSR_V, pga_for
from msfw.calib import (
    ADC_GAIN_TOLERANCE,
    ADC_OFFSET_MAX_UA,
    ADC_ZERO_MAX_UV,
    CALIB_PATH,
    DAC_GAIN_TOLERANCE,
    DAC_OFFSET_MAX_UA,
    DAC_ZERO_MAX_UA,
    PAIRS,
    PGA_ZERO,
    R_REF_MAX_OHM,
    R_REF_MIN_OHM,
    UNCALIBRATED_CEILING,
    VERSION,
    CalibrationError,
    _nominal_ua_per_code,
    save,
)
from msfw.regulator import dac_scale
from msfw.sampler import PGA_SHUNT

# Plausibility limits of a calibration run (the budget is in calib.py).
# The fine channel's ratio R4 / RFINE: 1.00 kohm 1 % / 16.0 kohm 0.1 %, and the two DAC
# channels' full scales against each other (2 x 3 %): 7.1 %.
_FINE_RATIO_TOLERANCE = const(0.075)
_REF_TOLERANCE = const(0.025)  # V/I vs R_ref: calib's ADC gain budget
# Straightness: at the middle point the fitted lines may miss by the ADS1115's INL and
# noise only (the shunt line: two channels of one ADC reading one current), or by a DAC's
# INL for the source line: two steps of an ESP32 8-bit DAC (2 x 2.3 uA); a 12-bit MCP47x
# DAC's 13 LSB INL max (MCP4728 datasheet) is 1.9 uA.
_ADC_LINEARITY_UA = const(0.25)
_DAC_LINEARITY_UA = const(5.0)
# A resistor's voltage is flat within a phase (the electrode sense is after the
# DC-blocking capacitor, so its ramp is not in the reading); skin and gel are capacitive
# and keep rising (the default skin load: 37 % in 1.5 ms). Allowed: the ADC's noise and
# quantisation (at 1 kohm and 40 uA, 0.11 % rms between two means of 16 conversions).
_RISE_MAX = const(0.005)

_SETTLE_US = const(300)  # after EN before a conversion starts
_GAP_US = const(300)
CONV_WAIT_US = 1203  # one 860 SPS conversion plus wake-up


def _convert(hw, mux, pga):
    adc = hw.adc
    adc.start(mux, pga)
    hw.sleep_us(CONV_WAIT_US)
    t0 = hw.ticks_ms()
    while adc.busy():
        if hw.ticks_diff(hw.ticks_ms(), t0) > 20:
            raise CalibrationError("adc: a conversion did not finish (is the ADS1115 wired?)")
        hw.sleep_us(50)
    return adc.read_raw()


def _feed(hw):
    if hw.wdt is not None:
        hw.wdt.feed()


def _shunt_ua(board, raw):
    """The sampler's nominal conversion of a shunt reading, in uA (same integer scale)."""
    q8 = int(FSR_V[PGA_SHUNT] / 32768 / board.shunt_ohm * 1e6 * 32 * 256 + 0.5)
    return raw * q8 / 256 / 32


def _phases(hw, mux, pga, pairs, limit_raw=None):
    """Alternating +/- phases at the DAC's present level, one conversion of input `mux`
    (an ADS1115 MUX code) in each; the mean raw reading. limit_raw: stop at once on a
    reading above it (overcurrent). The load (differential, mux < 4) is read in the
    direction of each phase's current: the ADC's own offset cancels in the mean."""
    total = 0
    for k in range(2 * pairs):
        hw.pol.value(k & 1)  # only ever switched with EN low
        hw.en.value(1)
        hw.sleep_us(_SETTLE_US)
        try:
            raw = _convert(hw, mux, pga)
        finally:
            hw.en.value(0)
        if limit_raw is not None and raw > limit_raw:
            raise CalibrationError("overcurrent during calibration (reading %d > %d): output off"
                                   % (raw, limit_raw))
        total += raw if mux > 3 or k & 1 else -raw
        _feed(hw)
        hw.sleep_us(_GAP_US)
    return total / (2 * pairs)


def _rise(hw, mux, pga, pairs):
    """Alternating +/- phases, two back-to-back conversions of the load (differential,
    in the direction of the current) in each: (mean of the first, mean of the second, us
    between their starts)."""
    early = late = dt = 0
    for k in range(2 * pairs):
        hw.pol.value(k & 1)  # only ever switched with EN low
        hw.en.value(1)
        hw.sleep_us(_SETTLE_US)
        s = 1 if k & 1 else -1
        try:
            t0 = hw.ticks_us()
            early += s * _convert(hw, mux, pga)
            dt += hw.ticks_diff(hw.ticks_us(), t0)
            late += s * _convert(hw, mux, pga)
        finally:
            hw.en.value(0)
        _feed(hw)
        hw.sleep_us(_GAP_US)
    n = 2 * pairs
    return early / n, late / n, dt / n


def _mean_off(hw, mux, pga, n):
    """Mean reading with the output off (the ADC's zero)."""
    hw.output_off()
    total = 0
    for _ in range(n):
        total += _convert(hw, mux, pga)
    _feed(hw)
    return total / n


def _set(hw, code, fine=None):
    if fine is None:
        hw.dac.write(code)
    else:
        hw.dac.write_channels(code, fine)


# ---- the boot self-check -----------------------------------------------------------------

def self_check(hw, dac_zero=True):
    """See calib.self_check."""
    b = hw.board
    faults = []
    lsb_uv = FSR_V[PGA_ZERO] / 32768 * 1e6
    zs = _mean_off(hw, 4 + b.shunt_channel, PGA_ZERO, 8) * lsb_uv
    # The load sense with the output off: both electrodes float at VBIAS, so AIN2 - AIN3
    # reads the ADC's offset (and the two dividers' mismatch at VBIAS).
    zl = _mean_off(hw, b.load_channel + 1, PGA_ZERO, 8) * lsb_uv
    value = 0
    if abs(zs) > ADC_ZERO_MAX_UV:
        faults.append("adc_zero_shunt")
        value = int(zs)
    if abs(zl) > ADC_ZERO_MAX_UV:
        faults.append("adc_zero_load")
        value = value or int(zl)
    dz = None
    if dac_zero:
        import safe

        safe.set_armed(True)
        try:
            _set(hw, 0)
            limit = int(DAC_ZERO_MAX_UA * 8 / _shunt_ua(b, 1)) + 1
            try:
                raw = _phases(hw, 4 + b.shunt_channel, PGA_SHUNT, 1, limit * 4)
                dz = _shunt_ua(b, raw) - zs / b.shunt_ohm
            except CalibrationError:
                dz = DAC_ZERO_MAX_UA * 4
        finally:
            hw.output_off()
            safe.set_armed(False)
        if dz > DAC_ZERO_MAX_UA:
            faults.append("dac_zero")
            value = value or int(dz * 32)
    return {"ok": not faults, "faults": faults, "adc_zero_uv": [round(zs, 1), round(zl, 1)],
            "dac_zero_ua": None if dz is None else round(dz, 2), "value": value}


# ---- calibration against a reference resistor ---------------------------------------------

def run(hw, r_ref_ohm, save_to=CALIB_PATH, pairs=PAIRS):
    """See calib.run. A refused run changes nothing: no file is written, and the fine
    DAC's ratio (set while measuring) goes back to what it was."""
    import safe

    fine_k = getattr(hw.dac, "fine_k_q8", None)
    res = None
    try:
        safe.set_armed(True)  # from here only this loop feeds the watchdog
        res = _run(hw, float(r_ref_ohm), pairs)
    except CalibrationError as e:
        return {"ok": False, "error": "%s; the previous calibration is kept" % e}
    finally:
        hw.output_off()
        safe.set_armed(False)
        if res is None and fine_k is not None:
            hw.dac.fine_k_q8 = fine_k
    if save_to:
        save(res, save_to)
    return res


def _run(hw, r_ref, pairs):
    b = hw.board
    if not (R_REF_MIN_OHM <= r_ref <= R_REF_MAX_OHM):
        raise CalibrationError("r_ref_ohm = %s is outside %d..%d" % (r_ref, R_REF_MIN_OHM, R_REF_MAX_OHM))
    max_code, full = dac_scale(b)
    nominal = _nominal_ua_per_code(b)
    hi_ua = b.ceiling_ua * UNCALIBRATED_CEILING
    if hi_ua > 0.8 * b.compliance_v / r_ref * 1e6:
        hi_ua = 0.8 * b.compliance_v / r_ref * 1e6
    lo_ua = 0.2 * hi_ua
    # Trip on any shunt reading above the calibration's top current plus the source's
    # possible gain error (20 %) and 5 uA.
    limit_raw = int((hi_ua * 1.2 + 5) / _shunt_ua(b, 1))
    div = b.load_divider
    pga_load = pga_for(hi_ua * 1.3 * r_ref * 1e-6 / div)
    lsb_load = FSR_V[pga_load] / 32768
    # The reference: the voltage across R_ref itself (the electrode sense, after CBLOCK
    # and the switches), both polarities in the direction of the current: the ADC's
    # offset cancels, the zeros are measured only to be reported.
    shunt = 4 + b.shunt_channel
    load = b.load_channel + 1
    zero_load = _mean_off(hw, load, pga_load, 16)
    zero_shunt = _mean_off(hw, shunt, PGA_SHUNT, 16)
    fit = "fit the %d ohm reference resistor across the probes, nothing else touching them, and calibrate again" % r_ref

    def point(code, fine=None):
        _set(hw, code, fine)
        s = _phases(hw, shunt, PGA_SHUNT, pairs, limit_raw)  # current first: the trip
        v = _phases(hw, load, pga_load, pairs)
        hw.dac.write(0)
        return v * lsb_load * div / r_ref * 1e6, _shunt_ua(b, s)

    # The reference must be there: at a low current the load must look like r_ref ...
    code_lo = int(lo_ua / nominal)
    i_true, i_adc = point(code_lo)
    if i_adc < 0.3 * lo_ua:
        raise CalibrationError("no current flows (%.1f uA at a nominal %.0f uA); %s" % (i_adc, lo_ua, fit))
    z = r_ref * i_true / i_adc
    if abs(z - r_ref) > _REF_TOLERANCE * r_ref:
        raise CalibrationError("the load is %d ohm, not the %d ohm reference (the parts allow +-%.1f %%); %s"
                               % (z, r_ref, _REF_TOLERANCE * 100, fit))
    # ... and like a resistor: its voltage flat within a phase. Skin and gel are
    # capacitive: their voltage keeps rising.
    _set(hw, code_lo)
    v1, v2, dt = _rise(hw, load, pga_load, pairs // 2 or 1)
    hw.dac.write(0)
    rise = (v2 - v1) / v1 if v1 > 0 else 1.0
    if rise > _RISE_MAX:
        raise CalibrationError("the load is not a resistor: its voltage rose %.1f %% within %.1f ms (a "
                               "resistor's: at most %.1f %%), as skin or gel does; %s"
                               % (rise * 100, dt / 1000, _RISE_MAX * 100, fit))
    dac_zero_i, _ = point(0)
    fine_k = None
    ratio = None
    if b.dac_kind == "internal_dual":
        # The fine channel's real scale: F fine codes against `steps` coarse codes.
        n = (max_code + 1) // 256
        steps = 255 // n
        f = steps * n
        c1 = int(lo_ua / nominal) // n
        ia, _ = point(c1, 0)
        ib, _ = point(c1 + steps, 0)
        ic, _ = point(c1, f)
        if ib - ia <= 0:
            raise CalibrationError("the coarse DAC does not move the current (%.2f -> %.2f uA)" % (ia, ib))
        ratio = (ic - ia) / (ib - ia) * steps / f
        if abs(ratio * n - 1) > _FINE_RATIO_TOLERANCE:
            raise CalibrationError("the fine DAC's ratio is 1/%.2f, not 1/%d +-%.1f %%: check RFINE (16.0 kohm) "
                                   "and R4 (1.00 kohm)" % (1 / ratio, n, _FINE_RATIO_TOLERANCE * 100))
        fine_k = int(256 / (n * ratio) + 0.5)
        hw.dac.fine_k_q8 = fine_k
    # Two points on the whole code, then a third to see how straight the line is.
    code_hi = int(hi_ua / nominal)
    code_lo = int(lo_ua / nominal)
    i_lo, a_lo = point(code_lo)
    i_hi, a_hi = point(code_hi)
    g = (i_hi - i_lo) / (code_hi - code_lo)
    off = i_lo - g * code_lo
    ag = (i_hi - i_lo) / (a_hi - a_lo)
    aoff = i_lo - ag * a_lo
    code_mid = (code_lo + code_hi) // 2
    i_mid, a_mid = point(code_mid)
    res = {
        "version": VERSION, "board": b.name, "r_ref_ohm": r_ref,
        "dac_ua_per_code": g, "dac_offset_ua": off,
        "adc_gain": ag, "adc_offset_ua": aoff,
        "fine_k_q8": fine_k, "fine_ratio": ratio,
        "points_ua": [[code_lo, round(i_lo, 3), round(a_lo, 3)], [code_hi, round(i_hi, 3), round(a_hi, 3)]],
        "dac_residual_ua": round(i_mid - (g * code_mid + off), 3),
        "adc_residual_ua": round(ag * a_mid + aoff - i_mid, 3),
        "dac_zero_ua": round(dac_zero_i, 3),
        "adc_zero_uv": [round(zero_shunt * FSR_V[PGA_SHUNT] / 32768 * 1e6, 1),
                        round(zero_load * lsb_load * 1e6, 1)],
        "dac_gain_vs_nominal": round(g / nominal, 5),
        "adc_gain_vs_nominal": round(ag, 5),
        "load_rise": round(rise, 5),
        "ok": True,
    }
    _judge(res, g / nominal, fit)
    if dac_zero_i > DAC_ZERO_MAX_UA:
        raise CalibrationError("%.1f uA flow with the DAC at zero (limit %.1f uA)" % (dac_zero_i, DAC_ZERO_MAX_UA))
    return res


def _judge(res, dac_gain, fit):
    """Refuse a result the board's parts cannot give (see the tolerances in calib.py):
    the same limits load() applies to a stored calibration, with what to check."""
    if abs(dac_gain - 1) > DAC_GAIN_TOLERANCE:
        raise CalibrationError("the source gives %.3f x its nominal current; the parts allow 1 +-%.3f; check "
                               "R1/R2/R3 (R2D on a two-DAC board) against boards/frontend/README.md, and %s"
                               % (dac_gain, DAC_GAIN_TOLERANCE, fit))
    if abs(res["adc_gain"] - 1) > ADC_GAIN_TOLERANCE:
        raise CalibrationError("the shunt reads %.3f x the current through the reference; the parts allow 1 "
                               "+-%.3f; check RSHUNT (1.00 kohm), the electrode sense dividers (RSA1/RSA2, RSB1/RSB2), and %s"
                               % (res["adc_gain"], ADC_GAIN_TOLERANCE, fit))
    if abs(res["dac_offset_ua"]) > DAC_OFFSET_MAX_UA or abs(res["adc_offset_ua"]) > ADC_OFFSET_MAX_UA:
        raise CalibrationError("offsets of %.2f uA (source) and %.2f uA (shunt reading) exceed %.1f / %.1f uA; "
                               "%s" % (res["dac_offset_ua"], res["adc_offset_ua"], DAC_OFFSET_MAX_UA,
                                       ADC_OFFSET_MAX_UA, fit))
    dac_lin = _DAC_LINEARITY_UA
    if abs(res["adc_residual_ua"]) > _ADC_LINEARITY_UA or abs(res["dac_residual_ua"]) > dac_lin:
        raise CalibrationError("the three points are not on a line (%.2f uA off for the shunt reading, %.2f uA "
                               "for the source; allowed %.2f / %.2f uA), the load changed while measuring; %s"
                               % (res["adc_residual_ua"], res["dac_residual_ua"], _ADC_LINEARITY_UA, dac_lin, fit))

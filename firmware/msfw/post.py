# Power-on, before the application loads: the board definition (checked against the
# schema) and the boot self-check (issue 6: ADC zero with the output off, DAC zero into
# the load). Both need code the running device never uses again (the schema, the
# self-check routine), so they run first, while the heap is empty, and that code is
# dropped before msfw.app is imported. Nothing here stimulates beyond the self-check's
# one pair of code-0 conversions.
import gc

import msfw

WATCHDOG_MS = 2000  # a main loop stalled this long resets the board


def run():
    """(board, hw, self_check), or None when the board definition is refused (a
    board_error event says why; the device then does nothing)."""
    from msfw import board as boardmod

    try:
        board = boardmod.load()
    except boardmod.BoardError as e:
        import json

        print(json.dumps({"ev": "board_error", "message": str(e)}))
        return None
    msfw.unload("board")  # the board is values now (msfw.Board): its loader can go
    from msfw.hw import Hardware

    hw = Hardware(board, watchdog_ms=WATCHDOG_MS)
    hw.output_off()
    from msfw import calib

    try:
        check = calib.self_check(hw)
    except OSError as e:  # the ADC does not answer
        check = {"ok": False, "faults": ["adc"], "code": e.args[0] if e.args else 0}
    finally:
        hw.output_off()
    msfw.unload("calib")
    gc.collect()
    return board, hw, check

"""How fast the virtual board simulates: a 20-minute session, headless, in virtual time.

Runs the same session twice in one run, with the simulated hardware compiled to native
code (the default) and as bytecode, and prints simulated seconds per wall second for each.

    python benchmarks/sim_speed.py [--minutes 20]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile

from microstim.vboard import run_headless


def session(minutes: float, bytecode: bool) -> dict:
    if bytecode:
        os.environ["MICROSTIM_VB_BYTECODE"] = "1"
    else:
        os.environ.pop("MICROSTIM_VB_BYTECODE", None)
    seconds = minutes * 60
    scenario = [{"at_s": 1.0, "event": "press"}, {"at_s": seconds + 3.0, "event": "stop"}]
    with tempfile.TemporaryDirectory() as tmp:
        trace, console, wall_s = run_headless(tmp, scenario, device_config={"duration_s": seconds},
                                              timeout_s=3600)
    simulated_s = seconds + 3.0
    ended = '"reason": "auto_off"' in console
    return {"simulated_s": simulated_s, "wall_s": wall_s, "ratio": simulated_s / wall_s,
            "phases": len(trace.phases), "auto_off": ended}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=20.0)
    args = ap.parse_args()
    native = session(args.minutes, bytecode=False)
    bytecode = session(args.minutes, bytecode=True)
    print(f"virtual board speed, {args.minutes:g}-minute session (press at 1 s, auto-off), "
          f"{platform.machine()} Python {platform.python_version()}, {os.cpu_count()} cores")
    print(f"{'hardware modules':<18} {'simulated s':>12} {'wall s':>8} {'sim/wall':>9} {'phases':>8} {'auto-off':>9}")
    for name, r in (("native (default)", native), ("bytecode", bytecode)):
        print(f"{name:<18} {r['simulated_s']:>12.0f} {r['wall_s']:>8.1f} {r['ratio']:>8.1f}x "
              f"{r['phases']:>8d} {str(r['auto_off']):>9}")
    print(f"native / bytecode speed: {native['ratio'] / bytecode['ratio']:.2f}x")
    return 0 if native["auto_off"] and bytecode["auto_off"] else 1


if __name__ == "__main__":
    sys.exit(main())

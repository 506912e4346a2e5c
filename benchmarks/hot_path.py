"""Cost of the firmware's hot path on the MicroPython unix port, and what it allocates.

Runs inside the unix port: the regulator step (DAC code with dither, sample, learning)
and the supervisor checks, timed with the real clock over many iterations, with bytes
allocated counted by gc.mem_alloc() around the loop (collector disabled). Then the whole
firmware under `micropython -X heapsize=96k`: a 20-minute session, free heap after boot.

    python benchmarks/hot_path.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from microstim.vboard import run_headless
from microstim.vboard.supervisor import find_micropython

ROOT = Path(__file__).resolve().parent.parent

SNIPPET = r"""
import sys, gc, utime
sys.path.insert(0, %(device)r)
import _vworld, json
with open(%(cfg)r) as f:
    W = _vworld.World(json.loads(f.read()))
sys.path.insert(0, %(fw)r)
from msfw import board as boardmod
from msfw.regulator import Regulator
from msfw.supervisor import Supervisor
b = boardmod.load(%(bj)r, %(pins)r)
reg = Regulator(b); sup = Supervisor(b)
reg.set_target(6400)
N = 20000

def step(i):
    # One regulator iteration as the engine runs it per fresh sample.
    code = reg.dac_code()
    reg.sample(6400 + (i & 15))
    sup.check_current(6400 + (i & 7), 1 if i & 1 else -1, 6400)
    sup.check_load(4000 + (i & 31))
    return code

def empty(i):
    return i

def timed(fn):
    gc.collect(); gc.disable()
    a0 = gc.mem_alloc(); t0 = utime.ticks_us()
    for i in range(N):
        fn(i)
    t1 = utime.ticks_us(); a1 = gc.mem_alloc()
    gc.enable()
    return utime.ticks_diff(t1, t0) / N, (a1 - a0) / N

us, alloc = timed(step)
us0, alloc0 = timed(empty)
print(json.dumps({"step_us": us, "step_alloc": alloc, "empty_us": us0, "empty_alloc": alloc0, "n": N}))
"""


def regulator_cost() -> dict:
    from microstim.vboard import runconfig

    with tempfile.TemporaryDirectory() as tmp:
        cfg = runconfig.build(Path(tmp), speed=None, provision=False, trace=False)
        cfg.pop("flash")
        cfg_path = Path(tmp) / "cfg.json"
        cfg_path.write_text(json.dumps(cfg))
        script = Path(tmp) / "bench.py"
        from microstim import paths
        script.write_text(SNIPPET % {
            "device": str(paths.vboard_device_dir()), "cfg": str(cfg_path),
            "fw": str(ROOT / "firmware"), "bj": str(ROOT / "boards/virtual/board.json"),
            "pins": str(ROOT / "boards/virtual/pins.csv")})
        r = subprocess.run([find_micropython(), str(script)], capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise SystemExit(r.stdout + r.stderr)
        return json.loads(r.stdout.strip().splitlines()[-1])


def small_heap_session(fw_heap: int = 96 * 1024, minutes: float = 20.0) -> dict:
    seconds = minutes * 60
    scenario = [{"at_s": 1.0, "event": "press"}, {"at_s": seconds + 3.0, "event": "stop"}]
    with tempfile.TemporaryDirectory() as tmp:
        trace, console, wall_s = run_headless(tmp, scenario, fw_heap=fw_heap,
                                              device_config={"duration_s": seconds}, timeout_s=3600)
    boot = next(json.loads(x) for x in console.splitlines() if x.startswith("{") and '"boot"' in x)
    return {"heap": f"{fw_heap // 1024}k", "mem_free_after_boot": boot["mem_free"], "mem_alloc_after_boot": boot["mem_alloc"],
            "auto_off": '"reason": "auto_off"' in console, "memory_error": "MemoryError" in console,
            "phases": len(trace.phases), "wall_s": wall_s}


def main() -> int:
    c = regulator_cost()
    print(f"hot path on the MicroPython unix port (bytecode), {c['n']} iterations")
    print(f"{'loop body':<34} {'us/iteration':>13} {'bytes allocated/iteration':>26}")
    print(f"{'regulator step + supervisor checks':<34} {c['step_us']:>13.2f} {c['step_alloc']:>26.1f}")
    print(f"{'empty loop (for reference)':<34} {c['empty_us']:>13.2f} {c['empty_alloc']:>26.1f}")
    print(f"regulator step / empty loop: {c['step_us'] / c['empty_us']:.1f}x")
    h = small_heap_session()
    print()
    print(f"whole firmware in a {h['heap']} heap (the simulated hardware's own heap pinned "
          "away), 20-minute session")
    print(f"free heap after boot: {h['mem_free_after_boot']} bytes of {h['heap']}")
    print(f"session ended by auto-off: {h['auto_off']}; MemoryError: {h['memory_error']}; "
          f"phases delivered: {h['phases']}; wall {h['wall_s']:.1f} s")
    ok = c["step_alloc"] == 0 and h["auto_off"] and not h["memory_error"]
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

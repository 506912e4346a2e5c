"""Prints the virtual board's output characterisation (21 CFR 882.5891 table) and the
simulated bench's error table, as recorded under "characterisation" in RESULTS.md.

    python benchmarks/characterisation.py
"""

from __future__ import annotations

import time

from microstim import bench, characterise
from microstim.device import Device


def main() -> None:
    t0 = time.perf_counter()
    res = characterise.characterise("virtual", jobs=2)
    print(characterise.markdown(res))
    print(f"(15 virtual sessions and a calibration in {time.perf_counter() - t0:.1f} s of wall time)\n")
    t0 = time.perf_counter()
    with bench.simulated_bench(2000.0) as (port, adc, _vb):
        with Device(port) as dev:
            dev.connect()
            rows = bench.run_bench(dev, adc, setpoints=bench.DEFAULT_SETPOINTS_UA, ref_ohm=2000.0)
    print(bench.table(rows, 2000.0))
    print(f"\n(simulated bench, virtual board at 4x real time: {time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()

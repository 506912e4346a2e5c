"""How long `microstim flash` takes against the virtual board, for a 1.6 MB image.

One run, side by side: the command line as a user runs it (erase, stub upload, compressed
write, MD5 verify, reset, wait for the REPL), against a virtual board whose serial link is
unlimited, or paced at 115200 baud like a USB-UART (esptool then raises it to 460800,
which the virtual board's ROM follows, as a real one does; or it is kept at 115200). Two
synthetic 1.6 MB images with valid ESP32 headers: random bytes (incompressible, the worst
case) and compiled code (bytes of the MicroPython unix port's shared library, which
compresses about as well as firmware does). No official image is available offline.

    python benchmarks/flash_bench.py
"""

from __future__ import annotations

import json
import os
import platform
import random
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

from microstim.vboard import VirtualBoard

SIZE = 1_600_000


def image(path: Path, kind: str) -> Path:
    if kind == "random":
        data = bytearray(random.Random(1).randbytes(SIZE))
    else:
        import micropython_run  # the unix port's compiled interpreter

        data = bytearray(Path(micropython_run.__file__).read_bytes()[:SIZE])
    header = struct.pack("<BBBBI", 0xE9, 3, 2, 0x20, 0x40080000)
    header += struct.pack("<BBBBHBHH4sB", 0xEE, 0, 0, 0, 0, 0, 0, 0xFFFF, b"\0" * 4, 1)
    data[: len(header)] = header
    path.write_bytes(data)
    return path


def cli() -> list[str]:
    exe = str(Path(sys.executable).with_name("microstim"))
    if subprocess.run([exe, "flash", "--help"], capture_output=True).returncode == 0:
        return [exe, "flash"]
    return [sys.executable, "-m", "microstim.flashing"]


def run(img: Path, link_baud: int | None, flash_baud: int, tmp: Path) -> dict:
    with VirtualBoard(tmp / f"vb-{img.stem}-{link_baud}-{flash_baud}", baud=link_baud) as vb:
        time.sleep(1.0)  # let it boot, as a board sitting on the desk has
        t0 = time.perf_counter()
        r = subprocess.run([*cli(), "--port", vb.port, "--image", str(img), "--baud", str(flash_baud),
                            "--no-deploy", "--json"], capture_output=True, text=True, timeout=600)
        wall_s = time.perf_counter() - t0
        if r.returncode != 0:
            raise SystemExit(f"flash failed: {r.stderr}")
        result = json.loads(r.stdout)
        written = (vb.run_dir / "spiflash.bin").read_bytes()[0x1000 : 0x1000 + SIZE]
    sent = len(zlib.compress(img.read_bytes(), 9))  # esptool's compressed stream
    floor_s = sent * 10 / flash_baud if link_baud else None
    return {"image": img.stem, "link": f"{link_baud} baud" if link_baud else "unlimited",
            "flash_baud": flash_baud, "sent": sent, "wall_s": wall_s, "api_s": result["seconds"],
            "floor_s": floor_s, "ok": written == img.read_bytes()}


def main() -> int:
    cases = [("random", None, 460800), ("code", None, 460800), ("code", 115200, 460800),
             ("code", 115200, 115200)]
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        images = {k: image(tmp / f"{k}.bin", k) for k in ("random", "code")}
        rows = [run(images[k], link, fb, tmp) for k, link, fb in cases]
    print(f"microstim flash of a {SIZE / 1e6:.1f} MB image against the virtual board "
          f"({platform.machine()}, Python {platform.python_version()}, {os.cpu_count()} cores)")
    print("erase + stub + compressed write + MD5 verify + reset + REPL answers; wall = the command")
    print(f"{'image':<7} {'link':<13} {'flash baud':>10} {'sent KB':>8} {'wall s':>7} "
          f"{'in flash()':>10} {'wire floor s':>12} {'wall/floor':>10} {'readback':>8}")
    for r in rows:
        floor = f"{r['floor_s']:.1f}" if r["floor_s"] else "-"
        ratio = f"{r['wall_s'] / r['floor_s']:.2f}x" if r["floor_s"] else "-"
        print(f"{r['image']:<7} {r['link']:<13} {r['flash_baud']:>10} {r['sent'] / 1024:>8.0f} "
              f"{r['wall_s']:>7.1f} {r['api_s']:>10.1f} {floor:>12} {ratio:>10} "
              f"{'same' if r['ok'] else 'DIFFERS':>8}")
    paced = {(r["link"], r["flash_baud"]): r["wall_s"] for r in rows if r["image"] == "code"}
    print(f"raising the rate to 460800 on a 115200 link: "
          f"{paced[('115200 baud', 115200)] / paced[('115200 baud', 460800)]:.2f}x faster")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

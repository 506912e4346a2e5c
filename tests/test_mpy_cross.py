"""Everything that runs on a device (the firmware) or inside the unix port (the virtual
board's hardware) must compile for MicroPython."""

import subprocess

import pytest
from conftest import MPY_CROSS, ROOT
from microstim import paths

FILES = sorted((ROOT / "firmware").rglob("*.py")) + sorted(paths.vboard_device_dir().glob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_compiles_with_mpy_cross(path, tmp_path):
    r = subprocess.run([MPY_CROSS, "-o", str(tmp_path / "out.mpy"), str(path)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out.mpy").read_bytes()[:2] == b"M\x06"  # .mpy format 6


def test_firmware_files_are_found():
    names = {p.name for p in FILES}
    assert {"boot.py", "main.py", "safe.py", "app.py", "machine.py", "_vworld.py"} <= names

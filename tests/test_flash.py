"""`microstim flash` end to end against the virtual board, through the command line.

esptool really talks to the virtual board's ROM bootloader (vboard/romloader.py) over its
serial port: chip detection, stub upload, erase, compressed write, MD5 verify, reset. The
images are small synthetic files with valid ESP32-family headers (magic 0xE9, the chip id
in the extended header) and random contents: no official MicroPython image is available
offline, and the virtual board runs its own MicroPython whatever it is given (it checks
the header as the ROM does). Downloads come from an http.server on loopback.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import random
import shutil
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import mpremote
from microstim import flashing, paths
from microstim.vboard import romloader

FLASH_SIZE = 4 * 1024 * 1024


def make_image(path: Path, chip: str, size: int = 256 * 1024, seed: int = 1) -> Path:
    """A synthetic firmware image: a valid header for `chip`, then random bytes."""
    data = bytearray(random.Random(seed).randbytes(size))
    header = struct.pack("<BBBBI", 0xE9, 3, 2, 0x20, 0x40080000)
    header += struct.pack("<BBBBHBHH4sB", 0xEE, 0, 0, 0, flashing.IMAGE_CHIP_IDS[chip], 0, 0, 0xFFFF,
                          b"\0" * 4, 1)
    data[: len(header)] = header
    path.write_bytes(data)
    return path


def _cli() -> list[str]:
    """`microstim flash` as a user runs it once the CLI has the command; until then the
    module's own entry point (the same click command)."""
    exe = str(Path(sys.executable).with_name("microstim"))
    probe = subprocess.run([exe, "flash", "--help"], capture_output=True, text=True)
    if probe.returncode == 0:
        return [exe, "flash"]
    return [sys.executable, "-m", "microstim.flashing"]


CLI = _cli()


def flash_cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([*CLI, "--no-deploy", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_on(port: str) -> list[str]:
    r = mpremote(port, "exec", "import os; print(sorted(os.listdir('/')))")
    assert r.returncode == 0, r.stderr
    return eval(r.stdout.strip().splitlines()[-1])  # a printed list of names


def firmware_files(port: str) -> list:
    """(name, size) of the deployed firmware's top files. (The running firmware writes
    its session log under /log, so the flash image as a whole changes by itself.)"""
    code = ("import os\nprint(sorted((n, os.stat(n)[6]) for n in "
            "('boot.py', 'main.py', 'board.json', 'pins.csv')))")
    r = mpremote(port, "exec", code)
    assert r.returncode == 0, r.stderr
    return eval(r.stdout.strip().splitlines()[-1])


# What the ROM loader executes to change the flash.
WRITES = {romloader.FLASH_BEGIN, romloader.FLASH_DATA, romloader.FLASH_DEFL_BEGIN,
          romloader.FLASH_DEFL_DATA, romloader.ERASE_FLASH, romloader.ERASE_REGION}


def board_folder(tmp_path: Path, micropython: dict) -> Path:
    """A copy of the virtual board's definition with its own micropython block."""
    folder = tmp_path / "board"
    shutil.copytree(paths.boards_dir() / "virtual", folder)
    spec = json.loads((folder / "board.json").read_text())
    spec["name"] = "board"
    spec["micropython"] = {"version": "0.0.1", "port_board": "ESP32_GENERIC", **micropython}
    (folder / "board.json").write_text(json.dumps(spec))
    return folder


class _Server:
    """http.server on loopback serving one folder, counting GET requests."""

    def __init__(self, root: Path):
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=str(root), **kw)

            def do_GET(self):
                outer.requests.append(self.path)
                super().do_GET()

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def http_root(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    server = _Server(root)
    yield root, server
    server.close()


# ---------------------------------------------------------------------------------------


def test_chip_ids_and_offsets_agree_with_esptool():
    from esptool.targets import CHIP_DEFS

    for chip, cid in flashing.IMAGE_CHIP_IDS.items():
        assert CHIP_DEFS[chip].IMAGE_CHIP_ID == cid, chip
        assert romloader.IMAGE_CHIP_IDS[chip] == cid, chip
        assert CHIP_DEFS[chip].CHIP_NAME == flashing.CHIP_LABELS[chip]
        # MicroPython's image starts with the second-stage bootloader.
        assert CHIP_DEFS[chip].BOOTLOADER_FLASH_OFFSET == flashing.IMAGE_OFFSETS[chip], chip


def test_flash_writes_image_at_offset_erases_filesystem_and_boots(vboard, tmp_path):
    vb = vboard()
    assert "boot.py" in files_on(vb.port) and "main.py" in files_on(vb.port)  # deployed firmware
    image = make_image(tmp_path / "fw.bin", "esp32", size=300_000)
    r = flash_cli("--port", vb.port, "--image", str(image), "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["chip"] == "esp32" and result["offset"] == 0x1000
    assert result["sha256"] == sha(image) and result["size"] == 300_000 and result["erased"]
    assert result["chip_description"].startswith("ESP32-D0WD")
    assert "MicroPython" in result["banner"]

    flash = (vb.run_dir / "spiflash.bin").read_bytes()
    assert len(flash) == FLASH_SIZE
    assert flash[0x1000 : 0x1000 + 300_000] == image.read_bytes()
    assert flash[:0x1000] == b"\xff" * 0x1000  # erased before the offset
    assert set(flash[0x1000 + 300_000 : romloader.VFS_OFFSET]) == {0xFF}
    # A real erase wipes the vfs partition: the board boots with an empty filesystem.
    assert files_on(vb.port) == []
    # Leaving download mode powered the board on once (mpremote's soft resets are cause 5).
    assert [cause for cause, _ in vb.supervisor.resets].count(1) == 1
    assert vb.supervisor._download.sessions == 1


def test_no_erase_keeps_the_filesystem(vboard, tmp_path):
    vb = vboard()
    image = make_image(tmp_path / "fw.bin", "esp32", seed=2)
    r = flash_cli("--port", vb.port, "--image", str(image), "--no-erase")
    assert r.returncode == 0, r.stderr
    assert "flashed fw.bin" in r.stdout
    assert (vb.run_dir / "spiflash.bin").read_bytes()[0x1000 : 0x1000 + image.stat().st_size] == image.read_bytes()
    assert "boot.py" in files_on(vb.port)


def test_wrong_chip_image_is_refused_and_the_board_is_unchanged(vboard, tmp_path):
    vb = vboard()
    before = firmware_files(vb.port)
    image = make_image(tmp_path / "s3.bin", "esp32s3")
    r = flash_cli("--port", vb.port, "--image", str(image))
    assert r.returncode == 2
    assert "wrong chip" in r.stderr and "ESP32-S3" in r.stderr
    assert vb.supervisor._download.sessions == 0  # esptool never even connected
    assert firmware_files(vb.port) == before


def test_board_whose_chip_differs_from_the_port_is_refused(vboard, tmp_path):
    vb = vboard()
    before = firmware_files(vb.port)
    image = make_image(tmp_path / "s3.bin", "esp32s3")
    r = flash_cli("--port", vb.port, "--board", "esp32-s3-devkitc-1", "--image", str(image))
    assert r.returncode == 3, r.stderr
    assert "wrong chip: board esp32-s3-devkitc-1 says esp32s3" in r.stderr
    assert "is an ESP32" in r.stderr and "nothing was written" in r.stderr
    # esptool did connect (download mode), wrote nothing, and the board came back as it was.
    download = vb.supervisor._download
    assert download.sessions == 1 and not WRITES & set(download.loader.commands)
    assert romloader.READ_REG in download.loader.commands  # the chip was identified
    assert b"stand-in" in (vb.run_dir / "spiflash.bin").read_bytes()[0x1000:0x1100]
    assert firmware_files(vb.port) == before


def test_download_is_checked_cached_and_used_once(vboard, tmp_path, http_root):
    root, server = http_root
    image = make_image(root / "ESP32_GENERIC-20990101-v0.0.1.bin", "esp32", seed=3)
    folder = board_folder(tmp_path, {"image": image.name, "sha256": sha(image),
                                     "url": "https://example.invalid/never-used/" + image.name})
    env = {"MICROSTIM_IMAGE_BASE_URL": server.url}
    vb = vboard()
    r = flash_cli("--port", vb.port, "--board", str(folder), "--json", env=env)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["downloaded"] is True and result["version"] == "0.0.1"
    cached = flashing.cache_root() / image.name
    assert Path(result["image"]) == cached and cached.read_bytes() == image.read_bytes()
    assert server.requests == ["/" + image.name]

    r = flash_cli("--port", vb.port, "--board", str(folder), "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["downloaded"] is False
    assert server.requests == ["/" + image.name]  # the cache answered
    flash = (vb.run_dir / "spiflash.bin").read_bytes()
    assert flash[0x1000 : 0x1000 + image.stat().st_size] == image.read_bytes()


def test_checksum_mismatch_is_refused_and_the_download_deleted(vboard, tmp_path, http_root):
    root, server = http_root
    image = make_image(root / "ESP32_GENERIC-x.bin", "esp32", seed=4)
    folder = board_folder(tmp_path, {"image": image.name, "sha256": "0" * 64})
    vb = vboard()
    before = firmware_files(vb.port)
    r = flash_cli("--port", vb.port, "--board", str(folder),
                  env={"MICROSTIM_IMAGE_BASE_URL": server.url})
    assert r.returncode == 1
    assert "checksum mismatch" in r.stderr and sha(image) in r.stderr
    assert server.requests == ["/" + image.name]
    assert not any(flashing.cache_root().glob("*"))  # neither the file nor a .part
    assert vb.supervisor._download.sessions == 0
    assert firmware_files(vb.port) == before


def test_unpinned_download_is_refused_unless_a_checksum_is_given(tmp_path, http_root):
    root, server = http_root
    image = make_image(root / "ESP32_GENERIC-y.bin", "esp32", seed=5)
    folder = board_folder(tmp_path, {"image": image.name})
    env = {"MICROSTIM_IMAGE_BASE_URL": server.url}
    r = flash_cli("--port", "/dev/null-not-used", "--board", str(folder), env=env)
    assert r.returncode == 2
    assert "pins no SHA-256" in r.stderr and "--sha256" in r.stderr and "--image" in r.stderr
    assert server.requests == []  # nothing downloaded

    # With the checksum given, the same board's image downloads (API, no board needed).
    spec = json.loads((folder / "board.json").read_text())
    import os

    os.environ["MICROSTIM_IMAGE_BASE_URL"] = server.url
    try:
        path, downloaded = flashing.fetch_image(spec, sha256=sha(image))
    finally:
        del os.environ["MICROSTIM_IMAGE_BASE_URL"]
    assert downloaded and path.read_bytes() == image.read_bytes()


def test_esptool_itself_sees_an_esp32_and_an_erased_chip_stays_in_the_rom(vboard, tmp_path):
    """Plain esptool commands, as a maker would type them: the virtual board answers as an
    ESP32; after erase-flash it has nothing to boot and stays in the ROM, like a blank chip;
    a write brings MicroPython back with an empty filesystem."""
    vb = vboard()
    esptool = [sys.executable, "-m", "esptool", "--port", vb.port]
    r = subprocess.run([*esptool, "flash-id"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ESP32-D0WD-V3" in r.stdout and "MAC:                24:0a:c4:00:00:01" in r.stdout
    assert "Detected flash size: 4MB" in r.stdout

    r = subprocess.run([*esptool, "erase-flash"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    import time

    deadline = time.monotonic() + 5
    while vb.supervisor._download.state != "halted" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert vb.supervisor._download.state == "halted"
    assert "invalid header: 0xffffffff" in vb.output_text()
    assert set((vb.run_dir / "flash.img").read_bytes()) == {0xFF}

    image = make_image(tmp_path / "fw.bin", "esp32", seed=6)
    r = subprocess.run([*esptool, "--baud", "460800", "write-flash", "0x1000", str(image)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Hash of data verified" in r.stdout
    r = subprocess.run([*esptool, "read-flash", "0x1000", str(image.stat().st_size), str(tmp_path / "back.bin")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "back.bin").read_bytes() == image.read_bytes()
    assert files_on(vb.port) == []


def test_flash_over_a_socket_port(vboard, tmp_path):
    vb = vboard(transport="socket")
    image = make_image(tmp_path / "fw.bin", "esp32", seed=7)
    r = flash_cli("--port", vb.port, "--image", str(image), "--json")
    assert r.returncode == 0, r.stderr
    assert (vb.run_dir / "spiflash.bin").read_bytes()[0x1000 : 0x1000 + image.stat().st_size] == image.read_bytes()
    assert json.loads(r.stdout)["banner"].startswith("MicroPython")


def test_no_bootloader_answer_says_what_to_do(tmp_path):
    """A port where nothing answers (a pty nobody serves): the message tells the user how
    to put the board in download mode."""
    import os
    import pty

    master, slave = pty.openpty()
    try:
        image = make_image(tmp_path / "fw.bin", "esp32")
        r = flash_cli("--port", os.ttyname(slave), "--image", str(image), timeout=120)
    finally:
        os.close(master)
        os.close(slave)
    assert r.returncode == 3
    assert "hold BOOT, press and release EN" in r.stderr


def test_shipped_boards_name_official_release_images():
    """Every board names an official MicroPython release image for its chip. Only the
    ESP32 image's SHA-256 is pinned: it is the one found published by several independent
    sources (no network here to fetch the others); the rest are refused unpinned."""
    from microstim import boards

    port_boards = {"esp32": "ESP32_GENERIC", "esp32s2": "ESP32_GENERIC_S2", "esp32s3": "ESP32_GENERIC_S3"}
    for name in boards.names():
        v = boards.validate(name)
        assert v.ok, v.errors
        mp = v.spec["micropython"]
        assert mp["port_board"] == port_boards[v.spec["chip"]]
        assert mp["image"].startswith(mp["port_board"] + "-2") and mp["image"].endswith(f"-v{mp['version']}.bin")
        assert mp["url"] == "https://micropython.org/resources/firmware/" + mp["image"]
        if v.spec["chip"] == "esp32":
            assert mp["sha256"] == "cd7820d02c35d34dd403b44263129c6a511b350aea8446c229890753fe240784"
        else:
            assert "sha256" not in mp


def test_shipped_unpinned_board_is_refused_before_any_download():
    r = flash_cli("--port", "/dev/null-not-used", "--board", "lolin-s2-mini",
                  env={"MICROSTIM_IMAGE_BASE_URL": "http://127.0.0.1:9/"})
    assert r.returncode == 2
    assert "board lolin-s2-mini pins no SHA-256 for ESP32_GENERIC_S2-20260406-v1.28.0.bin" in r.stderr
    assert "micropython.org/download/ESP32_GENERIC_S2" in r.stderr


def test_a_file_posing_as_the_pinned_release_is_refused(vboard, tmp_path, http_root):
    """The virtual board's own definition pins the official ESP32 v1.28.0 image; a server
    that hands out something else under that name is caught by the checksum."""
    root, server = http_root
    make_image(root / "ESP32_GENERIC-20260406-v1.28.0.bin", "esp32", seed=8)
    vb = vboard()
    r = flash_cli("--port", vb.port, env={"MICROSTIM_IMAGE_BASE_URL": server.url})
    assert r.returncode == 1
    assert "checksum mismatch" in r.stderr and "cd7820d02c35d34dd403b44263129c6a" in r.stderr
    assert vb.supervisor._download.sessions == 0


def test_a_paced_link_is_paced_in_download_mode_too(vboard, tmp_path):
    """With the virtual board's link limited to 115200 baud (a USB-UART), esptool's data
    cannot reach the ROM faster than the wire allows."""
    import time
    import zlib

    vb = vboard(baud=115200)
    image = make_image(tmp_path / "fw.bin", "esp32", size=48 * 1024, seed=9)
    floor_s = len(zlib.compress(image.read_bytes(), 9)) * 10 / 115200
    t0 = time.perf_counter()
    r = flash_cli("--port", vb.port, "--image", str(image), "--baud", "115200")
    elapsed_s = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr
    assert elapsed_s >= floor_s, (elapsed_s, floor_s)
    assert (vb.run_dir / "spiflash.bin").read_bytes()[0x1000 : 0x1000 + 48 * 1024] == image.read_bytes()


def test_flash_then_deploy_in_one_command(vboard, tmp_path):
    """The maker's one command: blank the board, write MicroPython, deploy the firmware."""
    import os

    vb = vboard()
    image = make_image(tmp_path / "fw.bin", "esp32", seed=10)
    r = subprocess.run([*CLI, "--port", vb.port, "--image", str(image), "--json"],
                       capture_output=True, text=True, timeout=180, env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["erased"] and result["sha256"] == sha(image)
    dep = result["deploy"]
    assert "/boot.py" in dep["sent"] and "/board.json" in dep["sent"] and dep["restarted"]
    names = files_on(vb.port)
    assert {"boot.py", "main.py", "board.json", "pins.csv", "msfw"} <= set(names)

"""Flash MicroPython onto a board: from a blank ESP32 to a board ready for `deploy`.

The image is a local file, or the official MicroPython release that the board definition
names (board.json ``micropython``: ``version``, ``port_board``, ``image``, ``url``,
``sha256``), downloaded once into the user cache (``$XDG_CACHE_HOME/microstim/images``)
and used only if its SHA-256 matches the pinned one. The image's header must be built for
the board's chip, and the chip esptool finds on the port must be the board's chip; both
are checked before anything is erased. Then esptool (its Python API, ``esptool.cmds``)
uploads its flasher stub, erases the chip, writes the image at the chip's offset (0x1000
for ESP32/ESP32-S2, 0x0 for ESP32-S3/ESP32-C3), verifies it by MD5, and resets the board,
which must then answer at the MicroPython REPL.

The virtual board (``microstim sim``) answers esptool as an ESP32's ROM bootloader does
(see vboard/romloader.py), so all of this runs against it unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import click

from . import ports
from .errors import DeviceError, MicrostimError, UsageError

# Where each chip's MicroPython image goes (MicroPython's ESP32 port download pages).
IMAGE_OFFSETS = {"esp32": 0x1000, "esp32s2": 0x1000, "esp32s3": 0x0, "esp32c3": 0x0}
# The chip id in an image's extended header (esptool targets/*.py IMAGE_CHIP_ID).
IMAGE_CHIP_IDS = {"esp32": 0, "esp32s2": 2, "esp32c3": 5, "esp32s3": 9}
# esptool's CHIP_NAME for each.
CHIP_LABELS = {"esp32": "ESP32", "esp32s2": "ESP32-S2", "esp32s3": "ESP32-S3", "esp32c3": "ESP32-C3"}
IMAGE_MAGIC = 0xE9

DEFAULT_BASE_URL = "https://micropython.org/resources/firmware"
ENV_BASE_URL = "MICROSTIM_IMAGE_BASE_URL"
ROM_BAUD = 115200
# How long a freshly flashed board may take to show the MicroPython REPL (a real ESP32
# formats its filesystem on the first boot; native USB boards re-enumerate).
REPL_TIMEOUT_S = 20.0

_BOOT_HINT = ("put the board in download mode: hold BOOT, press and release EN (RST), "
              "release BOOT, then run the command again; if it still fails, try another "
              "USB cable (some carry only power) or a lower --baud")


# ---------------------------------------------------------------------------------------
# Board definition and image


def board_spec(board: str | dict) -> dict:
    """board.json of a board name or folder (validated with the firmware's schema), or a
    dict given as is."""
    if isinstance(board, dict):
        return board
    from . import boards

    v = boards.validate(board)
    if not v.ok:
        raise UsageError(f"board {v.name}: " + "; ".join(v.errors))
    return v.spec


def image_offset(spec: dict) -> int:
    """The board's flash_offset, which must be where its chip's images go."""
    chip = spec.get("chip")
    if chip not in IMAGE_OFFSETS:
        raise UsageError(f"board {spec.get('name')}: chip {chip!r} is not one of "
                         f"{', '.join(IMAGE_OFFSETS)}")
    offset = spec.get("flash_offset", IMAGE_OFFSETS[chip])
    if offset != IMAGE_OFFSETS[chip]:
        raise UsageError(f"board {spec.get('name')}: flash_offset = {offset:#x}, but MicroPython "
                         f"images for {chip} go at {IMAGE_OFFSETS[chip]:#x}; fix board.json")
    return offset


def image_chip(path: str | Path) -> str:
    """The chip an ESP firmware image is built for, read from its header; UsageError if
    the file is no ESP32-family image."""
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[0] != IMAGE_MAGIC:
        raise UsageError(f"{path}: not an ESP32 firmware image (no 0xE9 header); use a "
                         "MicroPython .bin for ESP32 from micropython.org/download")
    chip_id = struct.unpack_from("<H", head, 12)[0]
    for chip, cid in IMAGE_CHIP_IDS.items():
        if cid == chip_id:
            return chip
    raise UsageError(f"{path}: an image for chip id {chip_id}, which is no chip microstim "
                     f"supports ({', '.join(CHIP_LABELS.values())})")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_root(cache_dir: str | Path | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "microstim" / "images"


def release_image(spec: dict) -> tuple[str, str, str | None]:
    """(file name, URL, pinned SHA-256 or None) of the board's MicroPython release."""
    mp = spec.get("micropython") or {}
    name = mp.get("image")
    if not name:
        raise UsageError(f"board {spec.get('name')} names no MicroPython image "
                         "(board.json micropython.image); pass --image PATH")
    base = os.environ.get(ENV_BASE_URL)
    if base:
        url = base.rstrip("/") + "/" + name
    else:
        url = mp.get("url") or f"{DEFAULT_BASE_URL}/{name}"
    pinned = mp.get("sha256")
    return name, url, pinned.lower() if pinned else None


def fetch_image(spec: dict, *, sha256: str | None = None, cache_dir=None, progress: bool = False,
                echo: Callable[[str], None] | None = None) -> tuple[Path, bool]:
    """The board's release image from the cache, else downloaded into it: (path, downloaded).

    Only an image whose SHA-256 matches the pinned one (board.json, or `sha256`) is used;
    a download that does not match is deleted."""
    name, url, pinned = release_image(spec)
    if sha256 and pinned and sha256.lower() != pinned:
        raise UsageError(f"--sha256 {sha256} differs from the SHA-256 board {spec.get('name')} "
                         f"pins for {name} ({pinned}); drop --sha256 or fix board.json")
    expected = (sha256 or pinned or "").lower() or None
    if expected is None:
        raise UsageError(
            f"board {spec.get('name')} pins no SHA-256 for {name}, so it cannot be checked "
            f"after download: pass --sha256 <hex> (the checksum published with the image on "
            f"micropython.org/download/{(spec.get('micropython') or {}).get('port_board', '')}) "
            f"or --image PATH (a file you downloaded and checked)")
    if not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise UsageError(f"--sha256 {sha256}: expected 64 hex digits")
    root = cache_root(cache_dir)
    path = root / name
    if path.is_file():
        if sha256_file(path) == expected:
            return path, False
        path.unlink()  # a damaged or different file under that name: fetch it again
    root.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    if echo:
        echo(f"downloading {url}")
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=30) as r, open(part, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0) or None
            with _bar(progress, f"download {name}", total) as advance:
                while True:
                    block = r.read(1 << 16)
                    if not block:
                        break
                    h.update(block)
                    f.write(block)
                    advance(len(block))
    except (urllib.error.URLError, OSError) as e:
        part.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or e
        raise MicrostimError(f"cannot download {url}: {reason}. Check the network, or download "
                             f"the image yourself and pass --image PATH") from None
    got = h.hexdigest()
    if got != expected:
        part.unlink(missing_ok=True)
        raise MicrostimError(f"checksum mismatch for {url}: SHA-256 {got}, expected {expected}; "
                             "the download was deleted and nothing was flashed. Try again; if it "
                             "persists the file on the server is not the pinned release")
    part.replace(path)
    return path, True


# ---------------------------------------------------------------------------------------
# esptool, driven through its Python API


class _EsptoolOutput:
    """esptool's log, kept (for error context) rather than printed; its write progress
    goes to our bar."""

    def __init__(self, on_progress: Callable[[int, int], None] | None):
        self.lines: list[str] = []
        self._on_progress = on_progress

    def _keep(self, *args) -> None:
        self.lines.append(" ".join(str(a) for a in args))

    def print(self, *args, **kwargs):
        self._keep(*args)

    def note(self, message):
        self._keep("note:", message)

    def warning(self, message, suggestion=None):
        self._keep("warning:", message)

    def error(self, message, suggestion=None):
        self._keep("error:", message)

    def stage(self, finish=False):
        pass

    def progress_bar(self, cur_iter, total_iters, prefix="", suffix="", bar_length=30):
        if self._on_progress is not None and total_iters > 0:
            self._on_progress(cur_iter, total_iters)

    def set_verbosity(self, verbosity):
        pass


@contextmanager
def _esptool_log(on_progress):
    from esp_pylib.logger import EspLog
    from esptool.logger import TemplateLogger, log

    class Sink(_EsptoolOutput, TemplateLogger):
        pass

    sink = Sink(on_progress)
    previous = EspLog.instance
    log.set_logger(sink)
    # The reset strategies warn through a logger bound when esptool was imported (a
    # port without modem lines, such as a virtual board's, "was NOT reset"): keep it too.
    from esptool import reset as esptool_reset
    from esptool.util import PrintOnce

    previous_once = esptool_reset.ResetStrategy.print_once
    esptool_reset.ResetStrategy.print_once = PrintOnce(sink.warning)
    try:
        yield sink
    finally:
        EspLog.instance = previous
        esptool_reset.ResetStrategy.print_once = previous_once


def _chip_key(chip_name: str) -> str:
    return chip_name.lower().replace("-", "")


def _device_error(port: str, e: Exception, out: _EsptoolOutput) -> DeviceError:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "Failed to connect" in text or "Wrong boot mode" in text or "No serial data" in text:
        return DeviceError(f"{port}: the chip's bootloader does not answer ({text}); {_BOOT_HINT}")
    if "Permission denied" in text:
        return DeviceError(f"{port}: permission denied. On Linux, add yourself to the dialout "
                           "group (sudo usermod -aG dialout $USER), then log out and in again")
    return DeviceError(f"{port}: esptool failed: {text}; {_BOOT_HINT}")


# ---------------------------------------------------------------------------------------


def flash(
    port: str | None,
    board: str | dict,
    image: str | Path | None = None,
    *,
    erase: bool = True,
    progress: bool | None = None,
    cache_dir=None,
    baud: int = 460800,
    sha256: str | None = None,
    wait: bool = True,
    echo: Callable[[str], None] | None = None,
) -> dict:
    """Erase the board's flash and write MicroPython at its chip's offset.

    `image`: a local .bin, else the release board.json names (downloaded and cached,
    checked against its pinned SHA-256, or `sha256`). `progress` None: a bar only when
    stderr is a terminal. `wait`: after the reset, wait until MicroPython's REPL answers.
    `echo` receives one line per step (the CLI prints them).

    Returns {"port", "board", "chip", "chip_description", "offset", "image", "sha256",
    "size", "version", "downloaded", "erased", "seconds", "banner"}.
    Raises UsageError (bad board/image, wrong chip image), MicrostimError (download,
    checksum), DeviceError (port, bootloader, wrong chip on the port, no REPL after).
    """
    t0 = time.monotonic()
    say = echo or (lambda line: None)
    if progress is None:
        progress = sys.stderr.isatty()
    spec = board_spec(board)
    name = spec.get("name", "?")
    chip = spec.get("chip")
    offset = image_offset(spec)
    downloaded = False
    version = None
    if image is not None:
        path = Path(image)
        if not path.is_file():
            raise UsageError(f"--image {image}: no such file")
        if sha256 and sha256_file(path) != sha256.lower():
            raise MicrostimError(f"checksum mismatch for {path}: SHA-256 {sha256_file(path)}, "
                                 f"expected {sha256.lower()}; nothing was flashed")
    else:
        path, downloaded = fetch_image(spec, sha256=sha256, cache_dir=cache_dir, progress=progress,
                                       echo=echo)
        version = (spec.get("micropython") or {}).get("version")
    found = image_chip(path)
    if found != chip:
        raise UsageError(f"wrong chip: {path.name} is built for {CHIP_LABELS[found]}, board "
                         f"{name} is an {CHIP_LABELS[chip]} (chip {chip}); use a MicroPython "
                         f"image for {CHIP_LABELS[chip]} or pick the right --board")
    digest = sha256_file(path)
    size = path.stat().st_size

    port = ports.resolve(port)
    say(f"connecting to {port} (esptool)")
    ser = ports.open_port(port, ROM_BAUD, timeout=1.0)
    bar_state = {}

    def on_progress(cur, total):
        # esptool counts what it sends (compressed); the bar counts image bytes.
        if "advance" in bar_state:
            done = size * cur // total
            bar_state["advance"](done - bar_state["done"])
            bar_state["done"] = done

    from esptool.cmds import (
        attach_flash,
        detect_chip,
        erase_flash,
        reset_chip,
        run_stub,
        write_flash,
    )
    from esptool.util import FatalError

    with _esptool_log(on_progress) as out:
        esp = None
        try:
            esp = detect_chip(ser, ROM_BAUD, "default-reset")
            detected = _chip_key(esp.CHIP_NAME)
            description = esp.get_chip_description()
            if detected != chip:
                raise DeviceError(f"wrong chip: board {name} says {chip}, the chip on {port} is "
                                  f"an {esp.CHIP_NAME} ({description}); nothing was written. Pick "
                                  f"the board definition that matches with --board")
            say(f"found {description}")
            esp = run_stub(esp)
            if baud > ROM_BAUD:
                esp.change_baud(baud)
            attach_flash(esp)
            if erase:
                say("erasing the whole flash (files on the board are lost)")
                erase_flash(esp)
            say(f"writing {path.name} ({size} bytes) at {offset:#x}")
            with _bar(progress, "write", size) as advance:
                bar_state.update(advance=advance, done=0)
                write_flash(esp, [(offset, str(path))], flash_size="keep", no_progress=not progress)
                bar_state.clear()
            say("verified (MD5 of the flash matches the image); resetting the board")
        except FatalError as e:
            raise _device_error(port, e, out) from None
        except (OSError, ImportError) as e:  # serial I/O: unplugged mid-way
            raise DeviceError(f"{port}: {e}; {_BOOT_HINT}") from None
        finally:
            if esp is not None:
                try:
                    reset_chip(esp, "hard-reset")
                except (FatalError, OSError):
                    pass
            ser.close()
    banner = None
    if wait:
        say("waiting for MicroPython's REPL")
        banner = wait_for_micropython(port)
        m = re.search(r"MicroPython v(\d+\.\d+\.\d+)", banner)
        if m:
            version = m.group(1)
    return {
        "port": port,
        "board": name,
        "chip": chip,
        "chip_description": description,
        "offset": offset,
        "image": str(path),
        "sha256": digest,
        "size": size,
        "version": version,
        "downloaded": downloaded,
        "erased": erase,
        "seconds": round(time.monotonic() - t0, 3),
        "banner": banner,
    }


def wait_for_micropython(port: str, timeout_s: float = REPL_TIMEOUT_S) -> str:
    """Wait until the board answers at MicroPython's REPL; returns its banner line.

    A freshly flashed board has no main.py: it boots to the REPL and prints the banner
    ("MicroPython v1.28.0 on ...; Generic ESP32 module with ESP32"), which is awaited
    first, so nothing interrupts the boot (it creates the filesystem). If the banner went
    by before the port was open, or something runs, Ctrl-C stops it, Ctrl-A enters the
    raw REPL and Ctrl-B leaves it, which prints the banner again."""
    deadline = time.monotonic() + timeout_s
    last = None
    first = True
    while time.monotonic() < deadline:
        try:
            ser = ports.open_port(port, ROM_BAUD, timeout=0.2)
        except DeviceError as e:  # a native-USB board re-enumerating after its reset
            last = e
            time.sleep(0.3)
            continue
        try:
            if first:
                first = False
                buf = _read_until(ser, b">>> ", 3.0)
                m = re.search(rb"(MicroPython [^\r\n]*)\r\nType \"help\(\)\"", buf)
                if m and buf.endswith(b">>> "):
                    return m.group(1).decode(errors="replace")
            ser.write(b"\r\x03\x03\x01")
            buf = _read_until(ser, b"raw REPL; CTRL-B to exit", 2.0)
            if b"raw REPL; CTRL-B to exit" not in buf:
                last = f"no raw REPL prompt (got {buf[-80:]!r})"
                continue
            ser.write(b"\x02")
            buf = _read_until(ser, b'Type "help()"', 2.0)
            m = re.search(rb"(MicroPython [^\r\n]*)\r\n", buf)
            if m:
                return m.group(1).decode(errors="replace")
            last = f"no banner (got {buf[-80:]!r})"
        except OSError as e:
            last = e
        finally:
            ser.close()
        time.sleep(0.2)
    raise DeviceError(f"{port}: the board did not start MicroPython within {timeout_s:.0f} s after "
                      f"flashing ({last}); press EN (RST) once, and if it still shows nothing, "
                      "flash again with --image set to a MicroPython image for this chip")


def _read_until(ser, marker: bytes, timeout_s: float) -> bytes:
    buf = b""
    t_end = time.monotonic() + timeout_s
    while marker not in buf and time.monotonic() < t_end:
        buf += ser.read(256)
    return buf


@contextmanager
def _bar(show: bool, description: str, total: int | None):
    """A rich progress bar on stderr (only when `show`); yields advance(n_bytes)."""
    if not show:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


# ---------------------------------------------------------------------------------------
# Command line


@click.command("flash")
@click.option("--port", "-p", help="Serial port (else MICROSTIM_PORT, else the only board found).")
@click.option("--board", "-b", default="virtual", show_default=True,
              help="Board definition (a name under boards/, or a folder).")
@click.option("--image", "-i", type=click.Path(dir_okay=False),
              help="A MicroPython .bin to write instead of the release board.json names.")
@click.option("--sha256", help="Expected SHA-256 of the image (for a board that pins none).")
@click.option("--baud", default=460800, show_default=True, type=int,
              help="Baud rate for writing (the connection starts at 115200).")
@click.option("--no-erase", is_flag=True, help="Write without erasing the whole chip first.")
@click.option("--no-deploy", is_flag=True, help="Stop after MicroPython is written; deploy later.")
@click.option("--no-progress", is_flag=True, help="No progress bars (also when not a terminal).")
@click.option("--cache-dir", type=click.Path(file_okay=False),
              help="Where downloaded images are kept (default: $XDG_CACHE_HOME/microstim/images).")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def flash_command(port, board, image, sha256, baud, no_erase, no_deploy, no_progress, cache_dir,
                  as_json):
    """Erase the board and write MicroPython, then deploy the firmware.

    The image is the official MicroPython release named in the board definition,
    downloaded once, cached and checked against its pinned SHA-256, or a local file
    (--image). Its header must match the board's chip, and so must the chip on the port;
    nothing is erased otherwise. ESP32 and ESP32-S2 images go at 0x1000, S3 and C3 at 0x0.

    \b
    Examples:
      microstim flash --board esp32-devkitc            download, erase, write, deploy
      microstim flash -p /dev/ttyUSB0 --image ESP32_GENERIC-20260406-v1.28.0.bin
      microstim flash -p /dev/pts/7 --image fw.bin --no-deploy   (a virtual board)
    If the board does not answer: hold BOOT, press EN (RST), release BOOT, retry.
    """
    show = (not no_progress) and sys.stderr.isatty()

    def echo(line: str) -> None:
        if not as_json:
            click.echo(f"flash: {line}", err=True)

    try:
        result = flash(port, board, image, erase=not no_erase, progress=show, cache_dir=cache_dir,
                       baud=baud, sha256=sha256, echo=echo)
        if not no_deploy:
            try:
                from . import deploy as deploy_mod
            except ImportError:
                raise MicrostimError("MicroPython is on the board, but this microstim has no "
                                     "deploy step yet; run `microstim deploy` when it does") from None
            echo("deploying the firmware")
            done = deploy_mod.deploy(result["port"], board=board, progress=show)
            result["deploy"] = done.as_dict() if hasattr(done, "as_dict") else done
    except MicrostimError as e:
        click.echo(f"microstim: {e}", err=True)
        sys.exit(e.exit_code)
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
    else:
        click.echo(f"flashed {Path(result['image']).name} ({result['size']} bytes, sha256 "
                   f"{result['sha256'][:16]}...) at {result['offset']:#x} on {result['port']} "
                   f"({result['chip_description']}) in {result['seconds']:.1f} s")
        if result.get("banner"):
            click.echo(f"board answers: {result['banner']}")
        dep = result.get("deploy")
        if isinstance(dep, dict):
            click.echo(f"deployed {len(dep.get('sent', []))} files ({dep.get('bytes_sent', 0)} bytes) "
                       f"in {dep.get('seconds', 0):.1f} s; the board runs the firmware")


if __name__ == "__main__":
    flash_command()

"""microstim command line: a thin layer over the Python API (microstim.api and friends).

Exit codes (also in the README):
  0  success
  1  failure (a transfer, a check or a benchmark went wrong)
  2  bad usage or input (unknown option, a config value out of range, no such board)
  3  the device refused or failed (no answer, refused request, busy or missing port)
  130 interrupted (Ctrl-C)
"""

from __future__ import annotations

import functools
import json
import signal
import sys
import time
from pathlib import Path

import click

from . import __version__
from .errors import MicrostimError


def _fail(e: MicrostimError) -> None:
    click.echo(f"microstim: {e}", err=True)
    sys.exit(e.exit_code)


def handled(fn):
    """Run a command body; a MicrostimError becomes `microstim: message` and its exit code."""

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except MicrostimError as e:
            _fail(e)
        except KeyboardInterrupt:
            click.echo("microstim: interrupted", err=True)
            sys.exit(130)

    return wrapper


port_option = click.option(
    "--port", "-p", envvar="MICROSTIM_PORT", default=None,
    help="Serial port or socket:// URL (else $MICROSTIM_PORT, else the only board found).")
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
progress_option = click.option("--progress/--no-progress", default=None,
                               help="Progress bar (default: only on a terminal).")


def _out(data, as_json: bool, human) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        human(data)


def _kv(data: dict, keys=None) -> None:
    for k in keys or data:
        if k in data:
            v = data[k]
            click.echo(f"{k:>20}: {json.dumps(v) if isinstance(v, (dict, list)) else v}")


class _Main(click.Group):
    """The top-level group. Commands that live in their own modules are imported only when
    they run (or when help lists them), so a command pays at start only for what it uses:
    `microstim logs pull` never loads numpy, rich or matplotlib."""

    LAZY = {
        "bench": ("microstim.bench", "bench_command"),
        "boards": ("microstim.boards", "boards_command"),
        "characterise": ("microstim.characterise", "characterise_command"),
        "flash": ("microstim.flashing", "flash_command"),
        "logs": ("microstim.logs.cli", "group"),
        "report": ("microstim.report", "command"),
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(self.LAZY))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in self.LAZY:
            import importlib

            module, attr = self.LAZY[name]
            cmd = getattr(importlib.import_module(module), attr)
            if name == "logs":
                cmd.add_command(logs_pull, "pull")
            self.add_command(cmd, name)
        return self.commands.get(name)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="microstim")
def main() -> None:
    """Flash, deploy, configure and watch a microstim device, or its virtual board.

    \b
    Examples:
      microstim demo                 boot a virtual board and run a short session
      microstim sim                  start a virtual board; prints the port to use
      microstim deploy               put the firmware on the board (only what changed)
      microstim status               what the device is doing now
      microstim config set setpoint_ua=150 program=lift
      microstim monitor              live current, load and events (JSON lines when piped)
      mpremote connect /dev/pts/N exec "print(1+1)"   (N as printed by sim)

    The port is --port, else $MICROSTIM_PORT, else the only board `microstim ports` finds.
    """


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def ports(as_json: bool) -> None:
    """List boards that can be used: USB serial ports of known ESP32 bridges (CP210x,
    CH340/CH9102, FTDI, Espressif native USB) and running virtual boards."""
    from .ports import candidates

    found = candidates()
    if as_json:
        click.echo(json.dumps([c.as_dict() for c in found], indent=2))
        return
    if not found:
        click.echo("no boards found (plug one in, or start one with `microstim sim`)", err=True)
        return
    for c in found:
        click.echo(f"{c.port}\t{c.kind}\t{c.description}")


@main.command()
@click.option("--board", default="virtual", show_default=True, help="Board definition to simulate.")
@click.option("--speed", default=1.0, show_default=True, type=float,
              help="Virtual time per wall second (1 = real time).")
@click.option("--socket", "use_socket", is_flag=True, help="Serve a socket:// URL instead of a pty.")
@click.option("--baud", type=int, default=None, help="Limit the link to this baud rate (e.g. 115200).")
@click.option("--scenario", type=click.Path(exists=True, dir_okay=False),
              help="JSON list of timed events (lift, contact, short, press, ...).")
@click.option("--run-dir", type=click.Path(file_okay=False), help="Keep flash and trace here.")
def sim(board: str, speed: float, use_socket: bool, baud: int | None, scenario: str | None,
        run_dir: str | None) -> None:
    """Start a virtual board and serve it as a serial port until Ctrl-C.

    The firmware runs unchanged in the MicroPython unix port with simulated hardware;
    point mpremote or any microstim command at the printed port.
    """
    from .vboard import VirtualBoard

    events = json.loads(Path(scenario).read_text()) if scenario else []
    vb = VirtualBoard(run_dir, board, scenario=events, speed=speed,
                      transport="socket" if use_socket else "pty", baud=baud)
    vb.start()
    click.echo(vb.port)
    click.echo(f"virtual board '{board}' running (run dir {vb.run_dir}); Ctrl-C to stop", err=True)
    sys.stdout.flush()
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        vb.stop()


@main.command()
@click.option("--setpoint", "setpoint_ua", default=200.0, show_default=True, help="Current in µA.")
@click.option("--seconds", default=30.0, show_default=True, help="Session length (simulated).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def demo(setpoint_ua: float, seconds: float, as_json: bool) -> None:
    """Boot a virtual board, run a short session, and print what it delivered.

    The delivered figures come from the simulator's analog model, not from the
    firmware's own readings.
    """
    from .demo import run_demo

    try:
        result = run_demo(setpoint_ua=setpoint_ua, seconds=seconds)
    except MicrostimError as e:
        _fail(e)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    from .demo import render

    render(result)


@main.command()
@port_option
@click.option("--board", help="Board definition to deploy (default: the one on the device).")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="Also install this config (validated first).")
@click.option("--force", is_flag=True, help="Send every file, changed or not.")
@progress_option
@json_option
@handled
def deploy(port, board, config_path, force, progress, as_json):
    """Compile the firmware with mpy-cross and copy what changed (by SHA-256) to the board,
    with the board definition; verify every file; leave the board running it.

    \b
    Examples:
      microstim deploy
      microstim deploy --board esp32-devkitc --config my-config.json
      microstim deploy --force --no-progress
    """
    from . import api
    from .deploy import deploy as run

    cfg = None
    if config_path:
        cfg = api.load_config_file(config_path)
    res = run(port, board=board, config=cfg, force=force, progress=progress)

    def human(d):
        if not d["sent"] and not d["removed"]:
            click.echo(f"{d['port']}: up to date ({len(d['unchanged'])} files unchanged), "
                       f"{d['seconds']:.2f} s")
            return
        click.echo(f"{d['port']}: sent {len(d['sent'])} files ({d['bytes_sent']} bytes), "
                   f"{len(d['unchanged'])} unchanged, {len(d['removed'])} removed in "
                   f"{d['seconds']:.1f} s via {d['via']}; running firmware {d['firmware']}")

    _out(res.as_dict(), as_json, human)


@main.group()
def config():
    """Show, change, check and install the device's settings.

    Every value is checked against the board's ceilings by the firmware's own schema; an
    error names the field, the value and the limit, and changes nothing.

    \b
    Examples:
      microstim config show
      microstim config set setpoint_ua=150 duration_s=900
      microstim config validate my-config.json --board esp32-devkitc
      microstim config apply my-config.json
    """


@config.command("show")
@port_option
@json_option
@handled
def config_show(port, as_json):
    """The device's settings, and each one's limits."""
    from . import api

    d = api.config_show(port)

    def human(d):
        for k, v in d["config"].items():
            lim = d["limits"].get(k, {})
            rng = (f"one of {', '.join(lim['choices'])}" if "choices" in lim
                   else f"{lim.get('min')}..{lim.get('max')} {lim.get('unit', '')}")
            click.echo(f"{k:>12} = {v!s:<8}  ({rng})")
        if d.get("pending"):
            click.echo(f"pending (after this session): {json.dumps(d['pending'])}")

    _out(d, as_json, human)


@config.command("set")
@click.argument("assignments", nargs=-1, required=True)
@port_option
@json_option
@handled
def config_set(assignments, port, as_json):
    """Change settings: NAME=VALUE ..."""
    from . import api

    d = api.config_set(port, api.parse_assignments(list(assignments)))
    _out(d, as_json, lambda d: click.echo(
        ("applied: " if d["applied"] else "saved, applies after this session: ")
        + json.dumps(d["config"])))


@config.command("validate")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--board", default="virtual", show_default=True, help="Board whose ceilings apply.")
@json_option
@handled
def config_validate(path, board, as_json):
    """Check a config file against a board (no device needed)."""
    from . import api

    d = api.config_validate(path, board)
    _out(d, as_json, lambda d: click.echo(f"{path}: valid for {board}: {json.dumps(d)}"))


@config.command("apply")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@port_option
@json_option
@handled
def config_apply(path, port, as_json):
    """Replace the device's config with a file's (all or nothing)."""
    from . import api

    d = api.config_apply(port, path)
    _out(d, as_json, lambda d: click.echo(
        ("applied: " if d["applied"] else "saved, applies after this session: ")
        + json.dumps(d["config"])))


@main.command()
@port_option
@click.option("--program", help="Program for this session (default: the config's).")
@click.option("--setpoint", "setpoint_ua", type=float, help="Current in µA for this session.")
@click.option("--duration", "duration_s", type=int, help="Auto-off in seconds (at most 1200).")
@json_option
@handled
def start(port, program, setpoint_ua, duration_s, as_json):
    """Start a session (soft start; the device's ceilings and checks apply).

    \b
    Examples:
      microstim start
      microstim start --program lift --setpoint 120 --duration 600
    """
    from . import api

    d = api.start(port, program=program, setpoint_ua=setpoint_ua, duration_s=duration_s)
    _out(d, as_json, lambda d: click.echo(d["state"]))


@main.command()
@port_option
@json_option
@handled
def stop(port, as_json):
    """Stop the session now (output off)."""
    from . import api

    _out(api.stop(port), as_json, lambda d: click.echo(d["state"]))


@main.command("clear-fault")
@port_option
@json_option
@handled
def clear_fault(port, as_json):
    """Clear a latched fault (a deliberate action, like a long button press)."""
    from . import api

    _out(api.clear_fault(port), as_json, lambda d: click.echo(d["state"]))


@main.command()
@port_option
@json_option
@handled
def status(port, as_json):
    """What the device is doing now: state, current, load, time left."""
    from . import api

    _out(api.status(port), as_json, _kv)


@main.command()
@port_option
@json_option
@handled
def info(port, as_json):
    """Firmware version, board, MicroPython version, calibration, fault history."""
    from . import api

    _out(api.info(port), as_json, _kv)


@main.command()
@port_option
@click.option("--hz", default=5, show_default=True, type=click.IntRange(1, 50),
              help="Telemetry rate.")
@click.option("--seconds", type=float, help="Stop after this long (default: until Ctrl-C).")
@json_option
@handled
def monitor(port, hz, seconds, as_json):
    """Live delivered current, load impedance, state and events.

    A live view on a terminal; JSON lines (one object per event or sample) when the output
    is piped or with --json.

    \b
    Examples:
      microstim monitor
      microstim monitor --json --seconds 60 > session.jsonl
    """
    from . import api

    if as_json or not sys.stdout.isatty():
        def emit(ev):
            click.echo(json.dumps(ev))
            sys.stdout.flush()

        api.monitor(port, hz=hz, seconds=seconds, on_event=emit)
        return
    from .monitorview import LiveView

    with LiveView() as view:
        api.monitor(port, hz=hz, seconds=seconds, on_event=view.update)


@click.command("pull")
@port_option
@click.option("--archive", "root", type=click.Path(file_okay=False),
              help="Archive folder (default: the user data dir; one folder per device id).")
@progress_option
@json_option
@handled
def logs_pull(port, root, progress, as_json):
    """Fetch the records this computer does not have yet (resumes after an interruption;
    every checksum verified; corruption reported, never stored).

    \b
    Examples:
      microstim logs pull
      microstim logs pull --archive ./field-logs --json
    """
    from .logpull import pull

    d = pull(port, root, progress=progress).as_dict()

    def human(d):
        rate = d["bytes"] / d["seconds"] if d["seconds"] else 0
        click.echo(f"device {d['uid']}: {d['records']} new records ({d['bytes']} bytes, "
                   f"{rate:.0f} B/s) into {d['archive']}")
        for c in d["corrupt"]:
            click.echo(f"  corrupt: {c}", err=True)
        if d["lost_segments"]:
            click.echo(f"  segments rotated out on the device before this pull: {d['lost_segments']}",
                       err=True)

    _out(d, as_json, human)


@main.command()
@port_option
@click.option("--r-ref", "r_ref_ohm", type=float, required=True,
              help="The reference resistor across the probes, in ohm (1k..40k; 0.1 %% parts).")
@json_option
@handled
def calibrate(port, r_ref_ohm, as_json):
    """Two-point calibration of the current source and its measurement against a reference
    resistor across the probes; stored on the device with a checksum, shown by `info`.

    \b
    Example (a 10 kΩ 0.1 % resistor across the probes, nobody touching them):
      microstim calibrate --r-ref 10000
    """
    from . import api

    d = api.calibrate(port, r_ref_ohm)
    _out(d, as_json, lambda d: click.echo(
        f"calibrated: DAC {d['dac_gain_vs_nominal']:.4f} x nominal, offset {d['dac_offset_ua']:.2f} µA; "
        f"ADC {d['adc_gain']:.4f} x nominal, offset {d['adc_offset_ua']:.2f} µA; "
        f"residuals DAC {d['dac_residual_ua']:.2f} µA, ADC {d['adc_residual_ua']:.2f} µA"))


if __name__ == "__main__":
    main()

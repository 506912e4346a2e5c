"""microstim command line: a thin layer over the Python API (microstim.*).

Exit codes: 0 success, 1 failure, 2 bad usage or input, 3 the device refused or failed,
130 interrupted.
"""

from __future__ import annotations

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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="microstim")
def main() -> None:
    """Flash, deploy, configure and watch a microstim device, or its virtual board.

    \b
    Examples:
      microstim demo                 boot a virtual board and run a short session
      microstim sim                  start a virtual board; prints the port to use
      mpremote connect /dev/pts/N exec "print(1+1)"   (N as printed by sim)
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


if __name__ == "__main__":
    main()

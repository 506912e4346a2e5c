"""Board definitions on the host: list them, validate one before it is deployed.

There is one schema, and it lives in the firmware (firmware/msfw/boardschema.py, used by
msfw/board.py): this module imports those very files under CPython, so the host and the
device accept and refuse exactly the same definitions, with the same messages.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import click

from . import paths
from .errors import UsageError


def schema():
    """The firmware's board schema (msfw/boardschema.py), imported under CPython."""
    from .api import firmware_module

    return firmware_module("msfw.boardschema")


def board_module():
    """The firmware's msfw/board.py (Board, parse_pins, BoardError), under CPython."""
    from .api import firmware_module

    return firmware_module("msfw.board")


@dataclass
class Validation:
    folder: Path
    name: str
    spec: dict | None
    pins: dict[str, int]
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict:
        return {"folder": str(self.folder), "name": self.name, "ok": self.ok,
                "errors": self.errors, "warnings": self.warnings}


def resolve(where: str | Path) -> Path:
    """A board folder from a folder, a board.json path, or a board name under boards/."""
    p = Path(where)
    if p.is_file() and p.name == "board.json":
        return p.parent
    if p.is_dir():
        return p
    named = paths.boards_dir() / str(where)
    if named.is_dir():
        return named
    raise UsageError(f"{where}: no such board folder or board name (known: {', '.join(names())})")


def names() -> list[str]:
    return sorted(p.name for p in paths.boards_dir().iterdir() if (p / "board.json").is_file())


def validate(where: str | Path) -> Validation:
    """Validate board.json + pins.csv of a board folder with the firmware's own schema."""
    mod = schema()
    bmod = board_module()
    folder = resolve(where)
    v = Validation(folder, folder.name, None, {})
    bj = folder / "board.json"
    pc = folder / "pins.csv"
    try:
        v.spec = json.loads(bj.read_text())
    except FileNotFoundError:
        v.errors.append(f"{bj}: not found")
    except ValueError as e:
        v.errors.append(f"{bj}: not valid JSON ({e})")
    try:
        v.pins = bmod.parse_pins(pc.read_text())
    except FileNotFoundError:
        v.errors.append(f"{pc}: not found")
    except bmod.BoardError as e:
        v.errors.append(str(e))
    if v.errors:
        return v
    errors, warnings = mod.check(v.spec, v.pins)
    v.errors.extend(errors)
    v.warnings.extend(warnings)
    if isinstance(v.spec.get("name"), str) and v.spec["name"] != folder.name:
        v.warnings.append(f"name = {v.spec['name']!r} differs from the folder name {folder.name!r}")
    if v.ok:
        # The firmware's constructor too, so nothing it would refuse passes here.
        try:
            bmod.Board(v.spec, v.pins)
        except bmod.BoardError as e:  # pragma: no cover - check() reports the same
            v.errors.append(str(e))
    return v


def load(where: str | Path):
    """A validated board as the firmware sees it (msfw.board.Board); UsageError if invalid."""
    v = validate(where)
    if not v.ok:
        raise UsageError(f"board {v.name}: " + "; ".join(v.errors))
    return board_module().Board(v.spec, v.pins)


def summary(where: str | Path) -> dict:
    v = validate(where)
    out = {"name": v.name, "ok": v.ok, "errors": v.errors}
    if v.spec and v.ok:
        fe = v.spec["frontend"]
        dac = fe.get("dac") or {}
        out.update(
            chip=v.spec["chip"],
            dac=f"{dac.get('kind', 'internal')} {fe['dac_bits']}-bit",
            ceiling_ua=fe["ceiling_ua"],
            hw_limit_ua=fe["hw_current_limit_ua"],
            compliance_v=fe["compliance_v"],
            usb_isolated=v.spec["usb_isolated"],
            micropython=v.spec["micropython"].get("port_board", "?"),
        )
    return out


def schema_markdown() -> str:
    """The board.json field table (generated from the schema), for docs."""
    mod = schema()
    lines = ["| field | type | required | range | unit | meaning |", "|---|---|---|---|---|---|"]
    for path, kind, required, lo, hi, unit, meaning in mod.FIELDS:
        if kind == "enum":
            rng = " / ".join(lo)
        elif lo is not None:
            rng = f"{lo:g}..{hi:g}"
        else:
            rng = ""
        if path in ("frontend.hw_current_limit_ua", "frontend.ceiling_ua"):
            rng = f"1..{mod.ABSOLUTE_MAX_UA:g}"
        lines.append(f"| `{path}` | {kind} | {'yes' if required else 'no'} | {rng} | {unit} | {meaning} |")
    lines += ["", "| pins.csv name | kind | meaning |", "|---|---|---|"]
    for name, kind, meaning in mod.PINS:
        req = " (required)" if name in mod.REQUIRED_PINS else ""
        lines.append(f"| `{name}` | {kind} | {meaning}{req} |")
    return "\n".join(lines)


# ---- commands -------------------------------------------------------------------------


@click.group("boards")
def boards_command() -> None:
    """Board definitions (boards/<name>/board.json and pins.csv): list, validate, schema."""


@boards_command.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_command(as_json: bool) -> None:
    """List the board definitions that ship with microstim, each validated."""
    rows = [summary(n) for n in names()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        if not r["ok"]:
            click.echo(f"{r['name']:<22} INVALID: {r['errors'][0]}")
            continue
        iso = "isolated USB" if r["usb_isolated"] else "USB inhibits output"
        click.echo(f"{r['name']:<22} {r['chip']:<8} {r['dac']:<16} ceiling {r['ceiling_ua']:g} uA "
                   f"(hw {r['hw_limit_ua']:g} uA), {r['compliance_v']:g} V, {iso}, {r['micropython']}")


@boards_command.command("validate")
@click.argument("where", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def validate_command(where: tuple[str, ...], as_json: bool) -> None:
    """Validate board folders (or board.json files, or board names) with the firmware's schema.

    Exit code 2 if any definition is invalid; warnings (unknown fields) do not fail."""
    try:
        results = [validate(w) for w in where]
    except UsageError as e:
        click.echo(f"microstim: {e}", err=True)
        sys.exit(e.exit_code)
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        for r in results:
            click.echo(f"{r.folder}: {'ok' if r.ok else 'INVALID'}")
            for e in r.errors:
                click.echo(f"  error: {e}")
            for w in r.warnings:
                click.echo(f"  warning: {w}")
    if not all(r.ok for r in results):
        sys.exit(UsageError.exit_code)


@boards_command.command("schema")
def schema_command() -> None:
    """Print the board.json and pins.csv fields as a markdown table."""
    click.echo(schema_markdown())

"""`fim-desktop setup|enable|clean|dump`: desktop-integration settings and icon stored
in the image.

The files themselves are written into the host's XDG data directory at the start of
every run and removed by ``clean`` (app.desktop). Deliberate differences from
FlatImage: a remote icon is downloaded with Python (no wget needed), a JPEG icon can
be dumped (upstream refuses it, spec 18.1 item 7), names are XML-escaped in the
MIME XML, and control characters in the name or a category, or a ``;`` in a category,
are refused (they would inject keys into the ``.desktop`` file).
"""

from __future__ import annotations

import json

from fim.app import desktopsetup
from fim.app.config import INTEGRATIONS
from fim.app.desktop import clean, entry, mimetype
from fim.app.desktopsetup import SETUP_FAILED, refuse
from fim.app.log import CommandError, UsageError, trailing
from fim.cli.commands.args import editing, keyword, pretty_json, print_lines

TYPE_CHECKING = False  # not typing's: importing typing slows every start-up
if TYPE_CHECKING:
    from fim.app.session import Context

def _read_setup(path: str) -> object:
    """The JSON document of a setup file."""
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError:
        raise CommandError(f"Failed to open file '{path}' for desktop integration",
                           SETUP_FAILED) from None
    try:
        return json.loads(text)
    except ValueError:
        raise CommandError("Failed to deserialize json", SETUP_FAILED) from None


def setup(ctx: Context, doc: object) -> None:
    """``fim-desktop setup`` of a parsed document (also a recipe's ``desktop`` object):
    store it (:mod:`fim.app.desktopsetup`), print the settings."""
    print(pretty_json(desktopsetup.setup(ctx, doc).to_json()))


def _enable(ctx: Context, args: list[str]) -> None:
    if not args:
        raise UsageError("Missing arguments for 'enable' (entry,mimetype,icon,none)")
    if args[1:]:
        raise trailing("fim-desktop", args[1:])
    items = [keyword(i) for i in args[0].split(",")] if args[0] else []
    if not set(items) <= {*INTEGRATIONS, "NONE"}:
        raise UsageError("Invalid integration item")
    if "NONE" in items and len(set(items)) > 1:
        raise UsageError("'none' option should not be used with others")
    with editing(ctx) as cfg:
        if cfg.desktop is None:
            raise CommandError("Empty json data", "Failed to enable desktop integration")
        cfg.desktop.integrations = [i for i in INTEGRATIONS if i in items]
    print_lines(["NONE"] if "NONE" in items else [i for i in INTEGRATIONS if i in items])


def _dump(ctx: Context, args: list[str]) -> None:
    if not args:
        raise UsageError("Missing arguments for 'dump' (entry,mimetype,icon)")
    what = keyword(args[0])
    if what == "NONE":
        raise UsageError("Invalid desktop dump operation")
    if what not in ("ENTRY", "MIMETYPE", "ICON"):
        raise UsageError("Invalid dump operation")
    if what == "ICON":
        if len(args) < 2:
            raise UsageError("Missing argument for 'icon' /path/to/dump/file")
        if args[2:]:
            raise trailing("fim-desktop", args[2:])
        _dump_icon(ctx, args[1])
        return
    if args[1:]:
        raise trailing("fim-desktop", args[1:])
    desktop = ctx.config.desktop
    if desktop is None:
        raise CommandError("Empty json data", "Failed to dump desktop integration")
    refuse(desktop, "Failed to dump desktop integration")
    print((entry if what == "ENTRY" else mimetype)(desktop, ctx.image))


def _dump_icon(ctx: Context, path: str) -> None:
    if ctx.config.icon is None:
        raise CommandError("Empty icon data", "Failed to dump desktop integration")
    kind, data = ctx.config.icon
    extensions = (".jpg", ".jpeg") if kind == "jpg" else (f".{kind}",)
    if not path.endswith(extensions):
        path += extensions[0]
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as exc:
        raise CommandError(f"Could not write icon to '{path}': {exc.strerror}",
                           "Failed to dump desktop integration") from None


def run(ctx: Context, args: list[str]) -> int:
    if not args:
        raise UsageError("Missing op for 'fim-desktop' (enable,setup,clean,dump)")
    op = keyword(args[0])
    if op == "SETUP":
        if len(args) < 2:
            raise UsageError("Missing argument for 'setup' (/path/to/file.json)")
        if args[2:]:
            raise trailing("fim-desktop", args[2:])
        setup(ctx, _read_setup(args[1]))
    elif op == "ENABLE":
        _enable(ctx, args[1:])
    elif op == "DUMP":
        _dump(ctx, args[1:])
    elif op == "CLEAN":
        if args[1:]:
            raise trailing("fim-desktop", args[1:])
        if ctx.config.desktop is None:
            raise CommandError("Empty json data", "Failed to clean desktop integration")
        refuse(ctx.config.desktop, "Failed to clean desktop integration")
        clean(ctx.config)
    else:
        raise UsageError("Invalid desktop operation")
    return 0

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
import os

from fim.app.config import INTEGRATIONS, Desktop
from fim.app.desktop import clean, entry, mimetype, problem
from fim.app.log import CommandError, UsageError, trailing
from fim.cli.commands.args import editing, keyword, pretty_json, print_lines

TYPE_CHECKING = False  # not typing's: importing typing slows every start-up
if TYPE_CHECKING:
    from typing import Any

    from fim.app.session import Context

ICON_LIMIT = 1 << 20  # an icon must be smaller than 1 MiB
_ICON_TYPES = {".svg": "svg", ".png": "png", ".jpg": "jpg", ".jpeg": "jpg"}
_SETUP_FAILED = "Failed to setup desktop integration"
_DOWNLOAD_TIMEOUT = 60  # seconds


def _integrations(items: list[str]) -> list[str]:
    """Items named (any case; NONE names nothing) in the fixed order ENTRY, MIMETYPE, ICON."""
    wanted = {keyword(i) for i in items}
    if not wanted <= {*INTEGRATIONS, "NONE"}:
        raise ValueError("unknown integration")
    return [i for i in INTEGRATIONS if i in wanted]


def _read_setup(path: str) -> object:
    """The JSON document of a setup file."""
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError:
        raise CommandError(f"Failed to open file '{path}' for desktop integration",
                           _SETUP_FAILED) from None
    try:
        return json.loads(text)
    except ValueError:
        raise CommandError("Failed to deserialize json", _SETUP_FAILED) from None


def _parse_setup(doc: Any) -> tuple[Desktop, object]:
    """The settings of a setup document (parsed JSON, any shape) and its raw ``icon``
    field (None when absent)."""
    try:
        name, categories = doc["name"], doc["categories"]
        integrations = doc.get("integrations", [])
        if not (isinstance(name, str) and isinstance(categories, list)
                and isinstance(integrations, list)
                and all(isinstance(c, str) for c in categories)
                and all(isinstance(i, str) for i in integrations)):
            raise TypeError("field types")
        desktop = Desktop(name, sorted(set(categories)), _integrations(integrations))
    except (ValueError, TypeError, KeyError, AttributeError):
        raise CommandError("Failed to deserialize json", _SETUP_FAILED) from None
    return desktop, doc.get("icon")


def _refuse(desktop: Desktop, failed: str) -> None:
    """Settings that cannot be written safely (control characters, a ``/`` in the name, a
    category with ``;``: app.desktop.problem) are an error, whether given to ``setup`` or
    found stored in the image."""
    reason = problem(desktop)
    if reason is not None:
        raise CommandError(reason, failed)


def _icon_type(ext: str) -> str:
    if ext not in _ICON_TYPES:
        raise CommandError(f"Icon extension '{ext}' is not supported", _SETUP_FAILED)
    return _ICON_TYPES[ext]


def _too_large(size: int) -> CommandError:
    return CommandError(f"File is too large, '{size}' bytes", _SETUP_FAILED)


def _download(url: str) -> tuple[str, bytes]:
    dot = url.rfind(".")
    if dot < 0:
        raise CommandError("Could not get icon file extension from url",
                           "Failed to resolve icon path or URL", _SETUP_FAILED)
    kind = _icon_type(url[dot:])
    from urllib.request import urlopen

    try:
        with urlopen(url, timeout=_DOWNLOAD_TIMEOUT) as response:
            data = response.read(ICON_LIMIT)
            if len(data) == ICON_LIMIT:
                length = response.headers.get("Content-Length", "")
                raise _too_large(int(length) if length.isdigit() else ICON_LIMIT)
    except (OSError, ValueError) as exc:
        raise CommandError(f"Could not download icon from '{url}': {exc}",
                           "Failed to resolve icon path or URL", _SETUP_FAILED) from None
    return kind, data


def _load_icon(path: str) -> tuple[str, bytes]:
    kind = _icon_type(os.path.splitext(path)[1])
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        raise CommandError(f"Could not get size of file '{path}': {exc.strerror}",
                           _SETUP_FAILED) from None
    if size >= ICON_LIMIT:
        raise _too_large(size)
    try:
        with open(path, "rb") as f:
            return kind, f.read(ICON_LIMIT)
    except OSError as exc:
        raise CommandError(f"Could not read file '{path}': {exc.strerror}",
                           _SETUP_FAILED) from None


def setup(ctx: Context, doc: object) -> None:
    """``fim-desktop setup`` of a parsed document (also a recipe's ``desktop`` object):
    store the settings and the icon, print the settings."""
    desktop, icon = _parse_setup(doc)
    _refuse(desktop, _SETUP_FAILED)
    if icon is None:
        raise CommandError("Could not retrieve icon path field from json", _SETUP_FAILED)
    if not isinstance(icon, str):
        raise CommandError("Failed to deserialize json", _SETUP_FAILED)
    remote = icon.startswith(("http://", "https://"))
    kind, data = _download(icon) if remote else _load_icon(icon)
    with editing(ctx, "Could not write image data", _SETUP_FAILED) as cfg:
        cfg.desktop = desktop
        cfg.icon = (kind, data)
    print(pretty_json(desktop.to_json()))


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
    _refuse(desktop, "Failed to dump desktop integration")
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
        _refuse(ctx.config.desktop, "Failed to clean desktop integration")
        clean(ctx.config)
    else:
        raise UsageError("Invalid desktop operation")
    return 0

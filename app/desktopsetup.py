"""`fim-desktop setup` as the application does it: a setup document's settings checked,
its icon read or downloaded, both stored in the image (also a recipe's ``desktop``
section). The files themselves are written by :mod:`fim.app.desktop` at each run.
"""

from __future__ import annotations

import os

from fim.app import config
from fim.app.config import INTEGRATIONS, Desktop
from fim.app.desktop import problem
from fim.app.log import CommandError

TYPE_CHECKING = False  # not typing's: importing typing slows every start-up
if TYPE_CHECKING:
    from typing import Any

    from fim.app.session import Context

ICON_LIMIT = 1 << 20  # an icon must be smaller than 1 MiB
_ICON_TYPES = {".svg": "svg", ".png": "png", ".jpg": "jpg", ".jpeg": "jpg"}
SETUP_FAILED = "Failed to setup desktop integration"
_DOWNLOAD_TIMEOUT = 60  # seconds


def _integrations(items: list[str]) -> list[str]:
    """Items named (any case; NONE names nothing) in the fixed order ENTRY, MIMETYPE, ICON."""
    wanted = {i.upper() for i in items}  # keywords are case-insensitive
    if not wanted <= {*INTEGRATIONS, "NONE"}:
        raise ValueError("unknown integration")
    return [i for i in INTEGRATIONS if i in wanted]


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
        raise CommandError("Failed to deserialize json", SETUP_FAILED) from None
    return desktop, doc.get("icon")


def refuse(desktop: Desktop, failed: str) -> None:
    """Settings that cannot be written safely (control characters, a ``/`` in the name, a
    category with ``;``: app.desktop.problem) are an error, whether given to ``setup`` or
    found stored in the image."""
    reason = problem(desktop)
    if reason is not None:
        raise CommandError(reason, failed)


def _icon_type(ext: str) -> str:
    if ext not in _ICON_TYPES:
        raise CommandError(f"Icon extension '{ext}' is not supported", SETUP_FAILED)
    return _ICON_TYPES[ext]


def _too_large(size: int) -> CommandError:
    return CommandError(f"File is too large, '{size}' bytes", SETUP_FAILED)


def _download(url: str) -> tuple[str, bytes]:
    dot = url.rfind(".")
    if dot < 0:
        raise CommandError("Could not get icon file extension from url",
                           "Failed to resolve icon path or URL", SETUP_FAILED)
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
                           "Failed to resolve icon path or URL", SETUP_FAILED) from None
    return kind, data


def _load_icon(path: str) -> tuple[str, bytes]:
    kind = _icon_type(os.path.splitext(path)[1])
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        raise CommandError(f"Could not get size of file '{path}': {exc.strerror}",
                           SETUP_FAILED) from None
    if size >= ICON_LIMIT:
        raise _too_large(size)
    try:
        with open(path, "rb") as f:
            return kind, f.read(ICON_LIMIT)
    except OSError as exc:
        raise CommandError(f"Could not read file '{path}': {exc.strerror}",
                           SETUP_FAILED) from None


def setup(ctx: Context, doc: object) -> Desktop:
    """Store the settings and the icon of a parsed setup document; the settings."""
    desktop, icon = _parse_setup(doc)
    refuse(desktop, SETUP_FAILED)
    if icon is None:
        raise CommandError("Could not retrieve icon path field from json", SETUP_FAILED)
    if not isinstance(icon, str):
        raise CommandError("Failed to deserialize json", SETUP_FAILED)
    remote = icon.startswith(("http://", "https://"))
    kind, data = _download(icon) if remote else _load_icon(icon)
    try:
        with config.edit(ctx.layout) as cfg:
            cfg.desktop = desktop
            cfg.icon = (kind, data)
    except config.ConfigTooLarge as exc:
        raise CommandError(*exc.messages, "Could not write image data", SETUP_FAILED) from None
    return desktop



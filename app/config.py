"""The typed configuration stored in an image's reserved space, edited in place, crash safe.

The reserved space (R_SIZE bytes at R_OFF, see app/image.py) holds two slots of
R_SIZE/2 bytes. A slot::

    0    8   b"FIMCONF\\x01"
    8    8   generation, u64 LE (0 in a slot never written)
    16   4   J, length of the JSON document, u32 LE
    20   4   B, length of the icon bytes, u32 LE
    24   4   CRC-32 of bytes 0-23 followed by the J + B bytes below, u32 LE
    28   4   zero
    32   J   JSON document: UTF-8, compact, sorted keys (fields: Config.to_json)
    32+J B   icon bytes (raw, so a 1 MiB icon costs 1 MiB, not 1.33 MiB of base64)

The configuration is the valid slot (magic, lengths that fit, CRC) with the
highest generation; with no valid slot (a new, zero-filled space) it is the
defaults. An edit takes the image's exclusive lock, reads the configuration,
writes the new one into the *other* slot with generation + 1 (body, with zeros
over what that slot held past it, fdatasync, then header, fdatasync) and releases
the lock. Until the new header is complete the old slot wins, so a kill -9 or a
power cut at any instant leaves the old or the new configuration. Readers take the
shared lock, so they never see a slot being written. A configuration larger than a
slot is refused before anything is written. The file is open for writing only during
each write (app.image.write_at): Linux cannot execute a file while it is.
"""

from __future__ import annotations

import functools
import json
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from fim.app.image import (
    FimImageError,
    Layout,
    check_writable,
    is_url,
    locked,
    open_image_fd,
    remote_read,
    write_at,
)
from fim.app.log import CommandError
from fim.sandbox.permissions import PERMISSIONS, UNSHARE

OVERLAYS = ("fimfs", "bwrap", "overlayfs", "unionfs")  # fimfs: fim's in-process stack
DEFAULT_OVERLAY = "fimfs"
BIND_TYPES = ("ro", "rw", "dev")
INTEGRATIONS = ("ENTRY", "MIMETYPE", "ICON")
ICON_TYPES = ("png", "svg", "jpg")

_MAGIC = b"FIMCONF\x01"
_HEADER = struct.Struct("<8sQIII4x")
_CRC_SPAN = 24  # header bytes covered by the CRC, before the CRC itself


class ConfigError(CommandError):
    """The reserved space holds a configuration this version cannot read."""


class ConfigTooLarge(CommandError):
    """The new configuration does not fit a slot; nothing was written."""

    def __init__(self, size: int, capacity: int) -> None:
        super().__init__(f"The configuration needs {size} bytes and the reserved space "
                         f"holds {capacity} bytes per copy")
        self.size = size
        self.capacity = capacity


class Bind:
    """One ``fim-bind`` entry: ``type`` is ro, rw or dev; paths are stored unexpanded."""

    __slots__ = ("type", "src", "dst")

    def __init__(self, type: str, src: str, dst: str) -> None:
        self.type = type
        self.src = src
        self.dst = dst

    def to_json(self) -> dict[str, str]:
        return {"dst": self.dst, "src": self.src, "type": self.type}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Bind) and self.to_json() == other.to_json()


class Boot:
    """The default program; an empty ``program`` means the default shell."""

    __slots__ = ("program", "args")

    def __init__(self, program: str = "", args: list[str] | None = None) -> None:
        self.program = program
        self.args = list(args or [])

    def to_json(self) -> dict[str, object]:
        return {"args": self.args, "program": self.program}


class Desktop:
    """``fim-desktop setup`` settings: name, sorted categories, enabled integrations."""

    __slots__ = ("name", "categories", "integrations")

    def __init__(self, name: str, categories: list[str], integrations: list[str]) -> None:
        self.name = name
        self.categories = categories
        self.integrations = integrations

    def to_json(self) -> dict[str, object]:
        return {"categories": self.categories, "integrations": self.integrations,
                "name": self.name}


class Config:
    """Everything ``fim-*`` commands store in an image. Mutable: edit it inside
    :func:`edit`. ``icon`` is ``(type, bytes)`` with type png, svg or jpg."""

    __slots__ = ("permissions", "unshare", "env", "boot", "binds", "overlay", "casefold",
                 "notify", "desktop", "icon", "remote", "update")

    def __init__(self) -> None:
        self.permissions: set[str] = set()
        self.unshare: set[str] = set()
        self.env: dict[str, str] = {}
        self.boot = Boot()
        self.binds: list[Bind] = []
        self.overlay = DEFAULT_OVERLAY
        self.casefold = False
        self.notify = False
        self.desktop: Desktop | None = None
        self.icon: tuple[str, bytes] | None = None
        self.remote: str | None = None
        self.update: str | None = None  # where the next version lives (fim-update)

    def to_json(self) -> dict[str, object]:
        """The JSON document of a slot (the icon bytes travel beside it)."""
        return {
            "binds": [b.to_json() for b in self.binds],
            "boot": self.boot.to_json(),
            "casefold": self.casefold,
            "desktop": self.desktop.to_json() if self.desktop else None,
            "env": self.env,
            "icon": self.icon[0] if self.icon else None,
            "notify": self.notify,
            "overlay": self.overlay,
            "permissions": [p for p in PERMISSIONS if p in self.permissions],
            "remote": self.remote,
            "unshare": [u for u in UNSHARE if u in self.unshare],
            "update": self.update,
        }

    @classmethod
    def from_json(cls, doc: dict, icon: bytes) -> Config:
        """Inverse of :meth:`to_json`; unknown keys are ignored, bad types raise."""
        cfg = cls()
        cfg.permissions = _names(doc.get("permissions", []), PERMISSIONS)
        cfg.unshare = _names(doc.get("unshare", []), UNSHARE)
        env = doc.get("env", {})
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise TypeError("env")
        cfg.env = dict(env)
        boot = doc.get("boot") or {}
        cfg.boot = Boot(_string(boot.get("program", "")), _strings(boot.get("args", [])))
        cfg.binds = [Bind(_choice(b["type"], BIND_TYPES), _string(b["src"]), _string(b["dst"]))
                     for b in doc.get("binds", [])]
        cfg.overlay = _choice(doc.get("overlay", DEFAULT_OVERLAY), OVERLAYS)
        cfg.casefold = doc.get("casefold") is True
        cfg.notify = doc.get("notify") is True
        desktop = doc.get("desktop")
        if desktop is not None:
            cfg.desktop = Desktop(_string(desktop["name"]), _strings(desktop["categories"]),
                                  [_choice(i, INTEGRATIONS) for i in desktop["integrations"]])
        icon_type = doc.get("icon")
        if icon_type is not None:
            cfg.icon = (_choice(icon_type, ICON_TYPES), icon)
        remote = doc.get("remote")
        cfg.remote = None if remote is None else _string(remote)
        update = doc.get("update")
        cfg.update = None if update is None else _string(update)
        return cfg

    def encode(self) -> tuple[bytes, bytes]:
        """The JSON document and the icon bytes of a slot."""
        text = json.dumps(self.to_json(), separators=(",", ":"), sort_keys=True)
        return text.encode(), self.icon[1] if self.icon else b""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and self.encode() == other.encode()


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(repr(value))
    return value


def _strings(value: object) -> list[str]:
    if not isinstance(value, list):
        raise TypeError(repr(value))
    return [_string(v) for v in value]


def _choice(value: object, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(repr(value))
    return value


def _names(value: object, allowed: tuple[str, ...]) -> set[str]:
    return {_choice(v, allowed) for v in _strings(value)}


def slot_capacity(layout: Layout) -> int:
    """The largest JSON + icon a slot of this image holds."""
    return layout.reserved_size // 2 - _HEADER.size


def _slot_offset(layout: Layout, slot: int) -> int:
    return layout.reserved_offset + slot * (layout.reserved_size // 2)


def _read(pread: Callable[[int, int], bytes], layout: Layout) -> tuple[Config, int | None, int]:
    """The configuration, the slot holding it (None: defaults) and its generation;
    ``pread(n, offset)`` reads the image."""
    capacity = slot_capacity(layout)
    candidates = []
    for slot in (0, 1):
        head = pread(_HEADER.size, _slot_offset(layout, slot))
        if len(head) < _HEADER.size:
            continue
        magic, generation, json_size, icon_size, crc = _HEADER.unpack(head)
        if magic == _MAGIC and generation and json_size + icon_size <= capacity:
            candidates.append((generation, slot, head, json_size, icon_size, crc))
    for generation, slot, head, json_size, icon_size, crc in sorted(candidates, reverse=True):
        body = pread(json_size + icon_size, _slot_offset(layout, slot) + _HEADER.size)
        if zlib.crc32(body, zlib.crc32(head[:_CRC_SPAN])) != crc:
            continue
        try:
            doc = json.loads(body[:json_size])
            return Config.from_json(doc, body[json_size:]), slot, generation
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ConfigError(f"Unreadable configuration in '{layout.path}' "
                              f"(slot {slot}, generation {generation}): {exc}") from None
    return Config(), None, 0


def _write(fd: int, layout: Layout, cfg: Config, slot: int, generation: int) -> None:
    document, icon = cfg.encode()
    size = len(document) + len(icon)
    if size > slot_capacity(layout):
        raise ConfigTooLarge(size, slot_capacity(layout))
    offset = _slot_offset(layout, slot)
    # zeros over what the slot's last configuration held past this one: outside the
    # slots' contents the reserved space stays zero (app.update assumes so)
    old = os.pread(fd, _HEADER.size, offset)
    stale = 0
    if len(old) == _HEADER.size:
        magic, _, old_json, old_icon, _ = _HEADER.unpack(old)
        if magic == _MAGIC and old_json + old_icon <= slot_capacity(layout):
            stale = max(0, old_json + old_icon - size)
    write_at(layout.path, document + icon + bytes(stale), offset + _HEADER.size)
    os.fdatasync(fd)
    head = _HEADER.pack(_MAGIC, generation, len(document), len(icon), 0)
    crc = zlib.crc32(document + icon, zlib.crc32(head[:_CRC_SPAN]))
    write_at(layout.path, _HEADER.pack(_MAGIC, generation, len(document), len(icon), crc),
             offset)
    os.fdatasync(fd)


def used_extents(layout: Layout, pread: Callable[[int, int], bytes]) -> list[tuple[int, int]]:
    """(offset, length) of what each slot holds: its header, and the document and icon
    it announces when the header is one (``pread(n, offset)`` reads the image)."""
    out = []
    for slot in (0, 1):
        offset = _slot_offset(layout, slot)
        head = pread(_HEADER.size, offset)
        length = _HEADER.size
        if len(head) == _HEADER.size:
            magic, _, json_size, icon_size, _ = _HEADER.unpack(head)
            if magic == _MAGIC and json_size + icon_size <= slot_capacity(layout):
                length += json_size + icon_size
        out.append((offset, length))
    return out


def load(layout: Layout) -> Config:
    """The configuration of the image (the defaults if none was ever written)."""
    if is_url(layout.path):
        return _read(lambda n, offset: remote_read(layout.path, offset, n), layout)[0]
    fd = open_image_fd(layout.path)
    try:
        with locked(fd, exclusive=False):
            return _read(functools.partial(os.pread, fd), layout)[0]
    finally:
        os.close(fd)


@contextmanager
def edit(layout: Layout) -> Iterator[Config]:
    """Yield the current configuration to change; store it when the block ends
    without an exception. Edits of one image by several processes are serialized."""
    if is_url(layout.path):
        raise FimImageError(f"'{layout.path}' is a remote image: its configuration cannot "
                            "be changed (download it to change it)")
    check_writable(layout.path)
    fd = open_image_fd(layout.path)
    try:
        with locked(fd, exclusive=True):
            cfg, slot, generation = _read(functools.partial(os.pread, fd), layout)
            yield cfg
            try:
                _write(fd, layout, cfg, 0 if slot is None else 1 - slot, generation + 1)
            except OSError as exc:
                raise FimImageError(f"Could not write the configuration of '{layout.path}': "
                                 f"{exc.strerror}") from None
    finally:
        os.close(fd)

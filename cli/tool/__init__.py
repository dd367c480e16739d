"""Plumbing shared by the `fim` subcommands that work on one DwarFS image.

Every subcommand that takes an IMAGE declares it with :func:`add_image_args` and
opens it with :func:`open_image`, so ``-o offset=N|auto`` and friends mean the
same thing everywhere. This module is imported at start-up: keep it light (the
DwarFS reader is imported only when an image is opened).
"""

from __future__ import annotations

import argparse
import errno
import os
import stat
from collections.abc import Callable, Collection, Iterator
from typing import TYPE_CHECKING

from cli.errors import FimError

if TYPE_CHECKING:
    from fimfs.dwarfs import DwarfsImage
    from fimfs.vfs import Attr, Filesystem

#: ``-o`` options understood by :func:`open_image`.
IMAGE_OPTIONS = ("offset", "cachesize")

_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_MAX_SYMLINK_HOPS = 40  # what Linux allows before ELOOP


def parse_size(text: str) -> int:
    """A byte count such as ``4096``, ``64k``, ``512m`` or ``2g`` (binary units)."""
    value = text.strip().lower().removesuffix("b").removesuffix("i")
    unit = value[-1:] if value[-1:] in _SIZE_UNITS else ""
    number = value[: len(value) - len(unit)]
    if not number.isdigit():
        raise ValueError(f"invalid size {text!r}")
    return int(number) * _SIZE_UNITS[unit]


def _parse_option(key: str, value: str | None) -> object:
    """Convert the value of one known option; unknown (caller's) options stay as given."""
    if key == "offset":
        if value == "auto":
            return None
        if value is None or not value.isdigit():
            raise ValueError("offset must be 'auto' or a byte count")
        return int(value)
    if key == "cachesize":
        if value is None:
            raise ValueError("cachesize needs a value, e.g. cachesize=512m")
        return parse_size(value)
    return value


def _options_type(allowed: frozenset[str]) -> Callable[[str], dict[str, object]]:
    def image_option_list(text: str) -> dict[str, object]:
        parsed: dict[str, object] = {}
        for item in filter(None, text.split(",")):
            key, sep, value = item.partition("=")
            if key not in allowed:
                known = ", ".join(sorted(allowed))
                raise argparse.ArgumentTypeError(f"unknown option {key!r} (known: {known})")
            try:
                parsed[key] = _parse_option(key, value if sep else None)
            except ValueError as exc:
                raise argparse.ArgumentTypeError(str(exc)) from None
        return parsed

    return image_option_list


def add_image_args(parser: argparse.ArgumentParser, extra_options: Collection[str] = (),
                   image_optional: bool = False) -> None:
    """Add the IMAGE positional and ``-o OPT[,OPT...]`` to a subcommand's parser.

    ``extra_options`` names further ``-o`` keys the subcommand accepts (``fim mount``
    passes its FUSE options); read them back with :func:`image_options`. With
    ``image_optional`` the subcommand checks IMAGE itself (``fim mount --layer``).
    """
    parser.add_argument("image", metavar="IMAGE", nargs="?" if image_optional else None,
                        help="DwarFS image, or a file that contains one")
    parser.add_argument(
        "-o",
        dest="image_options",
        metavar="OPT[,OPT...]",
        action="append",
        default=[],
        type=_options_type(frozenset(IMAGE_OPTIONS) | frozenset(extra_options)),
        help="offset=N|auto: where the image starts inside IMAGE (default: auto-detect); "
        "cachesize=SIZE: block cache size, e.g. 512m",
    )


def image_options(args: argparse.Namespace) -> dict[str, object]:
    """All ``-o`` options given, merged (a later one wins). ``offset=auto`` is None."""
    merged: dict[str, object] = {}
    for chunk in getattr(args, "image_options", []):
        merged.update(chunk)
    return merged


def open_image(args: argparse.Namespace) -> DwarfsImage:
    """Open ``args.image`` the way every subcommand does; a bad image is a FimError."""
    from fimfs.dwarfs import DwarfsImage
    from fimfs.errors import FimfsError

    options = image_options(args)
    kwargs: dict[str, int] = {}
    if options.get("cachesize") is not None:
        kwargs["cache_bytes"] = options["cachesize"]  # type: ignore[assignment]
    offset = options.get("offset")
    try:
        return DwarfsImage.open(args.image, offset=offset, **kwargs)  # type: ignore[arg-type]
    except FimfsError as exc:
        raise FimError(f"{args.image}: {exc}") from exc


def image_path(text: str) -> str:
    """A path typed by the user, as the absolute path a Filesystem expects."""
    parts = [p for p in text.split("/") if p not in ("", ".")]
    return "/" + "/".join(parts)


def join_path(parent: str, name: str) -> str:
    """Path of ``name`` inside the directory ``parent`` (both Filesystem paths)."""
    return parent + name if parent.endswith("/") else f"{parent}/{name}"


def resolve(fs: Filesystem, path: str, follow: bool = True) -> tuple[str, Attr]:
    """Resolve symlinks inside the image, component by component, like the kernel.

    Symlinks in the middle of ``path`` are always followed (absolute targets are
    taken relative to the image root, ``..`` stops at the root); the last one only
    when ``follow``. Returns the symlink-free path and its Attr. Failures are
    OSError with the errno the kernel would give (ENOENT, ENOTDIR, ELOOP).
    """
    from fimfs.vfs import fs_error

    pending = [p for p in path.split("/") if p not in ("", ".")]
    pending.reverse()  # a stack: the next component is at the end
    done: list[str] = []
    attr = fs.getattr("/")
    hops = 0
    while pending:
        if not stat.S_ISDIR(attr.mode):
            raise fs_error(errno.ENOTDIR, path)
        name = pending.pop()
        if name == "..":
            if done:
                done.pop()
            attr = fs.getattr("/" + "/".join(done))
            continue
        current = "/" + "/".join([*done, name])
        attr = fs.getattr(current)
        if stat.S_ISLNK(attr.mode) and (pending or follow):
            hops += 1
            if hops > _MAX_SYMLINK_HOPS:
                raise fs_error(errno.ELOOP, path)
            target = fs.readlink(current)
            if target.startswith("/"):
                done = []
            pending.extend(reversed([p for p in target.split("/") if p not in ("", ".")]))
            attr = fs.getattr("/" + "/".join(done))
            continue
        done.append(name)
    return "/" + "/".join(done), attr


READ_CHUNK = 1 << 20  # 1 MiB: large enough to amortise per-call overhead, small to stream


def read_chunks(fs: Filesystem, path: str, size: int) -> Iterator[bytes]:
    """The ``size`` bytes of the regular file ``path``, in reads of up to 1 MiB.

    A read error or data that ends early is a FimError naming ``path``.
    """
    try:
        fh = fs.open(path, os.O_RDONLY)
    except OSError as exc:
        raise FimError(f"{path}: {exc.strerror or exc}") from exc
    try:
        offset = 0
        while offset < size:
            try:
                data = fs.read(path, min(READ_CHUNK, size - offset), offset, fh)
            except OSError as exc:
                raise FimError(f"{path}: read error: {exc.strerror or exc}") from exc
            if not data:
                raise FimError(f"{path}: data ends at byte {offset} of {size}")
            offset += len(data)
            yield data
    finally:
        fs.release(path, fh)

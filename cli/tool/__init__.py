"""The `fim` tool: the host-side developer command (`fim create|ls|cat|extract|mount|
image|build`), one module per subcommand, registered by :mod:`cli.fim`. Not to be
confused with :mod:`cli.commands`, the ``fim-*`` commands that run inside a built image.

This module is the plumbing shared by the `fim` subcommands that work on one DwarFS image.

Every subcommand that takes an IMAGE declares it with :func:`add_image_args` and
opens it with :func:`open_dwarfs`, so ``-o offset=N|auto`` and friends mean the
same thing everywhere. This module is imported at start-up: keep it light (the
DwarFS reader is imported only when an image is opened).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

from fim.app.errors import FimError

if TYPE_CHECKING:
    from fim.fimfs.dwarfs import DwarfsImage

#: ``-o`` options understood by :func:`open_dwarfs`.
IMAGE_OPTIONS = ("offset", "cachesize")

_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


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


def open_dwarfs(args: argparse.Namespace) -> DwarfsImage:
    """Open ``args.image`` the way every subcommand does; a bad image is a FimError."""
    from fim.fimfs.dwarfs import DwarfsImage
    from fim.fimfs.errors import FimfsError

    options = image_options(args)
    kwargs: dict[str, int] = {}
    if options.get("cachesize") is not None:
        kwargs["cache_bytes"] = options["cachesize"]  # type: ignore[assignment]
    offset = options.get("offset")
    try:
        return DwarfsImage.from_path(args.image, offset=offset, **kwargs)  # type: ignore[arg-type]
    except FimfsError as exc:
        raise FimError(f"{args.image}: {exc}") from exc


def image_path(text: str) -> str:
    """A path typed by the user, as the absolute path a Filesystem expects."""
    parts = [p for p in text.split("/") if p not in ("", ".")]
    return "/" + "/".join(parts)


def size_arg(text: str) -> int:
    """:func:`parse_size` as an argparse ``type`` (a bad size is a usage error)."""
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None

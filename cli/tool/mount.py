"""`fim mount` and `fim umount`: a DwarFS image, or a stack of layers, through one FUSE mount.

``fim mount IMAGE MOUNTPOINT`` shows one image as it is, read-only.
``fim mount --layer A --layer B [--upper DIR] [--casefold] MOUNTPOINT`` serves the
container stack of :mod:`app.stack` (later layers on top; writable into DIR).
The images are opened by the process that serves the mount (after the fork in
background mode), so their block caches and prefetch threads live where they are used.
"""

from __future__ import annotations

import argparse
import functools
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from fim.app.errors import FimError
from fim.cli.tool import IMAGE_OPTIONS, add_image_args, image_options, open_dwarfs, size_arg
from fim.fimfs.remote import is_url

if TYPE_CHECKING:
    from fim.fimfs.vfs import Filesystem

#: FUSE options `fim mount -o` passes through to libfuse (bare names are flags).
FUSE_OPTIONS = (
    "allow_other",
    "attr_timeout",
    "debug",
    "default_permissions",
    "entry_timeout",
    "gid",
    "kernel_cache",
    "max_idle_threads",
    "max_threads",
    "negative_timeout",
    "uid",
    "umask",
    "use_ino",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `fim mount` and `fim umount`."""
    p = subparsers.add_parser(
        "mount",
        help="mount an image, or a stack of layers, on a directory",
        usage="%(prog)s [options] IMAGE MOUNTPOINT\n"
        "       %(prog)s [options] --layer LAYER [--layer LAYER ...] [--upper DIR] "
        "[--casefold] MOUNTPOINT",
        description="Mount the DwarFS image in IMAGE on MOUNTPOINT, read-only, as it is. "
        "With --layer, mount the union of the layers instead (a later layer wins over an "
        "earlier one; whiteouts and opaque directories hide what is below), writable into "
        "--upper if given, read-only otherwise. Without --foreground, returns once the "
        "mount is usable and serves it from a background process; unmount with `fim "
        "umount`. Further -o options are passed to FUSE: " + ", ".join(FUSE_OPTIONS) + ".",
    )
    add_image_args(p, extra_options=FUSE_OPTIONS, image_optional=True)
    # With --layer, the one positional argument is the mount point (see _mount).
    p.add_argument("mountpoint", metavar="MOUNTPOINT", nargs="?", help="an existing directory")
    p.add_argument(
        "--layer",
        dest="layers",
        metavar="LAYER",
        action="append",
        default=[],
        help="a DwarFS layer of the stack; repeat it, bottom layer first",
    )
    p.add_argument(
        "--upper",
        metavar="DIR",
        help="with --layer: the existing directory that takes every change "
        "(overlayfs format: whiteouts, opaque directories)",
    )
    p.add_argument(
        "--casefold",
        action="store_true",
        help="with --layer: look names up ignoring case (created names keep their case)",
    )
    p.add_argument(
        "--owner",
        metavar="UID:GID",
        type=_ids,
        help="with --layer: show every file as owned by UID:GID (for an unprivileged "
        "container: the caller's ids); chowns to UID:GID are stored as --inside",
    )
    p.add_argument(
        "--inside",
        metavar="UID:GID",
        type=_ids,
        help="with --layer: the owner that new files and chowns to --owner are stored "
        "as (in the upper's user.fim.owner xattr when the real chown is not permitted)",
    )
    p.add_argument(
        "-f",
        "--foreground",
        action="store_true",
        help="serve in this process until unmounted (Ctrl-C or SIGTERM unmounts)",
    )
    p.add_argument(
        "--cache-size",
        metavar="SIZE",
        type=size_arg,
        help="block cache size, e.g. 512m (same as -o cachesize=SIZE; per layer)",
    )
    p.add_argument(
        "--log",
        metavar="FILE",
        help="background mode: append the server's warnings and errors to FILE",
    )
    p.set_defaults(func=_mount)

    p = subparsers.add_parser(
        "umount",
        help="unmount a fim (or any FUSE) mount",
        description="Unmount MOUNTPOINT; also clears a mount whose server died "
        "('Transport endpoint is not connected').",
    )
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument(
        "-l",
        "--lazy",
        action="store_true",
        help="detach now even if files in it are still open",
    )
    p.set_defaults(func=_umount)


def _ids(text: str) -> tuple[int, int]:
    uid, sep, gid = text.partition(":")
    if not sep or not uid.isdigit() or not gid.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not UID:GID (two numbers)")
    return int(uid), int(gid)


def _mount(args: argparse.Namespace) -> int:
    from fim.fimfs import fuse
    from fim.fimfs.errors import FimfsError

    if args.cache_size is not None:
        args.image_options.append({"cachesize": args.cache_size})
    # DwarFS inode numbers are unique and stable, and so are the union's: show them, so
    # hard links look like hard links to tar, rsync and du.
    fuse_options: dict[str, object] = {"use_ino": True}
    fuse_options.update(
        (key, True if value is None else value)
        for key, value in image_options(args).items()
        if key not in IMAGE_OPTIONS
    )
    open_fs, fsname = _stack_source(args) if args.layers else _image_source(args)

    def guarded_open() -> Filesystem:
        try:
            return open_fs()
        except FimError as exc:  # the daemon reports FimfsError to the waiting caller
            raise FimfsError(exc.message) from exc

    fuse.mount(
        guarded_open,
        args.mountpoint,
        foreground=args.foreground,
        fsname=fsname,
        options=fuse_options,
        log_file=args.log,
    )
    return 0


def _image_source(args: argparse.Namespace) -> tuple[Callable[[], Filesystem], str]:
    """`fim mount IMAGE MOUNTPOINT`: the image as it is."""
    if args.image is None:
        raise FimError("missing IMAGE and MOUNTPOINT (fim mount IMAGE MOUNTPOINT)", 2)
    if args.mountpoint is None:
        raise FimError("missing MOUNTPOINT (fim mount IMAGE MOUNTPOINT)", 2)
    if args.upper is not None or args.casefold:
        raise FimError("--upper and --casefold work on a stack: give the image as --layer", 2)
    if args.owner is not None or args.inside is not None:
        raise FimError("--owner and --inside work on a stack: give the image as --layer", 2)
    if not is_url(args.image):
        os.stat(args.image)  # a missing image is reported before anything is forked
        args.image = os.path.abspath(args.image)
    return functools.partial(open_dwarfs, args), args.image


def _stack_source(args: argparse.Namespace) -> tuple[Callable[[], Filesystem], str]:
    """`fim mount --layer ... MOUNTPOINT`: the stack of app.stack."""
    from fim.app.stack import build_stack, check_sources

    if args.mountpoint is not None:
        raise FimError("give either IMAGE or --layer, not both", 2)
    args.mountpoint = args.image  # with --layer, the only positional is the mount point
    if args.mountpoint is None:
        raise FimError("missing MOUNTPOINT (fim mount --layer LAYER ... MOUNTPOINT)", 2)
    check_sources(args.layers, args.upper)  # errors name the paths as the user typed them
    layers = [layer if is_url(layer) else os.path.abspath(layer) for layer in args.layers]
    upper = None if args.upper is None else os.path.abspath(args.upper)
    if upper is not None and _inside(upper, args.mountpoint):
        # The daemon would write the upper through its own mount and deadlock.
        raise FimError(f"upper directory {args.upper} is inside the mount point")
    options = image_options(args)
    build = functools.partial(
        build_stack,
        layers,
        upper,
        args.casefold,
        # _parse_option made both ints (offset=auto: None)
        cache_bytes=cast("int | None", options.get("cachesize")),
        offset=cast("int | None", options.get("offset")),
        owner=args.owner,
        inside=args.inside,
    )
    return build, layers[-1]


def _inside(path: str, directory: str) -> bool:
    path, directory = os.path.realpath(path), os.path.realpath(directory)
    return os.path.commonpath([path, directory]) == directory


def _umount(args: argparse.Namespace) -> int:
    from fim.fimfs import fuse

    fuse.umount(args.mountpoint, lazy=args.lazy)
    return 0

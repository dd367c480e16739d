"""`fim mount` and `fim umount`: one DwarFS image on a directory, read-only, through FUSE.

The image is opened by the process that serves the mount (after the fork in
background mode), so its block cache and prefetch thread live where they are used.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from cli.errors import FimError
from cli.tool import IMAGE_OPTIONS, add_image_args, image_options, open_image, parse_size

if TYPE_CHECKING:
    from fimfs.vfs import Filesystem

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
        help="mount an image read-only on a directory",
        description="Mount the DwarFS image in IMAGE on MOUNTPOINT, read-only. Without "
        "--foreground, returns once the mount is usable and serves it from a background "
        "process; unmount with `fim umount`. Further -o options are passed to FUSE: "
        + ", ".join(FUSE_OPTIONS)
        + ".",
    )
    add_image_args(p, extra_options=FUSE_OPTIONS)
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="an existing directory")
    p.add_argument(
        "-f",
        "--foreground",
        action="store_true",
        help="serve in this process until unmounted (Ctrl-C or SIGTERM unmounts)",
    )
    p.add_argument(
        "--cache-size",
        metavar="SIZE",
        type=_size,
        help="block cache size, e.g. 512m (same as -o cachesize=SIZE)",
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


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _mount(args: argparse.Namespace) -> int:
    from fimfs import fuse
    from fimfs.errors import FimfsError

    if args.cache_size is not None:
        args.image_options.append({"cachesize": args.cache_size})
    # DwarFS inode numbers are unique and stable: show them, so hard links look like
    # hard links to tar, rsync and du.
    fuse_options: dict[str, object] = {"use_ino": True}
    fuse_options.update(
        (key, True if value is None else value)
        for key, value in image_options(args).items()
        if key not in IMAGE_OPTIONS
    )
    os.stat(args.image)  # a missing image is reported before anything is forked
    args.image = os.path.abspath(args.image)

    def open_fs() -> Filesystem:
        try:
            return open_image(args)
        except FimError as exc:  # the daemon reports FimfsError to the waiting caller
            raise FimfsError(exc.message) from exc

    fuse.mount(
        open_fs,
        args.mountpoint,
        foreground=args.foreground,
        fsname=args.image,
        options=fuse_options,
        log_file=args.log,
    )
    return 0


def _umount(args: argparse.Namespace) -> int:
    from fimfs import fuse

    fuse.umount(args.mountpoint, lazy=args.lazy)
    return 0

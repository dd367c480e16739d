"""`fim extract`: restore a DwarFS image, or one path of it, into a host directory.

Safety: the image is untrusted. Every name is validated before use, every entry is
created relative to a directory fd of a directory this run created itself (so no
symlink, neither from the image nor planted, is ever followed), creation is
exclusive (an existing entry at a target is an error, never overwritten), and
directories stay 0700 until their children are done.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import closing

from fim.app.errors import FimError
from fim.app.extract import extract_tree, total_bytes
from fim.cli.tool import add_image_args, image_path, open_dwarfs
from fim.fimfs.paths import resolve


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `fim extract`."""
    p = subparsers.add_parser(
        "extract",
        help="restore the files of an image into a directory",
        description="Restore files, links, devices, modes, owners (as root) and times; "
        "a normal user gets no set-user-ID or set-group-ID bits. "
        "DIR may exist, but nothing in it is ever overwritten.",
    )
    add_image_args(p)
    p.add_argument("dest", metavar="DIR", help="where to restore (created if missing)")
    p.add_argument(
        "--path", default="/", metavar="P", help="restore only P (a directory's contents go in DIR)"
    )
    p.set_defaults(func=_extract)


def _extract(args: argparse.Namespace) -> int:
    with closing(open_dwarfs(args)) as fs:
        try:
            src, attr = resolve(fs, image_path(args.path), follow=False)
        except OSError as exc:
            raise FimError(f"{args.path}: {exc.strerror or exc}") from exc
        if not sys.stderr.isatty():
            stats = extract_tree(fs, args.dest, src)
        else:
            from tqdm import tqdm

            try:
                total: int | None = total_bytes(fs, src, attr)
            except (OSError, FimError):  # the extraction itself will report it
                total = None
            bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, leave=False)
            with bar:
                stats = extract_tree(fs, args.dest, src, progress=bar.update)
    if stats.skipped:
        raise FimError(f"{len(stats.skipped)} entries could not be restored (see warnings above)")
    return 0

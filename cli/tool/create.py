"""`fim create`: build a DwarFS image from a directory, as mkdwarfs does."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from dataclasses import asdict
from typing import TYPE_CHECKING

from fim.app.errors import FimError
from fim.app.progress import ProgressBar

if TYPE_CHECKING:
    from fim.fimfs.dwarfs.writer import WriteStats


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `fim create`."""
    p = subparsers.add_parser(
        "create",
        help="build a DwarFS image from a directory",
        description="Build a DwarFS image (format 2.5) of SOURCE_DIR. The same tree and "
        "options always give the same bytes. OUTPUT is replaced only once complete.",
    )
    p.add_argument("source", metavar="SOURCE_DIR")
    p.add_argument("output", metavar="OUTPUT")
    p.add_argument("-l", "--level", type=int, default=7, choices=range(10), metavar="LEVEL",
                   help="0-9 as mkdwarfs: 0 none, 1-3 lz4/lz4hc, 4-7 zstd, 8-9 lzma (default 7)")
    p.add_argument("-S", "--block-size-bits", type=int, metavar="BITS",
                   help="block size 2^BITS (10-30; default from the level, 24 at level 7)")
    p.add_argument("-C", "--compression", metavar="CODEC[:level=N]",
                   help="block compression: null, lz4, lz4hc, zstd, lzma, brotli")
    p.add_argument("--order", choices=("path", "similarity"),
                   help="file data order (default from the level)")
    p.add_argument("--header", metavar="FILE", help="put the contents of FILE before the image")
    p.add_argument("--no-section-index", action="store_true",
                   help="do not write the section index")
    p.add_argument("--set-owner", type=int, metavar="UID", help="store UID for every entry")
    p.add_argument("--set-group", type=int, metavar="GID", help="store GID for every entry")
    p.add_argument("--set-time", metavar="T",
                   help="store T (seconds since the epoch, or 'now') as every timestamp")
    p.add_argument("--keep-all-times", action="store_true", help="store atime and ctime too")
    p.add_argument("--time-resolution", metavar="RES", default="sec",
                   help="sec (default), min, hour, day, N seconds, or ms/us/ns")
    p.add_argument("-j", "--jobs", type=int, default=0, metavar="N",
                   help="compression threads (default: one per CPU)")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.set_defaults(func=_create)


def _options(args: argparse.Namespace):  # noqa: ANN202 - WriteOptions, imported lazily
    from fim.fimfs.dwarfs.options import WriteOptions, parse_codec, parse_time_resolution

    try:
        header = b""
        if args.header:
            with open(args.header, "rb") as f:
                header = f.read()
        set_time = None
        if args.set_time == "now":
            set_time = int(time.time())
        elif args.set_time is not None:
            if not args.set_time.isdigit():
                raise ValueError("--set-time takes seconds since the epoch or 'now'")
            set_time = int(args.set_time)
        resolution, subsecond = parse_time_resolution(args.time_resolution)
        return WriteOptions(
            level=args.level, block_size_bits=args.block_size_bits,
            compression=parse_codec(args.compression) if args.compression else None,
            order=args.order, header=header, section_index=not args.no_section_index,
            set_owner=args.set_owner, set_group=args.set_group, set_time=set_time,
            keep_all_times=args.keep_all_times, time_resolution=resolution,
            subsecond_ns=subsecond, jobs=args.jobs)
    except OSError as e:
        raise FimError(f"{args.header}: {e.strerror}") from None
    except ValueError as e:
        raise FimError(str(e), 2) from None


def _summary(s: WriteStats) -> str:
    mib = 1 << 20
    return (f"{s.output}: {s.entries} entries, {s.files} files, "
            f"{s.input_bytes / mib:.1f} MiB -> {s.image_size / mib:.1f} MiB "
            f"({s.ratio:.1%}), {s.duplicate_bytes / mib:.1f} MiB duplicates, "
            f"{s.blocks} blocks, {s.seconds:.1f} s")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _create(args: argparse.Namespace) -> int:
    from fim.fimfs.dwarfs.writer import write_image

    options = _options(args)
    bar = ProgressBar() if sys.stderr.isatty() else None
    previous = signal.signal(signal.SIGTERM, _interrupt)  # clean up on kill as on Ctrl-C
    try:
        stats = write_image(args.source, args.output, options, bar)
    except KeyboardInterrupt:
        raise FimError(f"interrupted: {args.output} not written", 130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        if bar:
            bar.close()
    if args.json:
        sys.stdout.write(json.dumps({**asdict(stats), "ratio": stats.ratio}, indent=2) + "\n")
    else:
        print(_summary(stats))
    return 0

"""`fim ls`, `fim cat`, `fim info`, `fim check`: look into a DwarFS image without mounting it."""

from __future__ import annotations

import argparse
import os
import stat
import sys
from contextlib import closing
from typing import TYPE_CHECKING, Any

from fim.app.errors import FimError
from fim.app.extract import read_chunks
from fim.cli.tool import add_image_args, image_path, open_dwarfs
from fim.fimfs.paths import join, resolve, type_name

if TYPE_CHECKING:
    from fim.fimfs.vfs import Attr, Filesystem

# On a terminal, control characters in names would be interpreted: show them as "?", like ls.
_TTY_SAFE = bytes(b if 32 <= b != 127 else ord("?") for b in range(256))


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ls, cat, info and check."""
    p = subparsers.add_parser("ls", help="list directory contents of an image")
    add_image_args(p)
    p.add_argument("path", metavar="PATH", nargs="?", default="/", help="path in the image")
    p.add_argument("-l", dest="long", action="store_true", help="long listing")
    p.add_argument("-R", dest="recursive", action="store_true", help="list subdirectories too")
    p.add_argument(
        "--json", action="store_true", help="a JSON list of entries (mode: permission bits)"
    )
    p.set_defaults(func=_ls)

    p = subparsers.add_parser("cat", help="write a file of an image to stdout")
    add_image_args(p)
    p.add_argument("path", metavar="PATH", help="path of a regular file in the image")
    p.set_defaults(func=_cat)

    p = subparsers.add_parser("info", help="show the format, sections and statistics of an image")
    add_image_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_info)

    p = subparsers.add_parser("check", help="verify the integrity of an image")
    add_image_args(p)
    p.add_argument(
        "--full", action="store_true", help="also hash every section and read every chunk"
    )
    p.set_defaults(func=_check)


# -- output ----------------------------------------------------------------------


def _write_lines(lines: list[bytes]) -> None:
    out = sys.stdout.buffer
    if sys.stdout.isatty():
        lines = [line.translate(_TTY_SAFE) for line in lines]
    out.write(b"".join(line + b"\n" for line in lines))


# -- ls ----------------------------------------------------------------------------


def _lookup(fs: Filesystem, path: str, follow: bool) -> tuple[str, Attr]:
    try:
        return resolve(fs, path, follow=follow)
    except OSError as exc:
        raise FimError(f"{path}: {exc.strerror or exc}") from exc


# One listed entry: (name to show, path in the image, attr).
_Entry = tuple[str, str, "Attr"]


def _children(fs: Filesystem, path: str) -> list[_Entry]:
    """The entries of directory ``path``, sorted by byte name."""
    try:
        names = sorted(fs.readdir(path), key=os.fsencode)
        return [(n, p, fs.getattr(p)) for n, p in ((n, join(path, n)) for n in names)]
    except OSError as exc:
        raise FimError(f"{path}: {exc.strerror or exc}") from exc


def _walk(fs: Filesystem, top: str, ino: int, recursive: bool) -> list[tuple[str, list[_Entry]]]:
    """The listings (dir path, entries) to show, in `ls -R` order."""
    listings = []
    seen: set[int] = set()
    pending = [(top, ino)]
    while pending:
        path, ino = pending.pop()
        if ino in seen:
            raise FimError(f"{path}: directory loop in the image")
        seen.add(ino)
        entries = _children(fs, path)
        listings.append((path, entries))
        if recursive:
            pending.extend((p, a.ino) for _, p, a in reversed(entries) if stat.S_ISDIR(a.mode))
    return listings


def _time_text(seconds: int) -> str:
    import time

    try:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds))
    except (OverflowError, OSError, ValueError):
        return str(seconds)


def _long_lines(fs: Filesystem, entries: list[_Entry]) -> list[bytes]:
    rows = []
    for name, path, a in entries:
        if stat.S_ISCHR(a.mode) or stat.S_ISBLK(a.mode):
            size = f"{os.major(a.rdev)}, {os.minor(a.rdev)}"
        else:
            size = str(a.size)
        cols = [stat.filemode(a.mode), str(a.nlink), str(a.uid), str(a.gid), size]
        rows.append((cols, _time_text(a.mtime_ns // 1_000_000_000), name, path, a))
    widths = [max((len(r[0][i]) for r in rows), default=0) for i in range(5)]
    lines = []
    for cols, when, name, path, a in rows:
        head = " ".join(c.rjust(w) if i else c for i, (c, w) in enumerate(zip(cols, widths)))
        line = f"{head} {when} ".encode() + os.fsencode(name)
        if stat.S_ISLNK(a.mode):
            line += b" -> " + os.fsencode(fs.readlink(path))
        lines.append(line)
    return lines


def entry_json(fs: Filesystem, path: str, a: Attr) -> dict[str, Any]:
    """One `fim ls --json` entry. ``mode`` holds the permission bits (with suid/sgid/sticky)."""
    is_dev = stat.S_ISCHR(a.mode) or stat.S_ISBLK(a.mode)
    return {
        "path": path,
        "type": type_name(a.mode),
        "mode": stat.S_IMODE(a.mode),
        "uid": a.uid,
        "gid": a.gid,
        "size": a.size,
        "mtime": a.mtime_ns // 1_000_000_000,
        "mtime_ns": a.mtime_ns,
        "nlink": a.nlink,
        "ino": a.ino,
        "target": fs.readlink(path) if stat.S_ISLNK(a.mode) else None,
        "rdev": {"major": os.major(a.rdev), "minor": os.minor(a.rdev)} if is_dev else None,
    }


def _ls(args: argparse.Namespace) -> int:
    import json

    with closing(open_dwarfs(args)) as fs:
        path = image_path(args.path)
        real, attr = _lookup(fs, path, follow=False)
        if stat.S_ISLNK(attr.mode) and not args.long and not args.json:
            # like ls: a symlink to a directory named on the command line is listed
            target, target_attr = _lookup(fs, path, follow=True)
            if stat.S_ISDIR(target_attr.mode):
                real, attr = target, target_attr
        if stat.S_ISDIR(attr.mode):
            listings = _walk(fs, real, attr.ino, args.recursive)
        else:
            listings = [("", [(args.path, real, attr)])]
        if args.json:
            entries = [entry_json(fs, p, a) for _, block in listings for _, p, a in block]
            sys.stdout.write(json.dumps(entries, indent=1) + "\n")
            return 0
        lines: list[bytes] = []
        for i, (dir_path, block) in enumerate(listings):
            if args.recursive and dir_path:
                lines.extend([b""] if i else [])
                lines.append(os.fsencode(dir_path) + b":")
            if args.long:
                lines.extend(_long_lines(fs, block))
            else:
                lines.extend(os.fsencode(name) for name, _, _ in block)
        _write_lines(lines)
    return 0


# -- cat ---------------------------------------------------------------------------


def _cat(args: argparse.Namespace) -> int:
    with closing(open_dwarfs(args)) as fs:
        path, attr = _lookup(fs, image_path(args.path), follow=True)
        if stat.S_ISDIR(attr.mode):
            raise FimError(f"{args.path}: Is a directory")
        if not stat.S_ISREG(attr.mode):
            raise FimError(f"{args.path}: not a regular file ({type_name(attr.mode)})")
        out = sys.stdout.buffer
        for data in read_chunks(fs, path, attr.size):
            out.write(data)
        out.flush()
    return 0


# -- info --------------------------------------------------------------------------


def _human(n: object) -> str:
    if not isinstance(n, int):
        return "-"
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} bytes" if unit == "bytes" else f"{n} bytes ({value:.1f} {unit})"
        value /= 1024
    raise AssertionError("unreachable")


def _inline(value: object) -> str:
    """A JSON-like value on one line."""
    if isinstance(value, dict):
        return ", ".join(f"{k}={_inline(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return ", ".join(_inline(v) for v in value) or "-"
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "no", None: "-"}[value]
    return str(value)


def _history_line(entry: dict) -> str:
    version = entry.get("version") or {}
    release = version.get("git_desc") or ".".join(
        str(version.get(k, "?")) for k in ("major", "minor", "patch")
    )
    where = ", ".join(str(entry[k]) for k in ("system_id", "compiler_id") if entry.get(k))
    command = " ".join(map(str, entry.get("arguments") or []))
    return f"{release} ({where}): {command}" if command else f"{release} ({where})"


def info_lines(info: dict[str, Any]) -> list[str]:
    """The human form of ``img.info()``; keys it does not know are shown as they are."""
    rest = dict(info)
    get = rest.pop
    lines = [
        f"image:        {get('path', '-')}",
        f"format:       DwarFS {get('format_version', '?')}, metadata layout "
        f"{get('metadata_layout', '?')}, section index {_inline(get('section_index', None))}",
        f"offset:       {get('image_offset', '-')}, size {_human(get('image_size', None))}",
        f"created by:   {get('created_by', None) or '-'}",
    ]
    created = get("create_timestamp", None)
    if created is not None:
        lines.append(f"created:      {_time_text(created)}")
    blocks = get("blocks", None) or {}
    lines.append(
        f"blocks:       {blocks.get('count', '?')}, block size {_human(blocks.get('block_size'))}, "
        f"codecs: {_inline(blocks.get('codecs', {}))}"
    )
    lines += [
        f"data:         {_human(get('total_fs_size', None))}",
        f"allocated:    {_human(get('total_allocated_fs_size', None))}",
        f"hard links:   {_human(get('total_hardlink_size', None))}",
        f"inodes:       {get('inodes', '?')} in {get('entries', '?')} entries: "
        + _inline(get("inodes_by_type", None)),
        f"features:     {_inline(get('features', None))}",
        f"names:        {get('names', '-')}",
        f"options:      {_inline(get('options', None))}",
    ]
    packed = get("packed", None) or {}
    lines.append(f"packed:       {_inline([k for k, on in packed.items() if on])}")
    lines.append("sections:")
    lines.append(f"  {'#':>3} {'type':<20} {'compression':<12} {'offset':>12} {'length':>12}")
    for sec in get("sections", None) or []:
        number = "?" if sec.get("number") is None else sec["number"]
        lines.append(
            f"  {number:>3} {sec.get('type', '?'):<20} {sec.get('compression', '?'):<12} "
            f"{sec.get('offset', '?'):>12} {sec.get('length', '?'):>12}"
        )
    history = get("history", None) or []
    if history:
        lines.append("history:")
        lines += [f"  {_history_line(h)}" for h in history]
    lines += [f"warning:      {w}" for w in get("warnings", None) or []]
    lines += [f"{key.replace('_', ' ')}: {_inline(value)}" for key, value in rest.items()]
    return lines


def _info(args: argparse.Namespace) -> int:
    import json

    with closing(open_dwarfs(args)) as img:
        info = img.info()
    if args.json:
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
    else:
        sys.stdout.write("\n".join(info_lines(info)) + "\n")
    return 0


# -- check -------------------------------------------------------------------------


def _check(args: argparse.Namespace) -> int:
    """Problems on stdout, one per line; a failed verdict is the one line on stderr."""
    with closing(open_dwarfs(args)) as img:
        problems = img.check(full=args.full)
    kind = "full check" if args.full else "check"
    if problems:
        sys.stdout.write("".join(" ".join(str(p).splitlines()) + "\n" for p in problems))
        sys.stdout.flush()
        plural = "s" if len(problems) > 1 else ""
        raise FimError(f"{args.image}: {kind} failed: {len(problems)} problem{plural}")
    sys.stdout.write(f"{args.image}: {kind} passed, no problems found\n")
    return 0

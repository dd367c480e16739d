"""``write_image``: a directory tree to a DwarFS image, as mkdwarfs writes them.

Steps: scan the tree; hash the big files whose size is not unique; order the
files; read them into blocks (skipping contents already stored) that worker
threads compress while reading goes on; build and freeze the metadata; write schema, metadata and
the section index. The output goes to a temporary file beside OUTPUT that is
renamed over it only when complete, so a failure or an interrupt never leaves a
partial image. The same tree and options give the same bytes: nothing depends on
the clock, the host or the order the OS lists directories in.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata as _pkg

from fim.osutil import files

from ..errors import FimfsError
from . import filedata, idl, metabuild
from .blocks import BlockStream, SectionWriter
from .frozen_encode import freeze
from .options import LEVELS, WriteOptions
from .scan import Keep, scan
from .sections import METADATA, SCHEMA


class WriteError(FimfsError):
    """The image cannot be written (output directory, disk full, ...)."""


@dataclass(slots=True)
class Progress:
    """Where a write is; passed to the ``progress`` callback."""

    phase: str  # "scan", "hash" or "write"
    files: int = 0  # scan: entries found; hash/write: files done
    files_total: int = 0
    bytes: int = 0  # bytes hashed / read so far
    bytes_total: int = 0
    out_bytes: int = 0  # image bytes written so far
    ratio: float = 0.0  # compressed / raw size of the blocks written so far


@dataclass(slots=True)
class WriteStats:
    """What a write produced (``fim create --json`` prints it)."""

    output: str
    image_size: int
    entries: int
    files: int  # regular-file inodes
    input_bytes: int  # total size of the regular files and symlinks stored
    data_bytes: int  # file data stored in blocks (after de-duplication and holes)
    duplicate_bytes: int  # not stored because an identical file was
    hole_bytes: int
    blocks: int
    seconds: float = 0.0

    @property
    def ratio(self) -> float:
        return self.image_size / self.input_bytes if self.input_bytes else 1.0


def _version() -> str:
    try:
        return f"fim {_pkg.version('fim')}"
    except _pkg.PackageNotFoundError:
        return "fim"


def _create_temp(output: str, tmp: str) -> int:
    try:
        return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    except OSError as e:
        raise WriteError(f"cannot create {output}: {e.strerror}") from None


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def write_image(source: str | os.PathLike, output: str | os.PathLike,
                options: WriteOptions | None = None,
                progress: Callable[[Progress], None] | None = None, *,
                keep: Keep | None = None, upper: bool = False) -> WriteStats:
    """Write the tree under ``source`` as a DwarFS image to ``output``; ``keep`` and
    ``upper`` choose and read the entries as :func:`.scan.scan` says."""
    opts = options or WriteOptions()
    output = os.fsdecode(output)
    if os.path.isdir(output):
        raise WriteError(f"{output}: is a directory")
    start = time.monotonic()
    try:
        with files.replacing(output) as tmp:
            fd = _create_temp(output, tmp)
            skip = frozenset(filter(None, (_identity(tmp), _identity(output))))
            with os.fdopen(fd, "wb", buffering=1 << 20) as out:
                stats = _write(os.fsencode(source), output, out, opts, skip,
                               progress or (lambda p: None), keep, upper)
                out.flush()
                os.fsync(out.fileno())
    except OSError as e:
        raise WriteError(f"cannot write {output}: {e.strerror or e}") from None
    stats.seconds = time.monotonic() - start
    return stats


def _write(source: bytes, output: str, out, opts: WriteOptions,  # noqa: ANN001 - a file
           skip: frozenset, report: Callable[[Progress], None], keep: Keep | None = None,
           upper: bool = False) -> WriteStats:
    p = Progress("scan")

    def scanned(n: int) -> None:
        p.files = n
        report(p)

    tree = scan(source, skip, scanned, keep=keep, upper=upper)
    p.phase, p.files, p.files_total = "hash", 0, len(tree.files)

    def hashed(n: int) -> None:
        p.files += 1
        p.bytes += n
        report(p)

    contents = filedata.Contents(tree.files)
    contents.prehash(tree.files, hashed)
    files = filedata.order(tree.files, opts.file_order)
    p.phase, p.files, p.files_total = "write", 0, len(files)
    p.bytes, p.bytes_total = 0, sum(f.size for f in files)
    report(p)

    out.write(opts.header)
    writer = SectionWriter(out)
    codec = opts.data_codec
    stream = BlockStream(writer, 1 << opts.block_bits, codec.id, codec.level, opts.threads)
    try:
        for f in files:
            contents.add(f, stream)
            stream.drain()
            p.files += 1
            p.bytes += f.size
            p.out_bytes = writer.pos
            p.ratio = writer.pos / stream.written_raw if stream.written_raw else 0.0
            report(p)
        blocks = stream.finish()
    except BaseException:
        stream.abort()
        raise

    distinct = list(contents)
    meta = metabuild.build(tree, distinct, contents.chunks, blocks, opts, _version())
    schema, payload = freeze(idl.METADATA, meta)
    level = LEVELS[opts.level]
    writer.add(SCHEMA, level.schema.id, level.schema.level, schema)
    writer.add(METADATA, level.metadata.id, level.metadata.level, payload)
    if opts.section_index:
        writer.add_index()
    p.out_bytes = writer.pos
    report(p)
    return WriteStats(
        output=output, image_size=len(opts.header) + writer.pos, entries=tree.entries,
        files=len(tree.files), input_bytes=meta["total_fs_size"],
        data_bytes=stream.raw_bytes,
        duplicate_bytes=sum(c.rep.size * (len(c.files) - 1) for c in distinct),
        hole_bytes=sum(c.hole_bytes for c in distinct), blocks=blocks)

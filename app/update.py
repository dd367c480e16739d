"""Delta updates of an image file (`fim-update run`): fetch only what the local file
does not already hold.

The new version at URL is described by its own parts, read by ranges (fimfs.remote):
the header line, the launcher, the payload (named by its build id), the reserved
space, and each layer's DwarFS sections with their checksums (XXH3-64 and
SHA-512/256 in each 64-byte header; the section index says where they are). The new
file is assembled in order, beside the image, from:

- the local file, for the payload when the build id and size are the same, and for
  every section whose header (number, type, codec, length, both checksums) equals one
  of a local layer;
- zeros (*assumed*) for the padding before the reserved space (by the format) and for
  the reserved space outside the slots' contents (a new image's is zero-filled, and
  app.config zeroes what a shorter configuration no longer covers);
- the server for everything else (the launcher, the slots' contents, new sections).

The result must have the SHA-256 published in ``URL.sha256sum`` (what `fim build`
writes; after `fim-layer commit` the publisher writes it again: ``sha256sum``). When
it does not, the server's bytes replace the assumed parts in place (an image written
by an older fim may hold an old configuration there); if it still differs, nothing
changes. Only then is the temporary file renamed over the image
(atomic: a kill or a failure at any point leaves the old image working). The data
directory is the image's, beside it, and stays. An image that grew by one committed
layer costs about that layer's bytes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator

from fim.app import config, image
from fim.app.log import CommandError
from fim.osutil import files

TYPE_CHECKING = False  # not typing's: importing typing slows every start-up
if TYPE_CHECKING:
    from fim.fimfs.dwarfs.sections import Section
    from fim.fimfs.remote import RemoteFile

SUMS_SUFFIX = ".sha256sum"
#: Bytes fetched per request of a large remote part.
_PIECE = 8 << 20
_COPY = 1 << 20
_LAYER_SIZE = 8  # the u64 before each layer

# A piece of the new file: (length, source, offset in the source, assumed).
# source: "local" (the old file), "remote", "zero", or literal bytes.
Piece = tuple[int, "str | bytes", int, bool]


class UpdateError(CommandError):
    """The update failed; the image is as it was."""


class Result:
    """What an update did: bytes of the new file, and how many came from the server."""

    __slots__ = ("size", "fetched", "updated")

    def __init__(self, size: int, fetched: int, updated: bool) -> None:
        self.size = size
        self.fetched = fetched
        self.updated = updated


def published_sum(url: str) -> str:
    """The SHA-256 in ``URL.sha256sum`` (sha256sum's format: digest, then the name)."""
    from fim.fimfs.errors import FimfsError
    from fim.fimfs.remote import get

    try:
        text = get(url + SUMS_SUFFIX, 4096).decode("ascii", "replace")
    except FimfsError as exc:
        raise UpdateError(f"Could not read the checksum '{url}{SUMS_SUFFIX}': {exc}") from None
    digest = text.split()[0].lower() if text.split() else ""
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise UpdateError(f"'{url}{SUMS_SUFFIX}' holds no SHA-256")
    return digest


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_COPY):
            h.update(chunk)
    return h.hexdigest()


def _section_key(s: Section) -> tuple[object, ...]:
    return (s.number, s.type, s.compression, s.length, s.xxh3, s.sha)


def _local_sections(layout: image.Layout) -> dict[tuple[object, ...], int]:
    """Every checksummed section of the local layers, by header: its offset."""
    from fim.fimfs.dwarfs import sections
    from fim.fimfs.errors import FimfsError

    table: dict[tuple[object, ...], int] = {}
    f = sections.ImageFile(layout.path)
    try:
        for layer in image.list_layers(layout):
            try:
                found = sections.read_layout(f, layer.offset, layer.size).sections
                for s in (sections.resolve(f, s) for s in found):
                    if s.sha is not None:
                        table.setdefault(_section_key(s), s.offset)
            except FimfsError:
                continue  # a damaged local layer: its sections are fetched
    finally:
        f.close()
    return table


def _remote_sections(rf: RemoteFile, layer: image.Layer) -> list[Section] | None:
    """The sections of a remote layer with their real headers (64 bytes fetched each
    for the blocks the index lists), or None if it cannot be read as DwarFS."""
    from concurrent.futures import ThreadPoolExecutor

    from fim.fimfs.dwarfs import sections
    from fim.fimfs.errors import FimfsError

    try:
        listed = sections.read_layout(rf, layer.offset, layer.size).sections
    except (FimfsError, OSError):
        return None

    def real(s: Section) -> Section:
        if not s.lazy:
            return s
        head = rf.fetch_range(s.offset, s.offset + 64)
        got = sections.parse_header(head, s.offset)
        if got.type != s.type or got.length != s.length:
            raise FimfsError(f"section at offset {s.offset} does not match the index")
        return got

    if (not listed or listed[0].offset != layer.offset
            or sum(s.end - s.offset for s in listed) != layer.size):
        return None  # not sections end to end (format 2.0/2.1 has a file header)
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(real, listed))
    except (FimfsError, OSError):
        return None


def _reserved(new: image.Layout, rf: RemoteFile) -> Iterator[Piece]:
    """The new reserved space: the remote slots' contents, zeros (assumed) around."""
    start, size = new.reserved_offset, new.reserved_size
    used = config.used_extents(new, lambda n, offset: rf.fetch_range(offset, offset + n))
    pos = start
    for offset, length in sorted(used):
        if offset > pos:
            yield offset - pos, "zero", pos, True
        yield length, "remote", offset, False
        pos = offset + length
    if pos < start + size:
        yield start + size - pos, "zero", pos, True


def plan(layout: image.Layout, rf: RemoteFile) -> list[Piece]:
    """The pieces of the new file, in order."""
    new = image.read_layout(rf.url)
    pieces: list[Piece] = [(new.payload_offset, "remote", 0, False)]
    if layout.build_id == new.build_id and layout.payload_size == new.payload_size:
        pieces.append((new.payload_size, "local", layout.payload_offset, False))
    else:
        pieces.append((new.payload_size, "remote", new.payload_offset, False))
    pad_start = new.payload_offset + new.payload_size
    if pad_start < new.reserved_offset:
        pieces.append((new.reserved_offset - pad_start, "zero", pad_start, True))
    pieces.extend(_reserved(new, rf))
    local = _local_sections(layout)
    layers, tail = image.scan_layers(new)
    pos = new.layers_offset
    for layer in layers:
        pieces.append((_LAYER_SIZE, layer.size.to_bytes(_LAYER_SIZE, "little"), 0, False))
        found = _remote_sections(rf, layer)
        if found is None:
            pieces.append((layer.size, "remote", layer.offset, False))
        else:
            for s in found:
                at = local.get(_section_key(s)) if s.sha is not None else None
                length = s.end - s.offset
                pieces.append((length, "remote", s.offset, False) if at is None
                              else (length, "local", at, False))
        pos = layer.offset + layer.size
    if tail:
        pieces.append((tail, "remote", pos, False))
    return _merged(pieces)


def _merged(pieces: list[Piece]) -> list[Piece]:
    """Adjacent pieces from the same place as one (one request for a new layer)."""
    out: list[Piece] = []
    for length, source, offset, assumed in pieces:
        if out and isinstance(source, str):
            plen, psource, poffset, passumed = out[-1]
            if psource == source and poffset + plen == offset and passumed == assumed:
                out[-1] = (plen + length, source, poffset, assumed)
                continue
        out.append((length, source, offset, assumed))
    return out


def _write_all(fd: int, data: bytes | memoryview, pos: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, pos)
        view, pos = view[n:], pos + n


def _assemble(pieces: list[Piece], old_fd: int, rf: RemoteFile, out_fd: int,
              advance: Callable[[int], None]) -> str:
    """Write the pieces to ``out_fd`` in order; the SHA-256 of what was written."""
    h = hashlib.sha256()
    pos = 0
    for length, source, offset, _ in pieces:
        for start in range(0, length, _PIECE if source == "remote" else _COPY):
            n = min(length - start, _PIECE if source == "remote" else _COPY)
            if isinstance(source, bytes):
                data: bytes = source[start:start + n]
            elif source == "zero":
                data = bytes(n)
            elif source == "local":
                data = os.pread(old_fd, n, offset + start)
                if len(data) != n:
                    raise UpdateError("The local image changed during the update")
            else:
                data = rf.fetch_range(offset + start, offset + start + n, advance)
            h.update(data)
            _write_all(out_fd, data, pos)
            pos += n
    return h.hexdigest()


def _fetch_assumed(pieces: list[Piece], rf: RemoteFile, out_fd: int,
                   advance: Callable[[int], None]) -> None:
    """Replace the assumed pieces written to ``out_fd`` by the server's bytes (at the
    same offsets: the server's file is the new one)."""
    pos = 0
    for length, _, _, assumed in pieces:
        for start in range(pos, pos + length, _PIECE) if assumed else ():
            stop = min(pos + length, start + _PIECE)
            _write_all(out_fd, rf.fetch_range(start, stop, advance), start)
        pos += length


def run(layout: image.Layout, url: str) -> Result:
    """Update the image at ``layout`` to the version at ``url`` (see the module
    docstring); the old image stays whenever anything fails."""
    from fim.fimfs.remote import progress

    path = layout.path
    old_fd = image.open_image_fd(path)
    try:
        with image.locked(old_fd, exclusive=True):
            _remove_stale(path)
            expected = published_sum(url)
            if _sha256_file(path) == expected:
                return Result(os.path.getsize(path), 0, False)
            rf = image.remote(url)
            before = rf.fetched
            with files.replacing(path, f"{_tmp_prefix(path)}{os.getpid()}") as tmp:
                pieces = plan(layout, rf)
                out_fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                                 0o600)
                try:
                    with progress(sum(p[0] for p in pieces if p[1] == "remote"),
                                  url) as advance:
                        digest = _assemble(pieces, old_fd, rf, out_fd, advance)
                    if digest != expected and any(p[3] for p in pieces):
                        with progress(sum(p[0] for p in pieces if p[3]), url) as advance:
                            _fetch_assumed(pieces, rf, out_fd, advance)
                        digest = _sha256_file(tmp)
                    os.fsync(out_fd)
                finally:
                    os.close(out_fd)
                if digest != expected:
                    raise UpdateError(f"The file assembled from '{url}' does not match "
                                      f"'{url}{SUMS_SUFFIX}' (the server's file changed?)")
                os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        _fsync_dir(os.path.dirname(path))
    except OSError as exc:
        raise UpdateError(f"Could not update '{path}': {exc.strerror or exc}") from None
    finally:
        os.close(old_fd)
    return Result(rf.size, rf.fetched - before, True)


def _tmp_prefix(path: str) -> str:
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.update-")


def _remove_stale(path: str) -> None:
    """The temporary files of updates that were killed. Called with the image's
    exclusive lock, which every update holds while its file exists: any other one is
    stale (its process may still show in /proc: a zombie not yet reaped, or its PID
    reused)."""
    prefix = _tmp_prefix(path)
    directory, start = os.path.split(prefix)
    for name in os.listdir(directory or "."):
        if name.startswith(start) and name[len(start):].isdigit():
            try:
                os.unlink(os.path.join(directory, name))
            except OSError:
                pass


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

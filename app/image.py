"""The single-file image: a shell launcher, a runtime payload, the reserved space, layers.

Layout (all offsets in bytes from the start of the file)::

    0        10      b"#!/bin/sh\\n"
    10       118     the header line, ASCII, ending in b"\\n" at byte 127:
                       b"#FI\\x01 fim" P_OFF P_SIZE R_OFF R_SIZE DIST BUILD
                     (single spaces between fields, then spaces up to byte 126)
    128      ...     the rest of the launcher: /bin/sh code that never returns
    P_OFF    P_SIZE  the runtime payload (cli/build/payload.py); P_OFF = 128 + launcher size
    ...              zero bytes up to R_OFF, the next multiple of 4096
    R_OFF    R_SIZE  the reserved space: the config (app/config.py); R_SIZE is a
                     multiple of 4096 fixed at build time (default 4 MiB)
    R_OFF+R_SIZE     layer 0: u64 LE size S0, then S0 bytes of a DwarFS image
                     layer 1: u64 LE size S1, then S1 bytes ...

``DIST`` is the distribution of the base layer (``FIM_DIST``); ``BUILD`` names
the payload (16 hex digits of its SHA-256), so images that carry the same
payload share one extraction directory ``BASE/app/BUILD`` per user (``BASE`` a
directory private to the user: app/rundir.py). The header line
is a shell comment, so the launcher stays a valid script; the shell never reads
past the launcher's final ``exec``.

FlatImage puts its magic ``FI\\x01`` at bytes 8-10 (ELF padding). A ``#!/bin/sh``
script cannot: the kernel needs ``#!`` at byte 0 followed by the interpreter
path, so bytes 2-8 are ``/bin/sh`` and no shorter interpreter exists. The same
three bytes sit at 11-13 instead, after the ``#`` that makes the line a comment.

Layers are found as FlatImage finds them (spec section 6): from R_OFF+R_SIZE,
read a size; stop at end of file, at size 0, when the 6 bytes after the size are
not ``DWARFS``, or when the layer would run past the end of the file. Appending
a layer therefore needs no table: :func:`append_layer` writes the size field as
0, then the data, fsyncs, and only then writes the real size (and fsyncs), so a
crash at any point leaves the image with its old layers; the next append
overwrites the leftover bytes.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from fim.app.log import CommandError
from fim.osutil import files

TYPE_CHECKING = False  # not typing's: importing typing slows every start-up
if TYPE_CHECKING:
    from fim.fimfs.remote import RemoteFile

SHEBANG = b"#!/bin/sh\n"
MAGIC = b"#FI\x01 fim"
HEADER_END = 128  # the header line ends with the byte before this offset
DEFAULT_RESERVED_SIZE = 4 << 20
ALIGN = 4096
LAYER_MAGIC = b"DWARFS"
_SIZE = struct.Struct("<Q")
_COPY_CHUNK = 1 << 20
_BUSY_WAIT = 10.0  # seconds to wait for an exec of the image to finish before writing


class FimImageError(CommandError):
    """The file is not a fim image, or it cannot be read or changed."""


class Layout:
    """Where the parts of one image file are (read from its header line)."""

    __slots__ = ("path", "payload_offset", "payload_size", "reserved_offset",
                 "reserved_size", "dist", "build_id")

    def __init__(self, path: str, payload_offset: int, payload_size: int,
                 reserved_offset: int, reserved_size: int, dist: str, build_id: str) -> None:
        self.path = path
        self.payload_offset = payload_offset
        self.payload_size = payload_size
        self.reserved_offset = reserved_offset
        self.reserved_size = reserved_size
        self.dist = dist
        self.build_id = build_id

    @property
    def layers_offset(self) -> int:
        """Offset of the first layer's size field."""
        return self.reserved_offset + self.reserved_size

    def as_dict(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.__slots__}

    def __repr__(self) -> str:
        return f"Layout({self.as_dict()!r})"


class Layer:
    """A layer, wherever it is: the DwarFS image of ``size`` bytes at ``offset`` in the
    file or URL ``path`` (an image's embedded layer: after its size field; a layer
    file: at 0). The one layer reference of the application (app.layers discovers them,
    app.stack and app.extractcache open them; fimfs.external takes its own
    ``(path, offset, size)``, converted where it is called)."""

    __slots__ = ("path", "offset", "size")

    def __init__(self, path: str, offset: int, size: int) -> None:
        self.path = path
        self.offset = offset
        self.size = size

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Layer) and (self.path, self.offset, self.size) == (
            other.path, other.offset, other.size)

    def __repr__(self) -> str:
        return f"Layer(path={self.path!r}, offset={self.offset}, size={self.size})"


def _header_line(fields: Sequence[object]) -> bytes:
    line = b" ".join([MAGIC, *(str(f).encode("ascii") for f in fields)])
    width = HEADER_END - len(SHEBANG) - 1
    if len(line) > width:
        raise FimImageError(f"Image header too long ({len(line)} bytes, at most {width})")
    return line.ljust(width) + b"\n"


def parse_header(head: bytes, path: str) -> Layout:
    """The Layout described by the first 128 bytes of ``path``."""
    start = len(SHEBANG)
    if (len(head) < HEADER_END or not head.startswith(SHEBANG)
            or head[start:start + len(MAGIC)] != MAGIC or head[HEADER_END - 1:HEADER_END] != b"\n"):
        raise FimImageError(f"'{path}' is not a fim image")
    fields = head[start + len(MAGIC):HEADER_END].split()
    try:
        p_off, p_size, r_off, r_size = (int(f) for f in fields[:4])
        dist, build = (f.decode("ascii") for f in fields[4:])
    except ValueError:
        raise FimImageError(f"'{path}' has a malformed fim header") from None
    if p_off < HEADER_END or r_off < p_off + p_size or r_off % ALIGN or r_size % ALIGN:
        raise FimImageError(f"'{path}' has an inconsistent fim header")
    return Layout(path, p_off, p_size, r_off, r_size, dist, build)


def is_url(path: str) -> bool:
    """Is the image at an ``http://`` or ``https://`` URL (`fim run URL`)? Such an image
    is read by ranges (fimfs.remote) and cannot be changed."""
    return path.startswith(("http://", "https://"))


_remotes: dict[str, RemoteFile] = {}


def remote(url: str) -> RemoteFile:
    """The image at ``url``, read through the per-user block cache (one object per URL
    and process: its first request tells size and identity)."""
    f = _remotes.get(url)
    if f is None:
        from fim.fimfs.errors import FimfsError
        from fim.fimfs.remote import RemoteFile

        try:
            f = RemoteFile(url)
        except (FimfsError, OSError) as exc:
            raise FimImageError(f"Could not read image '{url}': {exc}") from None
        _remotes[url] = f
    return f


def remote_read(url: str, offset: int, n: int) -> bytes:
    """Up to ``n`` bytes at ``offset`` of the image at ``url``; failures: FimImageError."""
    try:
        return remote(url).read_upto(offset, n)
    except OSError as exc:
        raise FimImageError(f"Could not read image '{url}': {exc.strerror}") from None


def read_layout(path: str) -> Layout:
    """Open ``path`` (or URL) and read its header; any failure is an FimImageError."""
    if is_url(path):
        head, end = remote_read(path, 0, HEADER_END), remote(path).size
    else:
        try:
            with open(path, "rb") as f:
                head = f.read(HEADER_END)
                end = os.fstat(f.fileno()).st_size
        except OSError as exc:
            raise FimImageError(f"Could not read image '{path}': {exc.strerror}") from None
    layout = parse_header(head, path)
    if end < layout.layers_offset:
        raise FimImageError(f"'{path}' is truncated: {end} bytes, the reserved space "
                         f"ends at {layout.layers_offset}")
    return layout


@contextmanager
def locked(fd: int, exclusive: bool) -> Iterator[None]:
    """Hold the image lock for the block: shared to read the config, exclusive to
    change the config or the layers. flock locks follow the open file, so a killed
    process never leaves one behind."""
    fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def open_image_fd(path: str) -> int:
    """A read-only descriptor of the image: reads, the lock, and fsync (which Linux
    allows on it) all go through this one."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise FimImageError(f"Could not read image '{path}': {exc.strerror}") from None


def check_writable(path: str) -> None:
    """Refuse, in one line, a change to an image that cannot be written (on read-only
    media, or not the user's), before anything is done (a remote image is refused by
    its own checks)."""
    if is_url(path) or os.access(path, os.W_OK):
        return
    try:
        read_only = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    reason = os.strerror(errno.EROFS if read_only else errno.EACCES)
    raise FimImageError(f"Failed to open input file '{path}': {reason} (the image cannot "
                        "be changed)")


def open_for_writing(path: str) -> int:
    """A write descriptor of the image, to be closed as soon as the write is done.

    Linux refuses to execute a file that is open for writing (and to open for
    writing a file being executed) with ETXTBSY, so writers keep such a
    descriptor only for the write itself, and wait out someone else's exec."""
    deadline = time.monotonic() + _BUSY_WAIT
    while True:
        try:
            return os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno != errno.ETXTBSY or time.monotonic() > deadline:
                raise FimImageError(f"Failed to open input file '{path}': {exc.strerror}") from None
        time.sleep(0.002)


def write_at(path: str, data: bytes, offset: int) -> None:
    """Write ``data`` at ``offset`` of the image (see :func:`open_for_writing`)."""
    fd = open_for_writing(path)
    try:
        done = 0
        while done < len(data):
            done += os.pwrite(fd, data[done:], offset + done)
    finally:
        os.close(fd)


def _scan_layers(fd: int, layout: Layout) -> tuple[list[Layer], int]:
    """The valid embedded layers and the offset just after the last one."""
    return _scan(lambda offset, n: os.pread(fd, n, offset), os.fstat(fd).st_size, layout)


def _scan(read: Callable[[int, int], bytes], end: int,
          layout: Layout) -> tuple[list[Layer], int]:
    pos = layout.layers_offset
    found: list[Layer] = []
    while pos + _SIZE.size + len(LAYER_MAGIC) <= end:
        head = read(pos, _SIZE.size + len(LAYER_MAGIC))
        (size,) = _SIZE.unpack_from(head)
        data = pos + _SIZE.size
        if size == 0 or head[_SIZE.size:] != LAYER_MAGIC or data + size > end:
            break
        found.append(Layer(layout.path, data, size))
        pos = data + size
    return found, pos


def list_layers(layout: Layout) -> list[Layer]:
    """The layers embedded in the image, base layer first (what `fim-layer list` shows)."""
    return scan_layers(layout)[0]


def scan_layers(layout: Layout) -> tuple[list[Layer], int]:
    """The embedded layers and the number of bytes after the last one: not 0 after an
    append that was interrupted (the next append overwrites them) or an invalid one."""
    if is_url(layout.path):
        size = remote(layout.path).size
        layers, end = _scan(functools.partial(remote_read, layout.path), size, layout)
        return layers, size - end
    fd = open_image_fd(layout.path)
    try:
        layers, end = _scan_layers(fd, layout)
        return layers, os.fstat(fd).st_size - end
    finally:
        os.close(fd)


def _check_layer_file(path: str) -> int:
    """The size of the DwarFS file ``path``; an FimImageError if it is not one."""
    try:
        with open(path, "rb") as f:
            magic = f.read(len(LAYER_MAGIC))
            size = os.fstat(f.fileno()).st_size
    except OSError as exc:
        raise FimImageError(f"Could not read layer '{path}': {exc.strerror}") from None
    if magic != LAYER_MAGIC:
        raise FimImageError(f"'{path}' is not a DwarFS image (it must start with 'DWARFS')")
    return size


def _copy(src: str, dst_fd: int, offset: int) -> int:
    """Copy the file ``src`` to ``dst_fd`` at ``offset``; the number of bytes copied."""
    copied = 0
    with open(src, "rb") as f:
        while chunk := f.read(_COPY_CHUNK):
            view = memoryview(chunk)
            while view:  # a short write (a disk filling up) goes on, until ENOSPC
                n = os.pwrite(dst_fd, view, offset + copied)
                if n == 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                view = view[n:]
                copied += n
    return copied


def append_layer(layout: Layout, source: str) -> Layer:
    """Append the DwarFS file ``source`` as the new top layer, crash safe (see above)."""
    _check_layer_file(source)
    fd = open_image_fd(layout.path)
    try:
        with locked(fd, exclusive=True):
            _, end = _scan_layers(fd, layout)
            try:
                wfd = open_for_writing(layout.path)
                try:
                    os.ftruncate(wfd, end)
                    os.pwrite(wfd, _SIZE.pack(0), end)
                    size = _copy(source, wfd, end + _SIZE.size)
                finally:
                    os.close(wfd)
                os.fsync(fd)
                if os.pread(fd, len(LAYER_MAGIC), end + _SIZE.size) != LAYER_MAGIC:
                    raise FimImageError(f"'{source}' changed while it was being appended")
            except BaseException:
                _truncate(layout.path, end)  # e.g. a full disk: the image as it was
                raise
            write_at(layout.path, _SIZE.pack(size), end)
            os.fsync(fd)
            return Layer(layout.path, end + _SIZE.size, size)
    except OSError as exc:
        raise FimImageError(f"Could not append layer to '{layout.path}': {exc.strerror}") from None
    finally:
        os.close(fd)


def _truncate(path: str, size: int) -> None:
    """Cut the image back to ``size`` bytes, if possible (a failed append's cleanup)."""
    try:
        wfd = open_for_writing(path)
    except FimImageError:
        return
    try:
        os.ftruncate(wfd, size)
        os.fsync(wfd)
    except OSError:
        pass
    finally:
        os.close(wfd)


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def create(path: str, launcher: str, payload: bytes, *, dist: str,
           reserved_size: int = DEFAULT_RESERVED_SIZE, layers: Sequence[str] = ()) -> Layout:
    """Write a new executable image at ``path``: header, ``launcher`` (the shell code
    after the header line), ``payload``, a zeroed reserved space (the default config)
    and the DwarFS files ``layers`` in order. ``path`` appears only once complete."""
    if reserved_size < 2 * ALIGN or reserved_size % ALIGN:
        raise FimImageError(f"The reserved size must be a multiple of {ALIGN} and at least "
                         f"{2 * ALIGN} bytes, not {reserved_size}")
    if not (dist.isascii() and dist.isalnum()):
        raise FimImageError(f"Invalid distribution name '{dist}'")
    import hashlib

    build_id = hashlib.sha256(payload).hexdigest()[:16]
    sizes = [_check_layer_file(p) for p in layers]
    body = launcher.encode()
    if not body.endswith(b"\n"):
        raise FimImageError("The launcher must end with a newline")
    payload_offset = HEADER_END + len(body)
    reserved_offset = _align(payload_offset + len(payload))
    header = _header_line(
        [payload_offset, len(payload), reserved_offset, reserved_size, dist, build_id])
    layout = Layout(path, payload_offset, len(payload), reserved_offset, reserved_size,
                    dist, build_id)
    try:
        with files.replacing(path) as tmp:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o755)
            try:
                os.pwrite(fd, SHEBANG + header + body + payload, 0)
                os.ftruncate(fd, layout.layers_offset)
                pos = layout.layers_offset
                for source, size in zip(layers, sizes):
                    os.pwrite(fd, _SIZE.pack(size), pos)
                    if _copy(source, fd, pos + _SIZE.size) != size:
                        raise FimImageError(f"'{source}' changed while it was being copied")
                    pos += _SIZE.size + size
                os.fsync(fd)
            finally:
                os.close(fd)
            os.chmod(tmp, 0o755)
    except OSError as exc:
        raise FimImageError(f"Could not write image '{path}': {exc.strerror}") from None
    return layout

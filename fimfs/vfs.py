"""The one Filesystem interface every fimfs layer implements.

Path based, like fusepy: paths are absolute ``str`` ("/" is the root) decoded from
bytes with ``os.fsdecode`` (surrogateescape), so any byte name round-trips.
Failures are ``OSError`` with a real errno. Read-only layers implement the read
methods; the writable methods default to ``EROFS`` so a read-only layer refuses
writes the way a read-only mount does.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import ctypes
    from typing import TypeAlias

#: A buffer spans slice: bytes, or a char array (a block still being decompressed into).
SpanBuffer: TypeAlias = "bytes | ctypes.Array[ctypes.c_char]"
#: Slices of file data: ``(buffer, start, stop)`` (see :meth:`Filesystem.read_spans`).
Spans = list[tuple[SpanBuffer, int, int]]


def fs_error(code: int, path: str = "") -> OSError:
    """An OSError with errno ``code`` and its standard message."""
    return OSError(code, os.strerror(code), path) if path else OSError(code, os.strerror(code))


class Attr(NamedTuple):
    """What ``stat`` reports for one inode. Times are in nanoseconds since the epoch."""

    mode: int
    nlink: int
    uid: int
    gid: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    rdev: int = 0
    ino: int = 0
    blocks: int = 0  # 512-byte units actually allocated

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_lnk(self) -> bool:
        return stat.S_ISLNK(self.mode)


class StatFs(NamedTuple):
    """What ``statvfs`` reports."""

    bsize: int
    frsize: int
    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    namemax: int = 255


#: ``flags`` of :meth:`Filesystem.rename` (renameat2(2)): fail with EEXIST if ``new`` exists.
RENAME_NOREPLACE = 1
#: The file handle of a read on a mount without OPEN requests (see reads_by_path).
NO_HANDLE = 0


def split_path(path: str) -> list[str]:
    """Components of an absolute path; "/" gives []. Empty components are refused."""
    if not path.startswith("/"):
        raise fs_error(errno.EINVAL, path)
    parts = path[1:].split("/") if path != "/" else []
    if parts and parts[-1] == "":
        parts.pop()  # a trailing slash is ignored, as the kernel does
    if any(p in ("", ".", "..") for p in parts):
        raise fs_error(errno.ENOENT, path)
    return parts


class Filesystem:
    """Base class: read methods to override, writable methods that refuse with EROFS."""

    #: chown gets real ids; -1 ("unchanged") is filled in by the FUSE adapter from
    #: getattr, unless a layer sets this (a view whose getattr does not show the
    #: stored owner, :class:`fimfs.owners.OwnerView`) and resolves -1 itself.
    chown_accepts_unchanged: bool = False
    #: Several spellings of a name reach one entry (:class:`fimfs.casefold.CaseFold`):
    #: a writable mount then must not let the kernel cache entries (see mount_options).
    case_insensitive = False
    #: release() frees state of the handle (an fd, a table entry). A layer whose handles
    #: are plain numbers sets False, and a read-only mount then spares the callback.
    handles_need_release = True
    #: flush() can report an error to the close(2) that caused it (a network
    #: filesystem's deferred write errors). Without, a writable mount registers no flush
    #: callback: libfuse answers the first FLUSH with ENOSYS and the kernel sends no
    #: more, one round trip less at every close of a file opened for writing.
    flush_reports_errors = False
    #: open() keeps no state and ``read_spans(path, size, offset, NO_HANDLE)`` reads a
    #: file by its path alone. A read-only mount then answers the first OPEN with ENOSYS,
    #: after which the kernel sends no OPEN nor RELEASE for any file (and keeps files'
    #: pages cached, as keep_cache): two of the three requests of a small file's read.
    reads_by_path = False

    # -- read side ---------------------------------------------------------
    def getattr(self, path: str) -> Attr:
        raise fs_error(errno.ENOSYS, path)

    def readdir(self, path: str) -> Iterable[str]:
        """Names in the directory, without "." and ".."."""
        raise fs_error(errno.ENOSYS, path)

    def readdir_attrs(self, path: str) -> list[tuple[str, Attr]]:
        """Names in the directory with their attributes (serves FUSE's READDIRPLUS, which
        spares the kernel one LOOKUP per entry). Layers that know both at once override it."""
        base = path.rstrip("/")
        return [(name, self.getattr(f"{base}/{name}")) for name in self.readdir(path)]

    def readlink(self, path: str) -> str:
        raise fs_error(errno.ENOSYS, path)

    def open(self, path: str, flags: int) -> int:
        """Open a regular file; returns a handle for read/write/release."""
        raise fs_error(errno.ENOSYS, path)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        raise fs_error(errno.ENOSYS, path)

    def read_spans(self, path: str, size: int, offset: int, fh: int) -> Spans:
        """What :meth:`read` returns, as ``(buffer, start, stop)`` slices of buffers the
        layer holds anyway (a decompressed block): the FUSE binding copies them straight
        into the reply, without the bytes object a slice would make."""
        data = bytes(self.read(path, size, offset, fh))  # no copy when it is bytes already
        return [(data, 0, len(data))]

    def release(self, path: str, fh: int) -> None:
        return None

    def unchanging(self, fh: int) -> bool:
        """Whether the content of the open file ``fh`` can never change (a read-only
        layer's): the kernel may then keep its cached pages from one open to the next."""
        return False

    def statfs(self) -> StatFs:
        raise fs_error(errno.ENOSYS)

    def getxattr(self, path: str, name: str) -> bytes:
        self.getattr(path)
        raise fs_error(errno.ENODATA, path)

    def listxattr(self, path: str) -> list[str]:
        self.getattr(path)
        return []

    # -- write side (read-only by default) -----------------------------------
    def create(self, path: str, mode: int, flags: int) -> int:
        raise fs_error(errno.EROFS, path)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        raise fs_error(errno.EROFS, path)

    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        raise fs_error(errno.EROFS, path)

    def flush(self, path: str, fh: int) -> None:
        return None

    def fsync(self, path: str, datasync: bool, fh: int) -> None:
        return None

    def mkdir(self, path: str, mode: int) -> None:
        raise fs_error(errno.EROFS, path)

    def mknod(self, path: str, mode: int, rdev: int) -> None:
        raise fs_error(errno.EROFS, path)

    def unlink(self, path: str) -> None:
        raise fs_error(errno.EROFS, path)

    def rmdir(self, path: str) -> None:
        raise fs_error(errno.EROFS, path)

    def rename(self, old: str, new: str, flags: int = 0) -> None:
        """``flags``: 0 or :data:`RENAME_NOREPLACE`, which a layer checks and acts on
        atomically (EEXIST if ``new`` exists); other renameat2 flags are EINVAL."""
        raise fs_error(errno.EROFS, old)

    def symlink(self, target: str, path: str) -> None:
        raise fs_error(errno.EROFS, path)

    def link(self, existing: str, path: str) -> None:
        raise fs_error(errno.EROFS, path)

    def chmod(self, path: str, mode: int) -> None:
        raise fs_error(errno.EROFS, path)

    def chown(self, path: str, uid: int, gid: int) -> None:
        raise fs_error(errno.EROFS, path)

    def utimens(self, path: str, atime_ns: int, mtime_ns: int) -> None:
        raise fs_error(errno.EROFS, path)

    def setxattr(self, path: str, name: str, value: bytes, flags: int) -> None:
        raise fs_error(errno.EROFS, path)

    def removexattr(self, path: str, name: str) -> None:
        raise fs_error(errno.EROFS, path)

    @property
    def writable(self) -> bool:
        """True when the write methods are implemented (decides the mount's ro/rw)."""
        return False

    def close(self) -> None:
        """Release resources (open files, caches)."""
        return None

"""HostDir: a directory of the host as a writable Filesystem (the upper layer of a union).

Every operation maps to one or two system calls on ``root + path``. File handles are
the OS file descriptors themselves, so handles need no table and no lock.

Confinement: ``..`` and ``.`` components are refused (``vfs.split_path``) and the last
component is never followed when it is a symlink (lstat, lchown, O_NOFOLLOW, ...;
chmod and truncate go through an ``O_PATH`` descriptor because Linux has no lchmod).
Intermediate components are resolved by the host kernel: callers only pass paths whose
directories they looked up (the FUSE kernel resolves symlinks itself, the union walks
component by component). A concurrent swap of a directory for a symlink can still
redirect one call; that gives nothing to the mount's users, because a writable mount is
served without ``allow_other``: only the user who mounted it can reach it.

Modes are applied exactly: the kernel (or libfuse) has already applied the caller's
umask, so bits that this process's own umask strips at creation are put back.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator

from .vfs import Attr, Filesystem, StatFs, fs_error, split_path

_OPEN_EXTRA = os.O_NOFOLLOW | os.O_CLOEXEC
_PERM = 0o7777


def _process_umask() -> int:
    """This process's umask, read without changing it (``/proc``; Linux ≥ 4.7)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)  # the only other way to read it; done once, at construction
    os.umask(old)
    return old


def _attr(st: os.stat_result) -> Attr:
    """An Attr from an ``os.stat_result``."""
    special = stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
    return Attr(mode=st.st_mode, nlink=st.st_nlink, uid=st.st_uid, gid=st.st_gid,
                size=st.st_size, atime_ns=st.st_atime_ns, mtime_ns=st.st_mtime_ns,
                ctime_ns=st.st_ctime_ns, rdev=st.st_rdev if special else 0, ino=st.st_ino,
                blocks=st.st_blocks)


class HostDir(Filesystem):
    """The tree under ``root`` on the host, readable and writable."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = os.path.abspath(os.fsdecode(root))
        if not os.path.isdir(self.root):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), self.root)
        self._umask = _process_umask()

    def _host(self, path: str) -> str:
        parts = split_path(path)
        return self.root + "/" + "/".join(parts) if parts else self.root

    def _restore_mode(self, host: str, mode: int, fd: int | None = None) -> None:
        """Put back permission bits that this process's umask removed at creation."""
        if mode & self._umask & 0o777:
            current = os.fstat(fd).st_mode if fd is not None else os.lstat(host).st_mode
            wanted = stat.S_IMODE(current) | (mode & 0o777)
            if fd is not None:
                os.fchmod(fd, wanted)
            else:
                self._chmod(host, wanted)

    @staticmethod
    @contextlib.contextmanager
    def _inode(host: str) -> Iterator[tuple[str, os.stat_result]]:
        """A /proc path of the inode at ``host`` (never a symlink's target) and its stat."""
        fd = os.open(host, os.O_PATH | _OPEN_EXTRA)
        try:
            yield f"/proc/self/fd/{fd}", os.fstat(fd)
        finally:
            os.close(fd)

    def _chmod(self, host: str, mode: int) -> None:
        with self._inode(host) as (proc, st):
            if stat.S_ISLNK(st.st_mode):
                raise fs_error(errno.EOPNOTSUPP, host)  # what lchmod gives on Linux
            os.chmod(proc, mode)

    # -- read side -------------------------------------------------------------------
    def getattr(self, path: str) -> Attr:
        return _attr(os.lstat(self._host(path)))

    def readdir(self, path: str) -> list[str]:
        return os.listdir(self._host(path))

    def readlink(self, path: str) -> str:
        return os.readlink(self._host(path))

    def open(self, path: str, flags: int) -> int:
        return os.open(self._host(path), (flags & ~(os.O_CREAT | os.O_EXCL)) | _OPEN_EXTRA)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    def release(self, path: str, fh: int) -> None:
        os.close(fh)

    def statfs(self) -> StatFs:
        st = os.statvfs(self.root)
        return StatFs(bsize=st.f_bsize, frsize=st.f_frsize, blocks=st.f_blocks,
                      bfree=st.f_bfree, bavail=st.f_bavail, files=st.f_files,
                      ffree=st.f_ffree, namemax=st.f_namemax)

    def getxattr(self, path: str, name: str) -> bytes:
        return os.getxattr(self._host(path), name, follow_symlinks=False)

    def listxattr(self, path: str) -> list[str]:
        return os.listxattr(self._host(path), follow_symlinks=False)

    # -- write side ------------------------------------------------------------------
    @property
    def writable(self) -> bool:
        return True

    def create(self, path: str, mode: int, flags: int) -> int:
        host = self._host(path)
        fd = os.open(host, flags | os.O_CREAT | _OPEN_EXTRA, mode & _PERM)
        try:
            self._restore_mode(host, mode, fd)
        except OSError:
            os.close(fd)
            raise
        return fd

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        # On an O_APPEND descriptor Linux's pwrite appends at the end, whatever the offset.
        return os.pwrite(fh, data, offset)

    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        if fh is not None:
            os.ftruncate(fh, length)
            return
        with self._inode(self._host(path)) as (proc, st):
            if stat.S_ISDIR(st.st_mode):
                raise fs_error(errno.EISDIR, path)
            if not stat.S_ISREG(st.st_mode):
                raise fs_error(errno.EINVAL, path)
            os.truncate(proc, length)

    def flush(self, path: str, fh: int) -> None:
        # As libfuse's passthrough example: closing a duplicate reports deferred write
        # errors (e.g. of a network filesystem) to the close() that caused the flush.
        os.close(os.dup(fh))

    def fsync(self, path: str, datasync: bool, fh: int) -> None:
        (os.fdatasync if datasync else os.fsync)(fh)

    def mkdir(self, path: str, mode: int) -> None:
        host = self._host(path)
        os.mkdir(host, mode & _PERM)
        self._restore_mode(host, mode)

    def mknod(self, path: str, mode: int, rdev: int) -> None:
        host = self._host(path)
        os.mknod(host, mode, rdev)
        self._restore_mode(host, mode)

    def unlink(self, path: str) -> None:
        os.unlink(self._host(path))

    def rmdir(self, path: str) -> None:
        os.rmdir(self._host(path))

    def rename(self, old: str, new: str) -> None:
        os.rename(self._host(old), self._host(new))

    def symlink(self, target: str, path: str) -> None:
        os.symlink(target, self._host(path))

    def link(self, existing: str, path: str) -> None:
        os.link(self._host(existing), self._host(path), follow_symlinks=False)

    def chmod(self, path: str, mode: int) -> None:
        self._chmod(self._host(path), mode & _PERM)

    def chown(self, path: str, uid: int, gid: int) -> None:
        os.chown(self._host(path), uid, gid, follow_symlinks=False)

    def utimens(self, path: str, atime_ns: int, mtime_ns: int) -> None:
        os.utime(self._host(path), ns=(atime_ns, mtime_ns), follow_symlinks=False)

    def setxattr(self, path: str, name: str, value: bytes, flags: int) -> None:
        os.setxattr(self._host(path), name, value, flags, follow_symlinks=False)

    def removexattr(self, path: str, name: str) -> None:
        os.removexattr(self._host(path), name, follow_symlinks=False)

"""One adapter from any :class:`fimfs.vfs.Filesystem` to FUSE (mfusepy), and the mount lifecycle.

``mount`` serves a Filesystem on a directory, in the foreground (blocks until the mount
goes away) or as a detached daemon (returns once the mount answers). ``umount`` takes
it down again. mfusepy (and through it libfuse) is imported lazily, so importing this
module never fails on a machine without libfuse; only mounting does, with a one-line
:class:`FimfsError`.

Design notes:

* libfuse 3 is preferred over libfuse 2 when both are installed: it negotiates 1 MiB
  requests with the kernel and needs no ``big_writes``.
* The adapter keeps no state of its own; the Filesystem implementations are
  thread-safe, so libfuse runs multithreaded.
* Termination signals are taken by a dedicated thread (``sigwait``) that detaches the
  mount. Detaching makes the kernel abort the connection, which ends libfuse's loop
  the normal way, so the mount point is never left as "Transport endpoint is not
  connected". This does not depend on which thread the kernel delivers a signal to.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import itertools
import logging
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from types import ModuleType
from typing import Any

from fimfs.aliases import Aliases
from fimfs.errors import FimfsError
from fimfs.vfs import Attr, Filesystem

log = logging.getLogger(__name__)

#: How long the kernel may cache attributes, entries and negative lookups of a
#: read-only mount. Nothing can change underneath, so this is effectively "forever",
#: as the native dwarfs driver does.
RO_CACHE_TIMEOUT = 3600
#: Kernel read-ahead (KiB) set on a read-only mount when root. The default (128 KiB)
#: makes the kernel ask for 128 KiB per read; from 1 MiB on it sends 1 MiB requests
#: (the most a FUSE request carries), and 4 MiB keeps a few of them in flight, which
#: the multithreaded daemon serves in parallel. Small files are not affected.
READ_AHEAD_KB = 4096
#: libfuse worker threads, at most and kept idle (libfuse's default maximum; the idle
#: count is given explicitly because libfuse 3.12-3.14 warns about its default).
MAX_THREADS = 10
#: How long a background mount may take to come up before the caller gives up.
READY_TIMEOUT = 30.0

# Special tv_nsec values libfuse passes to utimens (see utimensat(2)).
_UTIME_NOW = (1 << 30) - 1
_UTIME_OMIT = (1 << 30) - 2
_FUSE_READDIR_PLUS = 1  # libfuse 3: readdir flags bit, "the kernel asked for READDIRPLUS"
_FUSE_FILL_DIR_PLUS = 2  # libfuse 3: filler flag, "this entry carries full attributes"
_RENAME_NOREPLACE = 1
_UNKNOWN_INO = {"st_ino": 0xFFFFFFFF}  # libfuse's FUSE_UNKNOWN_INO
_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
_READY = b"\x00fim-ready\n"
_ERROR_PREFIX = "fim-error: "

FilesystemSource = Filesystem | Callable[[], Filesystem]


# -- the adapter ---------------------------------------------------------------


def _eio() -> OSError:
    return OSError(errno.EIO, os.strerror(errno.EIO))


def _guarded(func: Callable[..., Any]) -> Callable[..., Any]:
    """Let OSError (with an errno) through; log anything else with the path and turn it into EIO.

    mfusepy would map a stray exception to EINVAL, which misleads callers into
    thinking they passed a bad argument; EIO says "the filesystem failed".
    """
    name = func.__name__

    @functools.wraps(func)
    def wrapper(self: FuseOperations, path: Any, *args: Any) -> Any:
        try:
            return func(self, path, *args)
        except OSError as e:
            if isinstance(e.errno, int) and e.errno > 0:
                raise
            log.error("fuse %s %r: OSError without errno: %s", name, path, e)
            raise _eio() from None
        except Exception:
            log.exception("fuse %s %r failed", name, path)
            raise _eio() from None

    return wrapper


def attr_to_stat(attr: Attr) -> dict[str, int]:
    """The st_* dict mfusepy expects (times in ns, the adapter sets ``use_ns``).

    ``st_ino`` is ``Attr.ino + 1``: layers number from 0 (DwarFS gives the root inode
    0), but 0 means "no inode" to userspace (glibc's readdir skips such entries) and
    the FUSE root is 1. libfuse only passes it on with the ``use_ino`` option.
    """
    return {
        "st_mode": attr.mode,
        "st_nlink": attr.nlink,
        "st_uid": attr.uid,
        "st_gid": attr.gid,
        "st_size": attr.size,
        "st_atime": attr.atime_ns,
        "st_mtime": attr.mtime_ns,
        "st_ctime": attr.ctime_ns,
        "st_rdev": attr.rdev,
        "st_ino": attr.ino + 1,
        "st_blocks": attr.blocks,
    }


class FuseOperations:
    """The mfusepy operations object for one Filesystem.

    Duck-typed instead of subclassing ``mfusepy.Operations`` so that this module can
    be imported (and the adapter unit-tested) without libfuse; mfusepy only looks
    the methods up by name. Errors are raised as ``OSError(errno)``, which is all
    ``mfusepy.FuseOSError`` is.
    """

    use_ns = True
    # libfuse 2 drops an update of only one of atime/mtime unless told that utimens
    # understands UTIME_OMIT/UTIME_NOW (libfuse 3 always passes them).
    flag_utime_omit_ok = 1

    def __init__(self, fs: Filesystem, on_ready: Callable[[], None] | None = None) -> None:
        self.fs = fs
        self._on_ready = on_ready
        self._dir_handles = itertools.count(1)
        self._aliases: Aliases | None = None  # writable mounts on libfuse 3 (see init)
        self._listings: dict[int, list[tuple[str, dict[str, int] | None]]] = {}

    def init(self, path: str) -> None:
        """Called by libfuse once the kernel connection is set up: the mount is live."""
        if self.fs.writable:
            invalidate = _path_invalidator()
            if invalidate is not None:
                self._aliases = Aliases(invalidate)
        if self._on_ready is not None:
            try:
                self._on_ready()
            except Exception:
                log.exception("fuse init: readiness callback failed")

    # -- read side ---------------------------------------------------------
    @_guarded
    def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
        attr = self.fs.getattr(path)
        if self._aliases is not None:
            self._aliases.seen(path, attr.ino)
        return attr_to_stat(attr)

    def _changed(self, path: str | None, forget: bool = False, itself: bool = False) -> None:
        """A change through ``path``: refresh the kernel's view of the inode's other names."""
        if self._aliases is not None and path is not None:
            self._aliases.changed(path, itself)
            if forget:
                self._aliases.forget(path)

    @_guarded
    def readdir(self, path: str, fh: int) -> list[tuple[str, dict[str, int], int]]:
        # Materialised here so that an error while listing is caught by the guard.
        # Plain names would reach libfuse with st_ino 0, which under use_ino becomes
        # d_ino 0, an entry glibc's readdir silently skips; "unknown" is what libfuse
        # reports without use_ino.
        return [(name, _UNKNOWN_INO, 0) for name in (".", "..", *self.fs.readdir(path))]

    def opendir(self, path: str) -> int:
        return next(self._dir_handles)

    def releasedir(self, path: str | None, fh: int) -> int:
        self._listings.pop(fh, None)
        return 0

    @_guarded
    def listing(self, path: str, fh: int, offset: int, plus: bool
                ) -> list[tuple[str, dict[str, int] | None]]:
        """The snapshot of a directory that one open handle pages through (libfuse 3).

        Taken at offset 0 (opendir or rewinddir) and kept until releasedir, so names
        never repeat or vanish between pages while the directory changes. For
        READDIRPLUS it carries full attributes, which spares the kernel a LOOKUP per
        entry; if some entry's attributes cannot be had, names alone are listed, so the
        directory still lists and only that entry's own lookup fails."""
        entries = self._listings.get(fh) if offset else None
        if entries is None:
            entries = [(".", None), ("..", None)]
            if plus:
                try:
                    found = self.fs.readdir_attrs(path)
                    entries += [(n, attr_to_stat(a)) for n, a in found]
                    if self._aliases is not None:
                        base = path.rstrip("/")
                        for n, a in found:
                            self._aliases.seen(f"{base}/{n}", a.ino)
                except Exception as e:  # noqa: BLE001 - the plain listing reports real errors
                    log.debug("readdirplus %r: %s; listing names only", path, e)
                    plus = False
            if not plus:
                entries += [(name, None) for name in self.fs.readdir(path)]
            self._listings[fh] = entries
        return entries

    @_guarded
    def readlink(self, path: str) -> str:
        return self.fs.readlink(path)

    @_guarded
    def open(self, path: str, flags: int) -> int:
        return self.fs.open(path, flags)

    @_guarded
    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        data = self.fs.read(path, size, offset, fh)
        if len(data) > size:
            raise RuntimeError(f"read returned {len(data)} bytes for a request of {size}")
        return data

    @_guarded
    def release(self, path: str, fh: int) -> int:
        self.fs.release(path, fh)
        return 0

    @_guarded
    def statfs(self, path: str) -> dict[str, int]:
        try:
            st = self.fs.statfs()
        except OSError as e:
            if e.errno != errno.ENOSYS:
                raise
            # A layer without statfs still lets df and statvfs work.
            return {"f_bsize": 4096, "f_frsize": 4096, "f_namemax": 255}
        return {
            "f_bsize": st.bsize,
            "f_frsize": st.frsize,
            "f_blocks": st.blocks,
            "f_bfree": st.bfree,
            "f_bavail": st.bavail,
            "f_files": st.files,
            "f_ffree": st.ffree,
            "f_favail": st.ffree,
            "f_namemax": st.namemax,
        }

    @_guarded
    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        return self.fs.getxattr(path, name)

    @_guarded
    def listxattr(self, path: str) -> list[str]:
        return list(self.fs.listxattr(path))

    # -- write side ----------------------------------------------------------
    @_guarded
    def create(self, path: str, mode: int, flags: int) -> int:
        return self.fs.create(path, mode, flags)

    @_guarded
    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        n = self.fs.write(path, data, offset, fh)
        self._changed(path)
        return n

    @_guarded
    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        self.fs.truncate(path, length, fh)
        self._changed(path)
        return 0

    @_guarded
    def flush(self, path: str, fh: int) -> int:
        self.fs.flush(path, fh)
        return 0

    @_guarded
    def fsync(self, path: str, datasync: int, fh: int) -> int:
        self.fs.fsync(path, bool(datasync), fh)
        return 0

    @_guarded
    def mkdir(self, path: str, mode: int) -> int:
        self.fs.mkdir(path, mode)
        return 0

    @_guarded
    def mknod(self, path: str, mode: int, dev: int) -> int:
        self.fs.mknod(path, mode, dev)
        return 0

    @_guarded
    def unlink(self, path: str) -> int:
        self.fs.unlink(path)
        self._changed(path, forget=True)
        return 0

    @_guarded
    def rmdir(self, path: str) -> int:
        self.fs.rmdir(path)
        return 0

    @_guarded
    def rename(self, old: str, new: str, flags: int = 0) -> int:
        """``flags`` of renameat2: NOREPLACE is honoured, anything else (EXCHANGE) is EINVAL."""
        if flags & ~_RENAME_NOREPLACE:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        if flags:
            try:
                self.fs.getattr(new)
            except FileNotFoundError:
                pass
            else:
                raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))
        self.fs.rename(old, new)
        self._changed(old, forget=True)
        self._changed(new, forget=True)
        return 0

    @_guarded
    def symlink(self, path: str, target: str) -> int:
        # mfusepy passes (new link path, link content); the vfs takes (content, path).
        self.fs.symlink(target, path)
        return 0

    @_guarded
    def link(self, path: str, existing: str) -> int:
        # mfusepy passes (new path, existing path); the vfs takes (existing, new).
        self.fs.link(existing, path)
        self._changed(existing, itself=True)  # the kernel keeps its old nlink otherwise
        return 0

    @_guarded
    def chmod(self, path: str, mode: int) -> int:
        self.fs.chmod(path, mode)
        self._changed(path)
        return 0

    @_guarded
    def chown(self, path: str, uid: int, gid: int) -> int:
        # -1 means "leave unchanged" (chown(2)); the vfs wants real ids.
        if (uid == -1 or gid == -1) and not self.fs.chown_accepts_unchanged:
            cur = self.fs.getattr(path)
            uid = cur.uid if uid == -1 else uid
            gid = cur.gid if gid == -1 else gid
        self.fs.chown(path, uid, gid)
        self._changed(path)
        return 0

    @_guarded
    def utimens(self, path: str, times: tuple[int | None, int | None] | None = None) -> int:
        """``times`` None means both now; an element None means "omit" (keep the current value)."""
        if times is None:
            now = time.time_ns()
            self.fs.utimens(path, now, now)
            self._changed(path)
            return 0
        atime, mtime = times
        if atime is None and mtime is None:
            return 0
        if atime is None or mtime is None:
            cur = self.fs.getattr(path)
            atime = cur.atime_ns if atime is None else atime
            mtime = cur.mtime_ns if mtime is None else mtime
        self.fs.utimens(path, atime, mtime)
        self._changed(path)
        return 0

    @_guarded
    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0) -> int:
        self.fs.setxattr(path, name, value, options)
        self._changed(path)
        return 0

    @_guarded
    def removexattr(self, path: str, name: str) -> int:
        self.fs.removexattr(path, name)
        self._changed(path)
        return 0


# -- libfuse loading ---------------------------------------------------------------


def _path_invalidator() -> Callable[[str], None] | None:
    """libfuse's ``fuse_invalidate_path`` bound to this mount, or None (libfuse 2, < 3.1).

    Must be called inside a request (``init``): the ``struct fuse`` it needs is taken
    from the request context, whose first member it is.
    """
    if _libfuse_version()[0] != 3:
        return None
    lib = ctypes.CDLL(os.environ.get("FUSE_LIBRARY_PATH") or ctypes.util.find_library("fuse3"))
    if not hasattr(lib, "fuse_invalidate_path"):
        return None
    lib.fuse_get_context.restype = ctypes.POINTER(ctypes.c_void_p)
    fuse_ptr = lib.fuse_get_context().contents.value
    lib.fuse_invalidate_path.argtypes = [ctypes.c_void_p, ctypes.c_char_p]

    def invalidate(path: str) -> None:
        lib.fuse_invalidate_path(fuse_ptr, os.fsencode(path))

    return invalidate



def _load_mfusepy() -> ModuleType:
    """Import mfusepy, preferring libfuse 3; any failure becomes a one-line FimfsError."""
    if "mfusepy" in sys.modules:
        return sys.modules["mfusepy"]
    env_set = False
    if ("FUSE_LIBRARY_NAME" not in os.environ and "FUSE_LIBRARY_PATH" not in os.environ
            and ctypes.util.find_library("fuse3")):
        # mfusepy looks for libfuse 2 first; this makes it take libfuse 3 when present.
        os.environ["FUSE_LIBRARY_NAME"] = "fuse3"
        env_set = True
    try:
        import mfusepy
    except ImportError:
        raise FimfsError("mfusepy is not installed (pip install mfusepy)") from None
    except OSError as e:
        raise FimfsError(f"libfuse is not available (install fuse3): {e}") from None
    except AttributeError as e:  # mfusepy's way of refusing an unsupported libfuse
        raise FimfsError(f"libfuse is not usable: {e}") from None
    finally:
        if env_set:
            del os.environ["FUSE_LIBRARY_NAME"]
    return mfusepy


@functools.cache
def _fuse_class() -> type:
    """mfusepy.FUSE with four gaps filled: rename flags, ftruncate's handle, UTIME_NOW/OMIT,
    and READDIRPLUS answered with full attributes.

    Built lazily because it needs mfusepy.
    """
    mfusepy = _load_mfusepy()

    class _FUSE(mfusepy.FUSE):  # type: ignore[misc,name-defined]
        def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
            # mfusepy drops the flags; ignoring RENAME_NOREPLACE would overwrite the target.
            return self.operations.rename(
                old.decode(self.encoding, self.errors),
                new.decode(self.encoding, self.errors),
                flags,
            )

        def readdir_fuse_3(self, path: bytes | None, buf: Any, filler: Any, offset: int,
                           fip: Any, flags: int) -> int:
            # mfusepy lists names only and lets libfuse buffer them (its "list mode"):
            # READDIRPLUS then carries no attributes and the kernel sends one LOOKUP
            # per entry. libfuse makes nodes of entries with attributes only in its
            # offset mode, so offsets here are positions in the handle's snapshot.
            plus = bool(flags & _FUSE_READDIR_PLUS)
            decoded = None if path is None else path.decode(self.encoding, self.errors)
            entries = self.operations.listing(decoded, fip.contents.fh, offset, plus)
            st = mfusepy.c_stat()
            for i in range(offset, len(entries)):
                name, attrs = entries[i]
                encoded = name.encode(self.encoding, self.errors)
                if attrs is None:
                    full = filler(buf, encoded, None, i + 1, 0)
                else:
                    mfusepy.set_st_attrs(st, attrs, use_ns=True)
                    full = filler(buf, encoded, st, i + 1, _FUSE_FILL_DIR_PLUS if plus else 0)
                if full:
                    break
            return 0

        def truncate_fuse_3(self, path: bytes | None, length: int, fip: Any) -> int:
            # mfusepy drops the file handle of ftruncate(2).
            fh = fip.contents.fh if fip else None
            decoded = None if path is None else path.decode(self.encoding, self.errors)
            return self.operations.truncate(decoded, length, fh)

        def utimens_fuse_2(self, path: bytes | None, buf: Any) -> int:
            # mfusepy folds UTIME_NOW/UTIME_OMIT into plain numbers.
            times: tuple[int | None, int | None] | None = None
            if buf:
                now = time.time_ns()
                vals = []
                for ts in (buf.contents.actime, buf.contents.modtime):
                    if ts.tv_nsec == _UTIME_OMIT:
                        vals.append(None)
                    elif ts.tv_nsec == _UTIME_NOW:
                        vals.append(now)
                    else:
                        vals.append(ts.tv_sec * 1_000_000_000 + ts.tv_nsec)
                times = (vals[0], vals[1])
            decoded = None if path is None else path.decode(self.encoding, self.errors)
            return self.operations.utimens(decoded, times)

    return _FUSE


def _libfuse_version() -> tuple[int, int]:
    mfusepy = _load_mfusepy()
    return int(mfusepy.fuse_version_major), int(mfusepy.fuse_version_minor)


# -- options -----------------------------------------------------------------------


def _escape_option(value: str) -> str:
    # libfuse splits -o on commas; a backslash escapes the next character.
    return value.replace("\\", "\\\\").replace(",", "\\,")


def allow_other_permitted() -> bool:
    """Whether this user may mount with ``allow_other`` (root, or user_allow_other in fuse.conf)."""
    if os.geteuid() == 0:
        return True
    try:
        with open("/etc/fuse.conf", encoding="utf-8", errors="replace") as f:
            return any(line.split("#", 1)[0].strip() == "user_allow_other" for line in f)
    except OSError:
        return False


def mount_options(
    writable: bool,
    *,
    fsname: str = "fim",
    options: Mapping[str, Any] | None = None,
    libfuse_version: tuple[int, int] = (3, 14),
) -> dict[str, Any]:
    """The FUSE ``-o`` options for a mount; ``options`` override them (False drops a flag).

    Both kinds: ``default_permissions`` (the kernel checks modes and owners, so the
    layers need no access logic of their own), fsname/subtype for /proc/mounts.

    Read-only: ``ro``; 1 h attribute/entry/negative timeouts and ``kernel_cache``
    because nothing can change underneath (what the native dwarfs driver does);
    ``allow_other`` when permitted, which is safe because nothing can be written and
    the kernel checks permissions. (The kernel read-ahead is raised after mounting,
    see READ_AHEAD_KB: libfuse 3 has no option for it.)

    Not set: ``use_ino``. Pass it when the layer's inode numbers are unique and
    stable (a DwarfsImage is); then stat shows them (+1) and hard links share one.

    Writable: libfuse's 1 s timeouts (the upper directory may be edited from the host),
    no ``kernel_cache``, and no ``allow_other``: the layers cannot create files owned
    by the caller, so other users would create files as the mounting user.
    """
    opts: dict[str, Any] = {
        "fsname": _escape_option(fsname),
        "subtype": "fim",
        "default_permissions": True,
    }
    if libfuse_version[0] >= 3:
        opts["max_idle_threads"] = MAX_THREADS
    if libfuse_version >= (3, 12):
        opts["max_threads"] = MAX_THREADS
    if writable:
        opts.update(attr_timeout=1, entry_timeout=1, negative_timeout=0)
        if libfuse_version[0] == 2:
            opts["big_writes"] = True  # libfuse 2 otherwise writes in 4 KiB requests
    else:
        opts.update(
            ro=True,
            kernel_cache=True,
            attr_timeout=RO_CACHE_TIMEOUT,
            entry_timeout=RO_CACHE_TIMEOUT,
            negative_timeout=RO_CACHE_TIMEOUT,
        )
        if allow_other_permitted():
            opts["allow_other"] = True
    for key, value in (options or {}).items():
        if value is False or value is None:
            opts.pop(key, None)
        elif key == "fsname":
            opts[key] = _escape_option(str(value))
        else:
            opts[key] = value
    return opts


# -- pre-flight checks and mount table -------------------------------------------------


def _unescape_mountinfo(field: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo.
    out, i = bytearray(), 0
    raw = os.fsencode(field)
    while i < len(raw):
        octal = raw[i + 1 : i + 4]
        if raw[i] == 0x5C and len(octal) == 3 and octal.isdigit():
            out.append(int(octal, 8) & 0xFF)
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return os.fsdecode(bytes(out))


def _canonical(path: str) -> str:
    """Absolute path with the parent resolved; never touches the last component.

    Stat-ing a disconnected FUSE mount fails with ENOTCONN, so the last component is
    left alone; that is also what the mount table lists.
    """
    path = os.path.abspath(path)
    parent, name = os.path.split(path)
    return os.path.join(os.path.realpath(parent), name) if name else path


def is_mounted(mountpoint: str) -> bool:
    """Whether something is mounted on ``mountpoint`` (also true for a disconnected FUSE mount)."""
    path = _canonical(mountpoint)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            return any(
                len(fields := line.split(" ")) > 4 and _unescape_mountinfo(fields[4]) == path
                for line in f
            )
    except OSError:
        return os.path.ismount(path)


def check_mountpoint(mountpoint: str) -> str:
    """Validate a mount point; return its canonical path or raise a one-line FimfsError."""
    path = _canonical(mountpoint)
    disconnected = FimfsError(
        f"mount point {mountpoint} is a disconnected FUSE mount "
        f"(clean it up with: fim umount {mountpoint})"
    )
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FimfsError(f"mount point {mountpoint} does not exist") from None
    except OSError as e:
        if e.errno == errno.ENOTCONN:
            raise disconnected from None
        raise FimfsError(f"mount point {mountpoint}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise FimfsError(f"mount point {mountpoint} is not a directory")
    if is_mounted(path):
        try:
            os.statvfs(path)  # never answered from the kernel's cache, unlike stat
        except OSError as e:
            if e.errno == errno.ENOTCONN:
                raise disconnected from None
        raise FimfsError(f"mount point {mountpoint} is busy: something is already mounted there")
    return os.path.realpath(path)


def _check_fuse_available() -> None:
    if not os.path.exists("/dev/fuse"):
        raise FimfsError(
            "/dev/fuse is missing: load the fuse kernel module (modprobe fuse), "
            "or give the container the device (--device /dev/fuse)"
        )
    major = _libfuse_version()[0]
    if os.geteuid() == 0:
        if not os.access("/dev/fuse", os.R_OK | os.W_OK):
            raise FimfsError("/dev/fuse is not readable and writable")
        return
    helper = "fusermount3" if major == 3 else "fusermount"
    if not (shutil.which(helper) or os.path.exists(f"/usr/bin/{helper}")):
        raise FimfsError(f"{helper} is missing: install fuse3 (unprivileged mounts need it)")


# -- unmounting --------------------------------------------------------------------------


def _run_unmount(argv: list[str]) -> str | None:
    """Run an unmount helper: None on success, else its one-line reason."""
    try:
        res = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=30)
    except subprocess.TimeoutExpired:
        return "timed out"
    if res.returncode == 0:
        return None
    lines = [ln.strip() for ln in (res.stderr or res.stdout).splitlines() if ln.strip()]
    reason = lines[-1] if lines else f"{argv[0]} exited with {res.returncode}"
    # "fusermount3: failed to unmount /x: Device or resource busy" -> the last part.
    return reason.rsplit(": ", 1)[-1] if reason.startswith(argv[0]) else reason


def _detach(path: str, lazy: bool) -> None:
    """Unmount ``path`` with fusermount3, fusermount or (as root) umount."""
    flag = ["-z"] if lazy else []
    candidates = [["fusermount3", "-u", *flag], ["fusermount", "-u", *flag]]
    if os.geteuid() == 0:
        candidates.append(["umount", "-l"] if lazy else ["umount"])
    reason = "no fusermount3, fusermount or umount found"
    for argv in candidates:
        if shutil.which(argv[0]) is None:
            continue
        reason = _run_unmount([*argv, path] if argv[0] == "umount" else [*argv, "--", path])
        if reason is None:
            return
        if not is_mounted(path):  # gone after all (e.g. a racing unmount)
            return
    raise FimfsError(f"cannot unmount {path}: {reason}")


def umount(mountpoint: str, *, lazy: bool = False) -> None:
    """Unmount a FUSE mount; ``lazy`` detaches it even while files in it are still open.

    Also clears a disconnected mount (daemon gone, "Transport endpoint is not connected").
    """
    path = _canonical(mountpoint)
    if not is_mounted(path):
        raise FimfsError(f"{mountpoint} is not a mount point")
    _detach(path, lazy)


@contextlib.contextmanager
def _unmount_on_signals(path: str) -> Iterator[None]:
    """While serving, SIGINT/SIGTERM/SIGHUP detach the mount; a second one exits at once.

    The signals are blocked in this thread before libfuse starts its workers (which
    inherit the mask) and taken synchronously by a watcher thread. Only possible
    from the main thread; elsewhere the caller is in charge of unmounting.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    done = threading.Event()

    def watch() -> None:
        received = 0
        while True:
            sig = signal.sigwait(_SIGNALS)
            if done.is_set():
                return
            name = signal.Signals(sig).name
            received += 1
            if received > 1:
                log.warning("%s again: exiting without waiting for open files", name)
                os._exit(128 + sig)
            log.info("%s: unmounting %s", name, path)
            try:
                # Lazy: the mount point is released now; libfuse's loop ends once the
                # last open file in it is closed.
                _detach(path, lazy=True)
            except Exception as e:
                log.warning("%s", e)

    watcher = threading.Thread(target=watch, name="fim-fuse-signals", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        if watcher.ident is not None:
            signal.pthread_kill(watcher.ident, signal.SIGTERM)  # wakes sigwait
        watcher.join(5)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


# -- mounting ------------------------------------------------------------------------------


def _tune_readahead(path: str) -> None:
    """Raise the kernel read-ahead of a mount (best effort; needs root for sysfs)."""
    try:
        # Blocks until the kernel has processed the INIT reply, which would otherwise
        # clamp the value again.
        dev = os.stat(path).st_dev
        with open(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb", "w") as f:
            f.write(str(READ_AHEAD_KB))
    except OSError as e:
        log.debug("cannot raise read-ahead of %s: %s", path, e)


def _serve(
    fs: Filesystem, path: str, opts: dict[str, Any], on_ready: Callable[[], None] | None
) -> None:
    """Run libfuse in this thread until the mount goes away."""
    fuse_cls = _fuse_class()
    tune = "ro" in opts and os.geteuid() == 0

    def ready() -> None:
        if tune:
            threading.Thread(target=_tune_readahead, args=(path,), daemon=True).start()
        if on_ready is not None:
            on_ready()

    ops = FuseOperations(fs, ready)
    with _unmount_on_signals(path):
        try:
            fuse_cls(ops, path, foreground=True, encoding="utf-8", errors="surrogateescape", **opts)
        except RuntimeError as e:
            raise FimfsError(f"cannot mount on {path}: libfuse failed (code {e})") from None


def mount(
    fs: FilesystemSource,
    mountpoint: str,
    *,
    foreground: bool = True,
    fsname: str = "fim",
    options: Mapping[str, Any] | None = None,
    log_file: str | None = None,
) -> None:
    """Serve ``fs`` on ``mountpoint``, read-only unless ``fs.writable``.

    ``fs`` is a Filesystem or a zero-argument callable returning one. In background
    mode prefer the callable: it runs in the daemon after the fork, so threads and
    open files of the Filesystem belong to the process that serves it (a fork keeps
    only the calling thread, so e.g. a thread pool started before it is dead in the
    daemon). A ready Filesystem passed in background mode is served by the daemon's
    copy; the caller still owns (and should close) its own.

    Foreground: blocks until the mount is unmounted; SIGINT/SIGTERM/SIGHUP unmount
    cleanly when called from the main thread. Background: forks a detached daemon
    (new session, stdio on /dev/null, log messages to ``log_file`` if given) and
    returns once the mount answers; a failure of the daemon is raised here as a
    one-line FimfsError. A Filesystem made by the callable is closed by ``mount``
    after unmounting; one passed in is not.

    ``options`` override :func:`mount_options` (e.g. ``{"debug": True}``).

    The daemon is a fork: it also holds every file descriptor the caller had open, so
    a caller whose pipes must see EOF later should mount from a clean process (such
    as ``fim mount``).
    """
    path = check_mountpoint(mountpoint)
    _check_fuse_available()
    version = _libfuse_version()
    setup = _Setup(fs, path, fsname, options, version)
    if foreground:
        setup.run(None)
    else:
        _mount_background(setup, None if log_file is None else os.path.abspath(log_file))


class _Setup:
    """Everything needed to serve one mount, in this process or in the daemon."""

    def __init__(
        self,
        fs: FilesystemSource,
        path: str,
        fsname: str,
        options: Mapping[str, Any] | None,
        version: tuple[int, int],
    ) -> None:
        self.fs, self.path, self.fsname = fs, path, fsname
        self.options, self.version = options, version

    def run(self, on_ready: Callable[[], None] | None) -> None:
        owned = not isinstance(self.fs, Filesystem)
        filesystem = self.fs() if owned else self.fs  # type: ignore[operator]
        try:
            opts = mount_options(
                filesystem.writable,
                fsname=self.fsname,
                options=self.options,
                libfuse_version=self.version,
            )
            _serve(filesystem, self.path, opts, on_ready)
        finally:
            if owned:
                filesystem.close()


def _mount_background(setup: _Setup, log_file: str | None) -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()  # or the children would write the buffered text again
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.close(rfd)
            os.setsid()
            if os.fork() == 0:
                _daemon(setup, log_file, wfd)  # never returns
            # The daemon is re-parented to init: no zombie for the caller.
            os._exit(0)
        finally:
            os._exit(1)
    os.close(wfd)
    try:
        os.waitpid(pid, 0)
        status = _read_status(rfd)
    finally:
        os.close(rfd)
    if _READY in status:
        if not is_mounted(setup.path):
            raise FimfsError(f"the mount on {setup.path} went away right after starting")
        return
    lines = [ln.strip() for ln in status.decode("utf-8", "replace").splitlines() if ln.strip()]
    errors = [ln[len(_ERROR_PREFIX) :] for ln in lines if ln.startswith(_ERROR_PREFIX)]
    others = [ln for ln in lines if not ln.startswith(_ERROR_PREFIX)]
    if errors and others:
        # libfuse's own explanation (e.g. from fusermount3) says more than its exit code.
        raise FimfsError(f"{errors[-1]}: {others[-1]}")
    if errors or others:
        raise FimfsError((errors or others)[-1])
    raise FimfsError(f"cannot mount on {setup.path}: the mount daemon exited without a reason")


def _read_status(fd: int) -> bytes:
    """Collect the daemon's status until it says ready, closes the pipe, or times out."""
    deadline = time.monotonic() + READY_TIMEOUT
    data = b""
    while _READY not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            raise FimfsError(f"the mount did not come up within {READY_TIMEOUT:.0f} s")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return data


def _daemon(setup: _Setup, log_file: str | None, status_fd: int) -> None:  # pragma: no cover
    """Body of the background daemon (runs in the forked child). Never returns."""
    code = 1
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
        final_err = devnull
        if log_file is not None:
            final_err = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        # Until the mount is live, stderr (ours and libfuse's) goes to the caller.
        os.dup2(status_fd, 2)
        # The old stream objects are kept alive: collecting one would close its fd, whose
        # number may by then belong to something else (the image, /dev/fuse).
        _inherited_streams.extend((sys.stdout, sys.stderr))
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False, errors="replace")  # noqa: SIM115
        logging.basicConfig(
            stream=sys.stderr,
            level=logging.DEBUG if os.environ.get("FIM_DEBUG") == "1" else logging.WARNING,
            format="%(asctime)s fim-mount[%(process)d] %(levelname)s %(name)s: %(message)s",
            force=True,
        )
        ready_lock = threading.Lock()
        announced: list[bool] = []

        def on_ready() -> None:
            with ready_lock:
                if announced:
                    return
                announced.append(True)
                # Not earlier: the callable may have used paths relative to the caller's cwd.
                os.chdir("/")
                sys.stderr.flush()
                os.write(2, _READY)
                os.dup2(final_err, 2)  # from now on: the log file or /dev/null
                os.close(status_fd)

        try:
            setup.run(on_ready)
            code = 0
        except FimfsError as e:
            _report(str(e))
        except OSError as e:
            where = f"{os.fsdecode(e.filename)}: " if e.filename else ""
            _report(f"{where}{e.strerror or e}")
    except BaseException as e:
        _report(f"mount daemon failed: {type(e).__name__}: {e}")
        with contextlib.suppress(Exception):
            log.exception("mount daemon failed")
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(code)


_inherited_streams: list[Any] = []


def _report(message: str) -> None:  # pragma: no cover - runs in the forked daemon
    """Tell the waiting caller (or the log, once live) why the daemon failed."""
    with contextlib.suppress(OSError):
        os.write(2, f"{_ERROR_PREFIX}{message}\n".encode("utf-8", "replace"))

"""The libfuse/mfusepy binding layer: loading mfusepy (libfuse 3 preferred), the
patched ``mfusepy.FUSE`` subclass, and libfuse calls mfusepy does not wrap.

mfusepy is imported lazily, on the first mount, so importing :mod:`fimfs.fuse` never
fails on a machine without libfuse; any failure to load it becomes a one-line
:class:`FimfsError`. The subclass overrides private methods of mfusepy's
``FUSE`` (their names are in :data:`PATCHED`); pyproject pins mfusepy's major
version, and :func:`fuse_class` refuses to build if any of them is gone upstream,
rather than silently losing the fix.

libfuse 3 is preferred over libfuse 2 when both are installed: it negotiates 1 MiB
requests with the kernel and needs no ``big_writes``.
"""

from __future__ import annotations

import _thread
import ctypes
import ctypes.util
import errno
import functools
import logging
import os
import struct
import sys
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

from fim.fimfs.errors import FimfsError
from fim.fimfs.vfs import Attr

log = logging.getLogger("fim.fimfs.fuse")

#: How paths cross between libfuse and Python (mfusepy is given the same): names
#: that are not UTF-8 round-trip.
ENCODING, ERRORS = "utf-8", "surrogateescape"
_LIBFUSE3_SONAME = "libfuse3.so.3"  # what the dynamic loader finds without a search
# Special tv_nsec values libfuse passes to utimens (see utimensat(2)).
_UTIME_NOW = (1 << 30) - 1
_UTIME_OMIT = (1 << 30) - 2
_FUSE_READDIR_PLUS = 1  # libfuse 3: readdir flags bit, "the kernel asked for READDIRPLUS"
_FUSE_FILL_DIR_PLUS = 2  # libfuse 3: filler flag, "this entry carries full attributes"

#: The mfusepy names the overrides use; each must exist upstream.
_USED = ("FUSE", "c_stat", "c_timespec", "fuse_file_info", "fuse_version_major",
         "fuse_version_minor")


def path_invalidator() -> Callable[[str], None] | None:
    """libfuse's ``fuse_invalidate_path`` bound to this mount, or None (libfuse 2, < 3.1).

    Must be called inside a request (``init``): the ``struct fuse`` it needs is taken
    from the request context, whose first member it is.
    """
    if libfuse_version()[0] != 3:
        return None
    lib = ctypes.CDLL(os.environ.get("FUSE_LIBRARY_PATH") or _libfuse3())
    if not hasattr(lib, "fuse_invalidate_path"):
        return None
    lib.fuse_get_context.restype = ctypes.POINTER(ctypes.c_void_p)
    fuse_ptr = lib.fuse_get_context().contents.value
    lib.fuse_invalidate_path.argtypes = [ctypes.c_void_p, ctypes.c_char_p]

    def invalidate(path: str) -> None:
        lib.fuse_invalidate_path(fuse_ptr, os.fsencode(path))

    return invalidate


def direct_write(flags: int) -> bool:
    """Whether an open with these flags bypasses the kernel's page cache (FOPEN_DIRECT_IO).

    Write-only opens do: a write(2) through the page cache first asks the filesystem
    for ``security.capability`` (a GETXATTR round trip per write(2): the kernel can
    only skip it where the filesystem negotiated FUSE_HANDLE_KILLPRIV_V2, which
    libfuse 3.14 cannot), while a direct write sends the WRITE alone and leaves
    clearing set-ID bits and capabilities to the filesystem (the adapter does it at
    a handle's first write). A write-only descriptor can be neither read nor
    mapped, so the page cache serves it nothing; the kernel drops the cached pages a
    direct write overwrites, so other openers' reads stay coherent."""
    return flags & os.O_ACCMODE == os.O_WRONLY


def load_mfusepy() -> ModuleType:
    """Import mfusepy, preferring libfuse 3; any failure becomes a one-line FimfsError."""
    if "mfusepy" in sys.modules:
        return sys.modules["mfusepy"]
    env_set = False
    if "FUSE_LIBRARY_NAME" not in os.environ and "FUSE_LIBRARY_PATH" not in os.environ:
        # mfusepy looks for libfuse 2 first; this makes it take libfuse 3 when present.
        libfuse3 = _libfuse3()
        if libfuse3:
            os.environ["FUSE_LIBRARY_PATH"] = libfuse3
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
            del os.environ["FUSE_LIBRARY_PATH"]
    return mfusepy


@functools.cache
def _libfuse3() -> str | None:
    """libfuse 3 by its soname when the loader finds it (no ``ldconfig -p`` run, which
    ctypes.util.find_library costs every mount ~2 ms), else as find_library finds it."""
    try:
        ctypes.CDLL(_LIBFUSE3_SONAME)
        return _LIBFUSE3_SONAME
    except OSError:
        return ctypes.util.find_library("fuse3")


def _stat_packer(c_stat: Any, c_timespec: Any) -> Callable[[int, Attr], None]:
    """``fill(address, attr)``: write ``attr`` as the ``struct stat`` at ``address``.

    Every field libfuse passes on is set, the rest is zero; ``st_ino`` is ``a.ino + 1``
    (see :func:`fimfs.fuse.adapter.attr_to_stat`). The layout is read from mfusepy's
    ctypes definition for this machine (offsets, sizes and order differ between
    architectures) into one ``struct.Struct``: one pack and one copy per stat, where
    setting the ctypes fields one by one costs a few microseconds more."""
    places: list[tuple[int, int]] = []  # (offset, size) of each value fill packs
    for name in _STAT_FIELDS:
        field = getattr(c_stat, name)
        places.append((field.offset, field.size))
    for name in _STAT_TIMES:
        base = getattr(c_stat, name).offset
        for part in (c_timespec.tv_sec, c_timespec.tv_nsec):
            places.append((base + part.offset, part.size))
    order = sorted(range(len(places)), key=places.__getitem__)  # the values by offset
    fmt, pos = "=", 0
    for offset, size in map(places.__getitem__, order):
        fmt += "x" * (offset - pos) + _CODES[size]
        pos = offset + size
    packer = struct.Struct(fmt + "x" * (ctypes.sizeof(c_stat) - pos))
    pack, size, in_order = packer.pack, packer.size, order == sorted(order)

    def fill(address: int, a: Attr) -> None:
        values = (a.ino + 1, a.nlink, a.mode, a.uid, a.gid, a.rdev, a.size, a.blocks,
                  *divmod(a.atime_ns, _NS), *divmod(a.mtime_ns, _NS), *divmod(a.ctime_ns, _NS))
        packed = pack(*values) if in_order else pack(*map(values.__getitem__, order))
        ctypes.memmove(address, packed, size)

    return fill


#: The order of the values ``fill`` packs: these fields, then each time's sec and nsec.
_STAT_FIELDS = ("st_ino", "st_nlink", "st_mode", "st_uid", "st_gid", "st_rdev", "st_size",
                "st_blocks")
_STAT_TIMES = ("st_atimespec", "st_mtimespec", "st_ctimespec")
_CODES = {2: "H", 4: "I", 8: "q"}
_NS = 1_000_000_000


_PINNED: set[int] = set()
#: Pinned thread states stay until the process ends; libfuse (>= 3.12) keeps its workers,
#: but with -o max_idle_threads they come and go, so pinning stops at this many.
_MAX_PINNED = 64


def _pin_thread_state() -> None:
    """Keep this libfuse worker thread's Python thread state from one callback to the next.

    ctypes enters each callback with PyGILState_Ensure and leaves it with
    PyGILState_Release, which on a thread Python did not start creates and destroys a
    thread state (and its frame stack, an mmap) every time. One Ensure more that is never
    released keeps it alive (see _MAX_PINNED)."""
    ctypes.pythonapi.PyGILState_Ensure()
    _PINNED.add(_thread.get_ident())


def call(func: Callable[..., Any], *args: Any) -> int:
    """Run one FUSE callback: its result, or the negative errno libfuse replies with.

    An OSError with an errno is the answer (ENOENT, EROFS...); anything else is a bug
    of the layer, logged with the path and answered EIO (mfusepy would say EINVAL,
    which misleads callers into thinking they passed a bad argument). Every callback
    comes through here, so this is also where a libfuse worker thread gets its Python
    thread state pinned."""
    if _thread.get_ident() not in _PINNED and len(_PINNED) < _MAX_PINNED:
        _pin_thread_state()
    try:
        return func(*args) or 0
    except OSError as e:
        if type(e.errno) is int and e.errno > 0:
            return -e.errno
        log.error("fuse %s %r: OSError without errno: %s", _op(func), _path_of(args), e)
    except Exception:
        log.exception("fuse %s %r failed", _op(func), _path_of(args))
    return -errno.EIO


def _op(func: Callable[..., Any]) -> str:
    """The FUSE operation a callback serves, as a log line names it: mfusepy's
    ``getattr_fuse_3`` and ``fgetattr`` are both getattr."""
    name = func.__name__.split("_fuse_")[0]
    return "getattr" if name == "fgetattr" else name


def _path_of(args: tuple[Any, ...]) -> Any:
    """The path a callback was given (its first argument), for a log line."""
    first = args[0] if args else None
    return _decode(first) if isinstance(first, bytes) else first


def _address(data: Any) -> int:
    """The address of a span's buffer: a ctypes array, or a bytes object."""
    if isinstance(data, bytes):
        return ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0
    return ctypes.addressof(data)  # six times cheaper than a cast


def _decode(path: bytes | None) -> str | None:
    return None if path is None else path.decode(ENCODING, ERRORS)


class _Overrides:
    """The methods of ``mfusepy.FUSE`` that :func:`fuse_class` replaces (see there)."""

    operations: Any  # set by mfusepy.FUSE.__init__
    fill_stat: Callable[[int, Attr], None]  # the rest by fuse_class
    c_stat: Any
    has_noflush: bool  # libfuse >= 3.11

    _wrapper = staticmethod(call)

    def fgetattr(self, path: bytes | None, buf: Any, fip: Any) -> int:
        # Also behind libfuse 3's getattr.
        self.fill_stat(ctypes.addressof(buf.contents), self.operations.stat(_decode(path)))
        return 0

    def open(self, path: bytes, fip: Any) -> int:
        # The per-open flags mfusepy does not set. A reader has nothing to flush: with
        # noflush its close sends no FLUSH request, one synchronous round trip less per
        # file. A file of a read-only layer keeps its pages in the kernel's cache
        # (keep_cache), on a writable mount too.
        fi = fip.contents
        fi.fh = self.operations.open(_decode(path), fi.flags)
        if direct_write(fi.flags):
            fi.direct_io = 1
        elif fi.flags & os.O_ACCMODE == os.O_RDONLY:
            if self.has_noflush:
                fi.noflush = 1
            if self.operations.unchanging(fi.fh):
                fi.keep_cache = 1
        return 0

    def create(self, path: bytes, mode: int, fip: Any) -> int:
        # mfusepy inspects the operation's signature at every CREATE (~30 µs).
        fi = fip.contents
        fi.fh = self.operations.create(_decode(path), mode, fi.flags)
        if direct_write(fi.flags):
            fi.direct_io = 1
        return 0

    def read(self, path: bytes | None, buf: Any, size: int, offset: int, fip: Any) -> int:
        # The layer's spans copied straight into libfuse's buffer: no bytes object per
        # request (mfusepy copies a returned slice, which itself was a copy).
        spans = self.operations.read(_decode(path), size, offset, fip.contents.fh)
        base = ctypes.addressof(buf.contents)
        n = 0
        for data, start, stop in spans:
            if n + stop - start > size:
                raise RuntimeError(f"read returned more than the {size} bytes asked for")
            ctypes.memmove(base + n, data if start == 0 else _address(data) + start,
                           stop - start)
            n += stop - start
        return n

    def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
        # mfusepy drops the flags; ignoring RENAME_NOREPLACE would overwrite the target.
        return self.operations.rename(_decode(old), _decode(new), flags)

    def readdir_fuse_3(self, path: bytes | None, buf: Any, filler: Any, offset: int,
                       fip: Any, flags: int) -> int:
        # mfusepy lists names only and lets libfuse buffer them (its "list mode"):
        # READDIRPLUS then carries no attributes and the kernel sends one LOOKUP per
        # entry. libfuse makes nodes of entries with attributes only in its offset mode,
        # so offsets here are positions in the handle's snapshot.
        plus = bool(flags & _FUSE_READDIR_PLUS)
        entries = self.operations.listing(_decode(path), fip.contents.fh, offset, plus)
        st = self.c_stat()
        address = ctypes.addressof(st)
        for i in range(offset, len(entries)):
            name, attr = entries[i]
            encoded = name.encode(ENCODING, ERRORS)
            if attr is None:
                full = filler(buf, encoded, None, i + 1, 0)
            else:
                self.fill_stat(address, attr)
                full = filler(buf, encoded, st, i + 1, _FUSE_FILL_DIR_PLUS if plus else 0)
            if full:
                break
        return 0

    def truncate_fuse_3(self, path: bytes | None, length: int, fip: Any) -> int:
        # mfusepy drops the file handle of ftruncate(2).
        fh = fip.contents.fh if fip else None
        return self.operations.truncate(_decode(path), length, fh)

    def utimens_fuse_2(self, path: bytes | None, buf: Any) -> int:
        # mfusepy folds UTIME_NOW/UTIME_OMIT into plain numbers.
        times: tuple[int | None, int | None] | None = None
        if buf:
            now = time.time_ns()
            vals: list[int | None] = []
            for ts in (buf.contents.actime, buf.contents.modtime):
                if ts.tv_nsec == _UTIME_OMIT:
                    vals.append(None)
                elif ts.tv_nsec == _UTIME_NOW:
                    vals.append(now)
                else:
                    vals.append(ts.tv_sec * 1_000_000_000 + ts.tv_nsec)
            times = (vals[0], vals[1])
        return self.operations.utimens(_decode(path), times)


#: The methods of ``mfusepy.FUSE`` that :func:`fuse_class` overrides; each must exist
#: upstream (:func:`check_upstream`).
PATCHED = tuple(name for name, value in vars(_Overrides).items()
                if callable(value) and not name.startswith("__"))


@functools.cache
def fuse_class() -> type:
    """mfusepy.FUSE with its gaps filled: per-open flags (noflush, keep_cache), rename
    flags, ftruncate's handle, UTIME_NOW/OMIT, READDIRPLUS answered with full
    attributes; and the costs of its generic path gone from the frequent requests: one
    wrapper per callback (:func:`call`, which also pins the thread's state), a struct
    stat packed in one go, READ copied from the layer's spans into libfuse's buffer.

    Paths are decoded as :data:`ENCODING`. Built lazily because it needs mfusepy.
    """
    mfusepy = load_mfusepy()
    check_upstream(mfusepy)
    return type("_FUSE", (_Overrides, mfusepy.FUSE), {
        "fill_stat": staticmethod(_stat_packer(mfusepy.c_stat, mfusepy.c_timespec)),
        "c_stat": mfusepy.c_stat,
        "has_noflush": hasattr(mfusepy.fuse_file_info, "noflush"),
    })


def libfuse_version() -> tuple[int, int]:
    mfusepy = load_mfusepy()
    return int(mfusepy.fuse_version_major), int(mfusepy.fuse_version_minor)


def check_upstream(mfusepy: ModuleType) -> None:
    """Refuse an mfusepy whose ``FUSE`` no longer has a method :func:`fuse_class` patches
    (or a helper it uses): the override would be dead code and the fix silently lost."""
    missing = [name for name in _USED if not hasattr(mfusepy, name)]
    fuse = getattr(mfusepy, "FUSE", None)
    missing += [f"FUSE.{name}" for name in PATCHED if not callable(getattr(fuse, name, None))]
    if missing:
        version = getattr(mfusepy, "__version__", "?")
        raise FimfsError(
            f"mfusepy {version} is not supported (it lacks {', '.join(missing)}): "
            "install mfusepy>=3,<4"
        )

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
import functools
import os
import sys
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

from fimfs.errors import FimfsError
from fimfs.vfs import Attr

_LIBFUSE3_SONAME = "libfuse3.so.3"  # what the dynamic loader finds without a search
# Special tv_nsec values libfuse passes to utimens (see utimensat(2)).
_UTIME_NOW = (1 << 30) - 1
_UTIME_OMIT = (1 << 30) - 2
_FUSE_READDIR_PLUS = 1  # libfuse 3: readdir flags bit, "the kernel asked for READDIRPLUS"
_FUSE_FILL_DIR_PLUS = 2  # libfuse 3: filler flag, "this entry carries full attributes"

#: The methods of ``mfusepy.FUSE`` that :func:`fuse_class` overrides, and the mfusepy
#: helpers they use; each must exist upstream.
PATCHED = ("_wrapper", "open", "fgetattr", "read", "rename_fuse_3", "readdir_fuse_3",
           "truncate_fuse_3", "utimens_fuse_2")
_USED = ("FUSE", "c_stat", "fuse_version_major", "fuse_version_minor")


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


def fill_stat(st: Any, a: Attr) -> None:
    """Copy ``a`` into the ctypes ``struct stat`` ``st`` (every field libfuse passes on;
    ``st_ino`` is ``a.ino + 1``, see :func:`fimfs.fuse.adapter.attr_to_stat`). Direct
    assignments: mfusepy's dict-driven ``set_st_attrs`` costs a getattr per field."""
    st.st_mode, st.st_nlink, st.st_uid, st.st_gid = a.mode, a.nlink, a.uid, a.gid
    st.st_size, st.st_rdev, st.st_ino, st.st_blocks = a.size, a.rdev, a.ino + 1, a.blocks
    st.st_atimespec.tv_sec, st.st_atimespec.tv_nsec = divmod(a.atime_ns, 1_000_000_000)
    st.st_mtimespec.tv_sec, st.st_mtimespec.tv_nsec = divmod(a.mtime_ns, 1_000_000_000)
    st.st_ctimespec.tv_sec, st.st_ctimespec.tv_nsec = divmod(a.ctime_ns, 1_000_000_000)


def _fgetattr(self: Any, path: bytes | None, buf: Any, fip: Any) -> int:
    """``FUSE.fgetattr`` (also behind libfuse 3's getattr) with :func:`fill_stat`."""
    ctypes.memset(buf, 0, ctypes.sizeof(buf.contents))
    attr = self.operations.stat(None if path is None else path.decode(self.encoding,
                                                                       self.errors))
    fill_stat(buf.contents, attr)
    return 0


def _open_with_flags(self: Any, path: bytes, fip: Any) -> int:
    """``FUSE.open`` with the per-open flags mfusepy does not set. A reader has nothing to
    flush: with noflush (libfuse >= 3.11) its close sends no FLUSH request, one synchronous
    round trip less per file. A file of a read-only layer keeps its pages in the kernel's
    cache (keep_cache), on a writable mount too."""
    fi = fip.contents
    fi.fh = self.operations.open(path.decode(self.encoding, self.errors), fi.flags)
    if fi.flags & os.O_ACCMODE == os.O_RDONLY:
        if hasattr(fi, "noflush"):
            fi.noflush = 1
        if self.operations.unchanging(fi.fh):
            fi.keep_cache = 1
    return 0


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


def _read_into_reply(self: Any, path: bytes | None, buf: Any, size: int, offset: int,
                     fip: Any) -> int:
    """``FUSE.read`` that copies the layer's spans straight into libfuse's buffer: no
    bytes object per request (mfusepy copies a returned slice, which itself was a copy)."""
    spans = self.operations.read(
        None if path is None else path.decode(self.encoding, self.errors), size, offset,
        fip.contents.fh)
    base = _address(buf)
    n = 0
    for data, start, stop in spans:
        ctypes.memmove(base + n, data if start == 0 else _address(data) + start, stop - start)
        n += stop - start
    return n


def _address(obj: Any) -> int:
    """The address of a ctypes pointer's target, or of a bytes object's first byte."""
    return ctypes.cast(obj, ctypes.c_void_p).value or 0


def _pinning(upstream: Callable[..., Any]) -> Callable[..., Any]:
    """mfusepy's per-callback wrapper, first pinning the calling thread's state."""

    def _wrapper(self: Any, func: Any, *args: Any, **kwargs: Any) -> Any:
        if _thread.get_ident() not in _PINNED and len(_PINNED) < _MAX_PINNED:
            _pin_thread_state()
        return upstream(self, func, *args, **kwargs)

    return _wrapper


@functools.cache
def fuse_class() -> type:
    """mfusepy.FUSE with its gaps filled: per-open flags (noflush, keep_cache), rename
    flags, ftruncate's handle, UTIME_NOW/OMIT, READDIRPLUS answered with full
    attributes; and two costs per request gone: a thread state made and destroyed
    (:func:`_pin_thread_state`) and a bytes object per READ (:func:`_read_into_reply`).

    Built lazily because it needs mfusepy.
    """
    mfusepy = load_mfusepy()
    check_upstream(mfusepy)

    class _FUSE(mfusepy.FUSE):  # type: ignore[name-defined]  # loaded at run time
        open = _open_with_flags
        fgetattr = _fgetattr
        read = _read_into_reply

        _wrapper = _pinning(mfusepy.FUSE._wrapper)

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
                name, attr = entries[i]
                encoded = name.encode(self.encoding, self.errors)
                if attr is None:
                    full = filler(buf, encoded, None, i + 1, 0)
                else:
                    fill_stat(st, attr)
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
                vals: list[int | None] = []
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

    # PATCHED is what check_upstream verifies: it must name every override here.
    assert {n for n in vars(_FUSE) if not n.startswith("__")} == set(PATCHED)
    return _FUSE


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

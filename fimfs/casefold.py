"""A case-insensitive, case-preserving view over any Filesystem.

``CaseFold(inner)`` resolves every path component by component ignoring case, and
leaves names alone when it creates them: ``touch /READme.md`` makes ``READme.md``
(FlatImage's ciopfs lower-cases new names; fim does not), after which
``stat /readME.md`` finds it.

Matching rules:

* Two names match when their ``str.casefold()`` forms are equal: full Unicode case
  folding, locale independent, so ``Straße`` matches ``STRASSE``. No Unicode
  normalisation is applied (NFC and NFD spellings stay different names, as on
  most Linux filesystems and on NTFS).
* A name that is not valid UTF-8 (it reaches us surrogate-escaped, see
  :mod:`fimfs.vfs`) only matches itself, byte for byte: without a known encoding
  there is no case to fold. Such a name never matches a valid one either.
* Twins (several names in one directory that differ only in case, e.g.
  ``Makefile`` and ``makefile`` in a layer built on a case-sensitive host): a
  name typed with the exact case of one twin gets that twin; otherwise the
  byte-wise smallest twin wins (its UTF-8 encoding compares lowest, so
  ``Makefile`` before ``makefile``, ``STRASSE`` before ``Straße``). ``readdir``
  lists each case-insensitive name once, as that smallest twin; the others stay
  reachable by their exact names.

Creation (create, mkdir, mknod, symlink, link, and the destination of rename):
the parent is resolved ignoring case; if the final name exists ignoring case, the
existing entry is the target (``O_EXCL`` then fails with EEXIST, ``mkdir`` too,
and a rename replaces it under its real name); otherwise the entry gets exactly
the typed name. A rename whose destination is a case variant of the source's
own name in the same directory (``mv readme README``) changes the case of that
entry instead (a destination typed exactly as another twin still replaces it).

Through FUSE the kernel caches each spelling as a dentry of its own, so a writable
case-folding mount does not cache entries (``entry_timeout=0``, which
:func:`fimfs.fuse.mount_options` sets for a Filesystem that is ``case_insensitive``):
otherwise a name removed through one spelling would stay visible through another until
the timeout.

Cache and its assumption: the real names of each directory are read once and
kept as a map (folded name -> real name) in an LRU bounded by the number of
names; lookups use it and never rescan. It is dropped for every directory whose
namespace changes through this object. The inner filesystem must therefore be
changed only through this CaseFold, as it is in the fim stack. A name added
behind its back is still found by its exact case (unresolved components are
passed on as typed), just not case-insensitively until the directory is listed
again: ``readdir`` always reads the inner directory and refreshes the map.

Thread safety: the cache has its own lock, and a listing read while the same
directory is being changed is never stored. Namespace changes take a lock per
parent directory (striped), so two threads creating ``Foo`` and ``foo`` at
once cannot make twins.
"""

from __future__ import annotations

import contextlib
import errno
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple, TypeVar

from fim.fimfs.lru import SizedLRU
from fim.fimfs.paths import join, split_parent
from fim.fimfs.vfs import RENAME_NOREPLACE, Attr, Filesystem, Spans, fs_error, split_path
from fim.fimfs.wrapper import Wrapper

#: Upper bound of the directory cache, in names (a name costs roughly 200 bytes).
DEFAULT_CACHE_NAMES = 1 << 18
#: Locks that serialise namespace changes, chosen by the hash of the parent directory.
_STRIPES = 64
_T = TypeVar("_T")


def _fold(name: str) -> str:
    """The case-insensitive identity of a name: its casefold, or itself if not valid UTF-8."""
    if name.isascii():
        return name.lower()
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # surrogate-escaped bytes: compared exactly
        return name
    # A valid name never contains lone surrogates, so it cannot collide with the above.
    return name.casefold()


class _Dir(NamedTuple):
    """The names of one directory, indexed by their folded form."""

    chosen: dict[str, str]  # folded -> the real name it resolves to
    twins: dict[str, frozenset[str]]  # folded -> all real names, only where there are several
    listing: tuple[str, ...]  # the chosen names, in the inner filesystem's order

    @classmethod
    def build(cls, names: Iterable[str]) -> _Dir:
        chosen: dict[str, str] = {}
        twins: dict[str, set[str]] = {}
        keyed = [(_fold(n), n) for n in names]
        for key, name in keyed:
            current = chosen.get(key)
            if current is None:
                chosen[key] = name
                continue
            twins.setdefault(key, {current}).add(name)
            # Valid UTF-8 orders like its code points, so str order is byte order here.
            if name < current:
                chosen[key] = name
        listing = tuple(n for k, n in keyed if chosen[k] is n)
        return cls(chosen, {k: frozenset(v) for k, v in twins.items()}, listing)

    def size(self) -> int:
        return len(self.chosen) + sum(map(len, self.twins.values())) + 1

    def match(self, name: str) -> str | None:
        """The real name ``name`` resolves to here, or None."""
        key = _fold(name)
        found = self.chosen.get(key)
        if found is None or found == name:
            return found
        group = self.twins.get(key)
        return name if group is not None and name in group else found


class CaseFold(Wrapper):
    """``inner`` seen case-insensitively; new names keep the case they were given.

    Every method that takes a path is overridden (see :mod:`fimfs.wrapper`); the rest,
    and the capability flags but ``case_insensitive``, are the inner filesystem's.
    """

    case_insensitive = True
    #: Listed through this view's own readdir and getattr (the inner one lists twins).
    readdir_attrs = Filesystem.readdir_attrs

    def __init__(self, inner: Filesystem, cache_names: int = DEFAULT_CACHE_NAMES) -> None:
        super().__init__(inner)
        self._lock = threading.Lock()
        self._cache: SizedLRU[str, _Dir] = SizedLRU(maxsize=cache_names, getsizeof=_Dir.size)
        # Directories being listed right now, each with the token of its latest reader;
        # forgetting a directory drops its token, so a listing that may predate the
        # change is not stored.
        self._loading: dict[str, object] = {}
        self._stripes = tuple(threading.Lock() for _ in range(_STRIPES))

    # -- the directory cache ------------------------------------------------------------
    def _load(self, real: str) -> _Dir:
        """List ``real`` in the inner filesystem and cache the result (OSError if it cannot)."""
        token = object()
        with self._lock:
            self._loading[real] = token
        try:
            entry = _Dir.build(tuple(self.inner.readdir(real)))
        finally:
            with self._lock:
                current = self._loading.get(real) is token
                if current:
                    del self._loading[real]
        if current:
            with self._lock, contextlib.suppress(ValueError):  # larger than the whole cache
                self._cache[real] = entry
        return entry

    def _dir(self, real: str) -> _Dir | None:
        """The cached names of directory ``real``; None if it cannot be listed."""
        with self._lock:
            entry = self._cache.get(real)
        if entry is not None:
            return entry
        try:
            return self._load(real)
        except OSError:
            return None

    def _forget(self, paths: Iterable[str], tree: str | None = None) -> None:
        """Drop the maps of ``paths`` and of every directory below ``tree``."""
        with self._lock:
            for path in paths:
                self._cache.pop(path, None)
                self._loading.pop(path, None)
            if tree is not None:
                prefix = tree + "/"
                for store in (self._cache, self._loading):
                    for key in [k for k in store if k.startswith(prefix)]:
                        del store[key]

    # -- resolution ---------------------------------------------------------------------
    def _child(self, parent: str, name: str) -> str:
        """The real path of ``name`` in the real directory ``parent``, or the typed name."""
        entry = self._dir(parent)
        found = entry.match(name) if entry is not None else None
        return join(parent, found or name)

    def _walk(self, parts: list[str]) -> str:
        """The real path of ``parts``; from the first component not found on, as typed.

        Passing the rest on unchanged lets the inner filesystem report the error it
        would report for that path (ENOENT, ENOTDIR, ...).
        """
        real = "/"
        for i, name in enumerate(parts):
            entry = self._dir(real)
            found = entry.match(name) if entry is not None else None
            if found is None:
                return "/".join([real.rstrip("/"), *parts[i:]])
            real = join(real, found)
        return real

    def _resolve(self, path: str) -> str:
        return self._walk(split_path(path))

    def _resolve_fh(self, path: str | None) -> str | None:
        # Calls that carry a file handle may come without a path (e.g. ftruncate via FUSE).
        # The vfs types those paths as str, hence the `type: ignore[arg-type]` where the
        # result is passed on: the inner layer then goes by the handle.
        return None if path is None else self._resolve(path)

    def _parent(self, path: str) -> tuple[str, str]:
        """The real parent of ``path`` and its typed final name ("/" is its own parent)."""
        parts = split_path(path)
        if not parts:
            return "/", ""
        return self._walk(parts[:-1]), parts[-1]

    @contextlib.contextmanager
    def _locked(self, *dirs: str) -> Iterator[None]:
        """Hold the namespace locks of ``dirs`` (in index order: no deadlock)."""
        with contextlib.ExitStack() as stack:
            for i in sorted({hash(d) % _STRIPES for d in dirs}):
                stack.enter_context(self._stripes[i])
            yield

    def _target(self, parent: str, name: str) -> str:
        """The real path a creation of ``name`` in ``parent`` acts on (caller holds the lock)."""
        return self._child(parent, name) if name else parent

    def _exists(self, real: str) -> bool:
        try:
            self.inner.getattr(real)
        except (FileNotFoundError, NotADirectoryError):
            return False
        return True

    # -- read side ----------------------------------------------------------------------
    def getattr(self, path: str) -> Attr:
        return self.inner.getattr(self._resolve(path))

    def readdir(self, path: str) -> list[str]:
        """The chosen name of each case-insensitive group; re-reads the inner directory."""
        return list(self._load(self._resolve(path)).listing)

    def readlink(self, path: str) -> str:
        return self.inner.readlink(self._resolve(path))

    def open(self, path: str, flags: int) -> int:
        return self.inner.open(self._resolve(path), flags)

    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        return self.inner.read(self._resolve_fh(path), size, offset, fh)  # type: ignore[arg-type]

    def read_spans(self, path: str | None, size: int, offset: int, fh: int) -> Spans:
        return self.inner.read_spans(self._resolve_fh(path), size, offset, fh)  # type: ignore[arg-type]

    def release(self, path: str | None, fh: int) -> None:
        self.inner.release(self._resolve_fh(path), fh)  # type: ignore[arg-type]

    def getxattr(self, path: str, name: str) -> bytes:
        return self.inner.getxattr(self._resolve(path), name)

    def listxattr(self, path: str) -> list[str]:
        return self.inner.listxattr(self._resolve(path))

    # -- write side: data and metadata --------------------------------------------------
    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        return self.inner.write(self._resolve_fh(path), data, offset, fh)  # type: ignore[arg-type]

    def truncate(self, path: str | None, length: int, fh: int | None = None) -> None:
        self.inner.truncate(self._resolve_fh(path), length, fh)  # type: ignore[arg-type]

    def flush(self, path: str | None, fh: int) -> None:
        self.inner.flush(self._resolve_fh(path), fh)  # type: ignore[arg-type]

    def fsync(self, path: str | None, datasync: bool, fh: int) -> None:
        self.inner.fsync(self._resolve_fh(path), datasync, fh)  # type: ignore[arg-type]

    def chmod(self, path: str, mode: int) -> None:
        self.inner.chmod(self._resolve(path), mode)

    def chown(self, path: str, uid: int, gid: int) -> None:
        self.inner.chown(self._resolve(path), uid, gid)

    def utimens(self, path: str, atime_ns: int, mtime_ns: int) -> None:
        self.inner.utimens(self._resolve(path), atime_ns, mtime_ns)

    def setxattr(self, path: str, name: str, value: bytes, flags: int) -> None:
        self.inner.setxattr(self._resolve(path), name, value, flags)

    def removexattr(self, path: str, name: str) -> None:
        self.inner.removexattr(self._resolve(path), name)

    # -- write side: namespace ----------------------------------------------------------
    def _in_parent(self, path: str, change: Callable[[str], _T], *, adds: bool = False) -> _T:
        """Apply ``change`` to the real path a namespace change of ``path`` acts on,
        under its parent's lock, and forget the cached names it may have changed (a
        successful addition is recorded in them instead: :meth:`_added`)."""
        parent, name = self._parent(path)
        with self._locked(parent):
            real = self._target(parent, name)
            try:
                result = change(real)
            except BaseException:
                self._forget((parent, real))
                raise
            if adds:
                self._added(parent, real)
            else:
                self._forget((parent, real))
            return result

    def _added(self, parent: str, real: str) -> None:
        """Record the new entry ``real`` in the cached names of ``parent``. Forgetting
        them made every create in a directory relist it: quadratic (10,000 files took
        minutes). A name folding like one already there forgets them (twins)."""
        name = split_parent(real)[1]
        key = _fold(name)
        with self._lock:
            for store in (self._cache, self._loading):
                store.pop(real, None)
            self._loading.pop(parent, None)  # a listing in flight may predate the entry
            entry = self._cache.get(parent)
            if entry is None:
                return
            if key in entry.chosen:
                self._cache.pop(parent, None)
                return
            # in place: a reader holding this map sees a name that now exists
            entry.chosen[key] = name
            try:
                self._cache[parent] = entry._replace(listing=(*entry.listing, name))
            except ValueError:  # larger than the whole cache
                self._cache.pop(parent, None)

    def create(self, path: str, mode: int, flags: int) -> int:
        return self._in_parent(path, lambda real: self.inner.create(real, mode, flags),
                               adds=True)

    def mkdir(self, path: str, mode: int) -> None:
        self._in_parent(path, lambda real: self.inner.mkdir(real, mode), adds=True)

    def mknod(self, path: str, mode: int, rdev: int) -> None:
        self._in_parent(path, lambda real: self.inner.mknod(real, mode, rdev), adds=True)

    def symlink(self, target: str, path: str) -> None:
        """``target`` is the link's content, stored as given (it is resolved when followed)."""
        self._in_parent(path, lambda real: self.inner.symlink(target, real), adds=True)

    def link(self, existing: str, path: str) -> None:
        source = self._resolve(existing)
        self._in_parent(path, lambda real: self.inner.link(source, real), adds=True)

    def unlink(self, path: str) -> None:
        self._in_parent(path, self.inner.unlink)

    def rmdir(self, path: str) -> None:
        self._in_parent(path, self.inner.rmdir)

    def rename(self, old: str, new: str, flags: int = 0) -> None:
        """``RENAME_NOREPLACE`` refuses any existing entry matching ``new`` ignoring case,
        the source itself included (``mv -n readme README`` is EEXIST, as the kernel's
        own lookup of ``README`` makes it through FUSE)."""
        if flags & ~RENAME_NOREPLACE:
            raise fs_error(errno.EINVAL, old)
        old_parent, old_name = self._parent(old)
        new_parent, new_name = self._parent(new)
        with self._locked(old_parent, new_parent):
            source = self._target(old_parent, old_name)
            target = self._target(new_parent, new_name)
            if flags and self._exists(target):
                raise fs_error(errno.EEXIST, new)
            if (
                new_name
                and target != join(new_parent, new_name)  # not an exact-case match
                and new_parent == old_parent
                and _fold(new_name) == _fold(split_parent(source)[1])
            ):
                target = join(new_parent, new_name)  # a case change of the source itself
            try:
                moves_dir = self.inner.getattr(source).is_dir
            except OSError:
                moves_dir = False  # the rename below reports why
            try:
                # NOREPLACE was checked above under the namespace lock, which every
                # change of the inner names takes (see "Cache and its assumption").
                self.inner.rename(source, target)
            finally:
                self._forget(
                    (old_parent, new_parent, source, target), source if moves_dir else None
                )

    # -- the rest -----------------------------------------------------------------------
    def close(self) -> None:
        """Close the inner filesystem and drop the cache."""
        self.inner.close()
        with self._lock:
            self._cache.clear()
            self._loading.clear()

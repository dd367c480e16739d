"""Restoring a tree of a Filesystem into a host directory (`fim extract`, the extraction cache).

Safety: the image is untrusted. Every name is validated before use, every entry is
created relative to a directory fd of a directory this run created itself (so no
symlink, neither from the image nor planted, is ever followed), creation is
exclusive (an existing entry at a target is an error, never overwritten), and
directories stay 0700 until their children are done.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fim.app.errors import FimError
from fim.fimfs.paths import join

if TYPE_CHECKING:
    from fim.fimfs.vfs import Attr, Filesystem

_HOLE_GRAIN = 64 << 10  # zero runs of this size (aligned) become holes in the output
_ZEROS = bytes(_HOLE_GRAIN)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1


def read_chunks(fs: Filesystem, path: str, size: int) -> Iterator[bytes]:
    """The ``size`` bytes of the regular file ``path``, in reads of up to 1 MiB
    (:func:`fimfs.paths.read_chunks`).

    A read error or data that ends early is a FimError naming ``path``.
    """
    from fim.fimfs import paths

    try:
        fh = fs.open(path, os.O_RDONLY)
    except OSError as exc:
        raise FimError(f"{path}: {exc.strerror or exc}") from exc
    try:
        offset = 0
        try:
            for data in paths.read_chunks(fs, path, fh, size):
                offset += len(data)
                yield data
        except OSError as exc:
            raise FimError(f"{path}: read error: {exc.strerror or exc}") from exc
        if offset < size:
            raise FimError(f"{path}: data ends at byte {offset} of {size}")
    finally:
        fs.release(path, fh)


@dataclass
class ExtractStats:
    """What an extraction created; ``skipped`` lists entries it could not create."""

    dirs: int = 0
    files: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    specials: int = 0
    bytes: int = 0
    skipped: list[str] = field(default_factory=list)


@dataclass
class _Dir:
    """A directory being filled: its open fd in the output and its source."""

    fd: int
    src: str
    rel: str
    attr: Attr
    names: Iterator[str]


def check_name(name: object, directory: str) -> str:
    """``name`` if it is a safe single path component, else a FimError."""
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\0" in name:
        raise FimError(f"{directory}: unsafe name {name!r} in the image, refusing to extract")
    return name


class _Extractor:
    def __init__(
        self,
        fs: Filesystem,
        dest: str,
        owners: bool,
        warn: Callable[[str], None],
        progress: Callable[[int], object],
    ) -> None:
        self.fs = fs
        self.dest = dest
        self.owners = owners
        self.warn = warn
        self.progress = progress
        self.stats = ExtractStats()
        self.root_fd = -1
        # Names of one inode become hard links. Keyed by the whole Attr, not just the inode
        # number: in the v2.2 metadata layout (DwarFS < 0.5) the names of one inode carry
        # their own times, and then each name keeps its times as a separate file.
        self.links: dict[Attr, str] = {}  # -> output path (relative to DIR) of the first name
        self.seen_dirs: set[int] = set()

    # -- walking -----------------------------------------------------------------

    def run(self, src: str, attr: Attr) -> ExtractStats:
        os.makedirs(self.dest, mode=0o700, exist_ok=True)
        self.root_fd = os.open(self.dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        root = _Dir(self.root_fd, src, "", attr, iter(()))
        stack = [root]
        try:
            if not stat.S_ISDIR(attr.mode):  # a single entry: DIR is its parent
                name = check_name(src.rsplit("/", 1)[-1], src)
                root.src = src[: -len(name)]
                self._entry(root, name)
                return self.stats
            self.seen_dirs.add(attr.ino)
            root.names = self._names(src)
            while stack:
                top = stack[-1]
                following = next(top.names, None)
                if following is None:
                    self._finish_dir(top)
                    os.close(stack.pop().fd)
                    continue
                child = self._entry(top, following)
                if child is not None:
                    stack.append(child)
            return self.stats
        finally:
            for frame in stack:
                os.close(frame.fd)

    def _names(self, src: str) -> Iterator[str]:
        try:
            names = list(self.fs.readdir(src))
        except OSError as exc:
            raise FimError(f"{src}: {exc.strerror or exc}") from exc
        return iter([check_name(n, src) for n in names])

    def _entry(self, parent: _Dir, name: str) -> _Dir | None:
        """Create one entry of ``parent``; returns the new frame for a directory."""
        src = join(parent.src, name)
        rel = f"{parent.rel}/{name}" if parent.rel else name
        try:
            attr = self.fs.getattr(src)
        except OSError as exc:
            raise FimError(f"{src}: {exc.strerror or exc}") from exc
        kind = stat.S_IFMT(attr.mode)
        try:
            if kind == stat.S_IFDIR:
                return self._mkdir(parent, name, src, rel, attr)
            if attr.nlink > 1 and attr in self.links:
                os.link(
                    self.links[attr],
                    name,
                    src_dir_fd=self.root_fd,
                    dst_dir_fd=parent.fd,
                    follow_symlinks=False,
                )
                self.stats.hardlinks += 1
                return None
            if kind == stat.S_IFREG:
                self._file(parent, name, src, attr)
            elif kind == stat.S_IFLNK:
                self._symlink(parent, name, src, attr)
            elif kind in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK):
                if not self._special(parent, name, attr):
                    self.stats.skipped.append(rel)
                    return None
            else:
                self.warn(f"{src}: unknown file type {kind:#o}, skipped")
                self.stats.skipped.append(rel)
                return None
        except OSError as exc:
            raise FimError(f"{os.path.join(self.dest, rel)}: {exc.strerror or exc}") from exc
        if attr.nlink > 1:
            self.links.setdefault(attr, rel)
        return None

    # -- one entry per type ------------------------------------------------------

    def _mkdir(self, parent: _Dir, name: str, src: str, rel: str, attr: Attr) -> _Dir:
        if attr.ino in self.seen_dirs:
            raise FimError(f"{src}: directory loop in the image, refusing to extract")
        self.seen_dirs.add(attr.ino)
        os.mkdir(name, 0o700, dir_fd=parent.fd)
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent.fd)
        self.stats.dirs += 1
        try:
            return _Dir(fd, src, rel, attr, self._names(src))
        except BaseException:
            os.close(fd)
            raise

    def _finish_dir(self, d: _Dir) -> None:
        """Owner, mode and times of a directory, once its children exist."""
        try:
            if self.owners:
                os.fchown(d.fd, d.attr.uid, d.attr.gid)
            os.fchmod(d.fd, self._mode(d.attr))
            os.utime(d.fd, ns=(d.attr.atime_ns, d.attr.mtime_ns))
        except OSError as exc:
            where = os.path.join(self.dest, d.rel) if d.rel else self.dest
            raise FimError(f"{where}: {exc.strerror or exc}") from exc

    def _file(self, parent: _Dir, name: str, src: str, attr: Attr) -> None:
        fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=parent.fd)
        try:
            offset = 0
            for data in read_chunks(self.fs, src, attr.size):
                _write_sparse(fd, data, offset)
                offset += len(data)
                self.progress(len(data))
            os.ftruncate(fd, attr.size)  # also makes a trailing hole
            if self.owners:
                os.fchown(fd, attr.uid, attr.gid)
            os.fchmod(fd, self._mode(attr))  # after chown, which clears suid/sgid
            os.utime(fd, ns=(attr.atime_ns, attr.mtime_ns))
        finally:
            os.close(fd)
        self.stats.files += 1
        self.stats.bytes += attr.size

    def _symlink(self, parent: _Dir, name: str, src: str, attr: Attr) -> None:
        try:
            target = self.fs.readlink(src)
        except OSError as exc:
            raise FimError(f"{src}: {exc.strerror or exc}") from exc
        if "\0" in target:
            raise FimError(f"{src}: symlink target contains a NUL byte, refusing to extract")
        os.symlink(target, name, dir_fd=parent.fd)
        self._set_meta_by_name(parent, name, attr, chmod=False)
        self.stats.symlinks += 1

    def _special(self, parent: _Dir, name: str, attr: Attr) -> bool:
        """A device, fifo or socket; False (with a warning) if it cannot be created."""
        kind = stat.S_IFMT(attr.mode)
        where = os.path.join(self.dest, parent.rel, name)
        if kind == stat.S_IFSOCK:
            if not _make_socket(parent.fd, name):
                self.warn(f"{where}: cannot create a socket with this name here, skipped")
                return False
        else:
            rdev = attr.rdev if kind in (stat.S_IFCHR, stat.S_IFBLK) else 0
            try:
                os.mknod(name, kind | 0o600, rdev, dir_fd=parent.fd)
            except PermissionError:
                if self.owners:
                    raise
                self.warn(f"{where}: creating devices needs root, skipped")
                return False
        self._set_meta_by_name(parent, name, attr, chmod=True)
        self.stats.specials += 1
        return True

    def _mode(self, attr: Attr) -> int:
        """The permission bits to restore. Without the stored owners (a normal user) the
        files become the extractor's, so set-user-ID and set-group-ID are dropped, and the
        sticky bit of anything but a directory (GNU tar drops them for normal users too):
        an image must not hand out programs that run with its user's rights."""
        mode = stat.S_IMODE(attr.mode)
        if self.owners:
            return mode
        mode &= ~(stat.S_ISUID | stat.S_ISGID)
        return mode if stat.S_ISDIR(attr.mode) else mode & ~stat.S_ISVTX

    def _set_meta_by_name(self, parent: _Dir, name: str, attr: Attr, chmod: bool) -> None:
        """Owner, mode and times of a just-created non-regular entry of ``parent``.

        ``chmod`` follows a symlink (Linux has no lchmod), which is safe here: the
        entry was created by this run inside a 0700 directory of this run.
        """
        if self.owners:
            os.chown(name, attr.uid, attr.gid, dir_fd=parent.fd, follow_symlinks=False)
        if chmod:
            os.chmod(name, self._mode(attr), dir_fd=parent.fd)
        os.utime(name, ns=(attr.atime_ns, attr.mtime_ns), dir_fd=parent.fd, follow_symlinks=False)


def _write_sparse(fd: int, data: bytes, offset: int) -> None:
    """Write ``data`` at ``offset``, leaving aligned all-zero runs unwritten (holes)."""
    size = len(data)
    if data == _ZEROS[:size]:
        return
    start = None  # beginning of the pending non-zero run
    for i in range(0, size + _HOLE_GRAIN, _HOLE_GRAIN):
        end = min(i + _HOLE_GRAIN, size)
        is_data = i < size and data[i:end] != _ZEROS[: end - i]
        if is_data and start is None:
            start = i
        elif not is_data and start is not None:
            view = memoryview(data)[start : min(i, size)]
            pos = offset + start
            while view:
                written = os.pwrite(fd, view, pos)
                view, pos = view[written:], pos + written
            start = None


def _make_socket(dir_fd: int, name: str) -> bool:
    """Create a unix socket file ``name`` in ``dir_fd`` by binding through /proc."""
    import socket

    path = os.fsencode(f"/proc/self/fd/{dir_fd}/{name}")
    if len(path) > _SUN_PATH_MAX:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.bind(path)
    except FileNotFoundError:  # no /proc
        return False
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:  # what bind says when the name is taken
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST)) from exc
        raise
    return True


def total_bytes(fs: Filesystem, src: str, attr: Attr) -> int:
    """Bytes of regular files under ``src`` (each inode once), for the progress bar."""
    total, seen, pending = 0, set(), [(src, attr)]
    while pending:
        path, a = pending.pop()
        if a.ino in seen:
            continue
        seen.add(a.ino)
        if stat.S_ISREG(a.mode):
            total += a.size
        elif stat.S_ISDIR(a.mode):
            children = [join(path, check_name(n, path)) for n in fs.readdir(path)]
            pending.extend((p, fs.getattr(p)) for p in children)
    return total


def extract_tree(
    fs: Filesystem,
    dest: str,
    path: str = "/",
    owners: bool | None = None,
    warn: Callable[[str], None] | None = None,
    progress: Callable[[int], object] | None = None,
) -> ExtractStats:
    """Restore ``path`` of ``fs`` into the directory ``dest``.

    A directory's contents go into ``dest`` (which gets its mode, owner and times);
    anything else becomes ``dest/<its name>``. ``owners`` (default: when running as
    root) restores uid/gid; without it, set-user-ID and set-group-ID bits are dropped.
    ``progress`` is called with each number of bytes written.
    """
    try:
        attr = fs.getattr(path)
    except OSError as exc:
        raise FimError(f"{path}: {exc.strerror or exc}") from exc
    if owners is None:
        owners = os.geteuid() == 0
    extractor = _Extractor(
        fs,
        dest,
        owners,
        warn or (lambda message: print(f"fim: warning: {message}", file=sys.stderr)),
        progress or (lambda n: None),
    )
    return extractor.run(path, attr)

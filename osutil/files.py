"""Files written whole or not at all (a temporary file renamed over them); trees
removed without crossing into a mount."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@contextlib.contextmanager
def replacing(path: str, tmp: str | None = None) -> Iterator[str]:
    """A temporary path to write ``path``'s new content to; renamed over ``path`` when
    the block ends normally, removed when it raises.

    ``tmp``: the temporary name (default: hidden beside ``path``, unique to the call).
    """
    if tmp is None:
        directory, name = os.path.split(os.path.abspath(path))
        tmp = os.path.join(directory, f".{name}.{os.urandom(4).hex()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_atomic(path: str, data: bytes) -> None:
    """Write ``path`` whole: readers see the old content or the new, never a part."""
    with replacing(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def remove_tree(path: str) -> None:
    """``rm -rf --one-file-system PATH``, errors ignored: what can be removed is.

    A directory on another filesystem than ``path`` (a mount point: a run's FUSE mount,
    still up or hung) is left in place with its parents, never entered: removing an
    instance or runtime directory must not delete a container's files through its mount.
    Directories without owner rwx get it first (a container may leave 0500 ones).
    """
    try:
        top = os.lstat(path)
    except OSError:
        return
    if not stat.S_ISDIR(top.st_mode):
        with contextlib.suppress(OSError):
            os.unlink(path)
        return
    try:
        fd = _open_dir(path, None, top)
    except OSError:
        return
    try:
        _clear(fd, top.st_dev)
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        os.rmdir(path)


def _open_dir(name: str, dir_fd: int | None, st: os.stat_result) -> int:
    if st.st_mode & 0o700 != 0o700:
        with contextlib.suppress(OSError):
            os.chmod(name, stat.S_IMODE(st.st_mode) | 0o700, dir_fd=dir_fd,
                     follow_symlinks=False)
    return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


def _clear(dir_fd: int, dev: int) -> None:
    """Remove what directory ``dir_fd`` holds on device ``dev``."""
    for entry in os.scandir(dir_fd):
        try:
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                os.unlink(entry.name, dir_fd=dir_fd)
                continue
            if st.st_dev != dev:
                continue  # a mount point
            fd = _open_dir(entry.name, dir_fd, st)
            try:
                _clear(fd, dev)
            finally:
                os.close(fd)
            os.rmdir(entry.name, dir_fd=dir_fd)
        except OSError:
            continue

"""Layers extracted into a per-user cache, for hosts where FUSE cannot be used (no
usable /dev/fuse): the run then stacks the extracted trees with bwrap's kernel overlay,
as AppImage and uruntime extract and run.

``$XDG_CACHE_HOME/fim/extract/<digest>/`` (``~/.cache`` by default) holds one layer's
tree; ``<digest>`` is the XXH3-128 of the layer's bytes, so every copy of an image, and
every image with that layer, shares it. A layer is extracted once, into a temporary
directory renamed into place when complete, under an exclusive lock on
``<digest>.lock``; a run holds a shared lock on each layer it uses until it ends, so
two runs at once extract once and the cache is never pruned under a running one.
The cache is bounded (:data:`LIMIT` bytes of extracted files, FIM_EXTRACT_CACHE_MB):
before extracting, the least recently used trees that no run holds are removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys

from fim.osutil.files import remove_tree  # extracted directories may deny their owner

TYPE_CHECKING = False  # not typing's: importing typing slows every start-up
if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    from fim.app.image import Layer

#: Default bound of the cache, in bytes of extracted files.
LIMIT = 8 << 30
_HASH_CHUNK = 4 << 20


def directory(environ: Mapping[str, str]) -> str:
    """The cache directory of this user."""
    base = environ.get("XDG_CACHE_HOME") or os.path.join(
        environ.get("HOME") or os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fim", "extract")


def limit(environ: Mapping[str, str]) -> int:
    """The bound of the cache in bytes (FIM_EXTRACT_CACHE_MB, else :data:`LIMIT`)."""
    value = environ.get("FIM_EXTRACT_CACHE_MB", "")
    return int(value) << 20 if value.isdigit() else LIMIT


def digest(path: str, offset: int, size: int) -> str:
    """The XXH3-128 of ``size`` bytes of ``path`` (a file or a URL) at ``offset``: a
    layer's identity."""
    import xxhash

    h = xxhash.xxh3_128()
    for chunk in _chunks(path, offset, size):
        h.update(chunk)
    return h.hexdigest()


def _chunks(path: str, offset: int, size: int) -> Iterator[bytes]:
    from fim.app.image import is_url, remote_read

    done = 0
    with contextlib.nullcontext() if is_url(path) else open(path, "rb") as f:
        while done < size:
            want = min(_HASH_CHUNK, size - done)
            if f is None:  # a layer given as a URL: through the per-user block cache
                chunk = remote_read(path, offset + done, want)
            else:
                f.seek(offset + done)
                chunk = f.read(want)
            if not chunk:
                raise OSError(f"{path}: the layer at {offset} ends early")
            yield chunk
            done += len(chunk)


class Held:
    """The extracted trees of a run's layers (bottom first), locked until :meth:`close`."""

    def __init__(self, dirs: list[str], fds: list[int]) -> None:
        self.dirs = dirs
        self._fds = fds

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []


def acquire(layers: Sequence[Layer], environ: Mapping[str, str]) -> Held:
    """The extracted tree of each layer, extracting what the cache lacks; the trees stay
    locked (shared) until the returned value is closed."""
    cache = directory(environ)
    os.makedirs(cache, mode=0o700, exist_ok=True)
    dirs: list[str] = []
    fds: list[int] = []
    try:
        for layer in layers:
            path, offset, size = layer.path, layer.offset, layer.size
            key = digest(path, offset, size)
            fd = os.open(os.path.join(cache, f"{key}.lock"),
                         os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fds.append(fd)
            tree = os.path.join(cache, key)
            fcntl.flock(fd, fcntl.LOCK_SH)
            if not os.path.isdir(tree):
                fcntl.flock(fd, fcntl.LOCK_EX)  # one run extracts, the others wait
                if not os.path.isdir(tree):
                    _prune(cache, limit(environ) - size, keep=key)
                    _extract(path, offset, size, tree)
                fcntl.flock(fd, fcntl.LOCK_SH)
            os.utime(os.path.join(cache, f"{key}.lock"))  # the last use, for pruning
            dirs.append(tree)
    except BaseException:
        Held([], fds).close()
        raise
    return Held(dirs, fds)


def _extract(path: str, offset: int, size: int, tree: str) -> None:
    """Extract the layer into ``tree`` through a temporary directory (nothing half
    written is ever used); progress on a terminal."""
    from contextlib import closing

    from fim.app.extract import extract_tree
    from fim.fimfs.dwarfs import DwarfsImage

    cache, key = os.path.split(tree)
    for name in os.listdir(cache):  # of killed runs: the caller holds the key's lock
        if name.startswith(f"{key}.partial."):
            remove_tree(os.path.join(cache, name))
    partial = f"{tree}.partial.{os.getpid()}"
    try:
        with closing(DwarfsImage.from_path(path, offset=offset, size=size)) as fs:
            if sys.stderr.isatty():
                from tqdm import tqdm

                with tqdm(total=None, unit="B", unit_scale=True, unit_divisor=1024,
                          leave=False, desc="extracting") as bar:
                    stats = extract_tree(fs, partial, owners=False, warn=_ignore,
                                         progress=bar.update)
            else:
                stats = extract_tree(fs, partial, owners=False, warn=_ignore)
        with open(f"{partial}.size", "w", encoding="ascii") as f:
            f.write(str(stats.bytes))
        os.rename(f"{partial}.size", f"{tree}.size")
        os.rename(partial, tree)
    except BaseException:
        remove_tree(partial)
        raise


def _ignore(_message: str) -> None:
    """Entries a normal user cannot create (devices) are left out of the tree."""


def _prune(cache: str, room: int, keep: str) -> None:
    """Remove least recently used trees no run holds until the others fit in ``room``."""
    entries = []
    for name in os.listdir(cache):
        if name.endswith(".lock") and name[:-5] != keep:
            key = name[:-5]
            try:
                with open(os.path.join(cache, f"{key}.size"), encoding="ascii") as f:
                    used = int(f.read())
                when = os.stat(os.path.join(cache, name)).st_mtime
            except (OSError, ValueError):
                continue
            entries.append((when, key, used))
    total = sum(used for _, _, used in entries)
    for _, key, used in sorted(entries):
        if total <= room:
            return
        fd = os.open(os.path.join(cache, f"{key}.lock"), os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # in use by a run
        try:
            remove_tree(os.path.join(cache, key))
            os.unlink(os.path.join(cache, f"{key}.size"))
            total -= used
        finally:
            os.close(fd)

"""Path resolution of a Union (fimfs.union): which layers provide a path, and the
caches behind it.

Lower layers never change, so their directory listings (and what they say about
whiteouts and opacity: fimfs.whiteout) are cached, and so is the resolution of each
path; a resolution racing an invalidation is not cached (a generation counter). Inode
numbers are assigned per (layer, inode of that layer). Every method here only reads
the layers; the changes are the union's (fimfs.copyup.CopyUp, fimfs.union.Union), which
invalidate what they change with :meth:`UnionResolver._forget`.
"""

from __future__ import annotations

import errno
import stat
import threading
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from . import whiteout as wh
from .paths import join, split_parent
from .vfs import Attr, Filesystem, fs_error, split_path

#: Bounds of the caches (entries); a full cache is simply emptied.
_NODES_MAX = 1 << 17
_LOWER_DIRS_MAX = 1 << 14
#: Index of the upper layer in the union's layers (when the union has one).
UPPER = 0


class Node(NamedTuple):
    """How a path resolves: which layers provide it."""

    layer: int  # the topmost layer that has it
    dirs: tuple[int, ...]  # a directory: the layers merged, top first; () for others
    attr: Attr | None  # a lower entry's attributes as shown (they never change); None: upper
    ino: int  # the union inode number of a lower entry; -1 for the upper


#: Sentinels: what _probe returns for a whiteout; a path not in the resolution cache.
_WHITEOUT = Attr(stat.S_IFCHR, 0, 0, 0, 0, 0, 0, 0)
_MISS = Node(-2, (), None, -2)


def shown_attr(a: Attr, dirs: tuple[int, ...], ino: int) -> Attr:
    """A layer's attributes as the union shows them: its inode number, and nlink 1 for
    a directory merged from several layers (``dirs``), as overlayfs."""
    nlink = 1 if len(dirs) > 1 else a.nlink
    return Attr(a.mode, nlink, a.uid, a.gid, a.size, a.atime_ns, a.mtime_ns, a.ctime_ns,
                a.rdev, ino, a.blocks)


class _LowerDir:
    """What a lower layer's directory holds (cached: lower layers never change): its
    names as a set, and in the layer's order (a union lists them in that order, so a
    program going through the tree reads each layer's files in the order its own
    read-ahead expects)."""

    __slots__ = ("names", "order", "opaque", "listing")

    def __init__(self, order: tuple[str, ...], opaque: bool) -> None:
        self.order = order
        self.names = frozenset(order)
        self.opaque = opaque
        # (names shown, names whited out), computed on the first readdir
        self.listing: tuple[tuple[str, ...], frozenset[str]] | None = None


class UnionResolver(Filesystem):
    """The layers of a union (``lowers[0]`` the topmost lower) and how a path resolves
    through them; the state every part of the union shares is made here."""

    def __init__(self, upper: Filesystem | None, lowers: Sequence[Filesystem]) -> None:
        if upper is None and not lowers:
            raise ValueError("a union needs at least one layer")
        if upper is not None and not upper.writable:
            raise ValueError("the upper layer of a union must be writable")
        self.upper = upper
        self.lowers = tuple(lowers)
        self._layers: list[Filesystem] = ([upper] if upper is not None else []) + list(lowers)
        self._n = len(self._layers)
        # The upper, if any, is _layers[UPPER]; the lowers follow from _first_lower on.
        # Without one, _upper is the base Filesystem, whose every call fails.
        self._upper: Filesystem = upper if upper is not None else Filesystem()
        self._first_lower = 0 if upper is None else 1
        self._lock = threading.RLock()
        self._cache_lock = threading.Lock()
        self._nodes: dict[str, Node | None] = {}
        self._gen = 0  # bumped by every invalidation; a resolution racing one is not cached
        self._lower_dirs: dict[tuple[int, str], _LowerDir] = {}
        self._ino_lock = threading.Lock()
        self._inos: dict[tuple[int, int], int] = {(0, self._layers[0].getattr("/").ino): 0}
        self._next_ino = 1

    # -- resolution ------------------------------------------------------------------
    def _ino_for(self, layer: int, ino: int) -> int:
        key = (layer, ino)
        n = self._inos.get(key)
        if n is None:
            with self._ino_lock:
                n = self._inos.get(key)
                if n is None:
                    n = self._inos[key] = self._next_ino
                    self._next_ino += 1
        return n

    def _lower_dir(self, i: int, path: str) -> _LowerDir:
        d = self._lower_dirs.get((i, path))
        if d is None:
            layer = self._layers[i]
            names = tuple(layer.readdir(path))
            d = _LowerDir(names, wh.OPAQUE_MARKER in names or wh.xattr_opaque(layer, path))
            if len(self._lower_dirs) >= _LOWER_DIRS_MAX:
                self._lower_dirs.clear()
            self._lower_dirs[(i, path)] = d
        return d

    def _upper_attr(self, path: str) -> Attr | None:
        """The upper's entry at ``path`` (whiteouts included), None if there is none."""
        try:
            return self._upper.getattr(path)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _opaque(self, i: int, path: str) -> bool:
        if i >= self._first_lower:
            return self._lower_dir(i, path).opaque
        return (self._upper_attr(join(path, wh.OPAQUE_MARKER)) is not None
                or wh.xattr_opaque(self._layers[i], path))

    def _probe(self, i: int, path: str, parent: str, name: str) -> Attr | None:
        """Layer ``i``'s entry at ``path``: its Attr, _WHITEOUT, or None."""
        if i < self._first_lower:
            a = self._upper_attr(path)
            if a is None:
                marker = self._upper_attr(join(parent, wh.PREFIX + name))
                return None if marker is None else _WHITEOUT
        else:
            d = self._lower_dir(i, parent)
            if name not in d.names:
                return _WHITEOUT if wh.PREFIX + name in d.names else None
            a = self._layers[i].getattr(path)
        return _WHITEOUT if wh.is_whiteout(a) else a

    def _node_from(self, hits: list[tuple[int, Attr]]) -> Node | None:
        if not hits:
            return None
        top, attr = hits[0]
        dirs = tuple(i for i, _ in hits) if attr.is_dir else ()
        if top < self._first_lower:
            return Node(top, dirs, None, -1)
        ino = self._ino_for(top, attr.ino)
        return Node(top, dirs, shown_attr(attr, dirs, ino), ino)

    def _resolve_root(self) -> Node:
        hits = []
        for i, layer in enumerate(self._layers):
            hits.append((i, layer.getattr("/")))
            if self._opaque(i, "/"):
                break
        node = self._node_from(hits)
        assert node is not None
        return node

    def _resolve(self, parent: Node, path: str, parent_path: str, name: str) -> Node | None:
        if name.startswith(wh.PREFIX):
            return None
        hits: list[tuple[int, Attr]] = []
        for i in parent.dirs:
            r = self._probe(i, path, parent_path, name)
            if r is None:
                continue
            if r is _WHITEOUT or (hits and not r.is_dir):
                break  # a lower non-directory ends the merge of a directory
            hits.append((i, r))
            if not r.is_dir or self._opaque(i, path):
                break
        return self._node_from(hits)

    def _store(self, nodes: dict[str, Node | None], gen: int) -> None:
        """Cache resolutions made since ``gen`` (unless something changed meanwhile)."""
        with self._cache_lock:
            if self._gen == gen:
                if len(self._nodes) + len(nodes) > _NODES_MAX:
                    self._nodes.clear()
                self._nodes.update(nodes)

    def _forget(self, *paths: str) -> None:
        """Invalidate the resolution of ``paths``; call after changing what they resolve to."""
        with self._cache_lock:
            self._gen += 1
            for p in paths:
                self._nodes.pop(p, None)

    def _forget_all(self) -> None:
        with self._cache_lock:
            self._gen += 1
            self._nodes.clear()

    def _lookup(self, path: str) -> tuple[Node | None, str]:
        """The resolution of ``path`` (None: no such entry) and its canonical form.

        Raises ENOENT or ENOTDIR when a parent is missing or not a directory.
        """
        node = self._nodes.get(path, _MISS)
        if node is not _MISS:
            return node, path
        parts = split_path(path)
        gen = self._gen
        cur = "/"
        node = self._nodes.get(cur, _MISS)
        if node is _MISS:
            node = self._resolve_root()
            self._store({cur: node}, gen)
        for name in parts:
            if node is None:
                raise fs_error(errno.ENOENT, path)
            if not node.dirs:
                raise fs_error(errno.ENOTDIR, path)
            child = join(cur, name)
            found = self._nodes.get(child, _MISS)
            if found is _MISS:
                found = self._resolve(node, child, cur, name)
                self._store({child: found}, gen)
            cur, node = child, found
        return node, cur

    def _existing(self, path: str) -> tuple[Node, str]:
        node, path = self._lookup(path)
        if node is None:
            raise fs_error(errno.ENOENT, path)
        return node, path

    def _free_name(self, path: str) -> str:
        """Check that a new entry may be made at ``path``; its canonical form."""
        node, path = self._lookup(path)
        if node is not None:
            raise fs_error(errno.EEXIST, path)
        if split_parent(path)[1].startswith(wh.PREFIX):
            raise fs_error(errno.EPERM, path)
        return path

    def _lower_has(self, path: str) -> bool:
        """Whether the lowers show an entry at ``path`` (which then needs hiding)."""
        parent_path, name = split_parent(path)
        parent, _ = self._lookup(parent_path)
        for i in parent.dirs if parent is not None else ():
            if i >= self._first_lower:
                r = self._probe(i, path, parent_path, name)
                if r is not None:
                    return r is not _WHITEOUT
        return False


    def _listing(self, i: int, path: str) -> tuple[tuple[str, ...], frozenset[str]]:
        """Layer ``i``'s directory at ``path``: (names shown, names it whites out)."""
        if i >= self._first_lower:
            d = self._lower_dir(i, path)
            if d.listing is None:
                d.listing = self._classify(self._layers[i], path, d.order)
            return d.listing
        upper = self._layers[i]
        return self._classify(upper, path, upper.readdir(path))

    @staticmethod
    def _classify(layer: Filesystem, path: str,
                  names: Iterable[str]) -> tuple[tuple[str, ...], frozenset[str]]:
        shown: list[str] = []
        hidden: set[str] = set()
        for name in names:
            if name.startswith(wh.PREFIX):
                if name != wh.OPAQUE_MARKER:
                    hidden.add(name[len(wh.PREFIX):])
                continue
            try:
                a = layer.getattr(join(path, name))
            except FileNotFoundError:
                continue  # removed while listing
            if wh.is_whiteout(a):
                hidden.add(name)
            else:
                shown.append(name)
        return tuple(shown), frozenset(hidden)

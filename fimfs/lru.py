"""SizedLRU: a mapping bounded by the total size of its values, least recently used
evicted first (the reader's block cache, the case-folding view's directory maps).

Not thread-safe: its users hold their own lock around every call. ``get`` is two C
calls on an OrderedDict, where cachetools' LRUCache (used before) runs four Python
frames: it is on the path of every READ.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class SizedLRU(Generic[K, V]):
    def __init__(self, maxsize: int, getsizeof: Callable[[V], int]) -> None:
        self.maxsize = maxsize
        self.currsize = 0
        self._getsizeof = getsizeof
        self._data: OrderedDict[K, V] = OrderedDict()
        self._sizes: dict[K, int] = {}

    def get(self, key: K, default: V | None = None) -> V | None:
        """The value of ``key`` (now the most recently used), or ``default``."""
        try:
            self._data.move_to_end(key)
        except KeyError:
            return default
        return self._data[key]

    def __getitem__(self, key: K) -> V:
        self._data.move_to_end(key)
        return self._data[key]

    def __setitem__(self, key: K, value: V) -> None:
        """Store ``value``, evicting the least recently used values until it fits;
        ValueError (nothing changed) if it is larger than the whole cache."""
        size = self._getsizeof(value)
        if size > self.maxsize:
            raise ValueError(f"a value of {size} bytes exceeds the cache's {self.maxsize}")
        self.pop(key, None)
        while self.currsize + size > self.maxsize:
            old, _ = self._data.popitem(last=False)
            self.currsize -= self._sizes.pop(old)
        self._data[key] = value
        self._sizes[key] = size
        self.currsize += size

    def pop(self, key: K, default: V | None = None) -> V | None:
        if key not in self._data:
            return default
        self.currsize -= self._sizes.pop(key)
        return self._data.pop(key)

    def __delitem__(self, key: K) -> None:
        if key not in self._data:
            raise KeyError(key)
        self.pop(key)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._data))

    def values(self) -> list[V]:
        return list(self._data.values())

    def clear(self) -> None:
        self._data.clear()
        self._sizes.clear()
        self.currsize = 0

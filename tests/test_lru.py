"""SizedLRU, the size-bounded cache of the reader's blocks and casefold's directories."""

import pytest

from fim.fimfs.lru import SizedLRU


def test_evicts_least_recently_used_until_the_new_value_fits() -> None:
    c: SizedLRU[str, bytes] = SizedLRU(10, len)
    c["a"], c["b"], c["c"] = b"xxx", b"yyy", b"zzz"
    assert c.get("a") == b"xxx"  # "a" is now the most recent: "b" goes first
    c["d"] = b"1234"
    assert list(c) == ["c", "a", "d"] and c.currsize == 10
    c["e"] = b"123456789"
    assert list(c) == ["e"] and c.currsize == 9


def test_a_value_larger_than_the_cache_is_refused_and_nothing_changes() -> None:
    c: SizedLRU[int, bytes] = SizedLRU(4, len)
    c[1] = b"ab"
    with pytest.raises(ValueError):
        c[2] = b"abcde"
    assert list(c) == [1] and c.currsize == 2


def test_replace_pop_delete_and_clear_keep_the_size_right() -> None:
    c: SizedLRU[str, bytes] = SizedLRU(100, len)
    c["a"] = b"12345"
    c["a"] = b"12"
    assert c.currsize == 2 and c["a"] == b"12" and "a" in c and len(c) == 1
    assert c.pop("a") == b"12" and c.pop("a", b"-") == b"-" and c.currsize == 0
    c["b"] = b"123"
    del c["b"]
    with pytest.raises(KeyError):
        del c["b"]
    assert c.get("b") is None and c.currsize == 0
    c["c"] = b"1"
    c.clear()
    assert len(c) == 0 and c.currsize == 0 and c.values() == []

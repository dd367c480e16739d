"""fim.fimfs.remote against real servers on loopback: nginx (ranges, ETag), Python's
http.server (no ranges), a server that cuts bodies, one that stops mid-run."""

from __future__ import annotations

import errno
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fim.fimfs import remote
from fim.fimfs.dwarfs import DwarfsImage
from fim.fimfs.remote import CHUNK, Cache, RemoteError, RemoteFile
from fim.fimfs.vfs import NO_HANDLE
from tests.http_servers import CuttingServer, Nginx, PlainServer
from tests.images import fim


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remote, "BACKOFF", 0.01)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Nginx, Path]]:
    """nginx serving a directory with ``layer.dwarfs``: a few MB of incompressible files
    in several blocks (-S 18), plus small text files."""
    d = tmp_path_factory.mktemp("served")
    tree = d / "tree"
    rng = random.Random(25)
    for i in range(6):
        (tree / "data").mkdir(parents=True, exist_ok=True)
        (tree / "data" / f"blob{i}").write_bytes(rng.randbytes(300_000 + i * 1000))
    (tree / "etc").mkdir()
    (tree / "etc" / "os-release").write_text("NAME=remote\n")
    www = d / "www"
    www.mkdir()
    fim("create", str(tree), str(www / "layer.dwarfs"), "-S", "18")
    server = Nginx(www, d / "nginx")
    yield server, tree
    server.stop()


@pytest.fixture
def cache(tmp_path: Path) -> Cache:
    return Cache(str(tmp_path / "cache"))


def test_reads_equal_the_file_and_come_from_the_cache_the_second_time(
        served: tuple[Nginx, Path], cache: Cache) -> None:
    server, _ = served
    local = (server.root / "layer.dwarfs").read_bytes()
    url = f"{server.url}/layer.dwarfs"
    f = RemoteFile(url, cache)
    assert f.size == len(local)
    rng = random.Random(1)
    for _ in range(50):
        off = rng.randrange(len(local))
        n = rng.randrange(1, 3 * CHUNK)
        assert f.read_upto(off, n) == local[off:off + n]
    with pytest.raises(Exception, match="truncated"):
        f.pread(len(local) - 2, 4)
    before = server.bytes_sent()
    again = RemoteFile(url, cache)
    rng = random.Random(1)
    for _ in range(50):
        off = rng.randrange(len(local))
        n = rng.randrange(1, 3 * CHUNK)
        assert again.read_upto(off, n) == local[off:off + n]
    assert server.bytes_sent() - before == 1  # the probe's one byte, nothing else


def test_dwarfs_image_from_a_url_reads_what_it_needs(served: tuple[Nginx, Path],
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    server, tree = served
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    size = (server.root / "layer.dwarfs").stat().st_size
    before = server.bytes_sent()
    with DwarfsImage.from_path(f"{server.url}/layer.dwarfs") as img:
        assert sorted(img.readdir("/data")) == sorted(os.listdir(tree / "data"))
        assert img.read("/etc/os-release", 100, 0, NO_HANDLE) == b"NAME=remote\n"
    fetched = server.bytes_sent() - before
    assert fetched < size / 2, (fetched, size)
    assert (tmp_path / "xdg" / "fim" / "remote" / "files").is_dir()
    with DwarfsImage.from_path(f"{server.url}/layer.dwarfs") as img:
        blob = img.read("/data/blob3", 1 << 20, 0, NO_HANDLE)
    assert blob == (tree / "data" / "blob3").read_bytes()


def test_a_small_read_fetches_part_of_a_large_block(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A zstd block is fetched only as far as decoding goes (BlockCache._start_partial)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    data = random.Random(3).randbytes(3 << 20).hex().encode()  # compresses about 2:1
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "big").write_bytes(data)
    www = tmp_path / "www"
    www.mkdir()
    fim("create", str(tmp_path / "tree"), str(www / "big.dwarfs"))  # one 16 MiB block
    server = Nginx(www, tmp_path / "nginx")
    try:
        with DwarfsImage.from_path(f"{server.url}/big.dwarfs") as img:
            assert img.read("/big", 4096, 0, NO_HANDLE) == data[:4096]
            assert server.bytes_sent() < 1 << 20
            assert img.read("/big", 4096, 5 << 20, NO_HANDLE) == data[5 << 20:(5 << 20) + 4096]
            assert server.bytes_sent() < 3 << 20
            assert img.read("/big", 7 << 20, 0, NO_HANDLE) == data
    finally:
        server.stop()


def test_a_changed_file_is_never_mixed_with_the_old_one(tmp_path: Path, cache: Cache) -> None:
    www = tmp_path / "www"
    www.mkdir()
    old, new = os.urandom(5 * CHUNK), os.urandom(5 * CHUNK)
    (www / "f").write_bytes(old)
    server = Nginx(www, tmp_path / "nginx")
    try:
        url = f"{server.url}/f"
        first = RemoteFile(url, cache)
        assert first.read_upto(0, CHUNK) == old[:CHUNK]
        (www / "f.new").write_bytes(new)
        os.utime(www / "f.new", (1, 1))  # another ETag (nginx: mtime and size)
        os.replace(www / "f.new", www / "f")
        with pytest.raises(OSError) as info:
            first.read_upto(2 * CHUNK, 10)  # not cached: the server has another file now
        assert info.value.errno == errno.EIO
        second = RemoteFile(url, cache)
        assert second.read_upto(0, 5 * CHUNK) == new
    finally:
        server.stop()


def test_offline_reads_what_was_cached_and_fails_the_rest_with_eio(
        tmp_path: Path, cache: Cache) -> None:
    www = tmp_path / "www"
    www.mkdir()
    data = os.urandom(4 * CHUNK)
    (www / "f").write_bytes(data)
    server = Nginx(www, tmp_path / "nginx")
    url = f"{server.url}/f"
    RemoteFile(url, cache).read_upto(0, CHUNK)
    server.stop()
    start = time.monotonic()
    f = RemoteFile(url, cache)
    assert f.offline
    assert f.read_upto(0, CHUNK) == data[:CHUNK]
    with pytest.raises(OSError) as info:
        f.read_upto(3 * CHUNK, 1)
    assert info.value.errno == errno.EIO
    assert time.monotonic() - start < 10


def test_server_stopping_mid_run_gives_eio_in_bounded_time(tmp_path: Path,
                                                           cache: Cache) -> None:
    www = tmp_path / "www"
    www.mkdir()
    data = os.urandom(4 * CHUNK)
    (www / "f").write_bytes(data)
    server = Nginx(www, tmp_path / "nginx")
    f = RemoteFile(f"{server.url}/f", cache)
    assert f.read_upto(0, 10) == data[:10]
    server.stop()
    start = time.monotonic()
    with pytest.raises(OSError) as info:
        f.read_upto(2 * CHUNK, 10)
    assert info.value.errno == errno.EIO
    assert "cannot connect" in str(info.value)
    assert time.monotonic() - start < 15


def test_not_found_is_one_line(served: tuple[Nginx, Path], cache: Cache) -> None:
    server, _ = served
    with pytest.raises(RemoteError, match=r"^HTTP 404 Not Found$"):
        RemoteFile(f"{server.url}/missing.dwarfs", cache)


def test_a_tls_error_is_one_line(tmp_path: Path, cache: Cache) -> None:
    www = tmp_path / "www"
    www.mkdir()
    (www / "f").write_bytes(b"x" * 100)
    server = Nginx(www, tmp_path / "nginx", tls=True)
    try:
        start = time.monotonic()
        with pytest.raises(RemoteError) as info:
            RemoteFile(f"{server.url}/f", cache)
        message = str(info.value)
        assert message.startswith("TLS error: ") and "certificate verify failed" in message
        assert "\n" not in message
        assert time.monotonic() - start < 10
    finally:
        server.stop()


def test_server_without_ranges_is_downloaded_whole(tmp_path: Path, cache: Cache) -> None:
    www = tmp_path / "www"
    www.mkdir()
    data = os.urandom(3 * CHUNK + 123)
    (www / "f").write_bytes(data)
    server = PlainServer(www)
    try:
        f = RemoteFile(f"{server.url}/f", cache)
        assert f.fetched == len(data)
        assert f.read_upto(CHUNK - 5, 2 * CHUNK) == data[CHUNK - 5:3 * CHUNK - 5]
        assert f.fetch_range(10, 3 * CHUNK) == data[10:3 * CHUNK]  # from the cache
        again = RemoteFile(f"{server.url}/f", cache)
        assert again.fetched == 0  # downloaded before: not again
        assert again.read_upto(0, len(data)) == data
        small = Cache(str(tmp_path / "small"), limit=2 * CHUNK)
        with pytest.raises(RemoteError, match="does not support range requests and the "
                                              "file .* is larger than half the cache"):
            RemoteFile(f"{server.url}/f", small)
    finally:
        server.stop()


def test_a_truncated_whole_download_is_one_line_and_not_cached(cache: Cache) -> None:
    """A server without ranges that closes the connection mid-body: one error line, and
    the next run downloads the file again (no part of the cut one is taken as whole)."""
    data = os.urandom(4 * CHUNK)
    server = CuttingServer(data, cuts=1, ranges=False)
    try:
        with pytest.raises(RemoteError) as info:
            RemoteFile(server.url, cache)
        assert "\n" not in str(info.value)
        assert "connection lost" in str(info.value) or "truncated" in str(info.value)
        f = RemoteFile(server.url, cache)
        assert f.fetched == len(data)
        assert f.read_upto(0, len(data)) == data
    finally:
        server.stop()


def test_a_cut_body_is_retried_then_fails_with_eio(cache: Cache,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    data = os.urandom(3 * CHUNK)
    server = CuttingServer(data, cuts=1)
    try:
        f = RemoteFile(server.url, cache)
        assert f.read_upto(0, 3 * CHUNK) == data  # cut once, then whole
    finally:
        server.stop()
    server = CuttingServer(data, cuts=-1)
    try:
        f = RemoteFile(server.url, Cache(cache.directory + "2"))
        start = time.monotonic()
        with pytest.raises(OSError) as info:
            f.read_upto(0, 2 * CHUNK)
        assert info.value.errno == errno.EIO
        assert "connection lost" in str(info.value)
        assert server.requests == 1 + remote.ATTEMPTS
        failed = [r for r in caplog.records if r.name == "fim.fimfs.remote"]
        assert len(failed) == 1 and "read failed" in failed[0].getMessage(), failed
        assert time.monotonic() - start < 10
    finally:
        server.stop()


def test_the_cache_stays_within_its_bound(tmp_path: Path) -> None:
    www = tmp_path / "www"
    www.mkdir()
    data = os.urandom(64 * CHUNK)
    (www / "f").write_bytes(data)
    server = Nginx(www, tmp_path / "nginx")
    try:
        small = Cache(str(tmp_path / "cache"), limit=16 * CHUNK)
        f = RemoteFile(f"{server.url}/f", small)
        for i in range(64):
            assert f.read_upto(i * CHUNK, CHUNK) == data[i * CHUNK:(i + 1) * CHUNK]
        small.trim()
        total = sum(p.stat().st_size for p in (tmp_path / "cache" / "files").rglob("*")
                    if p.is_file())
        assert total <= 16 * CHUNK
    finally:
        server.stop()


_READER = """
import random, sys
from fim.fimfs.remote import Cache, RemoteFile
url, cache, seed = sys.argv[1:]
f = RemoteFile(url, Cache(cache))
rng = random.Random(int(seed))
out = []
for _ in range(200):
    off = rng.randrange(f.size)
    out.append(f"{off} {f.read_upto(off, 1000).hex()}")
print("\\n".join(out))
"""


def test_two_processes_share_the_cache(served: tuple[Nginx, Path], tmp_path: Path) -> None:
    server, _ = served
    local = (server.root / "layer.dwarfs").read_bytes()
    url = f"{server.url}/layer.dwarfs"
    procs = [subprocess.Popen([sys.executable, "-c", _READER, url, str(tmp_path / "c"), "7"],
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        for line in out.splitlines():
            off, hexdata = line.split()
            assert bytes.fromhex(hexdata) == local[int(off):int(off) + 1000]


@pytest.mark.parametrize(("value", "elements"), [
    ("/a:/b", ["/a", "/b"]),
    ("/a:https://h:8080/b.layer:/c", ["/a", "https://h:8080/b.layer", "/c"]),
    ("http://h/x.layer:https://g:1/y", ["http://h/x.layer", "https://g:1/y"]),
    ("http://h/a:5/b", ["http://h/a", "5/b"]),  # a colon in a path is a separator
])
def test_fim_layers_keeps_the_colons_of_urls(value: str, elements: list[str]) -> None:
    from fim.app.layers import split_list

    assert split_list(value) == elements


def test_an_unusable_cache_directory_only_costs_the_caching(served: tuple[Nginx, Path],
                                                            tmp_path: Path) -> None:
    server, _ = served
    (tmp_path / "file").write_text("not a directory")
    local = (server.root / "layer.dwarfs").read_bytes()
    f = RemoteFile(f"{server.url}/layer.dwarfs", Cache(str(tmp_path / "file" / "cache")))
    assert f.read_upto(1000, 100_000) == local[1000:101_000]


def test_threads_reading_one_part_fetch_it_once(served: tuple[Nginx, Path],
                                                cache: Cache) -> None:
    """Readers of a chunk another thread is fetching wait for its bytes; later ones
    find it in the cache."""
    from concurrent.futures import ThreadPoolExecutor

    server, _ = served
    local = (server.root / "layer.dwarfs").read_bytes()
    f = RemoteFile(f"{server.url}/layer.dwarfs", cache)
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda _: f.read_upto(3 * CHUNK, 4 * CHUNK), range(16)))
    assert got == [local[3 * CHUNK:7 * CHUNK]] * 16
    # once; twice if a thread missed the cache just before the fetcher stored the chunks
    assert f.fetched <= 2 * 4 * CHUNK

"""The read path of a DwarFS layer (issue 13): handles that are inode numbers, the
chunk-list and path caches, prefetching the blocks of a directory's next files, the
FUSE callbacks a read-only mount registers, and a background mount's deferred wait."""

from __future__ import annotations

import errno
import functools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fim.fimfs.dwarfs import DwarfsImage, blockcache, inodes
from fim.fimfs.errors import FimfsError
from fim.fimfs.fuse import adapter, lifecycle, umount
from fim.fimfs.hostdir import HostDir
from fim.fimfs.union import Union
from fim.fimfs.vfs import NO_HANDLE

from .manifest import image_path


def _run_threads(targets: list[Callable[[], None]]) -> None:
    """Run the targets in threads at once; returns when all are done."""
    threads = [threading.Thread(target=t) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _contents(path: Path) -> dict[str, bytes]:
    with DwarfsImage.from_path(path) as ref:
        return {p: ref.read_entry(e, ref.attr_of(e).size, 0)
                for p, e in ref.walk() if ref.attr_of(e).is_reg}


def test_handles_are_inode_numbers_and_need_no_release(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inodes, "CHUNK_LISTS", 3)  # every few opens evict a chunk list
    path = image_path("small-blocks")
    want = _contents(path)
    with DwarfsImage.from_path(path) as img:
        assert img.handles_need_release is False
        handles = {p: img.open(p, os.O_RDONLY) for p in want}
        inos = {img.attr_of(img.inodes.entry(p)).ino for p in want}
        assert len(set(handles.values())) == len(inos)
        for p, fh in handles.items():  # read after every other open: lists were evicted
            assert img.read(p, len(want[p]) + 1, 0, fh) == want[p]
        with pytest.raises(OSError) as exc:  # no handle: the path says what it is
            img.read("/", 1, 0, NO_HANDLE)
        assert exc.value.errno == errno.EISDIR
        with pytest.raises(OSError) as exc:  # not a file's inode
            img.read("/", 1, 0, img.meta.device_inode_offset)
        assert exc.value.errno == errno.EBADF


def test_path_cache_is_bounded_and_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inodes, "PATHS", 8)
    path = image_path("default")
    with DwarfsImage.from_path(path) as img:
        walked = list(img.walk())
        for _ in range(2):
            for p, e in walked:
                assert img.inodes.entry(p) == e
                assert len(img.inodes.paths) <= 8
        with pytest.raises(FileNotFoundError):
            img.getattr(walked[-1][0] + "-missing")


def _wait_idle(img: DwarfsImage) -> None:
    deadline = time.monotonic() + 10
    while img.cache.queued or (img.inodes.order_started and img.inodes.order is None):
        assert time.monotonic() < deadline, "prefetch did not finish"
        time.sleep(0.01)


def test_reading_a_file_prefetches_what_the_next_files_in_tree_order_need() -> None:
    """Reading a file's start decompresses, unasked, the blocks the next files in tree
    order start in, as far as they need them (what `tar` reads next); opens alone, and
    reads further into a file, prefetch nothing. Handles or none (reads by path) alike."""
    path = image_path("small-blocks")  # 16 KiB blocks: neighbours sit in other blocks
    with DwarfsImage.from_path(path) as img:
        m = img.meta
        files = [(p, m.ent_inode[e]) for p, e in img.walk()
                 if m.first_block(m.ent_inode[e]) is not None]
        case = next(((pa, a, b) for (pa, a), (_, b) in zip(files, files[1:])
                     if m.first_block(a) != m.first_block(b)), None)
        assert case, "the image has no neighbours in different blocks"
        fpath, ino, nxt = case
        block, offset, size = next(m.file_chunks(m.chunk_index(nxt)))
        first = files[0][0]
        for p, _ in files[:5]:  # nothing read yet: only opens
            img.open(p, os.O_RDONLY)
        _wait_idle(img)
        assert block not in img.cache.lru and img.inodes.order is None
        img.read(first, 1, 1, img.open(first, os.O_RDONLY))  # not its start
        _wait_idle(img)
        assert img.inodes.order is None
        img.read(first, 1, 0, NO_HANDLE)  # the first read of a start: the order is built
        _wait_idle(img)
        assert img.inodes.order is not None and block not in img.cache.lru
        for p, _ in files[:files.index((fpath, ino)) + 1]:  # tar's way up to fpath
            img.read(p, 1, 0, NO_HANDLE)
        _wait_idle(img)
        assert img.cache.covered(block, offset + size)


def test_prefetch_after_close_is_refused_quietly() -> None:
    img = DwarfsImage.from_path(image_path("small-blocks"))
    img.close()
    # a read racing the unmount: nothing started or raised
    img.cache.prefetch({0: blockcache.WHOLE})
    assert img.cache.workers is None


def test_read_only_mounts_register_no_write_release_or_directory_handle_callbacks(
        tmp_path: Path) -> None:
    img = DwarfsImage.from_path(image_path("default"))
    try:
        ops = adapter.operations_for(img)
        assert isinstance(ops, adapter.ReadOnlyOperations)
        for name in (*adapter.WRITE_OPERATIONS, "release", "opendir", "releasedir"):
            assert getattr(ops, name) is None, name
        assert callable(ops.read) and callable(ops.open) and callable(ops.listing)
        ro_union = adapter.operations_for(Union(None, [img]))
        assert ro_union.release is None  # every layer's handles are plain numbers
        rw = adapter.operations_for(Union(HostDir(str(tmp_path)), [img]))
        assert type(rw) is adapter.FuseOperations
        assert callable(rw.release) and callable(rw.opendir)
        assert rw.flush is None  # an upper on a local filesystem: its flush reports nothing
    finally:
        img.close()


@pytest.fixture
def big_dir_image(tmp_path: Path) -> Path:
    tree = tmp_path / "tree" / "many"
    tree.mkdir(parents=True)
    for i in range(3000):  # several READDIR pages of names
        (tree / f"file-with-a-longish-name-{i:05d}").write_text(str(i))
    out = tmp_path / "big.dwarfs"
    subprocess.run([sys.executable, "-m", "fim.cli.fim", "create", "-l", "1",
                    str(tmp_path / "tree"), str(out)], check=True, capture_output=True)
    return out


@pytest.mark.fuse
def test_read_only_listings_page_by_path_for_concurrent_readers(big_dir_image: Path,
                                                                 tmp_path: Path) -> None:
    mp = tmp_path / "mp"
    mp.mkdir()
    subprocess.run([sys.executable, "-m", "fim.cli.fim", "mount", str(big_dir_image), str(mp)],
                   check=True)
    try:
        want = sorted(f"file-with-a-longish-name-{i:05d}" for i in range(3000))
        results: list[list[str]] = []

        def lister() -> None:
            for _ in range(3):
                results.append(sorted(os.listdir(mp / "many")))

        _run_threads([lister] * 4)
        assert len(results) == 12 and all(r == want for r in results)
        assert (mp / "many" / want[-1]).read_text() == "2999"
    finally:
        umount(str(mp))


def _start(tmp_path: Path, source) -> tuple[Path, lifecycle.PendingMount]:  # noqa: ANN001
    """A background mount of ``source`` (a callable) on a new directory, not waited for."""
    mp = tmp_path / "mp"
    mp.mkdir()
    pending = lifecycle.mount(source, str(mp), foreground=False, wait=False)
    assert pending is not None
    return mp, pending


@pytest.mark.fuse
def test_a_background_mount_can_be_waited_for_later(tmp_path: Path) -> None:
    path = image_path("default")
    mp, pending = _start(tmp_path, lambda: DwarfsImage.from_path(path))
    pending.wait()
    pending.wait()  # idempotent
    try:
        assert os.path.ismount(mp) and os.listdir(mp)
    finally:
        umount(str(mp))


@pytest.mark.fuse
def test_a_failing_background_mount_reports_at_wait(tmp_path: Path) -> None:
    def broken() -> DwarfsImage:
        raise FimfsError("cannot open the layer: boom")

    mp, pending = _start(tmp_path, broken)
    for _ in range(2):  # the same one-line reason each time
        with pytest.raises(FimfsError, match="^cannot open the layer: boom$"):
            pending.wait()
    assert not os.path.ismount(mp)


def _opcodes(log: str) -> list[str]:
    return [line.split("opcode: ", 1)[1].split(" ", 1)[0] for line in log.splitlines()
            if "opcode: " in line]


@pytest.mark.fuse
def test_writable_stack_readers_send_no_flush_and_writers_do(tmp_path: Path) -> None:
    """noflush on read-only opens: closing a file that was only read costs no FLUSH
    round trip; a file opened for writing still gets its FLUSH (write errors at close)."""
    mp, upper = tmp_path / "mp", tmp_path / "upper"
    mp.mkdir()
    upper.mkdir()
    log = tmp_path / "debug.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "fim.cli.fim", "mount", "--foreground",
                                 "-o", "debug", "--layer", str(image_path("default")),
                                 "--upper", str(upper), str(mp)], stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mp):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        files = [p for p in mp.rglob("*") if p.is_file() and not p.is_symlink()][:20]
        assert files
        for p in files:
            p.read_bytes()
        time.sleep(0.5)
        assert "FLUSH" not in _opcodes(log.read_text())
        (mp / "written").write_bytes(b"x")
        time.sleep(0.5)
        assert "FLUSH" in _opcodes(log.read_text())
        assert (upper / "written").read_bytes() == b"x"
    finally:
        umount(str(mp))
        proc.wait(30)


@pytest.mark.fuse
def test_read_only_mounts_send_no_open_nor_release(tmp_path: Path) -> None:
    """A DwarFS image reads by path: its mount answers the first OPEN with ENOSYS, and
    from then on reading a file is READs only; contents stay exact, and other files'
    reads, errors included, still work."""
    mp = tmp_path / "mp"
    mp.mkdir()
    log = tmp_path / "debug.log"
    image = image_path("default")
    want = _contents(image)
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "fim.cli.fim", "mount", "--foreground",
                                 "-o", "debug", str(image), str(mp)], stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mp):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        for _ in range(2):
            for p, data in want.items():
                assert (mp / p.lstrip("/")).read_bytes() == data
        with pytest.raises(IsADirectoryError):
            (mp / next(iter(want)).lstrip("/")).parent.read_bytes()
        time.sleep(0.5)
        ops = _opcodes(log.read_text())
        assert ops.count("OPEN") <= 1 and "RELEASE" not in ops and "READ" in ops
    finally:
        umount(str(mp))
        proc.wait(30)


@pytest.mark.parametrize("name", ["small-blocks", "default"])
def test_read_spans_are_slices_of_the_cached_blocks(name: str) -> None:
    """What the FUSE READ copies from: the same bytes as read(), taken from the block
    cache itself (no copy per request); holes come as zeros. "small-blocks" splits files
    over several blocks, "default" has sparse files."""
    want = _contents(image_path(name))
    with DwarfsImage.from_path(image_path(name)) as img:
        cached = 0
        for p, data in want.items():
            fh = img.open(p, os.O_RDONLY)
            for offset, size in ((0, len(data) + 1), (len(data) // 3, 5000), (1, 1 << 20)):
                spans = img.read_spans(p, size, offset, fh)
                joined = b"".join(buf[start:stop] for buf, start, stop in spans)
                assert joined == data[offset:offset + size] == img.read(p, size, offset, fh)
                for buf, start, stop in spans:
                    assert 0 <= start <= stop <= len(buf)
                    cached += any(buf is block.data for block in img.cache.lru.values())
        assert cached


@pytest.mark.fuse
def test_libfuse_workers_keep_their_thread_state_and_read_exactly(tmp_path: Path) -> None:
    """Each libfuse worker pins its Python thread state once (not one made and destroyed
    per request), up to the bound; reads through the mount, across blocks and holes, by
    concurrent readers, give the image's bytes."""
    from fim.fimfs.fuse import binding

    path = image_path("small-blocks")
    want = _contents(path)
    mp = tmp_path / "mp"
    mp.mkdir()
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            lifecycle.mount(lambda: DwarfsImage.from_path(path), str(mp), foreground=True)
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mp):
            assert thread.is_alive() and time.monotonic() < deadline, errors
            time.sleep(0.02)
        got: dict[str, bytes] = {}

        def reader_thread(paths: list[str]) -> None:
            for p in paths:
                got[p] = (mp / p.lstrip("/")).read_bytes()

        paths = sorted(want)
        _run_threads([functools.partial(reader_thread, paths[i::4]) for i in range(4)])
        assert got == want
        served_by = binding._PINNED - {threading.get_ident(), thread.ident}
        assert len(served_by) >= 1 and len(binding._PINNED) <= binding._MAX_PINNED
    finally:
        umount(str(mp))
        thread.join(30)
    assert errors == []


def test_metadata_columns_unpack_on_first_use_and_race_safely() -> None:
    """Opening leaves the times unpacked (only their bounds are checked); concurrent first
    stats unpack them once and agree with an image that has them all unpacked."""
    path = image_path("all-times")
    with DwarfsImage.from_path(path) as ref:
        for table in (ref.meta.m["inodes"],):
            for name in list(table._pending):
                getattr(table, name)
        want = {p: ref.attr_of(e) for p, e in ref.walk()}
    with DwarfsImage.from_path(path) as img:
        inodes = img.meta.m["inodes"]
        assert "mtime_offset" in inodes._pending and "mtime_offset" not in vars(inodes)
        got: list[dict] = []
        barrier = threading.Barrier(4)

        def stat_all() -> None:
            barrier.wait()
            got.append({p: img.attr_of(e) for p, e in img.walk()})

        _run_threads([stat_all] * 4)
        assert len(got) == 4 and all(g == want for g in got)
        assert "mtime_offset" in vars(inodes)


def test_lookups_from_a_cached_parent_agree_with_lookups_from_the_root() -> None:
    """A path whose parent was looked up is one search in it; odd spellings (empty,
    "." and ".." components, trailing slashes, relative) still go through split_path,
    with its answers."""
    path = image_path("default")
    with DwarfsImage.from_path(path) as ref, DwarfsImage.from_path(path) as img:
        walked = list(ref.walk())
        for p, e in walked:  # parents first: every lookup after the root's is a child's
            assert img.inodes.entry(p) == e
        d = next(p for p, e in walked if p != "/" and ref.attr_of(e).is_dir)
        f = next(p for p, e in walked if ref.attr_of(e).is_reg)
        name = f.rsplit("/", 1)[1]
        assert img.inodes.entry(d + "/") == ref.inodes.entry(d)
        for odd, code in ((d + "//" + name, errno.ENOENT), (d + "/.", errno.ENOENT),
                          (d + "/..", errno.ENOENT), (name, errno.EINVAL),
                          (f + "/x", errno.ENOTDIR), (d + "/missing", errno.ENOENT)):
            with pytest.raises(OSError) as exc:
                img.inodes.entry(odd)
            assert exc.value.errno == code, odd

"""`fim create`: options, levels, codecs, the container format, failures, native tools."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fim.cli import fim
from fim.fimfs.dwarfs import DwarfsImage, codecs, sections
from fim.fimfs.dwarfs.options import WriteOptions
from fim.fimfs.dwarfs.writer import Progress, write_image
from fim.fimfs.errors import FimfsError
from tests.manifest import compare, manifest_of_dir, view_dir, view_fs

REPO = Path(__file__).resolve().parents[1]
TEXT = b"".join(b"line %d of some compressible text\n" % i for i in range(20000))
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@pytest.fixture
def src(tmp_path: Path) -> Path:
    s = tmp_path / "src"
    (s / "sub" / "deeper").mkdir(parents=True)
    (s / "text").write_bytes(TEXT)
    (s / "sub" / "copy").write_bytes(TEXT)
    (s / "sub" / "small").write_bytes(b"small")
    (s / "sub" / "deeper" / "rand").write_bytes(os.urandom(3000))
    os.symlink("../text", s / "sub" / "link")
    os.link(s / "sub" / "small", s / "hard")
    os.mkfifo(s / "fifo")
    return s


def sections_of(path: Path) -> list[sections.Section]:
    f = sections.ImageFile(path)
    try:
        return [sections.resolve(f, s) for s in sections.read_layout(f).sections]
    finally:
        f.close()


def same_tree(src: Path, image: Path) -> None:
    want = manifest_of_dir(src)
    with DwarfsImage.from_path(image) as img:
        assert img.check(full=True) == []
        assert compare(want, view_fs(img)) == []


def run(*argv: str) -> int:
    return fim.main(["create", *argv])


def leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


# -- options ------------------------------------------------------------------------------

EXPECTED_CODECS = {0: (codecs.NONE, codecs.NONE), 1: (codecs.LZ4, codecs.NONE),
                   2: (codecs.LZ4HC, codecs.NONE), 3: (codecs.LZ4HC, codecs.NONE),
                   4: (codecs.ZSTD, codecs.NONE), 5: (codecs.ZSTD, codecs.NONE),
                   6: (codecs.ZSTD, codecs.NONE), 7: (codecs.ZSTD, codecs.ZSTD),
                   8: (codecs.LZMA, codecs.LZMA), 9: (codecs.LZMA, codecs.LZMA)}


@pytest.mark.parametrize("level", range(10))
def test_levels_follow_the_mkdwarfs_table(level: int, src: Path, tmp_path: Path) -> None:
    (src / "meta").mkdir()
    for i in range(300):  # enough metadata for compression to pay off
        (src / "meta" / f"entry-{i:04d}").write_bytes(b"")
    out = tmp_path / "out.dwarfs"
    assert run(str(src), str(out), "-l", str(level)) == 0
    secs = sections_of(out)
    data, meta = EXPECTED_CODECS[level]
    assert [s.compression for s in secs if s.type == sections.BLOCK] == [data]
    assert next(s for s in secs if s.type == sections.METADATA).compression == meta
    assert [s.type for s in secs][-3:] == [sections.SCHEMA, sections.METADATA, sections.INDEX]
    assert [s.number for s in secs] == list(range(len(secs)))
    same_tree(src, out)


@pytest.mark.parametrize("spec,comp", [("null", codecs.NONE), ("lz4", codecs.LZ4),
                                       ("lz4hc:level=4", codecs.LZ4HC),
                                       ("zstd:level=3", codecs.ZSTD), ("lzma:level=1", codecs.LZMA),
                                       ("brotli:level=5", codecs.BROTLI)])
def test_compression_option(spec: str, comp: int, src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.dwarfs"
    assert run(str(src), str(out), "-C", spec, "-S", "14") == 0
    blocks = [s for s in sections_of(out) if s.type == sections.BLOCK]
    assert len(blocks) > 1
    assert blocks[0].compression == comp
    same_tree(src, out)


def test_incompressible_blocks_are_stored_plain(tmp_path: Path) -> None:
    s = tmp_path / "s"
    s.mkdir()
    (s / "random").write_bytes(os.urandom(100_000))
    out = tmp_path / "o.dwarfs"
    write_image(s, out, WriteOptions(level=7))
    assert [x.compression for x in sections_of(out) if x.type == sections.BLOCK] == [codecs.NONE]


def test_header_and_no_section_index(src: Path, tmp_path: Path) -> None:
    header = tmp_path / "launcher.sh"
    header.write_bytes(b"#!/bin/sh\necho DWARFS\nexit 0\n")
    out = tmp_path / "out.dwarfs"
    assert run(str(src), str(out), "--header", str(header)) == 0
    assert out.read_bytes().startswith(header.read_bytes())
    with DwarfsImage.from_path(out) as img:
        assert img.layout.offset == header.stat().st_size
        assert img.layout.indexed
    same_tree(src, out)
    plain = tmp_path / "plain.dwarfs"
    assert run(str(src), str(plain), "--no-section-index") == 0
    assert sections.INDEX not in [s.type for s in sections_of(plain)]
    assert out.read_bytes()[header.stat().st_size:] != plain.read_bytes()
    same_tree(src, plain)


def test_owner_group_time_overrides(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.dwarfs"
    assert run(str(src), str(out), "--set-owner", "1234", "--set-group", "99",
               "--set-time", "1000000") == 0
    with DwarfsImage.from_path(out) as img:
        for _, e in img.walk():
            a = img.attr_of(e)
            assert (a.uid, a.gid, a.mtime_ns, a.atime_ns) == (1234, 99, 10**15, 10**15)


def test_time_resolution_and_all_times(tmp_path: Path) -> None:
    s = tmp_path / "s"
    s.mkdir()
    f = s / "f"
    f.write_bytes(b"x")
    os.utime(f, ns=(1_600_000_123_456_789_012, 1_600_000_000_987_654_321))
    coarse, fine = tmp_path / "coarse.dwarfs", tmp_path / "fine.dwarfs"
    assert run(str(s), str(fine), "--time-resolution", "ms", "--keep-all-times") == 0
    assert run(str(s), str(coarse), "--time-resolution", "min") == 0  # reading moved atime
    with DwarfsImage.from_path(coarse) as img:
        assert img.getattr("/f").mtime_ns == 1_599_999_960 * 10**9
    with DwarfsImage.from_path(fine) as img:
        a = img.getattr("/f")
        assert a.mtime_ns == 1_600_000_000_987_000_000
        assert a.atime_ns == 1_600_000_123_456_000_000


def test_json_and_summary(src: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out.dwarfs"
    assert run(str(src), str(out), "--json") == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["image_size"] == out.stat().st_size
    assert stats["duplicate_bytes"] == len(TEXT)
    assert stats["files"] == 4 and stats["entries"] == 10
    assert run(str(src), str(out)) == 0
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and str(out) in line and "10 entries" in line


def test_duplicates_are_stored_once(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.dwarfs"
    stats = write_image(src, out, WriteOptions(level=0))
    assert stats.data_bytes == len(TEXT) + 5 + 3000
    with DwarfsImage.from_path(out) as img:
        m = img.meta.m
        assert len(m["shared_files_table"]) == 2
        assert img.getattr("/hard").nlink == 2
        assert img.statfs().blocks == 2 * len(TEXT) + 5 + 3000 + len(b"../text")


def test_large_holes(tmp_path: Path) -> None:
    s = tmp_path / "s"
    s.mkdir()
    with open(s / "sparse", "wb") as f:
        f.write(b"head")
        f.seek(300 << 20)
        f.write(b"tail")
    out = tmp_path / "o.dwarfs"
    stats = write_image(s, out, WriteOptions(level=1, block_size_bits=10))
    assert stats.hole_bytes > 290 << 20
    with DwarfsImage.from_path(out) as img:
        m = img.meta.m
        assert m["features"] == [b"sparsefiles"]
        assert len(m["large_hole_size"]) == 1
        assert m["hole_block_index"] == stats.blocks
        fh = img.open("/sparse", os.O_RDONLY)
        assert img.read("/sparse", 4, 0, fh) == b"head"
        assert img.read("/sparse", 8, (300 << 20) - 4, fh) == bytes(4) + b"tail"
        assert img.getattr("/sparse").blocks * 512 < 1 << 20


def test_output_inside_the_source_is_left_out(src: Path) -> None:
    out = src / "image.dwarfs"
    out.write_bytes(b"an older image")
    assert run(str(src), str(out)) == 0
    with DwarfsImage.from_path(out) as img:
        assert "image.dwarfs" not in img.readdir("/")
        assert not any(n.endswith(".tmp") for n in img.readdir("/"))


def test_progress_on_a_terminal(src: Path, tmp_path: Path) -> None:
    import fcntl
    import pty
    import struct
    import termios

    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    out = tmp_path / "o.dwarfs"
    proc = subprocess.Popen([sys.executable, "-m", "fim.cli.fim", "create", str(src), str(out)],
                            cwd=REPO, stdin=secondary, stdout=secondary, stderr=secondary)
    os.close(secondary)
    seen = b""
    with contextlib.suppress(OSError):  # EIO once the child has gone
        while chunk := os.read(primary, 4096):
            seen += chunk
    os.close(primary)
    assert proc.wait() == 0
    text = seen.decode()
    assert "writing:" in text and "files, ratio" in text
    assert text.rstrip().endswith("s") and f"{out}: 10 entries" in text


def test_bad_arguments(src: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "o.dwarfs"
    assert run(str(src), str(out), "-C", "zip") == 2
    assert run(str(src), str(out), "-S", "40") == 2
    assert run(str(src), str(out), "-l", "10") == 2
    assert run(str(src), str(out), "--set-time", "yesterday") == 2
    assert run(str(src / "text"), str(out)) == 1
    assert run(str(src), str(tmp_path)) == 1
    err = capsys.readouterr().err
    assert "unknown compression 'zip'" in err and "not a directory" in err
    assert "is a directory" in err
    assert not out.exists()


# -- failures -------------------------------------------------------------------------------

def fim_cli(*argv: str, caps: bool = False) -> subprocess.CompletedProcess:
    """`fim create` in a child; ``caps`` False drops root's power to ignore permissions."""
    cmd = [sys.executable, "-m", "fim.cli.fim", "create", *argv]
    if not caps:
        drop = "-dac_override,-dac_read_search"
        cmd = ["setpriv", f"--bounding-set={drop}", f"--inh-caps={drop}", *cmd]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)


needs_setpriv = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to run without the permission-override capabilities")


@needs_setpriv
@pytest.mark.parametrize("what", ["file", "directory"])
def test_unreadable_source_entry(what: str, src: Path, tmp_path: Path) -> None:
    bad = src / "text" if what == "file" else src / "sub" / "deeper"
    bad.chmod(0)
    out = tmp_path / "out" / "image.dwarfs"
    out.parent.mkdir()
    out.write_bytes(b"previous")
    r = fim_cli(str(src), str(out))
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and str(bad) in r.stderr
    assert "Permission denied" in r.stderr
    assert out.read_bytes() == b"previous" and leftovers(out.parent) == []


@needs_root
def test_output_directory_not_writable(src: Path, tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], check=True)
    try:
        with pytest.raises(FimfsError, match=f"cannot create {ro}/x.dwarfs: Read-only"):
            write_image(src, ro / "x.dwarfs")
    finally:
        subprocess.run(["umount", str(ro)], check=True)


@needs_root
def test_disk_full(src: Path, tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    (src / "big").write_bytes(os.urandom(3 << 20))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        (small / "keep").write_bytes(b"x")
        r = fim_cli(str(src), str(small / "image.dwarfs"), "-l", "1", caps=True)
        assert r.returncode == 1
        assert r.stderr == f"fim: cannot write {small}/image.dwarfs: No space left on device\n"
        assert sorted(p.name for p in small.iterdir()) == ["keep"]
    finally:
        subprocess.run(["umount", str(small)], check=True)


def _wait_for_temp(directory: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while not leftovers(directory):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_leaves_nothing(sig: int, tmp_path: Path) -> None:
    s = tmp_path / "s"
    s.mkdir()
    (s / "data").write_bytes(TEXT * 40)  # lzma -9 takes seconds on this
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "fim.cli.fim", "create", str(s),
                             str(out_dir / "image.dwarfs"), "-l", "9"],
                            cwd=REPO, stderr=subprocess.PIPE, text=True)
    _wait_for_temp(out_dir, proc)
    time.sleep(0.3)
    proc.send_signal(sig)
    start = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - start < 2, "an interrupt must not wait for the compressor"
    assert proc.returncode == 130
    assert err == f"fim: interrupted: {out_dir / 'image.dwarfs'} not written\n"
    assert list(out_dir.iterdir()) == []


def _failing_write(src: Path, out: Path, when: str, act) -> FimfsError:  # noqa: ANN001
    def progress(p: Progress) -> None:
        if p.phase == when and p.files == 0:
            act()

    with pytest.raises(FimfsError) as info:
        write_image(src, out, WriteOptions(level=1, order="path"), progress)
    assert not out.exists() and leftovers(out.parent) == []
    return info.value


@pytest.mark.parametrize("name,change", [("sub/copy", "grow"), ("sub/deeper/rand", "grow"),
                                         ("sub/copy", "shrink"), ("sub/copy", "replace"),
                                         ("big1", "grow"), ("big1", "same-size")])
def test_file_changed_while_read(name: str, change: str, src: Path, tmp_path: Path) -> None:
    """``sub/copy`` has the size of ``text``; ``big1`` of ``big2`` and, being big, it is
    hashed before anything is written."""
    big = TEXT * 3
    (src / "big1").write_bytes(big)
    (src / "big2").write_bytes(big)
    victim = src / name
    out = tmp_path / "o.dwarfs"
    st = victim.stat()

    def act() -> None:
        if change == "grow":
            with open(victim, "ab") as f:
                f.write(b"more")
        elif change == "shrink":
            os.truncate(victim, 10)
        elif change == "replace":
            victim.rename(victim.with_name("moved"))
            victim.write_bytes(TEXT)
        else:  # same size, same mtime, other bytes: only the content hash sees it
            victim.write_bytes(big.replace(b"line 1 ", b"LINE 1 "))
            os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))

    err = _failing_write(src, out, "write", act)
    assert str(err) == f"{victim} changed while it was being read"


def test_interrupt_in_process_leaves_nothing(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.dwarfs"

    def act() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_image(src, out, WriteOptions(level=1), lambda p: p.phase == "write" and act())
    assert not out.exists() and leftovers(tmp_path) == []


# -- native tools ---------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("dwarfsck") is None or shutil.which("dwarfsextract") is None,
                    reason="native dwarfsck/dwarfsextract not on PATH (no dwarfs package here)")
@pytest.mark.parametrize("level", [0, 1, 7, 9])
def test_native_tools_accept_our_images(level: int, src: Path, tmp_path: Path) -> None:
    (src / "sparse").write_bytes(b"")
    os.truncate(src / "sparse", 5 << 20)
    out = tmp_path / "out.dwarfs"
    write_image(src, out, WriteOptions(level=level))
    subprocess.run(["dwarfsck", "-i", str(out), "--check-integrity"], check=True,
                   capture_output=True)
    dest = tmp_path / "extracted"
    dest.mkdir()
    subprocess.run(["dwarfsextract", "-i", str(out), "-o", str(dest)], check=True)

    def comparable(view: list[dict]) -> list[dict]:
        # dwarfsextract does not set the root directory's time: dest keeps its own mtime.
        return [{k: v for k, v in e.items()
                 if k != "_ino" and not (e["path"] == "/" and k == "mtime")} for e in view]

    assert compare(comparable(view_dir(src)), comparable(view_dir(dest)), inodes=False) == []
    assert stat.S_ISFIFO(os.lstat(dest / "fifo").st_mode)


def test_memory_stays_bounded(tmp_path: Path) -> None:
    """256 MiB of file data through 1 MiB blocks: peak RSS grows by a few blocks only."""
    s = tmp_path / "s"
    s.mkdir()
    piece = os.urandom(1 << 20)
    with open(s / "big", "wb") as f:
        for _ in range(256):
            f.write(piece)
    code = ("import resource, sys\n"
            "from fimfs.dwarfs.writer import write_image\n"
            "from fimfs.dwarfs.options import WriteOptions\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "write_image(sys.argv[1], sys.argv[2], WriteOptions(level=1, block_size_bits=20))\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n")
    r = subprocess.run([sys.executable, "-c", code, str(s), str(tmp_path / "o.dwarfs")],
                       cwd=REPO, capture_output=True, text=True, check=True)
    assert int(r.stdout) < 32 << 10  # KiB
    assert (tmp_path / "o.dwarfs").stat().st_size > 256 << 20

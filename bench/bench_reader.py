"""Reading a DwarFS layer: fim's mount vs native dwarfs (same images) vs squashfuse.

Images: see the ``images`` fixture (the corpus written by fim and by mkdwarfs -l7).
Workloads as in issue 13: cold mount, a `find -printf` walk, `tar c . | cat`, the big
files in 1 MiB reads, 2000 random 4 KiB reads; each round starts from a fresh mount
with dropped kernel caches. Native dwarfs is skipped with the reason when it is not on
PATH (bench/conftest.py puts ../shared/native/bin there when it exists).
Run: .venv/bin/pytest bench/bench_reader.py
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.mounts import drop_caches, measure_fresh, mounted, require
from bench.workloads import find_walk, tar_read

#: (reader, image kind): fim and native dwarfs each on the image written by fim and on
#: the one written by native mkdwarfs; squashfuse on a squashfs of the same tree.
CASES = [("fim", "fim"), ("dwarfs", "fim"), ("fim", "mkdwarfs"), ("dwarfs", "mkdwarfs"),
         ("squashfuse", "squashfs")]
IDS = [f"{reader}-{kind}" for reader, kind in CASES]
TESTDATA = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "dwarfs" / "native"


@pytest.fixture(scope="session")
def images(cache_dir: Path) -> dict[str, Path]:
    """The DwarFS image(s) and a squashfs (zstd) of the same tree, by kind.

    "fim": $FIM_BENCH_IMAGE, else the corpus image the writer suite built
    (bench/.cache/corpus.dwarfs), else the largest native image in testdata;
    "mkdwarfs": bench/.cache/corpus.mkdwarfs (``mkdwarfs -l7`` of the corpus, built here
    when mkdwarfs is on PATH and the corpus image is used).
    """
    env = os.environ.get("FIM_BENCH_IMAGE")
    corpus = cache_dir / "corpus.dwarfs"
    if env:
        dwarfs = Path(env)
    elif corpus.exists():
        dwarfs = corpus
    else:
        dwarfs = max(TESTDATA.glob("*.dwarfs"), key=lambda p: p.stat().st_size)
    tree = cache_dir / f"{dwarfs.stem}.tree"
    squash = cache_dir / f"{dwarfs.stem}.squashfs"
    if not squash.exists() or squash.stat().st_mtime < dwarfs.stat().st_mtime:
        subprocess.run(["rm", "-rf", str(tree)], check=True)
        subprocess.run([sys.executable, "-m", "fim.cli.fim", "extract", str(dwarfs), str(tree)],
                       check=True)
        subprocess.run(["mksquashfs", str(tree), str(squash), "-comp", "zstd", "-noappend",
                        "-quiet", "-no-progress"], check=True, stdout=subprocess.DEVNULL)
    out = {"fim": dwarfs, "squashfs": squash}
    native = cache_dir / "corpus.mkdwarfs"
    if dwarfs == corpus and not native.exists() and shutil.which("mkdwarfs"):
        subprocess.run(["mkdwarfs", "-i", str(corpus_tree()), "-o", str(native), "-l", "7",
                        "--no-progress"], check=True, capture_output=True)
    if dwarfs == corpus and native.exists():
        out["mkdwarfs"] = native
    return out


def corpus_tree() -> Path:
    from bench import corpus

    return corpus.build()


def _case(reader: str, kind: str, images: dict[str, Path]) -> Path:
    require(reader)
    if kind not in images:
        pytest.skip(f"no {kind} image (needs the corpus image and mkdwarfs on PATH)")
    return images[kind]


def _files(root: Path) -> list[Path]:
    out = []
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            p = Path(dirpath, name)
            if p.is_file() and not p.is_symlink() and os.access(p, os.R_OK):
                out.append(p)
    return sorted(out)


def _read_all(files: list[Path]) -> int:
    total = 0
    for p in files:
        with open(p, "rb", buffering=0) as f:
            while chunk := f.read(1 << 20):
                total += len(chunk)
    return total


def _random_reads(files: list[Path], n: int = 2000) -> int:
    rnd = random.Random(42)
    total = 0
    fds = {p: os.open(p, os.O_RDONLY) for p in files}
    try:
        for _ in range(n):
            p = rnd.choice(files)
            size = os.fstat(fds[p]).st_size
            total += len(os.pread(fds[p], 4096, rnd.randrange(max(size - 4096, 1))))
    finally:
        for fd in fds.values():
            os.close(fd)
    return total


def _measure(benchmark, reader: str, image: Path, mp: Path, action, rounds: int = 3):  # noqa: ANN001, ANN202
    return measure_fresh(benchmark, reader, image, mp, action, rounds)


def _name(measurement: str, kind: str) -> str:
    return f"{measurement} [{'squashfs' if kind == 'squashfs' else kind + ' image'}]"


def _record(record, measurement: str, reader: str, kind: str, value: float) -> None:  # noqa: ANN001
    """Squashfuse's figure goes beside both DwarFS images' rows."""
    for k in (("fim", "mkdwarfs") if kind == "squashfs" else (kind,)):
        record(_name(measurement, k), reader, value)


@pytest.mark.parametrize(("reader", "kind"), CASES, ids=IDS)
def test_mount_time(benchmark, reader, kind, images, tmp_path, record) -> None:
    """Cold: caches dropped, from starting the server until the mount point answers."""
    image = _case(reader, kind, images)
    ctx: list = []

    def enter() -> None:
        ctx.append(mounted(reader, image, tmp_path / "mp"))
        ctx[-1].__enter__()

    benchmark.pedantic(enter, setup=drop_caches, teardown=lambda: ctx.pop().__exit__(
        None, None, None), rounds=5)
    _record(record, "cold mount s", reader, kind, benchmark.stats.stats.median)


@pytest.mark.parametrize(("reader", "kind"), CASES, ids=IDS)
def test_find_walk(benchmark, reader, kind, images, tmp_path, record) -> None:
    image = _case(reader, kind, images)
    n, rss = _measure(benchmark, reader, image, tmp_path / "mp", find_walk)
    assert n > 0
    _record(record, "find -printf walk s", reader, kind, benchmark.stats.stats.median)


@pytest.mark.parametrize(("reader", "kind"), CASES, ids=IDS)
def test_tar_read_all(benchmark, reader, kind, images, tmp_path, record) -> None:
    """Every file once, in directory order, as `tar c . | cat`; the peak RSS after it."""
    image = _case(reader, kind, images)
    total, rss = _measure(benchmark, reader, image, tmp_path / "mp", tar_read)
    _record(record, "tar c . | cat s", reader, kind, benchmark.stats.stats.median)
    _record(record, "peak RSS after read-all MiB", reader, kind, rss)
    benchmark.extra_info["bytes"] = total


@pytest.mark.parametrize(("reader", "kind"), CASES, ids=IDS)
def test_big_file_sequential_read(benchmark, reader, kind, images, tmp_path, record) -> None:
    """The largest files (>= 1 MiB, up to 512 MB of them), in 1 MiB reads."""
    image = _case(reader, kind, images)
    big = _big_files(reader, image, tmp_path / "list")
    if not big:
        pytest.skip("no file of 1 MiB or more in the image")
    total, _ = _measure(benchmark, reader, image, tmp_path / "mp",
                        lambda root: _read_all([root / f for f in big]))
    _record(record, "big-file read MB/s", reader, kind,
            total / 1e6 / benchmark.stats.stats.median)


@pytest.mark.parametrize(("reader", "kind"), CASES, ids=IDS)
def test_random_4k_reads(benchmark, reader, kind, images, tmp_path, record) -> None:
    """2000 random 4 KiB preads in every regular file of 4 KiB or more."""
    image = _case(reader, kind, images)
    files = _files_of(reader, image, tmp_path / "list", min_size=4096)
    _, rss = _measure(benchmark, reader, image, tmp_path / "mp",
                      lambda root: _random_reads([root / f for f in files]))
    _record(record, "2000 random 4K reads s", reader, kind, benchmark.stats.stats.median)
    _record(record, "peak RSS after random reads MiB", reader, kind, rss)


def _files_of(reader: str, image: Path, mp: Path, min_size: int = 0) -> list[Path]:
    """Relative paths of the readable regular files (listed outside the timed part)."""
    with mounted(reader, image, mp) as m:
        return [p.relative_to(m.path) for p in _files(m.path) if p.stat().st_size >= min_size]


def _big_files(reader: str, image: Path, mp: Path, limit: int = 512 << 20) -> list[Path]:
    """The largest regular files of at least 1 MiB, up to ``limit`` bytes in all."""
    with mounted(reader, image, mp) as m:
        sized = sorted(((p.stat().st_size, p.relative_to(m.path)) for p in _files(m.path)),
                       reverse=True)
    out, total = [], 0
    for size, p in sized:
        if size < 1 << 20 or total + size > limit:
            break
        out.append(p)
        total += size
    return out

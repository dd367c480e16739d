"""Reading a DwarFS layer: fim's mount vs squashfuse (same tree) vs native dwarfs.

Image: $FIM_BENCH_IMAGE, else the corpus image the writer suite built
(bench/.cache/corpus.dwarfs), else the largest native image in testdata.
Each round starts from a fresh mount with dropped kernel caches.
Run: .venv/bin/pytest bench/bench_reader.py
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from bench.mounts import FreshMounts, mounted, require
from bench.workloads import walk

BACKENDS = ["fim", "squashfuse", "dwarfs"]
TESTDATA = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "dwarfs" / "native"


@pytest.fixture(scope="session")
def images(cache_dir: Path) -> dict[str, Path]:
    """The DwarFS image and a squashfs (zstd) of the same tree."""
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
        subprocess.run([sys.executable, "-m", "cli.fim", "extract", str(dwarfs), str(tree)],
                       check=True)
        subprocess.run(["mksquashfs", str(tree), str(squash), "-comp", "zstd", "-noappend",
                        "-quiet", "-no-progress"], check=True, stdout=subprocess.DEVNULL)
    return {"fim": dwarfs, "dwarfs": dwarfs, "squashfuse": squash}



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


def _measure(benchmark, backend: str, images: dict[str, Path], mp: Path, action):  # noqa: ANN001, ANN202
    """Time ``action(mount root)`` on a fresh, cold mount per round; returns (result, rss)."""
    fresh = FreshMounts(backend, images[backend], mp)
    try:
        result = benchmark.pedantic(lambda: action(fresh.current.path), setup=fresh.setup,
                                    rounds=3)
        return result, fresh.current.rss_mb()
    finally:
        fresh.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_mount_time(benchmark, backend, images, tmp_path, record) -> None:
    require(backend)

    def once() -> None:
        with mounted(backend, images[backend], tmp_path / "mp"):
            pass

    benchmark.pedantic(once, rounds=5, warmup_rounds=1)
    record("mount+unmount s", backend, benchmark.stats.stats.median)


@pytest.mark.parametrize("backend", BACKENDS)
def test_metadatawalk(benchmark, backend, images, tmp_path, record) -> None:
    require(backend)
    n, rss = _measure(benchmark, backend, images, tmp_path / "mp", walk)
    assert n > 0
    record("metadata walk s", backend, benchmark.stats.stats.median)
    record("walk peak RSS MiB", backend, rss)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sequential_read(benchmark, backend, images, tmp_path, record) -> None:
    require(backend)
    files = _files_of(backend, images, tmp_path / "list")
    total, rss = _measure(benchmark, backend, images, tmp_path / "mp",
                          lambda root: _read_all([root / f for f in files]))
    seconds = benchmark.stats.stats.median
    record("sequential read s", backend, seconds)
    record("sequential s per GB", backend, seconds / (total / 1e9))
    record("read peak RSS MiB", backend, rss)
    benchmark.extra_info["bytes"] = total


@pytest.mark.parametrize("backend", BACKENDS)
def test_big_file_sequential_read(benchmark, backend, images, tmp_path, record) -> None:
    """The issue's target: the largest files (>= 1 MiB, up to 512 MB of them), in 1 MiB reads."""
    require(backend)
    big = _big_files(backend, images, tmp_path / "list")
    if not big:
        pytest.skip("no file of 1 MiB or more in the image")
    total, rss = _measure(benchmark, backend, images, tmp_path / "mp",
                          lambda root: _read_all([root / f for f in big]))
    seconds = benchmark.stats.stats.median
    record("big-file read MB/s", backend, total / 1e6 / seconds)
    record("big-file read peak RSS MiB", backend, rss)
    benchmark.extra_info["bytes"] = total


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_4k_reads(benchmark, backend, images, tmp_path, record) -> None:
    require(backend)
    big = _big_files(backend, images, tmp_path / "list") or _files_of(backend, images,
                                                                      tmp_path / "list")
    _measure(benchmark, backend, images, tmp_path / "mp",
             lambda root: _random_reads([root / f for f in big]))
    record("2000 random 4K reads s", backend, benchmark.stats.stats.median)


def _files_of(backend: str, images: dict[str, Path], mp: Path) -> list[Path]:
    """Relative paths of the readable regular files (listed outside the timed part)."""
    with mounted(backend, images[backend], mp) as m:
        return [p.relative_to(m.path) for p in _files(m.path)]


def _big_files(backend: str, images: dict[str, Path], mp: Path, limit: int = 512 << 20
               ) -> list[Path]:
    """The largest regular files of at least 1 MiB, up to ``limit`` bytes in all."""
    with mounted(backend, images[backend], mp) as m:
        sized = sorted(((p.stat().st_size, p.relative_to(m.path)) for p in _files(m.path)),
                       reverse=True)
    out, total = [], 0
    for size, p in sized:
        if size < 1 << 20 or total + size > limit:
            break
        out.append(p)
        total += size
    return out

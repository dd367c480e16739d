"""The writable container stack: fim's one mount vs a union program over per-layer mounts.

Two DwarFS layers (Python's standard library split file by file between them, so
every directory is merged; plus a 256 MiB file in the bottom layer) and an empty
upper directory, served by:

- fim: `fim mount --layer A --layer B --upper U` (one process, one kernel mount);
- fuse-overlayfs, unionfs-fuse, kernel overlayfs over `fim mount A` and `fim mount B`
  (three mounts, two hops for every read); "+dwarfs": the same over native dwarfs.

The container root (issue 13): the corpus image of bench_create plus a small layer, as
fim's one mount vs fuse-overlayfs over native dwarfs mounts (what FlatImage runs).

Every round gets fresh mounts, a new upper directory and dropped kernel caches.
Layers are built once with `fim create -l4` into bench/.cache/stack/.
Run: .venv/bin/pytest bench/bench_stack.py
"""

from __future__ import annotations

import json
import os
import random
import shutil
import stat
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from bench.mounts import STACK_BACKENDS, measure_fresh, mounted_stack, require_stack
from bench.workloads import find_walk, tar_read, walk

BIG = "blob/big.bin"
BIG_SIZE = 256 << 20
SMALL_FILES = 2000
ROUNDS = 5  # medians of 5: the 2-core VM is shared, single rounds vary by 30 %
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}


def _split_stdlib(a: Path, b: Path) -> list[str]:
    """Copy the stdlib's regular files alternately into ``a`` and ``b``; their paths."""
    src = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for name in sorted(filenames):
            path = Path(dirpath, name)
            if stat.S_ISREG(path.lstat().st_mode) and os.access(path, os.R_OK):
                files.append(path.relative_to(src))
    for i, rel in enumerate(files):
        dest = (a if i % 2 == 0 else b) / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, dest)
    return [str(p) for p in files]


def _write_big(path: Path) -> None:
    """Half-compressible data: each random 512 KiB chunk appears twice in a row."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(256)
    with open(path, "wb") as f:
        for _ in range(BIG_SIZE >> 20):
            f.write(rnd.randbytes(1 << 19) * 2)


@pytest.fixture(scope="session")
def stack(cache_dir: Path) -> dict:
    """The two layers (bottom first) and the files they show through a union."""
    base = cache_dir / "stack"
    marker = base / "stack.json"
    if marker.exists():
        return json.loads(marker.read_text())
    shutil.rmtree(base, ignore_errors=True)
    a, b = base / "A", base / "B"
    files = _split_stdlib(a, b)
    _write_big(a / BIG)
    layers = []
    for tree in (a, b):
        image = base / f"{tree.name}.dwarfs"
        subprocess.run([sys.executable, "-m", "fim.cli.fim", "create", "-l", "4", str(tree),
                        str(image)], check=True, stdout=subprocess.DEVNULL)
        layers.append(str(image))
    info = {"layers": layers, "files": files,
            "bytes": sum((base / ("A" if i % 2 == 0 else "B") / f).stat().st_size
                         for i, f in enumerate(files))}
    marker.write_text(json.dumps(info))
    return info


def _measure(benchmark, backend: str, stack: dict, mp: Path, action):  # noqa: ANN001, ANN202
    """Time ``action(mount root)`` on fresh, cold mounts per round; returns (result, rss)."""
    return measure_fresh(benchmark, backend, [Path(p) for p in stack["layers"]], mp, action,
                         ROUNDS, opener=mounted_stack)


def _read_all(root: Path, files: list[str]) -> int:
    total = 0
    for rel in files:
        with open(root / rel, "rb", buffering=0) as f:
            while chunk := f.read(1 << 20):
                total += len(chunk)
    return total



def _create_small(root: Path) -> int:
    (root / "new").mkdir()
    data = b"x" * 1024
    for i in range(SMALL_FILES):
        with open(root / "new" / f"f{i:04d}.txt", "wb") as f:
            f.write(data)
    return SMALL_FILES


def _copy_up(root: Path) -> int:
    fd = os.open(root / BIG, os.O_RDWR)
    try:
        return os.pwrite(fd, b"!", BIG_SIZE // 2)
    finally:
        os.close(fd)


@pytest.mark.parametrize("backend", STACK_BACKENDS)
def test_read_all_files(benchmark, backend, stack, tmp_path, record) -> None:  # noqa: ANN001
    """Full-stack read throughput: every stdlib file, through the union, in 1 MiB reads."""
    require_stack(backend)
    total, rss = _measure(benchmark, backend, stack, tmp_path / "mp",
                          lambda root: _read_all(root, stack["files"]))
    assert total == stack["bytes"]
    seconds = benchmark.stats.stats.median
    record("read all files s", backend, seconds)
    record("read all files MB/s", backend, total / 1e6 / seconds)
    record("read peak RSS MiB", backend, rss)


@pytest.mark.parametrize("backend", STACK_BACKENDS)
def test_read_big_file(benchmark, backend, stack, tmp_path, record) -> None:  # noqa: ANN001
    require_stack(backend)
    total, _ = _measure(benchmark, backend, stack, tmp_path / "mp",
                        lambda root: _read_all(root, [BIG]))
    assert total == BIG_SIZE
    record("read 256 MiB file MB/s", backend, total / 1e6 / benchmark.stats.stats.median)


@pytest.mark.parametrize("backend", STACK_BACKENDS)
def test_metadatawalk(benchmark, backend, stack, tmp_path, record) -> None:  # noqa: ANN001
    require_stack(backend)
    n, _ = _measure(benchmark, backend, stack, tmp_path / "mp", walk)
    assert n >= len(stack["files"])
    record("metadata walk s", backend, benchmark.stats.stats.median)


@pytest.mark.parametrize("backend", STACK_BACKENDS)
def test_small_file_create(benchmark, backend, stack, tmp_path, record) -> None:  # noqa: ANN001
    require_stack(backend)
    _measure(benchmark, backend, stack, tmp_path / "mp", _create_small)
    record(f"create {SMALL_FILES} files s", backend, benchmark.stats.stats.median)


@pytest.mark.parametrize("backend", STACK_BACKENDS)
def test_copy_up(benchmark, backend, stack, tmp_path, record) -> None:  # noqa: ANN001
    """Copy-up of the 256 MiB lower file: open O_RDWR, write one byte, close."""
    require_stack(backend)
    _measure(benchmark, backend, stack, tmp_path / "mp", _copy_up)
    record("copy-up 256 MiB s", backend, benchmark.stats.stats.median)


# -- the container root a FlatImage user runs: the big corpus layer + a small layer ------
#: fim's one mount against what upstream FlatImage runs (fuse-overlayfs over one native
#: dwarfs mount per layer), and fuse-overlayfs over fim's own layer mounts.
ROOT_BACKENDS = ["fim", "fuse-overlayfs+dwarfs", "fuse-overlayfs"]
ROOT_ROUNDS = 3


@pytest.fixture(scope="session")
def root_layers(cache_dir: Path) -> list[Path]:
    """bench/.cache/corpus.dwarfs (bench_create's image of the corpus) and a small layer on
    top that replaces a few hundred of its files and adds some."""
    corpus = cache_dir / "corpus.dwarfs"
    if not corpus.exists():
        pytest.skip("no bench/.cache/corpus.dwarfs: run bench/bench_create.py first")
    small = cache_dir / "stack" / "small.dwarfs"
    if not small.exists():
        from bench.corpus import build

        src, tree = build(), cache_dir / "stack" / "small"
        shutil.rmtree(tree, ignore_errors=True)
        docs = sorted((src / "usr-share-doc").iterdir())[:300]
        for d in docs:
            (tree / "usr-share-doc" / d.name).mkdir(parents=True)
            (tree / "usr-share-doc" / d.name / "copyright").write_text(f"replaced {d.name}\n")
            (tree / "usr-share-doc" / d.name / "NEWS.fim").write_text("added\n" * 100)
        subprocess.run([sys.executable, "-m", "fim.cli.fim", "create", "-l", "4", str(tree),
                        str(small)], check=True, stdout=subprocess.DEVNULL)
    return [corpus, small]


def _measure_root(benchmark, backend: str, layers: list[Path], mp: Path, action):  # noqa: ANN001, ANN202
    return measure_fresh(benchmark, backend, layers, mp, action, ROOT_ROUNDS,
                         opener=mounted_stack)


@pytest.mark.parametrize("backend", ROOT_BACKENDS)
def test_root_find_walk(benchmark, backend, root_layers, tmp_path, record) -> None:  # noqa: ANN001
    require_stack(backend)
    n, _ = _measure_root(benchmark, backend, root_layers, tmp_path / "mp", find_walk)
    assert n > 1000
    record("root: find -printf walk s", backend, benchmark.stats.stats.median)


@pytest.mark.parametrize("backend", ROOT_BACKENDS)
def test_root_tar_read_all(benchmark, backend, root_layers, tmp_path, record) -> None:  # noqa: ANN001
    require_stack(backend)
    _, rss = _measure_root(benchmark, backend, root_layers, tmp_path / "mp", tar_read)
    record("root: tar c . | cat s", backend, benchmark.stats.stats.median)
    record("root: peak RSS MiB", backend, rss)

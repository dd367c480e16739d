"""Writes through the writable stack (issue 24): fim's one mount vs fuse-overlayfs and
the kernel overlay, each over fim's mount of the same small DwarFS layer.

Workloads, each on a fresh mount with an empty upper and dropped caches:
- untar: `tar -xf` of an archive of Python's standard library (~2,450 files, no caches);
- touch: 10,000 empty files (`seq 10000 | xargs touch`);
- 1 GiB: `dd bs=1M count=1024 conv=fsync` (fsync reaches the upper's disk);
- rm -rf: the untarred tree removed (untarred untimed first).

``test_requests`` counts what fim's daemon is asked (libfuse's request log, ``-o
debug``): the kernel's requests by opcode and the calls libfuse makes into fim, which
include its own getattr after CREATE, MKDIR and SETATTR. Exact, unlike the times.

Run (root, for the kernel overlay): flock /tmp/fim-bench.lock .venv/bin/pytest bench/bench_write.py
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import time
from collections import Counter
from pathlib import Path

import pytest

from bench.mounts import FIM, measure_fresh, mounted_stack, require_stack

BACKENDS = ["fim", "fuse-overlayfs", "kernel-overlay"]
ROUNDS = int(os.environ.get("FIM_BENCH_WRITE_ROUNDS", "3"))  # the 2-core VM is shared
TOUCH_FILES = 10_000


@pytest.fixture(scope="session")
def layer(cache_dir: Path) -> list[Path]:
    """One small DwarFS layer (a few files under /etc) under the upper."""
    image = cache_dir / "write" / "base.dwarfs"
    if not image.exists():
        tree = cache_dir / "write" / "base"
        (tree / "etc").mkdir(parents=True, exist_ok=True)
        (tree / "etc" / "hostname").write_text("fim\n")
        subprocess.run([sys.executable, "-m", "fim.cli.fim", "create", str(tree), str(image)],
                       check=True, stdout=subprocess.DEVNULL)
    return [image]


@pytest.fixture(scope="session")
def stdlib_tar(cache_dir: Path) -> Path:
    """An uncompressed tar of the standard library (no site-packages, no caches)."""
    archive = cache_dir / "write" / "stdlib.tar"
    if not archive.exists():
        archive.parent.mkdir(parents=True, exist_ok=True)
        src = Path(sysconfig.get_paths()["stdlib"])
        subprocess.run(["tar", "-cf", str(archive), "--exclude=site-packages",
                        "--exclude=__pycache__", "-C", str(src.parent), src.name], check=True)
    return archive


def _untar(archive: Path):  # noqa: ANN202
    def action(root: Path) -> None:
        (root / "x").mkdir()
        subprocess.run(["tar", "-xf", str(archive), "-C", str(root / "x")], check=True)
    return action


def _touch(root: Path) -> None:
    (root / "t").mkdir()
    subprocess.run(f"seq {TOUCH_FILES} | xargs touch", shell=True, cwd=root / "t", check=True)


def _dd(root: Path) -> None:
    subprocess.run(["dd", "if=/dev/zero", f"of={root / 'big'}", "bs=1M", "count=1024",
                    "conv=fsync", "status=none"], check=True)


def _rm(root: Path) -> None:
    subprocess.run(["rm", "-rf", str(root / "x")], check=True)


def _measure(benchmark, backend, layer, tmp_path, action, prepare=None):  # noqa: ANN001, ANN202
    require_stack(backend)
    return measure_fresh(benchmark, backend, layer, tmp_path / "mp", action, ROUNDS,
                         opener=mounted_stack, prepare=prepare)


@pytest.mark.parametrize("backend", BACKENDS)
def test_untar(benchmark, backend, layer, stdlib_tar, tmp_path, record) -> None:  # noqa: ANN001
    _measure(benchmark, backend, layer, tmp_path, _untar(stdlib_tar))
    record("untar stdlib s", backend, benchmark.stats.stats.median)


@pytest.mark.parametrize("backend", BACKENDS)
def test_touch(benchmark, backend, layer, tmp_path, record) -> None:  # noqa: ANN001
    _measure(benchmark, backend, layer, tmp_path, _touch)
    record(f"touch {TOUCH_FILES} s", backend, benchmark.stats.stats.median)


@pytest.mark.parametrize("backend", BACKENDS)
def test_write_1g_fsync(benchmark, backend, layer, tmp_path, record) -> None:  # noqa: ANN001
    _measure(benchmark, backend, layer, tmp_path, _dd)
    record("dd 1 GiB fsync s", backend, benchmark.stats.stats.median)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rm_rf(benchmark, backend, layer, stdlib_tar, tmp_path, record) -> None:  # noqa: ANN001
    _measure(benchmark, backend, layer, tmp_path, _rm, prepare=_untar(stdlib_tar))
    record("rm -rf stdlib s", backend, benchmark.stats.stats.median)


#: A kernel request in libfuse's debug log, and a call libfuse makes into the filesystem.
_REQUEST = re.compile(r"^unique: \d+, opcode: (\w+)", re.M)
_CALL = re.compile(r"^(getattr|create|utimens|chmod|chown|mkdir|write|release)\[", re.M)


@pytest.mark.parametrize("workload", ["untar", "touch"])
def test_requests(workload, layer, stdlib_tar, tmp_path, record) -> None:  # noqa: ANN001
    """The requests of one run of the workload on a fresh fim mount (see the module)."""
    mp, upper, log = tmp_path / "mp", tmp_path / "upper", tmp_path / "debug.log"
    mp.mkdir()
    upper.mkdir()
    with open(log, "w") as out:
        proc = subprocess.Popen([*FIM, "mount", "--foreground", "-o", "debug", "--upper",
                                 str(upper), "--layer", str(layer[0]), str(mp)],
                                stdout=out, stderr=out)
    try:
        while not os.path.ismount(mp):
            assert proc.poll() is None, log.read_text()
            time.sleep(0.01)
        (_untar(stdlib_tar) if workload == "untar" else _touch)(mp)
    finally:
        subprocess.run(["fusermount3", "-u", str(mp)], check=True)
        proc.wait(60)
    text = log.read_text()
    requests, calls = Counter(_REQUEST.findall(text)), Counter(_CALL.findall(text))
    print(f"\n{workload}: requests {dict(requests.most_common())}\n"
          f"{workload}: calls into fim {dict(calls.most_common())}")
    for name in ("LOOKUP", "GETATTR", "CREATE", "SETATTR", "WRITE", "GETXATTR", "FLUSH"):
        record(f"{workload} {name} requests", "fim", requests[name])
    record(f"{workload} getattr calls", "fim", calls["getattr"])

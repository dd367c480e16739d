"""Building a layer: `fim create` vs `mksquashfs -comp zstd` (and native mkdwarfs when
on PATH) on the bench corpus (bench/corpus.py): wall time, CPU time, peak RSS and
output size of each builder, measured as a child process (wait4 rusage).

The default-level fim image is kept as bench/.cache/corpus.dwarfs and mkdwarfs' as
bench/.cache/corpus.mkdwarfs, which the reader and stack benchmarks then use.
Run: .venv/bin/pytest bench/bench_create.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import corpus

FIM = [sys.executable, "-m", "fim.cli.fim", "create"]
# backend -> argv builder; "fim" (the default level 7) is what the others are compared to
BUILDERS = {
    "fim": lambda src, out: [*FIM, src, out],
    "fim-l4": lambda src, out: [*FIM, src, out, "-l", "4"],
    "fim-l9": lambda src, out: [*FIM, src, out, "-l", "9"],
    "mksquashfs": lambda src, out: ["mksquashfs", src, out, "-comp", "zstd", "-noappend",
                                    "-quiet", "-no-progress"],
    "mkdwarfs": lambda src, out: ["mkdwarfs", "-i", src, "-o", out, "-l", "7", "--force",
                                  "--no-progress"],
}
TOOL = {"mksquashfs": "mksquashfs", "mkdwarfs": "mkdwarfs"}


@pytest.fixture(scope="session")
def tree() -> Path:
    return corpus.build()


def measure(argv: list[str]) -> dict[str, float]:
    """Run one build; its wall and CPU seconds and peak RSS (MiB)."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            cwd=Path(__file__).resolve().parents[1])
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{argv[0]} failed: {proc.stderr.read().decode()}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_rss_mib": usage.ru_maxrss / 1024}


@pytest.mark.parametrize("backend", list(BUILDERS))
def test_create(backend: str, benchmark, tree: Path, cache_dir: Path, record) -> None:  # noqa: ANN001
    tool = TOOL.get(backend)
    if tool and shutil.which(tool) is None:
        pytest.skip(f"{tool} not on PATH")
    out = cache_dir / f"create-{backend}.img"
    out.unlink(missing_ok=True)
    figures: dict[str, float] = {}
    benchmark.pedantic(
        lambda: figures.update(measure(BUILDERS[backend](str(tree), str(out)))),
        rounds=1, iterations=1)
    figures["size_mib"] = out.stat().st_size / 2**20
    benchmark.extra_info.update(figures, corpus=corpus.describe())
    for name, value in figures.items():
        record(f"create {name}", backend, value)
    if backend == "fim":
        out.replace(cache_dir / "corpus.dwarfs")
    elif backend == "mkdwarfs":  # the reader suite's "mkdwarfs image"
        out.replace(cache_dir / "corpus.mkdwarfs")

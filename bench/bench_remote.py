"""Images and layers over the network (issue 25), against nginx on loopback.

- `fim run URL fim-exec cat FILE`: bytes fetched by a first run (empty block cache) and
  a second one, as a share of the image's bytes; start-up against the same image run
  locally. The image is ``FIM_BENCH_REMOTE_IMAGE`` (a Debian image, ``fim build debian``;
  FILE = /etc/debian_version), else a blueprint built here (FILE = /etc/passwd).
- `fim-update run` from v1 to v2 = v1 + one layer of 8 MiB that does not compress:
  bytes fetched against the layer's size; the result is checked byte for byte.
- Random 4 KiB reads of a layer (32 MiB of /usr/share/doc, `fim create`'s defaults)
  over loopback, with the on-disk block cache empty ("remote-cold") and filled
  ("remote-warm"), side by side with the local file ("fim").

Figures, command and machine: bench/RESULTS.md.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.http_servers import Nginx

ROUNDS = 5
#: The layer of the random reads (``FIM_BENCH_CORPUS_MB`` for a quick check of the suite).
CORPUS_BYTES = int(os.environ.get("FIM_BENCH_CORPUS_MB", "32")) << 20


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def _fim(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "fim.cli.fim", *args], capture_output=True,
                          text=True, env=env, timeout=1800)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Nginx, str]]:
    """nginx serving ``app.flatimage`` and ``corpus.dwarfs``; the file the run reads."""
    d = tmp_path_factory.mktemp("remote")
    www = d / "www"
    www.mkdir()
    given = os.environ.get("FIM_BENCH_REMOTE_IMAGE")
    if given:
        shutil.copy2(given, www / "app.flatimage")
        target = "/etc/debian_version"
    else:
        _fim("build", "blueprint", "-o", str(www / "app.flatimage"), "--runtime", "python")
        target = "/etc/passwd"
    tree = d / "tree"
    total = 0
    for root, _, files in os.walk("/usr/share/doc"):
        for name in sorted(files):
            src = os.path.join(root, name)
            if total > CORPUS_BYTES or not os.path.isfile(src) or os.path.islink(src):
                continue
            dst = tree / os.path.relpath(src, "/usr/share/doc")
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            total += dst.stat().st_size
    _fim("create", str(tree), str(www / "corpus.dwarfs"))
    server = Nginx(www, d / "nginx")
    yield server, target
    server.stop()


def _env(home: Path) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
            "XDG_CACHE_HOME": str(home / "cache"), "XDG_DATA_HOME": str(home / "data")}


def _timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def test_run_url(site: tuple[Nginx, str], tmp_path: Path, record) -> None:  # noqa: ANN001
    server, target = site
    app = server.root / "app.flatimage"
    size = app.stat().st_size
    url = f"{server.url}/app.flatimage"
    env = _env(tmp_path)
    remote = [sys.executable, "-m", "fim.cli.fim", "run", url, "fim-exec", "cat", target]
    before = server.bytes_sent()
    first = _timed(remote, env)
    first_bytes = server.bytes_sent() - before
    warm, warm_bytes = [], []
    for _ in range(ROUNDS):
        before = server.bytes_sent()
        warm.append(_timed(remote, env))
        warm_bytes.append(server.bytes_sent() - before)
    local = _median([_timed([str(app), "fim-exec", "cat", target], env)
                     for _ in range(ROUNDS)])
    record("first run bytes %", "fim", 100 * first_bytes / size)
    record("second run bytes %", "fim", 100 * max(warm_bytes) / size)
    record("start-up local s", "fim", local)
    record("start-up remote cold s", "fim", first)
    record("start-up remote warm s", "fim", _median(warm))
    print(f"\nimage {size} B; first run fetched {first_bytes} B "
          f"({100 * first_bytes / size:.2f} %), next runs {max(warm_bytes)} B; start-up "
          f"local {local:.3f} s, remote cold {first:.3f} s, warm {_median(warm):.3f} s")


def test_update_v1_to_v2(site: tuple[Nginx, str], tmp_path: Path, record) -> None:  # noqa: ANN001
    server, _ = site
    env = _env(tmp_path)
    v2 = server.root / "v2.flatimage"
    client = tmp_path / "client.flatimage"
    shutil.copy2(server.root / "app.flatimage", client)
    url = f"{server.url}/v2.flatimage"
    _fim("run", str(client), "fim-update", "set", url, env=env)
    shutil.copy2(client, v2)
    tree = tmp_path / "layer"
    (tree / "opt").mkdir(parents=True)
    (tree / "opt" / "blob").write_bytes(random.Random(2).randbytes(8 << 20))
    layer = tmp_path / "v2.layer"
    _fim("create", str(tree), str(layer))
    _fim("run", str(v2), "fim-layer", "add", str(layer), env=env)
    digest = hashlib.sha256(v2.read_bytes()).hexdigest()
    Path(f"{v2}.sha256sum").write_text(f"{digest}  {v2.name}\n")
    before = server.bytes_sent()
    start = time.perf_counter()
    _fim("run", str(client), "fim-update", "run", env=env)
    seconds = time.perf_counter() - start
    fetched = server.bytes_sent() - before
    assert client.read_bytes() == v2.read_bytes()
    over = fetched - layer.stat().st_size
    record("update fetched - layer KiB", "fim", over / 1024)
    record("update s", "fim", seconds)
    print(f"\nv2 {v2.stat().st_size} B, layer {layer.stat().st_size} B, fetched {fetched} B "
          f"(layer + {over / 1024:.0f} KiB), {seconds:.2f} s")


def _random_reads(fs, files: list[tuple[str, int]], n: int, seed: int) -> None:  # noqa: ANN001
    rng = random.Random(seed)
    for _ in range(n):
        path, size = rng.choice(files)
        fs.read(path, 4096, rng.randrange(max(1, size - 4096)), 0)


@pytest.mark.parametrize("where", ["fim", "remote-cold", "remote-warm"])
def test_random_4k_reads(site: tuple[Nginx, str], tmp_path: Path, benchmark, record,  # noqa: ANN001
                         monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    from fim.fimfs.dwarfs import DwarfsImage

    server, _ = site
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    source = (str(server.root / "corpus.dwarfs") if where == "fim"
              else f"{server.url}/corpus.dwarfs")
    with DwarfsImage.from_path(source) as img:
        files = [(p, img.attr_of(e).size) for p, e in img.walk()
                 if img.attr_of(e).size > 0 and img.attr_of(e).mode & 0o170000 == 0o100000]
    if where == "remote-warm":
        with DwarfsImage.from_path(source) as img:
            _random_reads(img, files, 200, 7)
    rounds: list[float] = []

    def setup() -> tuple[tuple[object], dict]:
        if where == "remote-cold":
            shutil.rmtree(tmp_path / "cache", ignore_errors=True)
        return (DwarfsImage.from_path(source),), {}

    def reads(img) -> None:  # noqa: ANN001
        start = time.perf_counter()
        _random_reads(img, files, 200, 7)
        rounds.append(time.perf_counter() - start)
        img.close()

    benchmark.pedantic(reads, setup=setup, rounds=ROUNDS)
    record("200 random 4 KiB reads s", where, _median(rounds))

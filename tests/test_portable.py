"""The portable runtime: an image built with `--runtime frozen` runs in a minimal Debian
root (debootstrap --variant=minbase: no python3) entered with pivot_root (a chroot forbids
user namespaces, which every sandbox uses), with only /proc and /dev
from the host. The root is made once and cached in tests/.cache (git-ignored)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from fim.app import image
from fim.cli.build import frozen
from tests import containers

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (debootstrap, mounts)"),
    pytest.mark.skipif(not frozen.available(), reason="needs PyInstaller (pip install .[build])"),
]

def minbase_root() -> Path:
    """The cached minimal Debian root, made on first use."""
    return containers.minbase_root("trixie")  # the one tests/test_hosts.py uses


@pytest.fixture
def frozen_image(blueprint: Path) -> Path:
    """The session's portable blueprint image (tests/conftest.py)."""
    return blueprint


@pytest.fixture
def root(tmp_path: Path, frozen_image: Path) -> Path:
    """A copy of the minbase root with the image at /app.flatimage."""
    copy = tmp_path / "root"
    subprocess.run(["cp", "-a", str(minbase_root()), str(copy)], check=True)
    shutil.copy2(frozen_image, copy / "app.flatimage")
    return copy


def in_root(root: Path, *argv: str, input: str | None = None,
            ) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in ``root`` with the host's /proc and /dev, in a private mount namespace
    whose root it becomes (pivot_root; the binds go away with it), with a clean
    environment."""
    script = ('mount --bind "$1" "$1" && mount --rbind /proc "$1/proc" && '
              'mount --rbind /dev "$1/dev" && cd "$1" && mkdir -p .old && '
              'pivot_root . .old && cd / && umount -l /.old && rmdir /.old && '
              'shift && exec "$@"')
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": "/root",
           "LANG": "C.UTF-8"}
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           script, "sh", str(root), *argv],
                          capture_output=True, text=True, env=env, timeout=120, input=input)


def ok(root: Path, *argv: str) -> str:
    proc = in_root(root, *argv)
    assert (proc.returncode, proc.stderr) == (0, ""), proc
    return proc.stdout


def test_runs_without_python(root: Path, frozen_image: Path) -> None:
    assert not any((root / d / "python3").exists() for d in ("usr/bin", "bin", "usr/local/bin"))
    assert in_root(root, "sh", "-c", "command -v python3").returncode != 0
    start = time.monotonic()
    full = ok(root, "/app.flatimage", "fim-version", "full")
    print(f"first run (extraction included): {time.monotonic() - start:.2f} s")
    assert '"DISTRIBUTION": "BLUEPRINT"' in full
    start = time.monotonic()
    ok(root, "/app.flatimage", "fim-version", "short")
    print(f"next run: {time.monotonic() - start:.2f} s")
    assert ok(root, "/app.flatimage", "fim-perms", "add", "home") == ""
    assert ok(root, "/app.flatimage", "fim-perms", "list") == "home\n"
    layers = image.list_layers(image.read_layout(str(frozen_image)))
    assert ok(root, "/app.flatimage", "fim-layer", "list") == (
        f"0:{layers[0].offset}:{layers[0].size}:/app.flatimage\n")
    # the edit went into the copy inside the root, not the built image
    assert (root / "app.flatimage").read_bytes() != frozen_image.read_bytes()


def test_bundled_tools(root: Path, frozen_image: Path) -> None:
    deps = ok(root, "/app.flatimage", "fim-version", "deps")
    for name in ("bwrap", "libfuse", "python"):
        assert f'"{name}": {{' in deps
    # the first private runtime directory (app/rundir.py) of root in that root
    app = f"/tmp/fim-0/app/{image.read_layout(str(frozen_image)).build_id}"
    assert ok(root, f"{app}/bin/bwrap", "--version").startswith("bubblewrap ")
    assert os.path.isfile(f"{root}{app}/bin/_internal/libfuse3.so.3")


def test_runs_programs_without_python(root: Path) -> None:
    """Containers run in a root with no python3: the frozen fim mounts the stack and
    starts the bundled bwrap and bash."""
    assert ok(root, "/app.flatimage", "fim-exec", "sh", "-c", "echo hi") == "hi\n"
    assert ok(root, "/app.flatimage", "fim-root", "id", "-u") == "0\n"
    proc = in_root(root, "/app.flatimage", input="echo piped $((1 + 1))\nexit 3\n")
    assert (proc.returncode, proc.stdout) == (3, "piped 2\n"), proc

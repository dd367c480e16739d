"""Helpers of the tests that build and run real single-file images: built with `fim
create` + `fim image new`, run as subprocesses (tests/conftest.py makes the ``template``
and ``app`` fixtures of them)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fim.app import config, image, runtime
from fim.osutil.files import remove_tree

IMAGE_NAME = "app.flatimage"
SYSTEM_PYTHON = "/usr/bin/python3"


def fim(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the `fim` tool; fails the test if it fails."""
    proc = subprocess.run([sys.executable, "-m", "fim.cli.fim", *args], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc


def make_layer(directory: Path, name: str = "base", files: dict[str, str] | None = None) -> Path:
    """A DwarFS layer made by `fim create` from a small tree."""
    src = directory / f"{name}-tree"
    for rel, text in (files or {"etc/os-release": "NAME=test\n", "usr/bin/hello": "hi\n"}).items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    out = directory / f"{name}.dwarfs"
    fim("create", str(src), str(out))
    return out


def new_image(path: Path, *layers: Path, reserved: str = "4m") -> Path:
    """An image made by `fim image new`."""
    fim("image", "new", str(path), "--reserved-size", reserved,
        *(a for la in layers for a in ("--layer", str(la))))
    return path


def template_image(factory: pytest.TempPathFactory) -> Iterator[Path]:
    """For the ``template`` fixture (tests/conftest.py): an image with one layer, its
    extraction directory removed at the end."""
    d = factory.mktemp("template")
    path = new_image(d / IMAGE_NAME, make_layer(d))
    yield path
    remove_runtime(path)


def runtime_dirs(path: Path) -> list[Path]:
    """Every FIM_DIR_APP the runtime of the image ``path`` may be unpacked to, for the
    tests' user and the unprivileged test user (tests/containers.py) when it exists."""
    import pwd

    build = image.read_layout(str(path)).build_id
    users: list[tuple[int, dict[str, str]]] = [(os.getuid(), dict(os.environ))]
    try:
        entry = pwd.getpwnam("fimuser")
        users.append((entry.pw_uid, {"HOME": entry.pw_dir}))
    except KeyError:
        pass
    return [Path(d) for uid, env in users for d in runtime.app_dirs(build, uid, env)]


def unpacked(path: Path) -> Path:
    """FIM_DIR_APP of the image ``path`` as the tests' user runs it (tests/images.run)."""
    return Path(runtime.app_dirs(image.read_layout(str(path)).build_id, os.getuid(),
                                 {"HOME": str(path.parent / "home")})[0])


def remove_runtime(path: Path) -> None:
    """The extraction directories of an image's runtime (shared by its copies)."""
    for directory in runtime_dirs(path):
        # never into a mount: another run of the same runtime may be up (same build id)
        remove_tree(str(directory))


def stored(app: Path) -> config.Config:
    """The configuration stored in an image, read directly."""
    return config.load(image.read_layout(str(app)))


def fresh_copy(tmp_path: Path, template: Path) -> Path:
    """A copy of the template image, as ./app.flatimage beside an empty ./home."""
    path = tmp_path / IMAGE_NAME
    shutil.copy2(template, path)
    (tmp_path / "home").mkdir()
    return path


def with_reserved_size(template: Path, path: Path, reserved_size: int) -> Path:
    """An image with the template's launcher and payload (so no new extraction) but
    another reserved size and no layer."""
    layout = image.read_layout(str(template))
    data = template.read_bytes()
    launcher = data[image.HEADER_END:layout.payload_offset].decode()
    payload = data[layout.payload_offset:layout.payload_offset + layout.payload_size]
    image.create(str(path), launcher, payload, reserved_size=reserved_size, dist=layout.dist)
    (path.parent / "home").mkdir(exist_ok=True)
    return path



def run(app: Path, *args: str, env: dict[str, str] | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the image with a clean environment (no FIM_* from the caller)."""
    base = {"PATH": os.environ["PATH"], "HOME": str(app.parent / "home"), "LANG": "C.UTF-8"}
    for _ in range(500):
        try:
            return subprocess.run([str(app), *args], env={**base, **(env or {})},
                                  capture_output=True, text=True, cwd=cwd or app.parent,
                                  timeout=60)
        except OSError as exc:
            # Linux does not execute a file while it is open for writing: an edit running
            # at this very moment (the writer holds it for microseconds; app.image).
            if exc.errno != errno.ETXTBSY:
                raise
            time.sleep(0.01)
    raise AssertionError(f"{app} stayed busy")


def ok(app: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run a command that must succeed without any warning; its stdout."""
    proc = run(app, *args, env=env)
    assert (proc.returncode, proc.stderr) == (0, ""), proc
    return proc.stdout


def fails(app: Path, *args: str, message: str, level: str | None = None,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command that must fail with exit 125 and ``message`` on stderr (in a log
    line of ``level`` if given), ending with the spec's last line."""
    proc = run(app, *args, env=env)
    assert proc.returncode == 125, proc
    found = [line for line in proc.stderr.splitlines() if message in line]
    assert found, proc.stderr
    assert level is None or found[0].startswith(f"{level}::"), proc.stderr
    assert proc.stderr.splitlines()[-1].endswith("::The program exited with an error")
    return proc

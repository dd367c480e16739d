"""fim.app.image: the single-file layout, layer discovery, crash-safe appends, the launcher,
`fim image new|info`. The helpers the image tests share are in tests/images.py."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import struct
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fim.app import image, runtime
from fim.app.image import FimImageError
from fim.cli.build import payload
from tests.containers import isolated
from tests.images import (
    IMAGE_NAME,
    SYSTEM_PYTHON,
    fim,
    make_layer,
    new_image,
    ok,
    remove_runtime,
    run,
    unpacked,
)

# -- the format, in-process -----------------------------------------------------------------

LAUNCHER = "echo launcher\nexit 0\n"


@pytest.fixture
def layers(tmp_path: Path) -> list[Path]:
    a = make_layer(tmp_path, "a", {"a": "first"})
    b = make_layer(tmp_path, "b", {"b": "second layer"})
    return [a, b]


def test_layout_is_exactly_as_documented(tmp_path: Path, layers: list[Path]) -> None:
    payload = os.urandom(5000)
    path = str(tmp_path / "x")
    layout = image.create(path, LAUNCHER, payload, reserved_size=8192, layers=layers,
                          dist="ROOTFS")
    data = Path(path).read_bytes()
    assert data[:10] == b"#!/bin/sh\n"
    assert data[11:14] == b"FI\x01" and data[10:11] == b"#"
    assert data[127:128] == b"\n" and b"\n" not in data[10:127]
    assert data[128:128 + len(LAUNCHER)] == LAUNCHER.encode()
    assert layout.payload_offset == 128 + len(LAUNCHER)
    assert data[layout.payload_offset:layout.payload_offset + 5000] == payload
    assert layout.reserved_offset % 4096 == 0
    assert layout.reserved_offset >= layout.payload_offset + 5000
    assert data[layout.payload_offset + 5000:layout.layers_offset] == bytes(
        layout.layers_offset - layout.payload_offset - 5000)
    assert image.read_layout(path).as_dict() == layout.as_dict()
    assert layout.build_id == __import__("hashlib").sha256(payload).hexdigest()[:16]
    pos, found = layout.layers_offset, []
    for layer in layers:
        content = layer.read_bytes()
        assert struct.unpack_from("<Q", data, pos)[0] == len(content)
        assert data[pos + 8:pos + 8 + len(content)] == content
        found.append(image.Layer(path, pos + 8, len(content)))
        pos += 8 + len(content)
    assert pos == len(data)
    assert image.list_layers(layout) == found
    assert os.stat(path).st_mode & 0o777 == 0o755
    assert subprocess.run([path], capture_output=True, text=True).stdout == "launcher\n"


def test_layer_discovery_stops_like_flatimage(tmp_path: Path, layers: list[Path]) -> None:
    path = str(tmp_path / "x")
    layout = image.create(path, LAUNCHER, b"p", reserved_size=8192, layers=layers[:1],
                          dist="ROOTFS")
    one = image.list_layers(layout)
    good = layers[1].read_bytes()
    valid = struct.pack("<Q", len(good)) + good
    tails = [
        struct.pack("<Q", 0) + valid,  # size zero, then a valid layer that stays hidden
        struct.pack("<Q", len(good)) + b"X" + good[1:] + valid,  # not DwarFS
        struct.pack("<Q", len(good) + 1) + good,  # runs past the end of the file
        b"\x05\x00",  # a short size field
    ]
    for tail in tails:
        with open(path, "r+b") as f:
            f.truncate(layout.layers_offset + 8 + one[0].size)
            f.seek(0, 2)
            f.write(tail)
        assert image.list_layers(layout) == one
    with open(path, "ab") as f:
        f.write(valid)
    assert len(image.list_layers(layout)) == 1  # still behind the short size field


def test_append_layer_is_recorded_only_when_complete(tmp_path: Path,
                                                     layers: list[Path]) -> None:
    path = str(tmp_path / "x")
    layout = image.create(path, LAUNCHER, b"p", reserved_size=8192, layers=layers[:1],
                          dist="ROOTFS")
    before = image.list_layers(layout)
    end = os.path.getsize(path)
    # What a crash in the middle of an append leaves: a zero size, part of the data.
    with open(path, "ab") as f:
        f.write(struct.pack("<Q", 0) + layers[1].read_bytes()[:100])
    assert image.list_layers(layout) == before
    added = image.append_layer(layout, str(layers[1]))
    assert added == image.Layer(path, end + 8, layers[1].stat().st_size)
    assert image.list_layers(layout) == [*before, added]
    assert os.path.getsize(path) == end + 8 + layers[1].stat().st_size
    again = image.append_layer(layout, str(layers[0]))
    assert image.list_layers(layout) == [*before, added, again]


def test_append_refuses_what_discovery_would_hide(tmp_path: Path, layers: list[Path]) -> None:
    path = str(tmp_path / "x")
    layout = image.create(path, LAUNCHER, b"p", reserved_size=8192, layers=layers,
                          dist="ROOTFS")
    bogus = tmp_path / "bogus"
    bogus.write_bytes(b"not a dwarfs image")
    before = Path(path).read_bytes()
    with pytest.raises(FimImageError, match="not a DwarFS image"):
        image.append_layer(layout, str(bogus))
    with pytest.raises(FimImageError, match="Could not read layer"):
        image.append_layer(layout, str(tmp_path / "missing"))
    assert Path(path).read_bytes() == before


@pytest.mark.parametrize("size", [0, 4096, 12345, 8192 + 1])
def test_reserved_size_must_be_whole_pages(tmp_path: Path, size: int) -> None:
    with pytest.raises(FimImageError, match="reserved size"):
        image.create(str(tmp_path / "x"), LAUNCHER, b"p", reserved_size=size, dist="ROOTFS")
    assert not list(tmp_path.iterdir())


def test_create_refuses_bad_layers_and_leaves_nothing(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus"
    bogus.write_bytes(b"nope")
    with pytest.raises(FimImageError, match="not a DwarFS image"):
        image.create(str(tmp_path / "x"), LAUNCHER, b"p", layers=[str(bogus)], dist="ROOTFS")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bogus"]


def test_files_that_are_not_images(tmp_path: Path, layers: list[Path]) -> None:
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\necho hello\n" + " " * 200)
    for path in (script, layers[0]):
        with pytest.raises(FimImageError, match="is not a fim image"):
            image.read_layout(str(path))
    with pytest.raises(FimImageError, match="Could not read image"):
        image.read_layout(str(tmp_path / "missing"))
    full = str(tmp_path / "x")
    layout = image.create(full, LAUNCHER, b"p", reserved_size=8192, dist="ROOTFS")
    os.truncate(full, layout.layers_offset - 1)
    with pytest.raises(FimImageError, match="truncated"):
        image.read_layout(full)


# -- `fim image`, the launcher and its bootstrap ------------------------------------------

def test_fim_image_new_and_info(tmp_path: Path, layers: list[Path]) -> None:
    path = new_image(tmp_path / IMAGE_NAME, *layers, reserved="64k")
    info = json.loads(fim("image", "info", str(path)).stdout)
    layout = image.read_layout(str(path))
    assert info["reserved_offset"] == layout.reserved_offset
    assert info["reserved_size"] == 65536 and info["dist"] == "ROOTFS"
    assert info["config_capacity"] == 32768 - 32
    assert [(la["offset"], la["size"]) for la in info["layers"]] == [
        (la.offset, la.size) for la in image.list_layers(layout)]
    assert info["config"]["overlay"] == "fimfs"
    version = subprocess.run([str(path), "fim-version", "short"], capture_output=True,
                             text=True, timeout=60)
    assert version.stdout.startswith("v") and version.returncode == 0
    remove_runtime(path)


def test_fim_image_new_refuses_a_bad_layer(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus"
    bogus.write_bytes(b"x" * 100)
    proc = subprocess.run([sys.executable, "-m", "fim.cli.fim", "image", "new",
                           str(tmp_path / "out"), "--layer", str(bogus)],
                          capture_output=True, text=True)
    assert proc.returncode == 125 and "is not a DwarFS image" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_payload_is_extracted_once_per_build(app: Path) -> None:
    lib = unpacked(app) / "lib"
    ok(app, "fim-version", "short")
    first = lib.stat().st_ino
    assert (lib / "fim" / "cli" / "boot.py").is_file() and (lib / runtime.BUILD_INFO).is_file()
    ok(app, "fim-version", "short")
    assert lib.stat().st_ino == first


def test_concurrent_first_runs_share_one_extraction(tmp_path: Path, layers: list[Path]) -> None:
    rt = payload.build()
    path = tmp_path / IMAGE_NAME
    image.create(str(path), rt.launcher, rt.payload, layers=layers, dist="ROOTFS")
    app = unpacked(path)
    shutil.rmtree(app, ignore_errors=True)
    with ThreadPoolExecutor(6) as pool:
        procs = list(pool.map(lambda _: run(path, "fim-version", "short"), range(6)))
    assert all(p.returncode == 0 and p.stdout.startswith("v") for p in procs), procs
    assert sorted(p.name for p in app.iterdir()) == ["bin", "lib"]
    shutil.rmtree(app)


def _image_with_python(tmp_path: Path, python: str) -> Path:
    rt = payload.build()
    launcher = rt.launcher.replace(f"py={shlex.quote(sys.executable)}\n", f"py={python}\n")
    assert launcher != rt.launcher
    path = tmp_path / IMAGE_NAME
    image.create(str(path), launcher, rt.payload, dist="ROOTFS")
    (tmp_path / "home").mkdir()
    return path


@pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON), reason="no system python3")
def test_config_commands_need_only_a_bare_python3(tmp_path: Path) -> None:
    path = _image_with_python(tmp_path, "/nonexistent/python")
    env = {"PATH": f"{tmp_path / 'bin'}:/bin"}
    (tmp_path / "bin").mkdir()
    os.symlink(SYSTEM_PYTHON, tmp_path / "bin" / "python3")
    assert ok(path, "fim-perms", "add", "home,network", env=env) == ""
    assert ok(path, "fim-perms", "list", env=env) == "home\nnetwork\n"
    remove_runtime(path)


def test_no_python_is_a_clear_error(tmp_path: Path) -> None:
    path = _image_with_python(tmp_path, "/nonexistent/python")
    proc = run(path, "fim-version", "short", env={"PATH": "/nonexistent"})
    assert proc.returncode == 125
    assert proc.stderr == "C::launcher::python3 is needed to run this image and was not found\n"


def test_passes_over_a_runtime_directory_another_user_made(tmp_path: Path) -> None:
    """Another user (nobody) made /tmp/fim-UID with a planted lib/: the bootstrap uses
    the next private directory (the cache) with one warning; the planted code never runs
    (tests/test_runtime_dir.py does the same against the portable runtime)."""
    rt = payload.build()
    path = tmp_path / IMAGE_NAME
    layout = image.create(str(path), rt.launcher, rt.payload, dist="ROOTFS")
    os.chmod(tmp_path, 0o755)
    base = f"/tmp/fim-{os.getuid()}"
    plant = (f"mkdir -p {base}/app/{layout.build_id}/lib/cli && echo "
             f"{shlex.quote('raise SystemExit(' + repr('planted code ran') + ')')} "
             f"> {base}/app/{layout.build_id}/lib/cli/__init__.py && echo planted")
    cache = tmp_path / "cache"
    script = (f"runuser -u nobody -- sh -c {shlex.quote(plant)}\n"
              f"env -i PATH=/usr/bin:/bin HOME={tmp_path} XDG_CACHE_HOME={cache} "
              f"{path} fim-version short")
    proc = isolated(script, [tmp_path])
    assert proc.stdout.startswith("planted\nv"), proc
    assert proc.stderr == (f"W::launcher::Not using {base}: not a private directory of uid "
                           f"{os.getuid()} (another user's, a symbolic link, or writable by "
                           "others)\n"), proc
    assert (cache / "fim" / "app" / layout.build_id / "lib" / "fim" / "cli" / "boot.py").is_file()


def test_noexec_tmp_unpacks_into_the_cache(tmp_path: Path) -> None:
    rt = payload.build()
    path = tmp_path / IMAGE_NAME
    layout = image.create(str(path), rt.launcher, rt.payload, dist="ROOTFS")
    cache = tmp_path / "cache"
    run = (f"env -i PATH=/usr/bin:/bin HOME={tmp_path} XDG_CACHE_HOME={cache} {path} "
           "fim-version short")
    proc = isolated(f"{run}\n{run}", [tmp_path], noexec=True)
    assert proc.stderr == (
        f"W::launcher::/tmp/fim-{os.getuid()} cannot run programs (noexec): unpacking the "
        f"runtime into {cache}/fim\n"), proc
    assert proc.stdout.count("\nv") == 1 and proc.stdout.startswith("v"), proc
    assert (cache / "fim" / "app" / layout.build_id / "bin" / "bash").is_file()

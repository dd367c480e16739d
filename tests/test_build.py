"""`fim build rootfs|blueprint|debian`: the root each makes, safe tarball extraction,
the checksum file, FIM_DIST. Images use the python runtime here (fast); the frozen
runtime has its own tests (test_portable.py)."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from fim.app import image, runtime
from fim.cli.build import rootfs
from fim.cli.tool.build import compression_level
from tests.images import run

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def build(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fim.cli.fim", "build", *args],
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, **(env or {})})


def built(kind: str, out: Path, *args: str, env: dict[str, str] | None = None) -> Path:
    proc = build(kind, *args, "-o", str(out), "--runtime", "python", env=env)
    assert proc.returncode == 0, proc.stderr
    return out


def extract_layer(img: Path, dest: Path) -> Path:
    """The one layer of ``img`` restored into ``dest``."""
    layers = image.list_layers(image.read_layout(str(img)))
    assert len(layers) == 1
    proc = subprocess.run([sys.executable, "-m", "fim.cli.fim", "extract", "-o",
                           f"offset={layers[0].offset}", str(img), str(dest)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return dest


@pytest.fixture(autouse=True)
def _no_leftover_apps() -> Iterator[None]:
    roots = {os.path.dirname(d) for d in runtime.app_dirs("x", os.getuid(), os.environ)}
    before = {r: set(os.listdir(r)) if os.path.isdir(r) else set() for r in roots}
    yield
    for root in roots:
        if os.path.isdir(root):
            for name in set(os.listdir(root)) - before[root]:
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def assert_skeleton(root: Path) -> None:
    assert not rootfs.missing_skeleton(str(root))
    assert stat.S_IMODE(os.lstat(root / "tmp").st_mode) == 0o1777
    assert stat.S_IMODE(os.lstat(root / "root").st_mode) == 0o700


def assert_checksum(img: Path) -> None:
    sums = img.parent / f"{img.name}.sha256sum"
    assert sums.read_text().endswith(f"  {img.name}\n")
    subprocess.run(["sha256sum", "-c", "--quiet", sums.name], cwd=img.parent, check=True)


def test_compression_level() -> None:
    assert compression_level({}) == 7
    assert compression_level({"FIM_COMPRESSION_LEVEL": "x"}) == 7
    assert compression_level({"FIM_COMPRESSION_LEVEL": "3"}) == 3
    assert compression_level({"FIM_COMPRESSION_LEVEL": "12"}) == 9
    assert compression_level({"FIM_COMPRESSION_LEVEL": "-2"}) == 0


def test_rootfs_directory(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "etc/os-release").write_text("NAME=mine\n")
    (src / "usr/bin").mkdir(parents=True)
    (src / "usr/bin/tool").write_text("#!/bin/sh\n")
    os.chmod(src / "usr/bin/tool", 0o4755)
    os.symlink("usr/bin", src / "bin")
    before = sorted(p.relative_to(src) for p in src.rglob("*"))
    img = built("rootfs", tmp_path / "out.flatimage", str(src),
                env={"FIM_COMPRESSION_LEVEL": "1"})
    assert sorted(p.relative_to(src) for p in src.rglob("*")) == before  # untouched
    root = extract_layer(img, tmp_path / "x")
    assert_skeleton(root)
    assert (root / "etc/os-release").read_text() == "NAME=mine\n"
    assert os.readlink(root / "bin") == "usr/bin"  # an existing entry wins
    assert stat.S_IMODE(os.lstat(root / "usr/bin/tool").st_mode) == 0o4755
    assert_checksum(img)
    assert '"DISTRIBUTION": "ROOTFS"' in run(img, "fim-version", "full").stdout
    # upstream's remote/show.py: the official recipe repository, set at build time
    assert run(img, "fim-remote", "show").stdout == (
        "https://raw.githubusercontent.com/flatimage/recipes/master\n")
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".build")] == []


def _tarball(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, **attrs: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


@pytest.mark.parametrize("compression", ["none", "gz", "zst"])
def test_rootfs_tarball(tmp_path: Path, compression: str) -> None:
    data = _tarball([
        (_member("./", tarfile.DIRTYPE, mode=0o755), None),
        (_member("./etc", tarfile.DIRTYPE, mode=0o755), None),
        (_member("./etc/shadow", mode=0o640, uid=0, gid=42), b"root:*:1::::::\n"),
        (_member("./home/user/notes", mode=0o600, uid=1000, gid=1000), b"hello\n"),
        (_member("./lib", tarfile.SYMTYPE, linkname="/usr/lib"), None),
        (_member("./etc/shadow-", tarfile.LNKTYPE, linkname="./etc/shadow",
                 mode=0o640, gid=42), None),
        (_member("./dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3), None),
    ])
    if compression == "gz":
        import gzip

        data = gzip.compress(data)
    elif compression == "zst":
        data = zstandard.ZstdCompressor().compress(data)
    tarball = tmp_path / f"root.tar.{compression}"
    tarball.write_bytes(data)
    img = built("rootfs", tmp_path / "out.flatimage", str(tarball))
    root = extract_layer(img, tmp_path / "x")
    assert_skeleton(root)
    assert (root / "etc/shadow").read_text() == "root:*:1::::::\n"
    assert os.readlink(root / "lib") == "/usr/lib"
    assert stat.S_IMODE(os.lstat(root / "home/user/notes").st_mode) == 0o600
    if os.geteuid() == 0:
        st = os.lstat(root / "home/user/notes")
        assert (st.st_uid, st.st_gid) == (1000, 1000)
        assert os.lstat(root / "etc/shadow").st_gid == 42
        assert os.lstat(root / "etc/shadow-").st_ino == os.lstat(root / "etc/shadow").st_ino
        dev = os.lstat(root / "dev/null")
        assert stat.S_ISCHR(dev.st_mode) and dev.st_rdev == os.makedev(1, 3)


@pytest.mark.parametrize(("members", "message"), [
    ([(_member("/etc/passwd"), b"x")], "absolute path"),
    ([(_member("etc/../../escape"), b"x")], "'..'"),
    ([(_member("a", tarfile.LNKTYPE, linkname="../outside"), None)], "'..'"),
    ([(_member("evil", tarfile.SYMTYPE, linkname="/tmp"), None),
      (_member("evil/planted"), b"x")], "symbolic link"),
])
def test_rootfs_tarball_unsafe(tmp_path: Path, members: list, message: str) -> None:
    tarball = tmp_path / "bad.tar"
    tarball.write_bytes(_tarball(members))
    proc = build("rootfs", str(tarball), "-o", str(tmp_path / "out.flatimage"),
                 "--runtime", "python")
    assert proc.returncode == 1
    assert message in proc.stderr
    assert not (tmp_path / "out.flatimage").exists()
    assert not os.path.exists("/tmp/planted")


def test_rootfs_errors(tmp_path: Path) -> None:
    proc = build("rootfs", str(tmp_path / "missing"), "-o", str(tmp_path / "o.flatimage"))
    assert proc.returncode == 1 and "no such directory or file" in proc.stderr
    (tmp_path / "junk").write_bytes(b"not a tarball at all" * 100)
    proc = build("rootfs", str(tmp_path / "junk"), "-o", str(tmp_path / "o.flatimage"))
    assert proc.returncode == 1 and "not a readable tarball" in proc.stderr
    proc = build("rootfs", str(tmp_path), "-o", str(tmp_path / "nodir/o.flatimage"))
    assert proc.returncode == 1 and "no such directory" in proc.stderr


def test_blueprint(tmp_path: Path) -> None:
    img = built("blueprint", tmp_path / "bp.flatimage")
    assert_checksum(img)
    assert '"DISTRIBUTION": "BLUEPRINT"' in run(img, "fim-version", "full").stdout
    root = extract_layer(img, tmp_path / "x")
    assert_skeleton(root)
    assert os.readlink(root / "bin/sh") == "/bin/busybox"
    assert os.readlink(root / "usr/bin/awk") == "/bin/busybox"
    assert not (root / "bin/bash").is_symlink()
    assert os.lstat(root / "bin/busybox").st_uid == 0
    if os.geteuid() == 0:
        out = subprocess.run(["chroot", str(root), "/bin/sh", "-c", "echo hi; bash -c 'echo $0'"],
                             capture_output=True, text=True, check=True).stdout
        assert out == "hi\nbash\n"


@pytest.mark.slow
@needs_root
def test_debian(tmp_path: Path) -> None:
    img = built("debian", tmp_path / "debian.flatimage", "--variant", "minbase")
    assert_checksum(img)
    assert '"DISTRIBUTION": "DEBIAN"' in run(img, "fim-version", "full").stdout
    root = extract_layer(img, tmp_path / "x")
    assert (root / "etc/debian_version").read_text().startswith("12.")
    assert os.path.isfile(root / "usr/bin/apt-get")
    assert_skeleton(root)

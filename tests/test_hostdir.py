"""fim.fimfs.hostdir.HostDir: a host directory as a writable Filesystem, as a plain object."""

from __future__ import annotations

import errno
import os
import stat
import threading
from pathlib import Path

import pytest

from fim.fimfs.hostdir import HostDir

T1 = 1_500_000_000_123_456_789
T2 = 1_600_000_000_987_654_321


@pytest.fixture
def fs(tmp_path: Path) -> HostDir:
    (tmp_path / "root").mkdir()
    return HostDir(tmp_path / "root")


def check_errno(code: int, func, *args) -> None:
    with pytest.raises(OSError) as info:
        func(*args)
    assert info.value.errno == code, info.value


def test_root_must_be_a_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        HostDir(tmp_path / "file")
    with pytest.raises(NotADirectoryError):
        HostDir(tmp_path / "missing")
    assert HostDir(str(tmp_path)).writable


def test_files_read_write_truncate_append(fs: HostDir) -> None:
    fh = fs.create("/f", 0o644, os.O_RDWR)
    assert fs.write("/f", b"hello world", 0, fh) == 11
    assert fs.read("/f", 5, 6, fh) == b"world"
    fs.truncate("/f", 5, fh)
    assert fs.read("/f", 100, 0, fh) == b"hello"
    fs.flush("/f", fh)
    fs.fsync("/f", True, fh)
    fs.fsync("/f", False, fh)
    fs.release("/f", fh)
    fs.truncate("/f", 8)  # by path, extended with zeros
    assert Path(fs.root, "f").read_bytes() == b"hello\0\0\0"
    fh = fs.open("/f", os.O_WRONLY | os.O_APPEND)
    fs.write("/f", b"!", 0, fh)  # O_APPEND: at the end whatever the offset
    fs.release("/f", fh)
    assert Path(fs.root, "f").read_bytes() == b"hello\0\0\0!"
    check_errno(errno.EEXIST, fs.create, "/f", 0o644, os.O_WRONLY | os.O_EXCL)
    check_errno(errno.EISDIR, fs.truncate, "/", 0)
    check_errno(errno.ENOENT, fs.open, "/missing", os.O_RDONLY)


def test_modes_are_exact_whatever_the_umask(fs: HostDir) -> None:
    old = os.umask(0o077)
    try:
        fs2 = HostDir(fs.root)  # reads the umask in effect
        fs2.release("/f", fs2.create("/f", 0o666, os.O_WRONLY))
        fs2.mkdir("/d", 0o775)
        fs2.mknod("/p", stat.S_IFIFO | 0o664, 0)
    finally:
        os.umask(old)
    assert stat.S_IMODE(fs.getattr("/f").mode) == 0o666
    assert stat.S_IMODE(fs.getattr("/d").mode) == 0o775
    assert stat.S_IMODE(fs.getattr("/p").mode) == 0o664


def test_namespace_operations(fs: HostDir) -> None:
    fs.mkdir("/d", 0o755)
    fs.release("/d/f", fs.create("/d/f", 0o600, os.O_WRONLY))
    assert fs.readdir("/d") == ["f"]
    fs.link("/d/f", "/d/g")
    assert fs.getattr("/d/f").nlink == 2
    assert fs.getattr("/d/f").ino == fs.getattr("/d/g").ino
    fs.symlink("../elsewhere", "/d/l")
    assert fs.readlink("/d/l") == "../elsewhere"
    assert stat.S_ISLNK(fs.getattr("/d/l").mode)
    fs.rename("/d/g", "/h")
    assert sorted(fs.readdir("/")) == ["d", "h"]
    check_errno(errno.ENOTEMPTY, fs.rmdir, "/d")
    for name in ("f", "l"):
        fs.unlink(f"/d/{name}")
    fs.rmdir("/d")
    check_errno(errno.ENOENT, fs.getattr, "/d")
    assert fs.getattr("/h").nlink == 1


def test_special_files(fs: HostDir) -> None:
    fs.mknod("/fifo", stat.S_IFIFO | 0o644, 0)
    fs.mknod("/sock", stat.S_IFSOCK | 0o644, 0)
    assert stat.S_ISFIFO(fs.getattr("/fifo").mode)
    assert stat.S_ISSOCK(fs.getattr("/sock").mode)
    if os.geteuid() == 0:
        fs.mknod("/chr", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        fs.mknod("/blk", stat.S_IFBLK | 0o600, os.makedev(7, 0))
        assert fs.getattr("/chr").rdev == os.makedev(1, 3)
        assert fs.getattr("/blk").rdev == os.makedev(7, 0)
        assert fs.getattr("/fifo").rdev == 0
    check_errno(errno.EINVAL, fs.truncate, "/fifo", 0)


def test_metadata(fs: HostDir) -> None:
    fs.release("/f", fs.create("/f", 0o644, os.O_WRONLY))
    fs.chmod("/f", 0o4751)
    assert stat.S_IMODE(fs.getattr("/f").mode) == 0o4751
    fs.utimens("/f", T1, T2)
    a = fs.getattr("/f")
    assert (a.atime_ns, a.mtime_ns) == (T1, T2)
    fs.setxattr("/f", "user.k", b"v\0bin", 0)
    assert fs.getxattr("/f", "user.k") == b"v\0bin"
    assert "user.k" in fs.listxattr("/f")
    check_errno(errno.EEXIST, fs.setxattr, "/f", "user.k", b"x", os.XATTR_CREATE)
    fs.removexattr("/f", "user.k")
    check_errno(errno.ENODATA, fs.getxattr, "/f", "user.k")
    if os.geteuid() == 0:
        fs.chown("/f", 1234, 5678)
        a = fs.getattr("/f")
        assert (a.uid, a.gid) == (1234, 5678)
        fs.setxattr("/", "trusted.overlay.opaque", b"y", 0)
        assert fs.getxattr("/", "trusted.overlay.opaque") == b"y"


def test_statfs_is_the_host_filesystem(fs: HostDir) -> None:
    st, host = fs.statfs(), os.statvfs(fs.root)
    assert (st.bsize, st.frsize, st.blocks, st.files, st.namemax) == (
        host.f_bsize, host.f_frsize, host.f_blocks, host.f_files, host.f_namemax)


def test_paths_never_leave_the_root(fs: HostDir, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_bytes(b"secret")
    os.chmod(outside, 0o600)
    os.utime(outside, ns=(T1, T1))
    for bad in ("/../outside", "/./x", "//x", "relative"):
        with pytest.raises(OSError):
            fs.getattr(bad)
    fs.symlink(str(outside), "/l")
    a = fs.getattr("/l")  # the link itself
    assert stat.S_ISLNK(a.mode)
    check_errno(errno.ELOOP, fs.open, "/l", os.O_RDONLY)
    check_errno(errno.EOPNOTSUPP, fs.chmod, "/l", 0o777)
    check_errno(errno.EINVAL, fs.truncate, "/l", 0)
    fs.utimens("/l", T2, T2)
    assert fs.getattr("/l").mtime_ns == T2
    with pytest.raises(OSError):  # user.* xattrs cannot be set on a symlink itself
        fs.setxattr("/l", "user.k", b"v", 0)
    if os.geteuid() == 0:
        fs.chown("/l", 42, 42)
        assert fs.getattr("/l").uid == 42
    fs.link("/l", "/l2")  # links the symlink, not its target
    assert stat.S_ISLNK(fs.getattr("/l2").mode)
    st = outside.stat()
    assert outside.read_bytes() == b"secret"
    assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_uid, st.st_nlink) == (
        0o600, T1, os.geteuid(), 1)
    assert os.listxattr(outside) == []


def test_handles_are_thread_safe(fs: HostDir) -> None:
    def work(n: int) -> None:
        path = f"/f{n}"
        fh = fs.create(path, 0o644, os.O_RDWR)
        data = bytes([n]) * 4096
        for i in range(50):
            fs.write(path, data, i * 4096, fh)
        for i in range(50):
            assert fs.read(path, 4096, i * 4096, fh) == data
        fs.release(path, fh)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(fs.readdir("/")) == sorted(f"f{n}" for n in range(8))
    assert all(fs.getattr(f"/f{n}").size == 50 * 4096 for n in range(8))


def test_non_utf8_names(fs: HostDir) -> None:
    name = os.fsdecode(b"bad\xffname")
    fs.mkdir("/" + name, 0o755)
    assert fs.readdir("/") == [name]
    assert os.path.isdir(os.path.join(os.fsencode(fs.root), b"bad\xffname"))


def test_flush_reports_errors_only_off_local_filesystems(tmp_path: Path) -> None:
    from fim.fimfs.fuse.adapter import FuseOperations
    from fim.fimfs.hostdir import LOCAL_FILESYSTEMS, _filesystem_type
    from fim.fimfs.union import Union

    fs = HostDir(tmp_path)
    assert fs.flush_reports_errors == (_filesystem_type(str(tmp_path)) not in LOCAL_FILESYSTEMS)
    assert HostDir("/proc").flush_reports_errors  # not known to be local
    for reports in (False, True):
        fs.flush_reports_errors = reports
        assert Union(fs, []).flush_reports_errors == reports
        # Without, close(2) sends no FLUSH (libfuse answers ENOSYS once).
        assert (FuseOperations(Union(fs, [])).flush is None) == (not reports)

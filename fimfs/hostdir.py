"""HostDir: a directory of the host as a writable Filesystem (the upper layer of a union).

Every operation maps to one or two system calls on ``root + path``. File handles are
the OS file descriptors themselves, so handles need no table and no lock.

Confinement: ``..`` and ``.`` components are refused (``vfs.split_path``) and the last
component is never followed when it is a symlink (lstat, lchown, O_NOFOLLOW, ...;
chmod and truncate go through an ``O_PATH`` descriptor because Linux has no lchmod).
Intermediate components are resolved by the host kernel: callers only pass paths whose
directories they looked up (the FUSE kernel resolves symlinks itself, the union walks
component by component). A concurrent swap of a directory for a symlink can still
redirect one call; that gives nothing to the mount's users, because a writable mount is
served without ``allow_other``: only the user who mounted it can reach it.

Modes are applied exactly: the kernel (or libfuse) has already applied the caller's
umask, so bits that this process's own umask strips at creation are put back.

Logical owners (``owner_xattr=True``, for unprivileged runs): a user who is not root
cannot give a file another owner, yet the owners stored in the layers, those a
``chown`` inside the container sets and those of files root-inside creates must
survive for ``fim-layer commit``. In this mode a chown the kernel refuses (EPERM) is
recorded in the xattr ``user.fim.owner`` on the upper file instead, as fuse-overlayfs
does with ``user.containers.override_stat``; ``getattr`` reports that owner. A chown
that does succeed (root, or to the process's own ids) removes a stale owner. New
entries get ``create_owner`` recorded when it differs from their real owner.

Logical modes (the same mode, when this process is not root): root inside the
container may use entries whose mode denies their owner (dpkg makes directories with
mode 0, then fills them; packages ship 0700/0600/0000 entries), but this process has
no DAC override on the host. So the mode on disk keeps this process's own access
(directories at least ``u+rwx``, regular files at least ``u+rw``; the other bits and
the special bits as the kernel allows), and the mode asked for (``mkdir``, ``create``,
``mknod`` of a regular file, ``chmod``, hence the union's copy-up) is recorded in the
same xattr when it differs from the one on disk; ``getattr`` reports it, so the
kernel's checks (``default_permissions``) see the logical mode. A root process keeps
real modes and records none; its chmod drops a recorded mode, its chown applies one.

The record: ``b"UID:GID"`` (decimal ids; the only form before logical modes, still
read) or ``b"UID:GID:MODE"`` (MODE: the permission and special bits in octal, e.g.
``0:0:0`` or ``0:0:4755``); UID:GID is the real owner when only the mode differs.
The xattr is fim's own: hidden from listxattr/getxattr (ENODATA) and refused to
setxattr/removexattr (EPERM), so containers can neither see nor forge it. It is read
only for regular files and directories whose real owner is this process's euid or the
owner of ``root`` (who wrote it), so getattr costs one lstat for everything else and
one lgetxattr more for those; it survives rename and is shared by hard links.

Limits of the mode: Linux allows user xattrs only on regular files and directories,
so symlinks, fifos, sockets and devices keep their real owner and mode; a chown of one
that cannot be done is accepted and dropped (their owner grants nothing apart from
protected_symlinks/fifos in sticky directories, and tar and dpkg lchown every entry).
Reading the xattr needs read permission: a file whose mode on disk denies its owner
reading (0000, made before logical modes or by another program) shows its real owner
to a process that is not root (root always reads it). Recording on a file its owner
cannot write adds u+w for the instant of the setxattr. An upper whose filesystem has
no user xattrs cannot keep owners nor modes: a refused chown then fails with EPERM as
without the mode, and modes are applied for real (one warning is logged). The upper's
root directory shows its real owner until something chowns it (overlayfs, too, shows
the upper's root).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import stat
from collections.abc import Iterator

from .vfs import Attr, Filesystem, StatFs, fs_error, split_path

log = logging.getLogger(__name__)

#: The xattr holding a logical owner and mode (see the module docstring):
#: ``b"UID:GID"`` or ``b"UID:GID:MODE"`` (MODE in octal).
OWNER_XATTR = "user.fim.owner"

_OPEN_EXTRA = os.O_NOFOLLOW | os.O_CLOEXEC
_PERM = 0o7777
_SPECIAL = 0o7000

#: The access a process that is not root keeps for itself on disk (logical modes).
_OWN_ACCESS = {stat.S_IFDIR: 0o700, stat.S_IFREG: 0o600}

#: A record: the logical uid, gid and mode (None: the mode on disk).
Record = tuple[int, int, int | None]


#: Filesystems whose close(2) never reports a write error (writeback errors reach
#: fsync), by statfs(2) f_type: ext2/3/4, xfs, btrfs, tmpfs, f2fs, bcachefs, zfs.
#: Closing a duplicate descriptor there (flush) tells nothing.
LOCAL_FILESYSTEMS = frozenset({0xEF53, 0x58465342, 0x9123683E, 0x01021994, 0xF2F52010,
                               0xCA451A4E, 0x2FC12FC1})


def _filesystem_type(path: str) -> int | None:
    """statfs(2)'s f_type of the filesystem holding ``path`` (its first field), or None."""
    buf = ctypes.create_string_buffer(256)  # larger than any struct statfs
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.statfs(os.fsencode(path), buf) != 0:
        return None
    return int(ctypes.c_long.from_buffer(buf).value)


def _process_umask() -> int:
    """This process's umask, read without changing it (``/proc``; Linux ≥ 4.7)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)  # the only other way to read it; done once, at construction
    os.umask(old)
    return old


def _attr(st: os.stat_result, uid: int, gid: int, perm: int | None = None) -> Attr:
    """An Attr from an ``os.stat_result``, owned by ``uid``:``gid``, with the permission
    bits ``perm`` (None: those of ``st``)."""
    special = stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
    mode = st.st_mode if perm is None else stat.S_IFMT(st.st_mode) | perm
    return Attr(mode=mode, nlink=st.st_nlink, uid=uid, gid=gid,
                size=st.st_size, atime_ns=st.st_atime_ns, mtime_ns=st.st_mtime_ns,
                ctime_ns=st.st_ctime_ns, rdev=st.st_rdev if special else 0, ino=st.st_ino,
                blocks=st.st_blocks)


#: File types that can carry user xattrs on Linux (hence a logical owner).
_XATTR_TYPES = frozenset({stat.S_IFREG, stat.S_IFDIR})


def recorders(root_st: os.stat_result) -> frozenset[int]:
    """The real owners whose entries under a root (``root_st``) may carry a record:
    only this process and the root's owner could have written it."""
    return frozenset({os.geteuid(), root_st.st_uid})


def logical(host: str | bytes, st: os.stat_result,
            recorded_by: frozenset[int]) -> tuple[int, int, int]:
    """Owner and permission bits of the entry ``host`` (lstat ``st``) as the union shows
    them: the record's when its real owner is in ``recorded_by`` (see :func:`recorders`),
    else the real ones. One lgetxattr for regular files and directories of those owners."""
    if st.st_uid in recorded_by and stat.S_IFMT(st.st_mode) in _XATTR_TYPES:
        record = _read_record(host)
        if record is not None:
            uid, gid, perm = record
            return uid, gid, stat.S_IMODE(st.st_mode) if perm is None else perm
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def _read_record(host: str | bytes) -> Record | None:
    """The logical owner and mode recorded on ``host``; None if none (or unreadable or
    invalid)."""
    try:
        value = os.getxattr(host, OWNER_XATTR, follow_symlinks=False)
    except OSError:
        return None  # ENODATA (the usual case), EACCES (mode denies read), ENOTSUP
    fields = value.split(b":")
    if len(fields) not in (2, 3) or not all(f.isdigit() for f in fields):
        return None  # isdigit: no sign, space nor "_", which int() would take
    if len(fields) == 2:
        return int(fields[0]), int(fields[1]), None
    if fields[2].strip(b"01234567") or int(fields[2], 8) > _PERM:
        return None
    return int(fields[0]), int(fields[1]), int(fields[2], 8)


def _record_value(uid: int, gid: int, perm: int | None) -> bytes:
    return (f"{uid}:{gid}" if perm is None else f"{uid}:{gid}:{perm:o}").encode("ascii")



def _lchown(host: str, uid: int, gid: int) -> None:
    """lchown; an id this user namespace does not map (EINVAL: a run in a namespace of
    its own that maps only the caller) is refused as EPERM, like any chown the process
    may not do, so it is recorded instead."""
    try:
        os.chown(host, uid, gid, follow_symlinks=False)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), host) from None
        raise

class HostDir(Filesystem):
    """The tree under ``root`` on the host, readable and writable."""

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        owner_xattr: bool = False,
        create_owner: tuple[int, int] | None = None,
    ) -> None:
        """``owner_xattr``: keep logical owners (module docstring); ``create_owner``:
        the owner new entries get in that mode (None: their real owner)."""
        self.root = os.path.abspath(os.fsdecode(root))
        if not os.path.isdir(self.root):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), self.root)
        if create_owner is not None and not owner_xattr:
            raise ValueError("create_owner needs owner_xattr=True")
        self._umask = _process_umask()
        self.owner_xattr = owner_xattr
        self.create_owner = create_owner
        # Logical modes: only a process without DAC override needs them.
        self._modes = owner_xattr and os.geteuid() != 0
        self._warned = False  # about an upper that cannot store owners
        # Real owners whose files may carry the xattr: only they could have written it.
        self._recorders = recorders(os.stat(self.root)) if owner_xattr else frozenset()
        self.flush_reports_errors = _filesystem_type(self.root) not in LOCAL_FILESYSTEMS

    def _host(self, path: str) -> str:
        parts = split_path(path)
        return self.root + "/" + "/".join(parts) if parts else self.root

    def _disk_mode(self, fmt: int, mode: int) -> int:
        """The permission bits to put on disk for ``mode`` (of an entry of type ``fmt``):
        ``mode`` itself, with this process's own access added under logical modes."""
        return (mode | _OWN_ACCESS.get(fmt, 0)) & _PERM if self._modes else mode & _PERM

    def _restore_mode(self, host: str, mode: int, fd: int | None = None) -> None:
        """Put back permission bits that this process's umask removed at creation."""
        if mode & self._umask & 0o777:
            current = os.fstat(fd).st_mode if fd is not None else os.lstat(host).st_mode
            wanted = stat.S_IMODE(current) | (mode & 0o777)
            if fd is not None:
                os.fchmod(fd, wanted)
            else:
                self._chmod(host, wanted)

    @staticmethod
    @contextlib.contextmanager
    def _inode(host: str) -> Iterator[tuple[str, os.stat_result]]:
        """A /proc path of the inode at ``host`` (never a symlink's target) and its stat."""
        fd = os.open(host, os.O_PATH | _OPEN_EXTRA)
        try:
            yield f"/proc/self/fd/{fd}", os.fstat(fd)
        finally:
            os.close(fd)

    def _chmod(self, host: str, mode: int) -> None:
        with self._inode(host) as (proc, st):
            if stat.S_ISLNK(st.st_mode):
                raise fs_error(errno.EOPNOTSUPP, host)  # what lchmod gives on Linux
            os.chmod(proc, mode)

    # -- read side -------------------------------------------------------------------
    def getattr(self, path: str) -> Attr:
        host = self._host(path)
        st = os.lstat(host)
        return _attr(st, *logical(host, st, self._recorders))

    def readdir(self, path: str) -> list[str]:
        return os.listdir(self._host(path))

    def readlink(self, path: str) -> str:
        return os.readlink(self._host(path))

    def open(self, path: str, flags: int) -> int:
        return os.open(self._host(path), (flags & ~(os.O_CREAT | os.O_EXCL)) | _OPEN_EXTRA)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    def release(self, path: str, fh: int) -> None:
        os.close(fh)

    def statfs(self) -> StatFs:
        st = os.statvfs(self.root)
        return StatFs(bsize=st.f_bsize, frsize=st.f_frsize, blocks=st.f_blocks,
                      bfree=st.f_bfree, bavail=st.f_bavail, files=st.f_files,
                      ffree=st.f_ffree, namemax=st.f_namemax)

    def getxattr(self, path: str, name: str) -> bytes:
        host = self._host(path)
        if name == OWNER_XATTR:
            os.lstat(host)  # ENOENT for a missing path, as any other name
            raise fs_error(errno.ENODATA, path)
        return os.getxattr(host, name, follow_symlinks=False)

    def listxattr(self, path: str) -> list[str]:
        names = os.listxattr(self._host(path), follow_symlinks=False)
        return [n for n in names if n != OWNER_XATTR] if OWNER_XATTR in names else names

    # -- write side ------------------------------------------------------------------
    @property
    def writable(self) -> bool:
        return True

    def create(self, path: str, mode: int, flags: int) -> int:
        host = self._host(path)
        disk = self._disk_mode(stat.S_IFREG, mode)
        try:
            fd = os.open(host, flags | os.O_CREAT | os.O_EXCL | _OPEN_EXTRA, disk)
        except FileExistsError:
            if flags & os.O_EXCL:
                raise
            return self.open(path, flags)  # open(2) leaves an existing file's mode alone
        try:
            self._new_entry(host, mode, disk, fd)
        except OSError:
            os.close(fd)
            raise
        return fd

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        # On an O_APPEND descriptor Linux's pwrite appends at the end, whatever the offset.
        return os.pwrite(fh, data, offset)

    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        if fh is not None:
            os.ftruncate(fh, length)
            return
        with self._inode(self._host(path)) as (proc, st):
            if stat.S_ISDIR(st.st_mode):
                raise fs_error(errno.EISDIR, path)
            if not stat.S_ISREG(st.st_mode):
                raise fs_error(errno.EINVAL, path)
            os.truncate(proc, length)

    def flush(self, path: str, fh: int) -> None:
        # As libfuse's passthrough example: closing a duplicate reports deferred write
        # errors (e.g. of a network filesystem) to the close() that caused the flush.
        os.close(os.dup(fh))

    def fsync(self, path: str, datasync: bool, fh: int) -> None:
        (os.fdatasync if datasync else os.fsync)(fh)

    def mkdir(self, path: str, mode: int) -> None:
        host = self._host(path)
        disk = self._disk_mode(stat.S_IFDIR, mode)
        os.mkdir(host, disk)
        self._new_entry(host, mode, disk)

    def mknod(self, path: str, mode: int, rdev: int) -> None:
        host = self._host(path)
        fmt = stat.S_IFMT(mode) or stat.S_IFREG  # mknod(2): type 0 is a regular file
        disk = self._disk_mode(fmt, mode)
        os.mknod(host, fmt | disk, rdev)
        self._new_entry(host, mode, disk)

    def unlink(self, path: str) -> None:
        os.unlink(self._host(path))

    def rmdir(self, path: str) -> None:
        os.rmdir(self._host(path))

    def rename(self, old: str, new: str, flags: int = 0) -> None:
        # Python has no renameat2: RENAME_NOREPLACE is the union's job, under its lock
        if flags:
            raise fs_error(errno.EINVAL, new)
        os.rename(self._host(old), self._host(new))

    def symlink(self, target: str, path: str) -> None:
        host = self._host(path)
        os.symlink(target, host)
        if self.create_owner is not None:
            self._own_new(host)

    def link(self, existing: str, path: str) -> None:
        os.link(self._host(existing), self._host(path), follow_symlinks=False)

    def chmod(self, path: str, mode: int) -> None:
        host = self._host(path)
        mode &= _PERM
        if not self.owner_xattr:
            self._chmod(host, mode)
            return
        with self._inode(host) as (proc, st):
            fmt = stat.S_IFMT(st.st_mode)
            if fmt == stat.S_IFLNK:
                raise fs_error(errno.EOPNOTSUPP, host)  # what lchmod gives on Linux
            os.chmod(proc, self._disk_mode(fmt, mode))
            if fmt not in _XATTR_TYPES:
                return  # fifos, sockets, devices: real modes
            st = os.stat(proc)
        # Read after the chmod, which gave this process read access under logical modes.
        record = _read_record(host) if st.st_uid in self._recorders else None
        # Under logical modes, record ``mode`` if the disk has other bits; else drop a
        # recorded mode (a root process's chmod is real).
        perm = mode if self._modes and mode != stat.S_IMODE(st.st_mode) else None
        if record is None and perm is None or record is not None and record[2] == perm:
            return
        uid, gid = (st.st_uid, st.st_gid) if record is None else record[:2]
        if not self._set_record(host, st, uid, gid, perm) and perm is not None:
            self._chmod(host, mode)  # no user xattrs: the real mode, as without the mode

    def chown(self, path: str, uid: int, gid: int) -> None:
        host = self._host(path)
        if not self.owner_xattr:
            os.chown(host, uid, gid, follow_symlinks=False)
            return
        if uid == -1 or gid == -1:  # chown(2)'s "unchanged" means the logical id
            cur = self.getattr(path)
            uid = cur.uid if uid == -1 else uid
            gid = cur.gid if gid == -1 else gid
        try:
            _lchown(host, uid, gid)
        except PermissionError:
            st = os.lstat(host)
            # Equal ids: not an ownership problem after all (e.g. an immutable file).
            if (uid, gid) == (st.st_uid, st.st_gid) or not self._record_owner(
                    host, st, uid, gid):
                raise
            return
        self._owned_for_real(host)

    def utimens(self, path: str, atime_ns: int, mtime_ns: int) -> None:
        os.utime(self._host(path), ns=(atime_ns, mtime_ns), follow_symlinks=False)

    def setxattr(self, path: str, name: str, value: bytes, flags: int) -> None:
        host = self._host(path)
        if name == OWNER_XATTR:
            raise fs_error(errno.EPERM, path)
        os.setxattr(host, name, value, flags, follow_symlinks=False)

    def removexattr(self, path: str, name: str) -> None:
        host = self._host(path)
        if name == OWNER_XATTR:
            raise fs_error(errno.EPERM, path)
        os.removexattr(host, name, follow_symlinks=False)

    # -- logical owners and modes -------------------------------------------------------
    def _new_entry(self, host: str, mode: int, disk: int, fd: int | None = None) -> None:
        """Finish a just-created entry (``mode`` asked for, ``disk`` given): the bits the
        umask took, ``create_owner`` (for real if possible, else recorded) and, under
        logical modes, ``mode`` recorded if the disk has other bits."""
        self._restore_mode(host, disk, fd)
        if not self.owner_xattr:
            return
        st = os.fstat(fd) if fd is not None else os.lstat(host)
        uid, gid = self.create_owner or (st.st_uid, st.st_gid)
        if (uid, gid) != (st.st_uid, st.st_gid):
            with contextlib.suppress(PermissionError):  # else recorded below
                _lchown(host, uid, gid)
                st = os.lstat(host)
        perm = None
        if self._modes and stat.S_IFMT(st.st_mode) in _XATTR_TYPES:
            # The permission bits asked for, the special bits as the kernel gave them
            # (as on disk: mkdir keeps only S_ISVTX of the mode, a set-group-ID parent
            # passes S_ISGID on).
            perm = stat.S_IMODE(st.st_mode) & _SPECIAL | mode & 0o777
            perm = None if perm == stat.S_IMODE(st.st_mode) else perm
        if (perm is not None or (uid, gid) != (st.st_uid, st.st_gid)) and not \
                self._set_record(host, st, uid, gid, perm) and perm is not None:
            self._chmod(host, perm)  # no user xattrs: the real mode, as without the mode

    def _own_new(self, host: str) -> None:
        """Give a just-created symlink ``create_owner``: for real if possible, else
        dropped (no user xattrs on symlinks)."""
        assert self.create_owner is not None
        uid, gid = self.create_owner
        st = os.lstat(host)
        if (uid, gid) != (st.st_uid, st.st_gid):
            with contextlib.suppress(PermissionError):
                _lchown(host, uid, gid)

    def _owned_for_real(self, host: str) -> None:
        """After a chown that the kernel did: the owner on disk is right, only a recorded
        mode is kept (a root process applies it instead)."""
        record = _read_record(host)
        if record is not None and record[2] is not None:
            st = os.lstat(host)
            if self._modes:
                perm = None if record[2] == stat.S_IMODE(st.st_mode) else record[2]
                self._set_record(host, st, st.st_uid, st.st_gid, perm)
                return
            self._chmod(host, record[2])
        with contextlib.suppress(OSError):  # ENODATA mostly
            os.removexattr(host, OWNER_XATTR, follow_symlinks=False)

    def _record_owner(self, host: str, st: os.stat_result, uid: int, gid: int) -> bool:
        """Store ``uid:gid`` as the logical owner of ``host`` (real owner ``st``), keeping
        a recorded mode; False when that is impossible (the entry keeps its real owner)."""
        record = (_read_record(host) if st.st_uid in self._recorders
                  and stat.S_IFMT(st.st_mode) in _XATTR_TYPES else None)
        return self._set_record(host, st, uid, gid, None if record is None else record[2])

    def _set_record(self, host: str, st: os.stat_result, uid: int, gid: int,
                    perm: int | None) -> bool:
        """Record owner ``uid:gid`` and mode ``perm`` (None: the one on disk) on ``host``
        (whose stat is ``st``), or remove the record when both are the real ones. False
        when that is impossible (one warning)."""
        if stat.S_IFMT(st.st_mode) not in _XATTR_TYPES:
            return True  # no user xattrs on these: dropped (module docstring)
        if (uid, gid) == (st.st_uid, st.st_gid) and perm is None:
            with contextlib.suppress(OSError):  # ENODATA mostly
                os.removexattr(host, OWNER_XATTR, follow_symlinks=False)
            return True
        if st.st_uid not in self._recorders:
            return False  # getattr would not read it
        value = _record_value(uid, gid, perm)
        try:
            try:
                os.setxattr(host, OWNER_XATTR, value, follow_symlinks=False)
            except PermissionError:
                if st.st_mode & stat.S_IWUSR:
                    raise
                # Setting a user xattr needs write permission, even for the owner.
                mode = stat.S_IMODE(st.st_mode)
                self._chmod(host, mode | stat.S_IWUSR)
                try:
                    os.setxattr(host, OWNER_XATTR, value, follow_symlinks=False)
                finally:
                    self._chmod(host, mode)
        except OSError as e:  # e.g. EOPNOTSUPP: a filesystem without user xattrs
            if not self._warned:
                self._warned = True
                log.warning("%s: cannot keep owners and modes that need %s (%s): files "
                            "keep the real ones", self.root, OWNER_XATTR, e.strerror)
            return False
        return True

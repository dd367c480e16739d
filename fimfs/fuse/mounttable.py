"""The mount table and pre-flight checks: is something mounted here, may we mount here,
is FUSE usable at all."""

from __future__ import annotations

import errno
import os
import stat

from fim.fimfs.errors import FimfsError
from fim.fimfs.fuse.binding import libfuse_version
from fim.osutil import mounts


def canonical(path: str) -> str:
    """Absolute path with the parent resolved; never touches the last component.

    Stat-ing a disconnected FUSE mount fails with ENOTCONN, so the last component is
    left alone; that is also what the mount table lists.
    """
    path = os.path.abspath(path)
    parent, name = os.path.split(path)
    return os.path.join(os.path.realpath(parent), name) if name else path


def is_mounted(mountpoint: str) -> bool:
    """Whether something is mounted on ``mountpoint`` (also true for a disconnected FUSE mount)."""
    return mounts.is_mounted(canonical(mountpoint))


def check_mountpoint(mountpoint: str) -> str:
    """Validate a mount point; return its canonical path or raise a one-line FimfsError."""
    path = canonical(mountpoint)
    disconnected = FimfsError(
        f"mount point {mountpoint} is a disconnected FUSE mount "
        f"(clean it up with: fim umount {mountpoint})"
    )
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FimfsError(f"mount point {mountpoint} does not exist") from None
    except OSError as e:
        if e.errno == errno.ENOTCONN:
            raise disconnected from None
        raise FimfsError(f"mount point {mountpoint}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise FimfsError(f"mount point {mountpoint} is not a directory")
    if is_mounted(path):
        try:
            os.statvfs(path)  # never answered from the kernel's cache, unlike stat
        except OSError as e:
            if e.errno == errno.ENOTCONN:
                raise disconnected from None
        raise FimfsError(f"mount point {mountpoint} is busy: something is already mounted there")
    return os.path.realpath(path)


#: /dev/fuse's device number (misc major 10, minor 229).
FUSE_DEVICE = (10, 229)
_CAP_SYS_ADMIN = 21


def fuse_device_usable() -> bool:
    """Whether /dev/fuse is the FUSE device and this user may open it."""
    try:
        st = os.stat("/dev/fuse")
    except OSError:
        return False
    return (stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == FUSE_DEVICE
            and os.access("/dev/fuse", os.R_OK | os.W_OK))


def helper_usable(name: str = "fusermount3") -> bool:
    """Whether libfuse's mount helper can mount for a normal user: an executable file
    (libfuse looks in /usr/bin, then PATH), setuid root, on a filesystem that honours it."""
    path = f"/usr/bin/{name}"  # libfuse's FUSERMOUNT_DIR; PATH only without it
    if not os.path.exists(path):
        path = mounts.which(name) or path
    try:
        st = os.stat(path)
        nosuid = os.statvfs(path).f_flag & os.ST_NOSUID
    except OSError:
        return False
    return (stat.S_ISREG(st.st_mode) and bool(st.st_mode & stat.S_ISUID) and st.st_uid == 0
            and not nosuid and os.access(path, os.X_OK))


def can_mount_directly() -> bool:
    """Whether this process may mount FUSE itself (mount(2)): root, or CAP_SYS_ADMIN in
    a user namespace of its own (sandbox.userns), where no helper is needed."""
    if os.geteuid() == 0:
        return True
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> _CAP_SYS_ADMIN & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def check_fuse_available() -> None:
    if not os.path.exists("/dev/fuse"):
        raise FimfsError(
            "/dev/fuse is missing: load the fuse kernel module (modprobe fuse), "
            "or give the container the device (--device /dev/fuse)"
        )
    if not fuse_device_usable():
        raise FimfsError("/dev/fuse is not the FUSE device or not readable and writable")
    if can_mount_directly():
        return
    helper = "fusermount3" if libfuse_version()[0] == 3 else "fusermount"
    if not helper_usable(helper):
        raise FimfsError(f"{helper} is missing or not setuid root: install fuse3 "
                         "(unprivileged mounts need it)")

"""Root filesystems for `fim build`: the skeleton a container needs, safe tarball
extraction, a copy of a directory that can be completed without touching it, debootstrap.

The skeleton is what the sandbox binds over or writes to (spec section 3): the
kernel filesystems, the host's home and runtime directories, and the files of
``/etc`` that the identity and network permissions replace. Existing entries of
a root are never changed.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from typing import IO, Any

from fim.app.errors import FimError

# directory -> mode; created when missing
SKELETON_DIRS = {
    "bin": 0o755, "dev": 0o755, "etc": 0o755, "home": 0o755, "media": 0o755,
    "mnt": 0o755, "opt": 0o755, "proc": 0o555, "root": 0o700, "run": 0o755,
    "run/user": 0o755, "sbin": 0o755, "srv": 0o755, "sys": 0o555, "tmp": 0o1777,
    "usr": 0o755, "usr/bin": 0o755, "usr/lib": 0o755, "usr/sbin": 0o755,
    "usr/share": 0o755, "var": 0o755, "var/tmp": 0o1777,
}
# files the sandbox binds over (identity, host name, DNS); created empty when missing
SKELETON_FILES = ("etc/group", "etc/hostname", "etc/hosts", "etc/passwd",
                  "etc/resolv.conf")


def missing_skeleton(root: str) -> list[str]:
    """The skeleton entries that ``root`` lacks (symlinks count as present)."""
    return [name for name in (*SKELETON_DIRS, *SKELETON_FILES)
            if not os.path.lexists(os.path.join(root, name))]


def add_skeleton(root: str) -> None:
    """Create the missing skeleton entries of ``root`` (owned by the caller)."""
    for name in missing_skeleton(root):
        path = os.path.join(root, name)
        if name in SKELETON_DIRS:
            os.mkdir(path)
            os.chmod(path, SKELETON_DIRS[name])
        else:
            with open(path, "x"):
                pass
            os.chmod(path, 0o644)


def _is_root() -> bool:
    return os.geteuid() == 0


def _clone_entry(src: str, dst: str, st: os.stat_result) -> None:
    """One non-directory entry: a hard link when possible (no data copied), else a copy."""
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        os.symlink(os.readlink(src), dst)
    elif stat.S_ISREG(mode):
        try:
            os.link(src, dst)
            return
        except OSError:
            shutil.copy2(src, dst, follow_symlinks=False)
    elif stat.S_ISFIFO(mode):
        os.mkfifo(dst, stat.S_IMODE(mode))
    elif (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)) and _is_root():
        os.mknod(dst, mode, st.st_rdev)
    else:
        return  # sockets, and device nodes a non-root user cannot make
    _copy_attrs(dst, st)


def _copy_attrs(dst: str, st: os.stat_result) -> None:
    if _is_root():
        os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def clone_tree(src: str, dst: str) -> None:
    """A copy of the tree ``src`` at ``dst`` (which must not exist) that shares the
    files' data through hard links when both are on one filesystem; owners (as root),
    modes and times are kept. Lets a skeleton be added without changing ``src``."""
    dirs: list[tuple[str, os.stat_result]] = []
    os.mkdir(dst, 0o700)
    dirs.append((dst, os.lstat(src)))
    for top, subdirs, files in os.walk(src):
        rel = os.path.relpath(top, src)
        target = os.path.normpath(os.path.join(dst, rel))
        for name in subdirs:
            path = os.path.join(top, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                _clone_entry(path, os.path.join(target, name), st)
            else:
                os.mkdir(os.path.join(target, name), 0o700)
                dirs.append((os.path.join(target, name), st))
        for name in files:
            path = os.path.join(top, name)
            _clone_entry(path, os.path.join(target, name), os.lstat(path))
    for path, st in reversed(dirs):  # deepest first: a read-only parent comes last
        _copy_attrs(path, st)


class UnsafeArchive(FimError):
    """A tarball member that would land outside the extraction directory."""


def _check_name(name: str, what: str) -> str:
    """``name`` relative and without ``..``; the normalized form."""
    if name.startswith("/"):
        raise UnsafeArchive(f"refusing {what} with an absolute path: {name}")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"refusing {what} with '..' in its path: {name}")
    return "/".join(parts)


def _safe_members(tf: tarfile.TarFile, dest: str) -> Iterator[tarfile.TarInfo]:
    """The members of ``tf`` after the checks; each is yielded before the next is read,
    so the tree on disk is the one earlier members made (stream mode extracts in order)."""
    real_dest = os.path.realpath(dest)
    for member in tf:
        name = _check_name(member.name, "member")
        if not name:
            continue  # the root directory itself
        if member.islnk():
            member.linkname = _check_name(member.linkname, f"hard link {name}")
        if member.isdev() and not _is_root():
            continue  # only root can make device nodes
        parent = os.path.dirname(os.path.join(real_dest, name))
        if os.path.realpath(parent) != parent:
            raise UnsafeArchive(f"refusing member {member.name}: "
                                "its parent directory is a symbolic link")
        member.name = name
        yield member


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def extract_tarball(path: str, dest: str) -> None:
    """Extract the tarball ``path`` (plain, gzip, bzip2, xz or zstd) into ``dest``,
    keeping owners (as root), modes, times and device nodes (as root). Members with
    absolute paths or ``..``, or under a symbolic link, are refused."""
    with open(path, "rb") as raw:
        zstd = raw.read(4) == _ZSTD_MAGIC
        raw.seek(0)
        if zstd:
            import zstandard

            stream: IO[bytes] = zstandard.ZstdDecompressor().stream_reader(raw)
        else:
            stream = raw
        try:
            with tarfile.open(fileobj=stream, mode="r|" if zstd else "r|*") as tf:
                extra: dict[str, Any] = (
                    {"filter": "fully_trusted"} if hasattr(tarfile, "data_filter") else {})
                tf.extractall(dest, members=_safe_members(tf, dest), numeric_owner=True,
                              **extra)
        except tarfile.TarError as exc:
            raise FimError(f"{path}: not a readable tarball ({exc})") from None


def debootstrap(target: str, suite: str, variant: str, mirror: str | None) -> None:
    """Install a Debian ``suite`` into ``target`` with debootstrap (root only); an empty
    ``variant`` is debootstrap's default."""
    if not _is_root():
        raise FimError("building a Debian root needs root (debootstrap makes device nodes "
                       "and sets owners)")
    exe = shutil.which("debootstrap")
    if exe is None:
        raise FimError("debootstrap is not installed (apt-get install debootstrap)")
    argv = [exe, *([f"--variant={variant}"] if variant else []), suite, target]
    if mirror:
        argv.append(mirror)
    result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        tail = "\n".join(result.stdout.splitlines()[-5:])
        raise FimError(f"debootstrap failed (exit {result.returncode}):\n{tail}")


#: apt.conf.d drop-in of `fim build debian` images. A normal user's container maps one
#: uid only, so apt cannot switch to its `_apt` sandbox user (FlatImage issue #9): apt
#: then downloads as root, which inside is the caller.
APT_SANDBOX_CONF = ("etc/apt/apt.conf.d/99fim-sandbox",
                    '// fim: one-uid user namespaces have no _apt user to switch to\n'
                    'APT::Sandbox::User "root";\n')


def add_apt_config(root: str) -> None:
    """Write :data:`APT_SANDBOX_CONF` into a root that has apt."""
    relative, text = APT_SANDBOX_CONF
    directory = os.path.join(root, os.path.dirname(relative))
    if os.path.isdir(directory):
        with open(os.path.join(root, relative), "w", encoding="utf-8") as f:
            f.write(text)

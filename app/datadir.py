"""Where an image keeps its writable data (FIM_DIR_DATA, spec 7.1).

Beside the image, as FlatImage does: ``.<name>.data/``. An image on read-only media
(a read-only share, a CD) or in a directory the user may not write cannot keep it
there; its data then lives in a per-user directory keyed by the image's path,
``$XDG_DATA_HOME/fim/<name>-<id>`` (``~/.local/share`` by default), so that a write
inside persists to the next run and two images never share one.
"""

from __future__ import annotations

import errno
import os
import stat

TYPE_CHECKING = False  # not typing's: importing typing slows every start-up
if TYPE_CHECKING:
    from collections.abc import Mapping

SUBDIRS = ("root", "layers", "tmp", "casefold", "work")


class DataDirError(OSError):
    """A subdirectory of the data directory could not be made."""


def beside(image: str) -> str:
    """The data directory beside the image."""
    return os.path.join(os.path.dirname(image), f".{os.path.basename(image)}.data")


def per_user(image: str, environ: Mapping[str, str]) -> str:
    """The per-user data directory of an image that cannot keep its data beside it."""
    import hashlib

    base = environ.get("XDG_DATA_HOME") or os.path.join(
        environ.get("HOME") or os.path.expanduser("~"), ".local", "share")
    key = hashlib.sha256(os.fsencode(image)).hexdigest()[:12]
    return os.path.join(base, "fim", f"{os.path.basename(image)}-{key}")


def _writable(path: str) -> bool:
    """Whether ``path`` can hold the data: an existing writable directory, or a new one
    in a writable directory (access(2) also answers EROFS for a read-only mount)."""
    if os.path.isdir(path):
        return os.access(path, os.W_OK | os.X_OK)
    return not os.path.lexists(path) and os.access(os.path.dirname(path), os.W_OK | os.X_OK)


def private(path: str) -> bool:
    """``path`` is a directory of this user (lstat: not a symbolic link) that others
    cannot write (nor its group, unless it is the user's own). Another user who could
    plant entries in a data directory (a symbolic link as ``root/`` or ``work/PID``, as
    ``instances.lock``) would have the run, root's included, write or chmod where the
    link points."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o002:
        return False
    return not st.st_mode & 0o020 or st.st_gid == os.getegid()


def _steady(directory: str) -> bool:
    """No other user can rename or replace the entries of ``directory``: it is sticky, or
    it is this user's or root's and :func:`private` would allow its write bits."""
    try:
        st = os.stat(directory)
    except OSError:
        return False
    if st.st_mode & stat.S_ISVTX:
        return True
    if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o002:
        return False
    return not st.st_mode & 0o020 or st.st_gid == os.getegid()


def locate(image: str, environ: Mapping[str, str]) -> tuple[str, bool]:
    """The data directory of ``image`` (its real path) and whether it is the per-user
    fallback: FIM_DIR_DATA when set, else beside the image when possible and safe (not
    another user's, :func:`private`, in a directory no other user can change,
    :func:`_steady`)."""
    given = environ.get("FIM_DIR_DATA")
    if given:
        return given, False
    default = beside(image)
    if _writable(default) and _steady(os.path.dirname(default)) and (
            not os.path.lexists(default) or private(default)):
        return default, False
    return per_user(image, environ), True


NOT_PRIVATE = "not a private directory (another user's, a symbolic link, or writable by others)"


def create(data_dir: str) -> bool:
    """Make the data directory and its subdirectories; whether it was new. Raises
    :class:`DataDirError` naming the directory that could not be made, or that is not
    :func:`private`."""
    new = not os.path.isdir(data_dir)
    for target in (data_dir, *(os.path.join(data_dir, sub) for sub in SUBDIRS)):
        try:
            os.makedirs(target, exist_ok=True)
        except OSError as exc:
            raise DataDirError(exc.errno, exc.strerror, target) from None
        if not private(target):
            raise DataDirError(errno.EPERM, NOT_PRIVATE, target)
    _close_to_others(data_dir)
    return new


def _close_to_others(data_dir: str) -> None:
    """Make the data directory 0700: what the container writes into ``root/`` is real
    on the host, a set-user-ID file of root inside included (host root's sandbox maps
    uid 0 to itself), and no other user may reach it."""
    try:
        fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != 0o700:
            os.fchmod(fd, 0o700)
    except OSError:
        pass  # a read-only data directory: nothing can be written into it either
    finally:
        os.close(fd)


def remove_work(path: str) -> None:
    """Remove a run's work directory ``DATA/work/<pid>`` (the kernel's overlay leaves
    ``work/work`` mode 000 and not empty: remove_tree makes directories ``u+rwx``)."""
    from fim.osutil.files import remove_tree

    remove_tree(path)


def prune_work(data_dir: str) -> None:
    """Remove the work directories of runs that are gone (killed before their end)."""
    from fim.sandbox.instance import alive

    work = os.path.join(data_dir, "work")
    try:
        names = os.listdir(work)
    except OSError:
        return
    for name in names:
        if name.isdigit() and not alive(int(name)):
            remove_work(os.path.join(work, name))

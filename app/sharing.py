"""Which mount of an image a run shares with the user's other runs (issue 24).

A run of fim's own stack mounted in the host's mount namespace does not mount again
when a mount made of the same things is up, or went unused less than
:data:`fimfs.linger.LINGER` seconds ago: it takes a lease on it (:mod:`fimfs.linger`
keeps it up while leased, then unmounts it). A mount made in a run's own user
namespace is that run's alone, and the external backends are not shared.

Equal means, for the mount: the layers (each file's identity, size, modification and
change times, the layer's offset and size: any write to the image file makes a new
mount, even one that puts the old size and mtime back), the
upper directory (path and identity), casefold, the owner mapping (the caller's ids and
the identity new files are stored as: a normal user's fim-root mount is never their
fim-exec one) and the mount's name. Everything else of a run (permissions, binds,
environment, identity files) is the sandbox's, made per run.

The slots are ``APP/mounts/<key>``. APP is private to the user (cli.rundir); mounts/ is
checked again (the user's own directory, not a link, 0700) before use. Root's runs and a
user's never meet: another APP, and the daemon's uid is checked on every attach.
"""

from __future__ import annotations

import json
import os
import stat

from fim.app.image import is_url
from fim.fimfs import linger
from fim.fimfs.errors import FimfsError

TYPE_CHECKING = False  # not typing's: importing typing slows every start-up
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from fim.app.image import Layer
    from fim.fimfs.fuse.lifecycle import PendingMount

try:  # CPython's built-in: hashlib would load OpenSSL on every start (~5 ms)
    from _sha256 import sha256  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - another Python
    from hashlib import sha256

SLOTS = "mounts"


def _identity(path: str) -> list[int]:
    # ctime too: a file rewritten in place keeps its size and can be given its old
    # mtime back (touch -r, rsync --inplace -t), never its old ctime
    st = os.stat(path)
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def slot_directory(app_dir: str, layers: Sequence[Layer], upper: str,
                   casefold: bool, owner: tuple[int, int] | None,
                   inside: tuple[int, int] | None, fsname: str) -> str | None:
    """The slot of the mount these make, under ``app_dir``; None when the slots'
    directory is not private to the user, or a layer is read from a URL (whose file
    this run cannot tell unchanged): nothing is shared then."""
    if any(is_url(layer.path) for layer in layers):
        return None
    description = [
        1, os.geteuid(), fsname, casefold, owner, inside,
        [os.path.realpath(upper), *_identity(upper)[:2]],
        [[os.path.realpath(la.path), la.offset, la.size, *_identity(la.path)]
         for la in layers],
    ]
    key = sha256(json.dumps(description).encode()).hexdigest()[:32]
    base = os.path.join(app_dir, SLOTS)
    try:
        os.mkdir(base, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    st = os.lstat(base)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        return None
    return os.path.join(base, key)


def open_root(directory: str, start: Callable[..., PendingMount | None],
              keep_fds: Sequence[int] = ()) -> SharedRoot | None:
    """The shared mount of slot ``directory``: a lease on the live one, else mounted by
    ``start(mountpoint, log_file=, on_ready=, keep_fds=)`` (:func:`fimfs.fuse.mount`
    without waiting; its daemon keeps ``keep_fds`` of the run's descriptors and lets
    the others go); None when the slot's mount is another mount namespace's (the
    caller mounts one of its own)."""
    got = linger.acquire(directory)
    if got is None:
        return None
    if isinstance(got, linger.Lease):
        return SharedRoot(got.mountpoint, got)
    try:
        with open(got.slot.log, "wb"):  # the new daemon's messages only
            pass
        # the daemon outlives this run: a pipe or a lock the caller gave the run would
        # stay open as long as any run shares the mount
        pending = start(got.mountpoint, log_file=got.slot.log, on_ready=got.keeper().start,
                        keep_fds=(*got.daemon_fds, *keep_fds))
        assert pending is not None
    except BaseException:
        got.release()
        raise
    return SharedRoot(got.mountpoint, got, pending)


class SharedRoot:
    """A run's use of a shared mount: :meth:`ready` once it must be up, :meth:`close`
    at the end (the mount lingers for the next run)."""

    def __init__(self, mountpoint: str, got: linger.Lease | linger.Claim,
                 pending: PendingMount | None = None) -> None:
        self.mountpoint = mountpoint
        self._lease = got if isinstance(got, linger.Lease) else None
        self._claim = got if isinstance(got, linger.Claim) else None
        self._pending = pending

    def ready(self) -> None:
        """Attached, nothing to wait for; mounting, wait for the daemon and take this
        run's lease (a failure lets the slot go: the next run clears it)."""
        if self._lease is not None or self._claim is None or self._pending is None:
            return
        claim = self._claim
        try:
            self._pending.wait()
        except BaseException:
            claim.release()
            raise
        self._lease = claim.attach()
        if self._lease is None:  # no keeper in the daemon: this run unmounts it
            from fim.osutil import mounts

            mounts.unmount(claim.mountpoint, lazy=True)
            raise FimfsError(f"the mount on {claim.mountpoint} took no lease")

    def close(self) -> None:
        try:
            self.ready()  # a run that failed before bwrap: the daemon may still be mounting
        except FimfsError:
            return
        if self._lease is not None:
            self._lease.close()

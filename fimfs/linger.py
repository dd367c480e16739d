"""A mount shared by its users and kept :data:`LINGER` seconds after the last one left.

A *slot* is a directory private to the user that holds one such mount: ``lock`` (a
flock that orders everything below), ``socket`` (where the serving daemon counts its
users), ``mnt`` (the mount point) and ``log`` (the daemon's messages). Whoever wants
the mount calls :func:`acquire` and gets either a :class:`Lease` on the live mount or,
when there is none, a :class:`Claim`: the lock stays held while the claimant mounts
(with :meth:`Claim.keeper`'s ``start`` as the daemon's ready hook) and ends with
:meth:`Claim.attach`, its own lease.

A lease is one connection to the daemon, acknowledged by it; the kernel closes it when
its holder exits, SIGKILL included, so the count never outlives a user. With no user
left for LINGER seconds the daemon's :class:`Keeper` takes the lock, closes and removes
the socket, unmounts, and only then lets the lock go. So an attach either happens
before the keeper took the lock (and the mount stays) or finds no socket after it (and
mounts anew, never over a mount going down). A slot whose daemon died (its socket
refuses) is cleared by the next claimant: a dead mount is detached lazily.

The acknowledgement carries the mount's device number: an attach checks that the mount
point it sees is that mount. A daemon serving another mount namespace (the slot's
directory is reachable from several) is not this caller's to use: :func:`acquire` then
gives None and leaves the slot alone. A keeper removes only its own socket and
unmounts only its own mount.

Which mounts may be shared, and so what names a slot, is the caller's decision: this
module knows nothing of images or sandboxes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import socket
import stat
import struct
import time

from fim.osutil import mounts

#: Seconds a mount stays after its last user left (a run started within them reuses it).
LINGER = 2.0
#: How long an attach waits for the daemon's acknowledgement.
ATTACH_TIMEOUT = 5.0
#: How soon an expiry that found the lock taken (someone attaching) is tried again.
_RETRY = 0.05
_ACK = struct.Struct("=cQ")  # b"+", the mount's st_dev
_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class Slot:
    """The paths of one slot directory."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.lock = os.path.join(directory, "lock")
        self.socket = os.path.join(directory, "socket")
        self.mountpoint = os.path.join(directory, "mnt")
        self.log = os.path.join(directory, "log")


class Lease:
    """A use of the slot's mount; the mount stays while the lease is open."""

    def __init__(self, sock: socket.socket, mountpoint: str, pid: int, dev: int) -> None:
        self._sock = sock
        self.mountpoint = mountpoint
        self.pid = pid  #: the serving daemon's
        self.dev = dev  #: the mount's device number

    def close(self) -> None:
        self._sock.close()


def _open_lock(slot: Slot) -> int:
    return os.open(slot.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)


def _connect(slot: Slot) -> Lease | None:
    """A lease from the daemon listening in ``slot``; None when none answers for this user."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(ATTACH_TIMEOUT)
        sock.connect(slot.socket)
        pid, uid, _ = _CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                   _CRED.size))
        if uid != os.geteuid():
            raise ConnectionError("not this user's daemon")
        ack = b""
        while len(ack) < _ACK.size and (chunk := sock.recv(_ACK.size - len(ack))):
            ack += chunk
        if len(ack) != _ACK.size or ack[:1] != b"+":
            raise ConnectionError("no acknowledgement")
        sock.settimeout(None)
    except OSError:
        sock.close()
        return None
    return Lease(sock, slot.mountpoint, pid, _ACK.unpack(ack)[1])


def _device(path: str) -> int | None:
    """The device of the mount at ``path`` (from the mount table: a stat would ask the
    filesystem, whose root may be gone, e.g. its upper directory removed)."""
    return mounts.device_of(path)


def acquire(directory: str) -> Lease | Claim | None:
    """A lease on the mount in slot ``directory`` (made 0700 when missing), else the
    claim to mount it there (the slot's lock held, what a dead daemon left cleared);
    None when the slot's daemon serves a mount this caller does not see, or when
    ``directory`` is not a directory private to the user (a symbolic link planted
    there would put the socket and the mount in someone else's directory)."""
    os.makedirs(directory, 0o700, exist_ok=True)
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        return None
    slot = Slot(os.path.realpath(directory))  # as the mount table writes it
    fd = _open_lock(slot)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        lease = _connect(slot)
        if lease is None:
            _clear(slot)
            return Claim(slot, fd)
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)  # the lock goes with it
    if _device(slot.mountpoint) == lease.dev:
        return lease
    lease.close()
    return None


def _clear(slot: Slot) -> None:
    """What a daemon that died left in ``slot``: its socket, its dead mount."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(slot.socket)
    # the mount table first: an lstat of a mount point asks its daemon, which may hang
    if mounts.is_mounted(slot.mountpoint):  # as written: not where a link leads
        mounts.unmount(slot.mountpoint, lazy=True, timeout=10)
    elif os.path.islink(slot.mountpoint):  # never mount where a link leads
        os.unlink(slot.mountpoint)
    with contextlib.suppress(FileExistsError):
        os.mkdir(slot.mountpoint, 0o700)


class Claim:
    """The right to mount in a slot, the slot's lock held until :meth:`attach` or
    :meth:`release`."""

    def __init__(self, slot: Slot, lock_fd: int) -> None:
        self.slot = slot
        self._fd: int | None = lock_fd

    @property
    def mountpoint(self) -> str:
        return self.slot.mountpoint

    @property
    def daemon_fds(self) -> tuple[int, ...]:
        """The descriptors the mount daemon forked by the claimant must keep: the
        lock's, until its keeper starts (a claimant killed meanwhile lets no one in)."""
        return () if self._fd is None else (self._fd,)

    def keeper(self, linger: float = LINGER) -> Keeper:
        """What the mount daemon runs once its mount answers (a forked daemon inherits
        the lock's descriptor: the keeper closes its copy)."""
        return Keeper(self.slot, linger, self._fd)

    def attach(self) -> Lease | None:
        """Once the mount is up: the claimant's lease, and the lock let go."""
        try:
            return _connect(self.slot)
        finally:
            self.release()

    def release(self) -> None:
        """Let the lock go (a failed mount: the next claimant clears the slot)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class Keeper:
    """In the mount daemon: counts the leases and ends the mount ``linger`` seconds
    after the last one closed (see the module's docstring for the order)."""

    def __init__(self, slot: Slot, linger: float, inherited_fd: int | None) -> None:
        self.slot, self.linger, self._inherited = slot, linger, inherited_fd
        self._root: int | None = None  # the mount's root, open while serving

    def start(self) -> None:
        """Listen on the slot's socket and count leases in a thread of this process."""
        import threading

        if self._inherited is not None:
            os.close(self._inherited)  # the claimant's lock is the claimant's to let go
        dev = _device(self.slot.mountpoint)
        if dev is None:
            raise OSError(f"{self.slot.mountpoint} is not in the mount table")
        self._dev = dev
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.slot.socket)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        listener.bind(self.slot.socket)
        listener.listen(16)
        st = os.stat(self.slot.socket)
        self._socket_id = (st.st_dev, st.st_ino)
        threading.Thread(target=self._serve, args=(listener,), name="fim-linger",
                         daemon=True).start()

    def _serve(self, listener: socket.socket) -> None:
        users: set[socket.socket] = set()
        try:
            # The mount's root stays open until the take down: a device number is reused
            # once its mount is gone, and this mount, detached by a claimant that took
            # this daemon for dead (stopped, stuck), must not give its number to the
            # claimant's new mount (this keeper would then unmount that one).
            with contextlib.suppress(OSError):
                self._root = os.open(self.slot.mountpoint,
                                     os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            ack = _ACK.pack(b"+", self._dev)
            deadline = time.monotonic() + self.linger
            while True:
                timeout = None if users else max(0.0, deadline - time.monotonic())
                readable, _, _ = select.select([listener, *users], [], [], timeout)
                for sock in readable:
                    if sock is listener:
                        _accept(listener, users, ack)
                    elif not _still_open(sock):
                        users.discard(sock)
                        sock.close()
                        deadline = time.monotonic() + self.linger
                if users or time.monotonic() < deadline:
                    continue
                if self._expire(listener):
                    return
                deadline = time.monotonic() + _RETRY
        except Exception:  # a bug here must not leave a mount that nobody ends
            import logging  # here: a run that only attaches does not load it

            logging.getLogger(__name__).exception("lease keeper failed: detaching %s",
                                                  self.slot.mountpoint)
            listener.close()
            self._take_down(lazy=True)

    def _take_down(self, lazy: bool = False) -> None:
        """Remove this keeper's socket and unmount its mount (neither, when a claimant
        of another mount namespace has put its own there)."""
        with contextlib.suppress(OSError):
            st = os.stat(self.slot.socket)
            if (st.st_dev, st.st_ino) == self._socket_id:
                os.unlink(self.slot.socket)
        ours = _device(self.slot.mountpoint) == self._dev
        if self._root is not None:
            os.close(self._root)  # or the mount would be busy (and, detached, never end)
            self._root = None
        if not ours:
            return
        if lazy or mounts.unmount(self.slot.mountpoint, timeout=10) is not None:
            mounts.unmount(self.slot.mountpoint, lazy=True, timeout=10)

    def _expire(self, listener: socket.socket) -> bool:
        """End the mount when no one is attaching; False: try again soon."""
        fd = _open_lock(self.slot)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            if select.select([listener], [], [], 0)[0]:
                return False  # a connection came first: it is served in the next round
            listener.close()
            self._take_down()
            return True
        finally:
            os.close(fd)  # the lock goes with it: the slot is free for a new mount


def _accept(listener: socket.socket, users: set[socket.socket], ack: bytes) -> None:
    sock, _ = listener.accept()
    try:
        _, uid, _ = _CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                 _CRED.size))
        if uid != os.geteuid():
            raise PermissionError("another user's connection")
        sock.sendall(ack)
    except OSError:
        sock.close()
        return
    users.add(sock)


def _still_open(sock: socket.socket) -> bool:
    """Whether the user at the other end is still there (a lease sends nothing)."""
    try:
        return sock.recv(64) != b""
    except OSError:
        return False

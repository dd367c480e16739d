"""The child processes that serve mounts: one way to start them, wait for their mount
and take them down (used by :mod:`fimfs.external`).

One primitive, :func:`spawn`: fork, then in the child a new session, a parent-death
signal (SIGTERM, on which every server unmounts and exits), stdio on the server's log
file, then either exec a program or serve one of fim's filesystems in the foreground.
Linux sends the parent-death signal when the *thread* that forked exits: spawn from a
thread that lives as long as the mounts (normally the main thread).

This supervision stays in fimfs rather than in :mod:`osutil`: a server is ready when its
mount answers and gone when its mount is, which is FUSE knowledge; osutil stays a small
home for dependency-free OS helpers.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fim.fimfs import fuse
from fim.fimfs.errors import FimfsError
from fim.fimfs.fuse.lifecycle import adopt_stdio
from fim.fimfs.vfs import Filesystem

log = logging.getLogger(__name__)

#: How long a mount may take to come up (seconds).
READY_TIMEOUT = 10.0
#: How long a server may take to exit after its mount went away, before it is killed.
EXIT_TIMEOUT = 5.0
_POLL = 0.02
_PR_SET_PDEATHSIG = 1
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
#: Signals Python ignores that an exec'd program expects at their default (as subprocess
#: restores them): an ignored disposition survives exec.
_RESTORED = (signal.SIGPIPE, signal.SIGXFSZ)

_prctl: Any = None


def _load_prctl() -> Any:
    """libc's prctl, looked up in the parent (a child between fork and exec should not dlopen)."""
    global _prctl
    if _prctl is None:
        try:
            _prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            _prctl = False
    return _prctl


def _set_pdeathsig(parent: int, prctl: Any) -> None:
    """In a new child: die with SIGTERM when the parent goes (and at once if it already has).

    SIGTERM, SIGINT and SIGHUP get their default action and are unblocked first: an
    ignored or blocked disposition would survive exec and swallow the signal.
    """
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    if prctl:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def _tail(log_path: str, lines: int = 1) -> str:
    try:
        with open(log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    kept = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " | ".join(kept[-lines:])


@dataclass
class Server:
    """One mount and the child process serving it."""

    name: str  # for messages: "fuse-overlayfs", "layer 0 (fim)", ...
    mountpoint: str
    pid: int
    log_path: str
    status: int | None = field(default=None)

    def poll(self) -> int | None:
        """The exit status once the child has ended (reaped), else None."""
        if self.status is not None:
            return self.status
        try:
            pid, st = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            self.status = -1
            return self.status
        if pid:
            self.status = os.waitstatus_to_exitcode(st)
        return self.status

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL)
        return True

    def signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def reason(self) -> str:
        return _tail(self.log_path)


def spawn(name: str, mountpoint: str, log_path: str, child: Callable[[], None]) -> Server:
    """Run ``child()`` in a forked server process for ``mountpoint``; its stdin is
    /dev/null, its stdout and stderr this run's ``log_path``. An error escaping ``child``
    is written there as one ``fim: ...`` line and the process exits 1."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with open(log_path, "wb"):  # this run's messages only
        pass
    parent, prctl = os.getpid(), _load_prctl()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.setsid()
            _set_pdeathsig(parent, prctl)
            fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            child()
            code = 0
        except FimfsError as e:
            print(f"fim: {e}", file=sys.stderr)
        except OSError as e:
            where = f"{os.fsdecode(e.filename)}: " if e.filename else ""
            print(f"fim: {where}{e.strerror or e}", file=sys.stderr)
        except BaseException as e:  # noqa: BLE001 - reported, then the child exits
            print(f"fim: {type(e).__name__}: {e}", file=sys.stderr)
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os._exit(code)
    return Server(name, mountpoint, pid, log_path)


def program(argv: list[str]) -> Callable[[], None]:
    """A :func:`spawn` child that execs ``argv`` with no descriptor but stdio."""
    def child() -> None:
        for sig in _RESTORED:
            signal.signal(sig, signal.SIG_DFL)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        os.execvp(argv[0], argv)  # noqa: S606 - argv built by the caller from fixed programs

    return child


def filesystem(source: Callable[[], Filesystem], mountpoint: str, fsname: str,
               options: dict[str, Any]) -> Callable[[], None]:
    """A :func:`spawn` child serving ``source()`` on ``mountpoint`` (foreground libfuse)."""
    def child() -> None:
        adopt_stdio("fim-layer")
        fuse.mount(source, mountpoint, foreground=True, fsname=fsname, options=options)

    return child


def _answers(path: str, timeout: float) -> bool | None:
    """statvfs ``path`` in a helper thread: True answered, False failed, None still waiting."""
    result: list[bool] = []

    def probe() -> None:
        try:
            os.statvfs(path)
            result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe, name="fim-external-probe", daemon=True)
    t.start()
    t.join(timeout)
    return result[0] if result else None


def wait_ready(server: Server, timeout: float | None = None) -> None:
    """Until ``server``'s mount answers; else a one-line FimfsError with its stderr."""
    timeout = READY_TIMEOUT if timeout is None else timeout
    deadline = time.monotonic() + timeout
    while True:
        status = server.poll()
        if status is not None:
            why = server.reason() or "no message"
            raise FimfsError(f"{server.name} on {server.mountpoint} exited with status "
                             f"{status} before mounting: {why}")
        left = deadline - time.monotonic()
        if fuse.is_mounted(server.mountpoint) and _answers(server.mountpoint, max(left, 0.1)):
            return
        if time.monotonic() >= deadline:
            why = server.reason()
            raise FimfsError(f"{server.name} did not mount {server.mountpoint} within "
                             f"{timeout:.0f} s" + (f": {why}" if why else ""))
        time.sleep(_POLL)


def take_down(server: Server) -> str | None:
    """Unmount one server's mount and reap it; a message if its mount is still there.

    A mount still busy is detached lazily; a server that does not exit after its mount
    went away is sent SIGTERM, then SIGKILL.
    """
    mp = server.mountpoint
    if not fuse.is_mounted(mp):  # never came up (or already gone): nothing to wait for
        server.signal(signal.SIGTERM)
    else:
        try:
            fuse.umount(mp)
        except FimfsError as e:
            log.debug("%s; detaching it lazily", e)
            try:
                fuse.umount(mp, lazy=True)
            except FimfsError as e2:
                if fuse.is_mounted(mp):
                    log.warning("%s", e2)
    if not server.wait(EXIT_TIMEOUT):
        server.signal(signal.SIGTERM)  # servers unmount on SIGTERM
        if not server.wait(EXIT_TIMEOUT):
            server.signal(signal.SIGKILL)
            server.wait(EXIT_TIMEOUT)
    if fuse.is_mounted(mp):  # the server is gone: a lazy detach of the dead mount clears it
        with contextlib.suppress(FimfsError):
            fuse.umount(mp, lazy=True)
    if fuse.is_mounted(mp):
        return f"cannot unmount {mp}"
    return None

"""The mount lifecycle: serving a Filesystem in the foreground or as a detached daemon,
unmounting, and termination signals.

Termination signals are taken by a dedicated thread (``sigwait``) that detaches the
mount. Detaching makes the kernel abort the connection, which ends libfuse's loop the
normal way, so the mount point is never left as "Transport endpoint is not
connected". This does not depend on which thread the kernel delivers a signal to.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any

from fim.fimfs.errors import FimfsError
from fim.fimfs.fuse.adapter import operations_for
from fim.fimfs.fuse.binding import ENCODING, ERRORS, fuse_class, libfuse_version
from fim.fimfs.fuse.mounttable import (
    canonical,
    check_fuse_available,
    check_mountpoint,
    is_mounted,
)
from fim.fimfs.fuse.options import READ_AHEAD_KB, mount_options
from fim.fimfs.vfs import Filesystem
from fim.osutil import mounts

log = logging.getLogger("fim.fimfs.fuse")

#: How long a background mount may take to come up before the caller gives up.
READY_TIMEOUT = 30.0

_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
_READY = b"\x00fim-ready\n"
_ERROR_PREFIX = "fim-error: "

FilesystemSource = Filesystem | Callable[[], Filesystem]


def _detach(path: str, lazy: bool) -> None:
    reason = mounts.unmount(path, lazy)
    if reason is not None:
        raise FimfsError(f"cannot unmount {path}: {reason}")


def umount(mountpoint: str, *, lazy: bool = False) -> None:
    """Unmount a FUSE mount; ``lazy`` detaches it even while files in it are still open.

    Also clears a disconnected mount (daemon gone, "Transport endpoint is not connected").
    """
    path = canonical(mountpoint)
    if not is_mounted(path):
        raise FimfsError(f"{mountpoint} is not a mount point")
    _detach(path, lazy)


@contextlib.contextmanager
def _unmount_on_signals(path: str) -> Iterator[None]:
    """While serving, SIGINT/SIGTERM/SIGHUP detach the mount; a second one exits at once.

    The signals are blocked in this thread before libfuse starts its workers (which
    inherit the mask) and taken synchronously by a watcher thread. Only possible
    from the main thread; elsewhere the caller is in charge of unmounting.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    done = threading.Event()

    def watch() -> None:
        received = 0
        while True:
            sig = signal.sigwait(_SIGNALS)
            if done.is_set():
                return
            name = signal.Signals(sig).name
            received += 1
            if received > 1:
                log.warning("%s again: exiting without waiting for open files", name)
                os._exit(128 + sig)
            log.info("%s: unmounting %s", name, path)
            try:
                # Lazy: the mount point is released now; libfuse's loop ends once the
                # last open file in it is closed.
                _detach(path, lazy=True)
            except Exception as e:
                log.warning("%s", e)

    watcher = threading.Thread(target=watch, name="fim-fuse-signals", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        if watcher.ident is not None:
            signal.pthread_kill(watcher.ident, signal.SIGTERM)  # wakes sigwait
        watcher.join(5)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


# -- mounting ------------------------------------------------------------------------------


def _tune_readahead(path: str) -> None:
    """Raise the kernel read-ahead of a mount (best effort; needs root for sysfs)."""
    try:
        # Blocks until the kernel has processed the INIT reply, which would otherwise
        # clamp the value again.
        dev = os.stat(path).st_dev
        with open(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb", "w") as f:
            f.write(str(READ_AHEAD_KB))
    except OSError as e:
        log.debug("cannot raise read-ahead of %s: %s", path, e)


def _serve(
    fs: Filesystem, path: str, opts: dict[str, Any], on_ready: Callable[[], None] | None
) -> None:
    """Run libfuse in this thread until the mount goes away."""
    fuse_cls = fuse_class()
    tune = os.geteuid() == 0  # sysfs is root's

    def ready() -> None:
        if tune:
            threading.Thread(target=_tune_readahead, args=(path,), daemon=True).start()
        if on_ready is not None:
            on_ready()

    ops = operations_for(fs, ready)
    with _unmount_on_signals(path):
        try:
            fuse_cls(ops, path, foreground=True, encoding=ENCODING, errors=ERRORS, **opts)
        except RuntimeError as e:
            raise FimfsError(f"cannot mount on {path}: libfuse failed (code {e})") from None


def mount(
    fs: FilesystemSource,
    mountpoint: str,
    *,
    foreground: bool = True,
    fsname: str = "fim",
    options: Mapping[str, Any] | None = None,
    log_file: str | None = None,
    wait: bool = True,
    on_ready: Callable[[], None] | None = None,
    keep_fds: Collection[int] | None = None,
) -> PendingMount | None:
    """Serve ``fs`` on ``mountpoint``, read-only unless ``fs.writable``.

    ``fs`` is a Filesystem or a zero-argument callable returning one. In background
    mode prefer the callable: it runs in the daemon after the fork, so threads and
    open files of the Filesystem belong to the process that serves it (a fork keeps
    only the calling thread, so e.g. a thread pool started before it is dead in the
    daemon). A ready Filesystem passed in background mode is served by the daemon's
    copy; the caller still owns (and should close) its own.

    Foreground: blocks until the mount is unmounted; SIGINT/SIGTERM/SIGHUP unmount
    cleanly when called from the main thread. Background: forks a detached daemon
    (new session, stdio on /dev/null, log messages to ``log_file`` if given) and
    returns once the mount answers; a failure of the daemon is raised here as a
    one-line FimfsError. With ``wait=False`` it returns at once a :class:`PendingMount`
    whose ``wait()`` does that part. A Filesystem made by the callable is closed by ``mount``
    after unmounting; one passed in is not.

    ``options`` override :func:`mount_options` (e.g. ``{"debug": True}``).
    ``on_ready`` runs in the serving process once the mount answers, before a background
    mount reports ready (a :class:`fimfs.linger.Keeper`'s ``start``).

    The daemon is a fork: it also holds every file descriptor the caller had open, so
    a caller whose pipes must see EOF later should mount from a clean process (such
    as ``fim mount``), or give ``keep_fds``: the daemon then lets every other one go
    (points it at /dev/null; its stdio excepted) before it serves (``fs`` must then be
    a callable: it opens its files in the daemon).
    """
    path = check_mountpoint(mountpoint)
    setup = _Setup(fs, path, fsname, options, on_ready)
    setup.keep_fds = keep_fds
    if foreground:
        setup.run(None)
        return None
    pending = _start_background(setup, None if log_file is None else os.path.abspath(log_file))
    if not wait:
        return pending
    pending.wait()
    return None


class _Setup:
    """Everything needed to serve one mount, in this process or in the daemon."""

    def __init__(
        self,
        fs: FilesystemSource,
        path: str,
        fsname: str,
        options: Mapping[str, Any] | None,
        hook: Callable[[], None] | None = None,
    ) -> None:
        self.fs, self.path, self.fsname = fs, path, fsname
        self.options, self.hook = options, hook
        #: in the daemon, the caller's descriptors to keep (None: all of them)
        self.keep_fds: Collection[int] | None = None

    def run(self, on_ready: Callable[[], None] | None) -> None:
        # Here, not in the caller: a background mount loads libfuse in its daemon only,
        # while the caller goes on (see PendingMount).
        check_fuse_available()
        version = libfuse_version()
        owned = not isinstance(self.fs, Filesystem)
        filesystem = self.fs if isinstance(self.fs, Filesystem) else self.fs()
        try:
            opts = mount_options(
                filesystem.writable,
                fsname=self.fsname,
                options=self.options,
                libfuse_version=version,
                case_insensitive=filesystem.case_insensitive,
            )
            _serve(filesystem, self.path, opts, self._ready_hooks(on_ready))
        finally:
            if owned:
                filesystem.close()


    def _ready_hooks(self, on_ready: Callable[[], None] | None) -> Callable[[], None] | None:
        """The caller's hook first, then the daemon's report (the caller's hook failing
        is logged: the mount is up, and the caller sees what the hook did not do)."""
        hook = self.hook
        if hook is None:
            return on_ready

        def ready() -> None:
            try:
                hook()
            except Exception:
                log.exception("the ready hook of %s failed", self.path)
            if on_ready is not None:
                on_ready()

        return ready


class PendingMount:
    """A mount whose daemon is starting: :meth:`wait` returns once it answers, or raises
    the daemon's reason as a one-line FimfsError. The caller may do other work first
    (a run prepares its sandbox while the daemon opens the layers)."""

    def __init__(self, path: str, pid: int, status_fd: int) -> None:
        self.path, self._pid, self._fd = path, pid, status_fd
        self._outcome: FimfsError | None | bool = False  # False: not waited for yet

    def wait(self) -> None:
        """Idempotent: later calls give the first one's outcome."""
        if self._outcome is False:
            try:
                self._wait()
                self._outcome = None
            except FimfsError as e:
                self._outcome = e
        if isinstance(self._outcome, FimfsError):
            raise self._outcome

    def _wait(self) -> None:
        try:
            os.waitpid(self._pid, 0)
            status = _read_status(self._fd)
        finally:
            os.close(self._fd)
        if _READY in status:
            if not is_mounted(self.path):
                raise FimfsError(f"the mount on {self.path} went away right after starting")
            return
        lines = [ln.strip() for ln in status.decode("utf-8", "replace").splitlines()
                 if ln.strip()]
        errors = [ln[len(_ERROR_PREFIX) :] for ln in lines if ln.startswith(_ERROR_PREFIX)]
        others = [ln for ln in lines if not ln.startswith(_ERROR_PREFIX)]
        if errors and others:
            # libfuse's own explanation (e.g. from fusermount3) says more than its exit code.
            raise FimfsError(f"{errors[-1]}: {others[-1]}")
        if errors or others:
            raise FimfsError((errors or others)[-1])
        raise FimfsError(f"cannot mount on {self.path}: the mount daemon exited without a reason")


def _start_background(setup: _Setup, log_file: str | None) -> PendingMount:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()  # or the children would write the buffered text again
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.close(rfd)
            os.setsid()
            if os.fork() == 0:
                _daemon(setup, log_file, wfd)  # never returns
            # The daemon is re-parented to init: no zombie for the caller.
            os._exit(0)
        finally:
            os._exit(1)
    os.close(wfd)
    return PendingMount(setup.path, pid, rfd)


def _read_status(fd: int) -> bytes:
    """Collect the daemon's status until it says ready, closes the pipe, or times out."""
    deadline = time.monotonic() + READY_TIMEOUT
    data = b""
    while _READY not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            raise FimfsError(f"the mount did not come up within {READY_TIMEOUT:.0f} s")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return data


def adopt_stdio(name: str) -> None:
    """In a forked server whose fds 1 and 2 were just replaced: new ``sys.stdout`` and
    ``sys.stderr`` on them, and log records (``name[pid]``) to stderr."""
    # The old stream objects are kept alive: collecting one would close its fd, whose
    # number may by then belong to something else (the image, /dev/fuse).
    _inherited_streams.extend((sys.stdout, sys.stderr))
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False, errors="replace")  # noqa: SIM115
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if os.environ.get("FIM_DEBUG") == "1" else logging.WARNING,
        format=f"%(asctime)s {name}[%(process)d] %(levelname)s %(name)s: %(message)s",
        force=True,
    )


def _daemon(setup: _Setup, log_file: str | None, status_fd: int) -> None:  # pragma: no cover
    """Body of the background daemon (runs in the forked child). Never returns."""
    code = 1
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
        final_err = devnull
        if log_file is not None:
            final_err = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        # Until the mount is live, stderr (ours and libfuse's) goes to the caller.
        os.dup2(status_fd, 2)
        if setup.keep_fds is not None:
            _release_inherited({status_fd, final_err, devnull, *setup.keep_fds}, devnull)
        adopt_stdio("fim-mount")
        ready_lock = threading.Lock()
        announced: list[bool] = []

        def on_ready() -> None:
            with ready_lock:
                if announced:
                    return
                announced.append(True)
                # Not earlier: the callable may have used paths relative to the caller's cwd.
                os.chdir("/")
                sys.stderr.flush()
                os.write(2, _READY)
                os.dup2(final_err, 2)  # from now on: the log file or /dev/null
                os.close(status_fd)

        try:
            setup.run(on_ready)
            code = 0
        except FimfsError as e:
            _report(str(e))
        except OSError as e:
            where = f"{os.fsdecode(e.filename)}: " if e.filename else ""
            _report(f"{where}{e.strerror or e}")
    except BaseException as e:
        _report(f"mount daemon failed: {type(e).__name__}: {e}")
        with contextlib.suppress(Exception):
            log.exception("mount daemon failed")
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(code)


_inherited_streams: list[Any] = []


def _release_inherited(keep: set[int], devnull: int) -> None:  # pragma: no cover - daemon
    """Point every descriptor above stderr but ``keep`` at /dev/null: what it held (a
    pipe, a lock) is let go, while its number stays taken (closed, it could be reused
    by the mount's own files, and then closed by an inherited file object collected
    later: see adopt_stdio)."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):
                os.dup2(devnull, fd)


def _report(message: str) -> None:  # pragma: no cover - runs in the forked daemon
    """Tell the waiting caller (or the log, once live) why the daemon failed."""
    with contextlib.suppress(OSError):
        os.write(2, f"{_ERROR_PREFIX}{message}\n".encode("utf-8", "replace"))

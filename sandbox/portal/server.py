"""The portal's daemons: the host daemon (started by the run right before bwrap) and
the guest daemon (inside the sandbox, started in the background by the launch line).

A daemon accepts only a peer of its own uid (SO_PEERCRED) and forks one handler per
connection; the handler starts the program on the caller's descriptors, relays the
client's signals, reports the exit, and ends the program when the client or the
instance goes away. The host daemon exits within :data:`POLL_MS` of the instance's
process (a pidfd), the guest daemon with the sandbox's program.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import time

from fim.sandbox.portal.protocol import (
    EXIT_FAILURE,
    FORWARDED,
    HOST_SOCKET,
    POLL_MS,
    TIMEOUT,
    PortalError,
    close_all,
    error,
    exit_code,
    peer_uid,
    recv_frame,
    send_frame,
)

TYPE_CHECKING = False  # not typing's: importing typing slows every start-up
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence


class Log:
    """One line per event in ``INST/portal/<mode>.log`` (the daemons have no stdio)."""

    def __init__(self, path: str | None) -> None:
        self.path = path

    def __call__(self, message: str) -> None:
        if self.path is None:
            return
        line = f"{time.strftime('%H:%M:%S')} {os.getpid()} {' '.join(message.splitlines())}\n"
        with contextlib.suppress(OSError):
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, line.encode(errors="replace"))
            finally:
                os.close(fd)


def _listen(path: str) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a stale socket of a killed run
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(64)
    return sock


def serve(path: str, ref_pid: int, log_path: str | None = None,
          ready: int | None = None) -> int:
    """Listen on ``path`` until process ``ref_pid`` is gone; fork a
    handler per connection. ``ready``: a descriptor to write one byte to once
    listening."""
    log = Log(log_path)
    for sig in (*FORWARDED, signal.SIGPIPE, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    try:
        ref = os.pidfd_open(ref_pid)
    except OSError as exc:
        log(f"process {ref_pid} is not visible ({exc.strerror}): not serving")
        return EXIT_FAILURE
    try:
        listener = _listen(path)
    except OSError as exc:
        log(f"could not listen on {path}: {exc.strerror}")
        return EXIT_FAILURE
    if ready is not None:
        with contextlib.suppress(OSError):
            os.write(ready, b"1")
            os.close(ready)
    poller = select.poll()
    poller.register(ref, select.POLLIN)
    poller.register(listener.fileno(), select.POLLIN)
    handlers: set[int] = set()
    try:
        while True:
            events = dict(poller.poll(POLL_MS))
            _reap(handlers)
            if ref in events:
                return 0
            if listener.fileno() in events:
                _accept(listener, ref, log, handlers)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        listener.close()


def _reap(handlers: set[int]) -> None:
    for pid in list(handlers):
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0]:
                handlers.discard(pid)


def _accept(listener: socket.socket, ref: int, log: Log, handlers: set[int]) -> None:
    """Take one connection and fork its handler."""
    try:
        conn, _ = listener.accept()
    except OSError:
        return
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the handler
        code = 1
        try:
            listener.close()
            _handle(conn, ref, log)
            code = 0
        except BaseException as exc:
            log(f"handler failed: {type(exc).__name__}: {exc}")
        finally:
            os._exit(code)
    conn.close()
    handlers.add(pid)


def _which(program: str, path: str) -> str | None:
    def runnable(candidate: str) -> bool:
        return os.path.isfile(candidate) and os.access(candidate, os.X_OK)

    if "/" in program:
        return program if runnable(program) else None
    for directory in path.split(":"):
        candidate = os.path.join(directory or ".", program)
        if runnable(candidate):
            return candidate
    return None


def _request(message: dict) -> tuple[list[str], dict[str, str], str | None, bool]:
    argv, env, cwd = message.get("argv"), message.get("env", {}), message.get("cwd")
    if message.get("type") != "exec":
        raise PortalError(f"unknown request type {message.get('type')!r}")
    if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
        raise PortalError("bad request: 'argv' must be a non-empty list of strings")
    if not (isinstance(env, dict) and all(isinstance(k, str) and isinstance(v, str)
                                          for k, v in env.items())):
        raise PortalError("bad request: 'env' must map strings to strings")
    if cwd is not None and not isinstance(cwd, str):
        raise PortalError("bad request: 'cwd' must be a string")
    return argv, env, cwd, bool(message.get("tty"))


def _take_terminal() -> None:  # pragma: no cover - runs in the child before exec
    import fcntl
    import termios

    with contextlib.suppress(OSError):  # without it the program runs, without job control
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _handle(conn: socket.socket, ref: int, log: Log) -> None:
    """Serve one connection: check the peer, start the program, relay signals, report
    its exit; end the program when the client or the instance goes away."""
    import subprocess

    conn.settimeout(TIMEOUT)
    fds: list[int] = []
    try:
        uid = peer_uid(conn)
        if uid != os.getuid():
            raise PortalError(f"refused a connection from uid {uid} (this daemon serves "
                              f"uid {os.getuid()} only)")
        message, fds = recv_frame(conn, 3)
        if message is None:
            raise PortalError("the client closed the connection before its request")
        argv, env, cwd, tty = _request(message)
        if len(fds) != 3:
            raise PortalError(f"bad request: 3 file descriptors expected, {len(fds)} received")
        program = _which(argv[0], os.environ.get("PATH", ""))
        if program is None:
            log(f"program not found: {argv[0]!r}")
            send_frame(conn, {"type": "error", "kind": "not-found",
                              "message": f"program not found: {argv[0]}"})
            return
        if cwd is None or not os.path.isdir(cwd) or not os.access(cwd, os.X_OK):
            cwd = "/"  # the other side's directory may not exist here, or be closed
        try:
            child = subprocess.Popen(argv, executable=program, stdin=fds[0], stdout=fds[1],
                                     stderr=fds[2], env={**os.environ, **env}, cwd=cwd,
                                     start_new_session=True,
                                     preexec_fn=_take_terminal if tty else None)
        except (OSError, subprocess.SubprocessError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise PortalError(f"could not start {argv[0]}: {reason}") from None
        finally:
            close_all(fds)
            fds = []
        send_frame(conn, {"type": "started", "pid": child.pid})
        _supervise(conn, child, ref, log)
    except PortalError as exc:
        log(str(exc))
        with contextlib.suppress(PortalError):
            send_frame(conn, {"type": "error", "message": str(exc)})
    finally:
        close_all(fds)
        conn.close()


def _supervise(conn: socket.socket, child: object, ref: int, log: Log) -> None:
    pid: int = child.pid  # type: ignore[attr-defined]
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    for fd in (conn.fileno(), pidfd, ref):
        poller.register(fd, select.POLLIN)
    while True:
        events = dict(poller.poll(POLL_MS))
        if pidfd in events:
            code = exit_code(child.wait())  # type: ignore[attr-defined]
            send_frame(conn, {"type": "exit", "code": code})
            return
        if ref in events:
            log(f"the instance ended: stopping {pid}")
            _terminate(child)
            raise PortalError("the instance ended")
        if conn.fileno() in events:
            try:
                message, extra = recv_frame(conn)
            except PortalError as exc:
                log(f"{exc}: stopping {pid}")
                _terminate(child)
                raise
            close_all(extra)
            if message is None:
                log(f"the client went away: stopping {pid}")
                _terminate(child)
                return
            sig = message.get("signal")
            if message.get("type") == "signal" and sig in tuple(int(s) for s in FORWARDED):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)


def _terminate(child: object) -> None:
    """SIGHUP to the program's process group, SIGKILL after a second."""
    pid: int = child.pid  # type: ignore[attr-defined]
    for sig, grace in ((signal.SIGHUP, 1.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        with contextlib.suppress(Exception):
            child.wait(timeout=grace)  # type: ignore[attr-defined]
            return


def _detach() -> None:
    """In a forked daemon: new session, stdio on /dev/null, cwd /, no inherited fds."""
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)
    os.chdir("/")


def start_host(portal_dir: str, ref_pid: int,
               environ: Mapping[str, str] | None = None) -> None:
    """Start the host daemon of an instance (double fork, detached) and wait until it
    listens on ``portal_dir/host.sock`` (at most :data:`TIMEOUT`). ``environ``: the
    daemon's environment, which its programs get under the caller's (default: this
    process's)."""
    rfd, wfd = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the daemon
        code = 1
        try:
            os.close(rfd)
            if environ is not None:
                os.environ.clear()
                os.environ.update(environ)
            _detach()
            if os.fork() == 0:
                os.closerange(3, wfd)
                os.closerange(wfd + 1, 65536)
                code = serve(os.path.join(portal_dir, HOST_SOCKET), ref_pid,
                             os.path.join(portal_dir, "host.log"), ready=wfd)
            else:
                code = 0
        finally:
            os._exit(code)
    os.close(wfd)
    os.waitpid(child, 0)
    try:
        ready, _, _ = select.select([rfd], [], [], TIMEOUT)
        if not ready or not os.read(rfd, 1):
            raise PortalError("the host portal daemon did not start")
    finally:
        os.close(rfd)


def main_daemon(argv: Sequence[str]) -> int:
    """``fim_portal_daemon guest SOCKET``: the guest daemon, detached (it is started
    with ``&`` by the launch line and must not stay the program's child)."""
    if len(argv) != 2 or argv[0] != "guest":
        error("usage: fim_portal_daemon guest SOCKET")
        return EXIT_FAILURE
    path = argv[1]
    # the launch line's bash, which became the program: the instance inside (the host's
    # run is in another pid namespace). When it ends the daemon must not keep the
    # sandbox's mount namespace (and its FUSE mount); its pid namespace ends anyway.
    program = os.getppid()
    if os.fork():
        return 0
    _detach()
    log = os.path.join(os.path.dirname(path), "guest.log")
    return serve(path, program, log)

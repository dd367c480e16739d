"""The portal (spec 12.2, 12.3): run a program on the other side of the sandbox wall.

Two daemons per instance, one protocol:

* the **host daemon** runs on the host (started by the run right before bwrap) and
  serves ``fim_portal PROGRAM ARGS`` from inside the sandbox;
* the **guest daemon** runs inside the sandbox (started in the background by the
  launch line) and serves ``fim-instance exec ID PROGRAM ARGS`` from the host.

Transport (README, "Instances and the portal"): one Unix stream socket per daemon in
``INST/portal/`` (directory 0700, socket 0600), ``host.sock`` and ``guest.sock``. A
connection carries one request. Every message is a frame: a 4-byte big-endian length
(at most :data:`MAX_FRAME`) then that many bytes of a UTF-8 JSON object with
``"v": 1`` and a ``"type"``. The client's request (``exec``) carries the caller's own
stdin, stdout and stderr as SCM_RIGHTS file descriptors, so the program reads and
writes them directly: no copy loop, no size limit. The daemon accepts only a peer of
its own uid (SO_PEERCRED), answers ``started`` (the pid) or ``error``, then
``exit`` (the code; 128+N for a program killed by signal N). While the program runs
the client sends ``signal`` frames for the signals it receives. With a terminal on
stdin and stdout the client makes a new pseudo-terminal, hands its slave over (the
program gets it as its controlling terminal: job control works) and relays between
the caller's terminal and the master.

The host daemon exits within :data:`POLL_MS` of the instance's process (a pidfd), the
guest daemon with the sandbox's program (its pid namespace ends with it); a request's
handler ends its program when the client or the instance goes away.
Nothing here imports ``cli`` or ``fimfs``. Inside the sandbox the dispatcher and the
guest daemon are the frozen fim (``FIM_PORTAL_MODE``), run by the host's dynamic loader
bound in read-only, so they work in an image without python3 or even glibc.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import struct
import sys
import time

TYPE_CHECKING = False  # not typing's: importing typing slows every start-up
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from sandbox.bwrap import Sandbox

VERSION = 1
MAX_FRAME = 1 << 20  # a request holds argv, environment and cwd: 1 MiB is plenty
TIMEOUT = 5.0  # seconds: connect, a whole frame, the daemon's first answer
POLL_MS = 100  # how soon a daemon notices the instance is gone (pidfd, also polled)
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1,
             signal.SIGUSR2, signal.SIGQUIT)
PORTAL_DIR = "portal"  # INST/portal
HOST_SOCKET = "host.sock"
GUEST_SOCKET = "guest.sock"
UNAVAILABLE = "guest.unavailable"  # why an instance has no guest daemon
ENV_DIR = "FIM_PORTAL_DIR"  # inside the sandbox: INST/portal
DISPATCHER = "fim_portal"
DAEMON = "fim_portal_daemon"
EXIT_FAILURE = 1
#: Variables the request does not carry: the target side keeps its own.
_LOCAL_VARS = ("PATH", "FIM_", ENV_DIR)


class PortalError(Exception):
    """A one-line failure of the portal (the client exits 1 with it)."""


# --- frames -------------------------------------------------------------------------

def send_frame(sock: socket.socket, message: Mapping[str, object],
               fds: Sequence[int] = ()) -> None:
    """Send one frame; ``fds`` travel with its first byte (SCM_RIGHTS)."""
    data = json.dumps({"v": VERSION, **message}, separators=(",", ":")).encode()
    if len(data) > MAX_FRAME:
        raise PortalError(f"message of {len(data)} bytes exceeds the {MAX_FRAME} byte limit")
    frame = struct.pack(">I", len(data)) + data
    try:
        sent = socket.send_fds(sock, [frame], list(fds)) if fds else 0
        if sent < len(frame):  # never an empty send: the peer may have answered and gone
            sock.sendall(frame[sent:])
    except TimeoutError:
        raise PortalError("timed out sending a message") from None
    except OSError as exc:
        raise PortalError(f"could not send a message: {exc.strerror or exc}") from None


def _recv_exact(sock: socket.socket, size: int, maxfds: int) -> tuple[bytes, list[int]]:
    buf, fds = b"", []
    while len(buf) < size:
        try:
            if maxfds and not buf:
                chunk, got, _, _ = socket.recv_fds(sock, size, maxfds)
                fds += got
            else:
                chunk = sock.recv(size - len(buf))
        except TimeoutError:
            _close_all(fds)
            raise PortalError("timed out waiting for a message") from None
        except OSError as exc:
            _close_all(fds)
            raise PortalError(f"could not read a message: {exc.strerror or exc}") from None
        if not chunk:
            if buf:
                _close_all(fds)
                raise PortalError("the connection closed in the middle of a message")
            return b"", fds
        buf += chunk
    return buf, fds


def recv_frame(sock: socket.socket, maxfds: int = 0) -> tuple[dict | None, list[int]]:
    """One frame and the descriptors passed with it; ``(None, [])`` at a clean end."""
    header, fds = _recv_exact(sock, 4, maxfds)
    if not header:
        _close_all(fds)
        return None, []
    size, = struct.unpack(">I", header)
    if size > MAX_FRAME:
        _close_all(fds)
        raise PortalError(f"refused a frame of {size} bytes (the limit is {MAX_FRAME})")
    body, _ = _recv_exact(sock, size, 0)
    if len(body) < size:
        _close_all(fds)
        raise PortalError("the connection closed in the middle of a message")
    try:
        message = json.loads(body)
    except ValueError:
        _close_all(fds)
        raise PortalError("malformed message (not JSON)") from None
    if not isinstance(message, dict) or message.get("v") != VERSION:
        _close_all(fds)
        got = message.get("v") if isinstance(message, dict) else None
        raise PortalError(f"unsupported protocol version {got!r} (this side speaks {VERSION})")
    return message, fds


def _close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end (SO_PEERCRED, in our user namespace)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def exit_code(returncode: int) -> int:
    """A wait status as a shell reports it: the code, or 128+N for signal N."""
    return 128 - returncode if returncode < 0 else returncode


# --- the daemon ---------------------------------------------------------------------

class _Log:
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
    log = _Log(log_path)
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


def _accept(listener: socket.socket, ref: int, log: _Log, handlers: set[int]) -> None:
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


def _handle(conn: socket.socket, ref: int, log: _Log) -> None:
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
            _close_all(fds)
            fds = []
        send_frame(conn, {"type": "started", "pid": child.pid})
        _supervise(conn, child, ref, log)
    except PortalError as exc:
        log(str(exc))
        with contextlib.suppress(PortalError):
            send_frame(conn, {"type": "error", "message": str(exc)})
    finally:
        _close_all(fds)
        conn.close()


def _supervise(conn: socket.socket, child: object, ref: int, log: _Log) -> None:
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
            _close_all(extra)
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


def start_host(portal_dir: str, ref_pid: int) -> None:
    """Start the host daemon of an instance (double fork, detached) and wait until it
    listens on ``portal_dir/host.sock`` (at most :data:`TIMEOUT`)."""
    rfd, wfd = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the daemon
        code = 1
        try:
            os.close(rfd)
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


#: glibc's libraries the frozen fim loads from the host (everything else it bundles)
GLIBC = ("libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0", "librt.so.1",
         "libutil.so.1")
MODE_VAR = "FIM_PORTAL_MODE"  # read (and removed) first thing by cli/frozen_main.py
#: PyInstaller's bootloader (onedir) re-executes itself to set LD_LIBRARY_PATH unless
#: it is told it is that second process; run through the loader it would re-execute the
#: loader without --library-path. cli/frozen_main.py removes the variables at once.
_WRAPPER = """#!%(bash)s
export _PYI_ARCHIVE_FILE=%(fim)s _PYI_PARENT_PROCESS_LEVEL=-1
%(var)s=%(mode)s exec %(loader)s --library-path %(libs)s --argv0 %(fim)s %(fim)s "$@"
"""


def elf_interpreter(path: str) -> str | None:
    """The PT_INTERP of the ELF executable ``path`` (its dynamic loader)."""
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 16)
        phoff, = struct.unpack_from("<Q", data, 32)
        phentsize, phnum = struct.unpack_from("<HH", data, 54)
        for i in range(phnum):
            base = phoff + i * phentsize
            if struct.unpack_from("<I", data, base)[0] == 3:
                offset, = struct.unpack_from("<Q", data, base + 8)
                size, = struct.unpack_from("<Q", data, base + 32)
                return data[offset:offset + size].rstrip(b"\0").decode()
    except (OSError, struct.error, UnicodeDecodeError):
        return None
    return None


def _frozen_inside(sb: Sandbox, app_bin: str, bindir: str) -> bool:
    """Make the frozen fim runnable inside (the image may have no glibc at all): the
    host's loader and glibc bound read-only under ``APP/glibc``, and the wrappers
    ``fim_portal`` and ``fim_portal_daemon`` in ``bindir``. False without a frozen fim
    (``--runtime python``)."""
    from sandbox.bwrap import Bind

    fim = os.path.join(app_bin, "fim")
    loader = elf_interpreter(fim) if os.access(fim, os.X_OK) else None
    if loader is None or not os.path.exists(loader):
        return False
    real = os.path.realpath(loader)
    inside = os.path.join(os.path.dirname(app_bin), "glibc")
    sb.files[real] = os.path.join(inside, os.path.basename(loader))
    for name in GLIBC:
        lib = os.path.join(os.path.dirname(real), name)
        if os.path.exists(lib):
            sb.files[os.path.realpath(lib)] = os.path.join(inside, name)
    os.makedirs(bindir, 0o700, exist_ok=True)
    for name, mode in ((DISPATCHER, "dispatcher"), (DAEMON, "daemon")):
        path = os.path.join(bindir, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(_WRAPPER % {"bash": os.path.join(app_bin, "bash"), "var": MODE_VAR,
                                "mode": mode, "fim": fim,
                                "loader": os.path.join(inside, os.path.basename(loader)),
                                "libs": f"{inside}:{app_bin}/_internal"})
        os.chmod(path, 0o700)
    sb.binds.append(Bind("ro", bindir, bindir))
    return True


def prepare(sb: Sandbox, instance_dir: str, app_bin: str, ref_pid: int) -> None:
    """Make the portal part of a sandbox and start the host daemon: ``INST/portal``
    (0700) bound at its own path (the sandbox's /tmp is private), FIM_PORTAL_DIR set,
    ``fim_portal`` on the sandbox's PATH (``INST/bin``, after APP/bin), the guest daemon
    in the launch line."""
    from sandbox.bwrap import Bind

    directory = os.path.join(instance_dir, PORTAL_DIR)
    os.makedirs(directory, 0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    sb.binds.append(Bind("rw", directory, directory))
    sb.setenv[ENV_DIR] = directory
    bindir = os.path.join(instance_dir, "bin")
    if _frozen_inside(sb, app_bin, bindir):
        path = sb.environ.get("PATH", "").split(":")
        path.insert(1 if path and path[0] == app_bin else 0, bindir)
        sb.environ["PATH"] = ":".join(path)
        sb.background.append([os.path.join(bindir, DAEMON), "guest",
                              os.path.join(directory, GUEST_SOCKET)])
    else:
        with open(os.path.join(directory, UNAVAILABLE), "w", encoding="utf-8") as f:
            f.write("this image's runtime cannot run the portal inside (--runtime python)\n")
    try:
        start_host(directory, ref_pid)
    except PortalError as exc:  # the program still runs; fim_portal will say so
        _Log(os.path.join(directory, "host.log"))(str(exc))


def main(mode: str, argv: Sequence[str]) -> int:
    """The frozen runtime's entry in portal mode (``FIM_PORTAL_MODE``)."""
    if mode == "daemon":
        return main_daemon(argv)
    return main_dispatcher(argv)


# --- the client ---------------------------------------------------------------------

def _connect(path: str, wait: float) -> socket.socket:
    """Connect to a daemon's socket, waiting up to ``wait`` seconds for it to appear."""
    deadline = time.monotonic() + wait
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(TIMEOUT)
        try:
            sock.connect(path)
            return sock
        except FileNotFoundError:
            sock.close()
            if time.monotonic() >= deadline:
                raise PortalError(f"no portal daemon listens on {path}") from None
        except ConnectionRefusedError:
            sock.close()
            raise PortalError(f"the portal daemon of {path} is not running "
                              "(a stale socket)") from None
        except TimeoutError:
            sock.close()
            raise PortalError(f"timed out connecting to {path}") from None
        except OSError as exc:
            sock.close()
            raise PortalError(f"could not connect to {path}: {exc.strerror}") from None
        time.sleep(0.02)


def forwarded_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The caller's environment as a request carries it: PATH, FIM_* and the portal's
    own variable stay those of the side that runs the program."""
    return {k: v for k, v in environ.items() if not k.startswith(_LOCAL_VARS)}


def call(path: str, argv: Sequence[str], environ: Mapping[str, str] | None = None,
         wait: float = TIMEOUT) -> int:
    """Run ``argv`` through the daemon listening on ``path`` with this process's
    stdin/stdout/stderr; the program's exit code. Raises :class:`PortalError`."""
    sock = _connect(path, wait)
    try:
        return _Call(sock).run(list(argv), forwarded_env(os.environ if environ is None
                                                         else environ))
    finally:
        sock.close()


class _Call:
    """One request from the client side: send it, relay signals (and a terminal)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.master: int | None = None
        self.sent = False
        self.pending: list[int] = []

    def run(self, argv: list[str], env: dict[str, str]) -> int:
        saved = {sig: signal.signal(sig, self._forward) for sig in FORWARDED}
        try:
            return self._run(argv, env)
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)
            if self.master is not None:
                os.close(self.master)

    def _run(self, argv: list[str], env: dict[str, str]) -> int:
        tty = os.isatty(0) and os.isatty(1)
        fds, slave = [0, 1, 2], None
        if tty:
            self.master, slave = _open_pty()
            fds = [slave, slave, slave if os.isatty(2) else 2]
        try:
            cwd: str | None = os.getcwd()
        except OSError:
            cwd = None
        try:
            send_frame(self.sock, {"type": "exec", "argv": argv, "env": env, "cwd": cwd,
                                   "tty": tty}, fds)
        finally:
            if slave is not None:
                os.close(slave)
        self.sent = True
        for sig in self.pending:  # signals that came before the request was sent
            self._forward(sig, None)
        message = self._receive()
        if message.get("type") == "error":
            if message.get("kind") == "not-found":
                raise PortalError(f"Could not start '{argv[0]}', program not found?")
            raise PortalError(str(message.get("message")))
        if message.get("type") != "started":
            raise PortalError(f"unexpected answer {message.get('type')!r} from the daemon")
        return self._relay() if tty else self._wait()

    def _forward(self, sig: int, _frame: object) -> None:
        if not self.sent:
            self.pending.append(sig)
            return
        with contextlib.suppress(PortalError):
            send_frame(self.sock, {"type": "signal", "signal": sig})

    def _receive(self) -> dict:
        message, fds = recv_frame(self.sock)
        _close_all(fds)
        if message is None:
            raise PortalError("the portal daemon closed the connection")
        return message

    def _finish(self, message: dict) -> int:
        if message.get("type") == "exit" and isinstance(message.get("code"), int):
            return int(message["code"])
        if message.get("type") == "error":
            raise PortalError(str(message.get("message")))
        raise PortalError(f"unexpected answer {message.get('type')!r} from the daemon")

    def _wait(self) -> int:
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        while not poller.poll():
            pass  # the program's lifetime bounds this wait; the daemon's end closes it
        return self._finish(self._receive())

    def _relay(self) -> int:
        """Copy between the caller's terminal (raw) and the pty until the exit frame."""
        import termios
        import tty as ttymod

        assert self.master is not None
        saved = termios.tcgetattr(0)
        winch = signal.signal(signal.SIGWINCH, lambda *_: _copy_winsize(0, self.master))
        ttymod.setraw(0)
        open_in, open_out = True, True
        try:
            while True:
                poller = select.poll()
                poller.register(self.sock.fileno(), select.POLLIN)
                if open_in:
                    poller.register(0, select.POLLIN)
                if open_out:
                    poller.register(self.master, select.POLLIN)
                events = dict(poller.poll())
                if self.master in events:
                    open_out = _pump(self.master, 1)
                if 0 in events and open_in:
                    open_in = _pump(0, self.master)
                if self.sock.fileno() in events:
                    message = self._receive()
                    while open_out and select.select([self.master], [], [], 0.05)[0]:
                        open_out = _pump(self.master, 1)
                    return self._finish(message)
        finally:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)
            signal.signal(signal.SIGWINCH, winch)


def _open_pty() -> tuple[int, int]:
    """A new pty whose modes and size are those of the caller's terminal."""
    import termios

    master, slave = os.openpty()
    os.set_inheritable(master, False)
    with contextlib.suppress(termios.error):
        termios.tcsetattr(slave, termios.TCSANOW, termios.tcgetattr(0))
    _copy_winsize(0, master)
    return master, slave


def _copy_winsize(src: int, dst: int | None) -> None:
    import fcntl
    import termios

    if dst is None:
        return
    with contextlib.suppress(OSError):
        fcntl.ioctl(dst, termios.TIOCSWINSZ, fcntl.ioctl(src, termios.TIOCGWINSZ, b"\0" * 8))


def _pump(src: int, dst: int) -> bool:
    """Copy what ``src`` has to ``dst``; False once ``src`` is at its end."""
    try:
        data = os.read(src, 65536)
    except OSError:  # EIO: the pty's last slave closed
        return False
    if not data:
        return False
    while data:
        try:
            data = data[os.write(dst, data):]
        except OSError:
            return False
    return True


# --- entry points of the frozen runtime ---------------------------------------------

def _error(message: str) -> None:
    frame = sys._getframe(1)
    sys.stderr.write(f"E::portal.py::{frame.f_lineno}::{' '.join(message.splitlines())}\n")
    sys.stderr.flush()


def main_dispatcher(argv: Sequence[str]) -> int:
    """``fim_portal PROGRAM ARGS...`` inside the sandbox: run PROGRAM on the host."""
    if not argv:
        _error("No arguments for dispatcher")
        return EXIT_FAILURE
    directory = os.environ.get(ENV_DIR)
    if not directory:
        _error(f"{ENV_DIR} is not set: fim_portal runs inside a fim container")
        return EXIT_FAILURE
    try:
        return call(os.path.join(directory, HOST_SOCKET), argv)
    except PortalError as exc:
        _error(str(exc))
        return EXIT_FAILURE


def main_daemon(argv: Sequence[str]) -> int:
    """``fim_portal_daemon guest SOCKET``: the guest daemon, detached (it is started
    with ``&`` by the launch line and must not stay the program's child)."""
    if len(argv) != 2 or argv[0] != "guest":
        _error("usage: fim_portal_daemon guest SOCKET")
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

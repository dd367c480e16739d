"""The portal's client: send one request with this process's stdin, stdout and stderr,
forward the signals it receives, and return the program's exit code; with a terminal
on stdin and stdout, through a new pseudo-terminal (:mod:`sandbox.portal.ptyrelay`).
Also ``fim_portal``, the dispatcher inside the sandbox.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import time

from fim.sandbox.portal import ptyrelay
from fim.sandbox.portal.protocol import (
    ENV_DIR,
    EXIT_FAILURE,
    FORWARDED,
    HOST_SOCKET,
    TIMEOUT,
    PortalError,
    close_all,
    error,
    recv_frame,
    send_frame,
)

TYPE_CHECKING = False  # not typing's: importing typing slows every start-up
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

#: Variables the request does not carry: the target side keeps its own.
_LOCAL_VARS = ("PATH", "FIM_", ENV_DIR)


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
            self.master, slave = ptyrelay.open_pty()
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
        if tty:
            assert self.master is not None
            return self._finish(ptyrelay.relay(self.master, self.sock, self._receive))
        return self._wait()

    def _forward(self, sig: int, _frame: object) -> None:
        if not self.sent:
            self.pending.append(sig)
            return
        with contextlib.suppress(PortalError):
            send_frame(self.sock, {"type": "signal", "signal": sig})

    def _receive(self) -> dict:
        message, fds = recv_frame(self.sock)
        close_all(fds)
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


def main_dispatcher(argv: Sequence[str]) -> int:
    """``fim_portal PROGRAM ARGS...`` inside the sandbox: run PROGRAM on the host."""
    if not argv:
        error("No arguments for dispatcher")
        return EXIT_FAILURE
    directory = os.environ.get(ENV_DIR)
    if not directory:
        error(f"{ENV_DIR} is not set: fim_portal runs inside a fim container")
        return EXIT_FAILURE
    try:
        return call(os.path.join(directory, HOST_SOCKET), argv)
    except PortalError as exc:
        error(str(exc))
        return EXIT_FAILURE

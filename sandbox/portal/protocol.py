"""The portal's protocol: names, limits and frames (docs/portal.md).

A frame is a 4-byte big-endian length (at most :data:`MAX_FRAME`) then that many
bytes of a UTF-8 JSON object with ``"v": 1`` and a ``"type"``; descriptors travel
with a frame's first byte (SCM_RIGHTS). Both the daemons and the client speak it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import sys

TYPE_CHECKING = False  # not typing's: importing typing slows every start-up
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

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
            close_all(fds)
            raise PortalError("timed out waiting for a message") from None
        except OSError as exc:
            close_all(fds)
            raise PortalError(f"could not read a message: {exc.strerror or exc}") from None
        if not chunk:
            if buf:
                close_all(fds)
                raise PortalError("the connection closed in the middle of a message")
            return b"", fds
        buf += chunk
    return buf, fds


def recv_frame(sock: socket.socket, maxfds: int = 0) -> tuple[dict | None, list[int]]:
    """One frame and the descriptors passed with it; ``(None, [])`` at a clean end."""
    header, fds = _recv_exact(sock, 4, maxfds)
    if not header:
        close_all(fds)
        return None, []
    size, = struct.unpack(">I", header)
    if size > MAX_FRAME:
        close_all(fds)
        raise PortalError(f"refused a frame of {size} bytes (the limit is {MAX_FRAME})")
    body, _ = _recv_exact(sock, size, 0)
    if len(body) < size:
        close_all(fds)
        raise PortalError("the connection closed in the middle of a message")
    try:
        message = json.loads(body)
    except ValueError:
        close_all(fds)
        raise PortalError("malformed message (not JSON)") from None
    if not isinstance(message, dict) or message.get("v") != VERSION:
        close_all(fds)
        got = message.get("v") if isinstance(message, dict) else None
        raise PortalError(f"unsupported protocol version {got!r} (this side speaks {VERSION})")
    return message, fds


def close_all(fds: Sequence[int]) -> None:
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


def error(message: str) -> None:
    """One ``E::`` line on stderr, as the frozen runtime's other messages."""
    frame = sys._getframe(1)
    sys.stderr.write(f"E::portal.py::{frame.f_lineno}::{' '.join(message.splitlines())}\n")
    sys.stderr.flush()

"""The portal (spec 12.2, 12.3): run a program on the other side of the sandbox wall.

Two daemons per instance, one protocol:

* the **host daemon** runs on the host (started by the run right before bwrap) and
  serves ``fim_portal PROGRAM ARGS`` from inside the sandbox;
* the **guest daemon** runs inside the sandbox (started in the background by the
  launch line) and serves ``fim-instance exec ID PROGRAM ARGS`` from the host.

Transport (docs/portal.md): one Unix stream socket per daemon in
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

Modules: :mod:`.protocol` (names, limits, frames), :mod:`.server` (the daemons),
:mod:`.client` (a request, ``fim_portal``), :mod:`.ptyrelay` (the client's terminal),
:mod:`.wiring` (the portal's part of a sandbox). Their public names are this package's.
"""

from __future__ import annotations

from fim.sandbox.portal.client import call, forwarded_env, main_dispatcher
from fim.sandbox.portal.protocol import (
    DAEMON,
    DISPATCHER,
    ENV_DIR,
    EXIT_FAILURE,
    FORWARDED,
    GUEST_SOCKET,
    HOST_SOCKET,
    MAX_FRAME,
    POLL_MS,
    PORTAL_DIR,
    TIMEOUT,
    UNAVAILABLE,
    VERSION,
    PortalError,
    exit_code,
    peer_uid,
    recv_frame,
    send_frame,
)
from fim.sandbox.portal.server import main_daemon, serve, start_host
from fim.sandbox.portal.wiring import GLIBC, MODE_VAR, elf_interpreter, prepare

TYPE_CHECKING = False  # not typing's: importing typing slows every start-up
if TYPE_CHECKING:
    from collections.abc import Sequence


def main(mode: str, argv: Sequence[str]) -> int:
    """The frozen runtime's entry in portal mode (``FIM_PORTAL_MODE``)."""
    if mode == "daemon":
        return main_daemon(argv)
    return main_dispatcher(argv)


__all__ = [
    "DAEMON", "DISPATCHER", "ENV_DIR", "EXIT_FAILURE", "FORWARDED", "GLIBC", "GUEST_SOCKET",
    "HOST_SOCKET", "MAX_FRAME", "MODE_VAR", "POLL_MS", "PORTAL_DIR", "TIMEOUT", "UNAVAILABLE",
    "VERSION", "PortalError", "call", "elf_interpreter", "exit_code", "forwarded_env", "main",
    "main_daemon", "main_dispatcher", "peer_uid", "prepare", "recv_frame", "send_frame",
    "serve", "start_host",
]

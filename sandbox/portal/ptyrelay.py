"""The client's terminal relay: the program gets a new pseudo-terminal (its slave as the
controlling terminal, so job control works) whose modes and size are the caller's;
the client copies between the caller's terminal, put in raw mode, and the master.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket

TYPE_CHECKING = False  # not typing's: importing typing slows every start-up
if TYPE_CHECKING:
    from collections.abc import Callable


def relay(master: int, sock: socket.socket, receive: Callable[[], dict]) -> dict:
    """Copy between the caller's terminal (raw) and the pty's ``master`` until a frame
    arrives on ``sock``; that frame (from ``receive``), after the program's last output."""
    import termios
    import tty as ttymod

    saved = termios.tcgetattr(0)
    winch = signal.signal(signal.SIGWINCH, lambda *_: copy_winsize(0, master))
    ttymod.setraw(0)
    open_in, open_out = True, True
    try:
        while True:
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLIN)
            if open_in:
                poller.register(0, select.POLLIN)
            if open_out:
                poller.register(master, select.POLLIN)
            events = dict(poller.poll())
            if master in events:
                open_out = _pump(master, 1)
            if 0 in events and open_in:
                open_in = _pump(0, master)
            if sock.fileno() in events:
                message = receive()
                while open_out and select.select([master], [], [], 0.05)[0]:
                    open_out = _pump(master, 1)
                return message
    finally:
        termios.tcsetattr(0, termios.TCSADRAIN, saved)
        signal.signal(signal.SIGWINCH, winch)


def open_pty() -> tuple[int, int]:
    """A new pty whose modes and size are those of the caller's terminal."""
    import termios

    master, slave = os.openpty()
    os.set_inheritable(master, False)
    with contextlib.suppress(termios.error):
        termios.tcsetattr(slave, termios.TCSANOW, termios.tcgetattr(0))
    copy_winsize(0, master)
    return master, slave


def copy_winsize(src: int, dst: int | None) -> None:
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

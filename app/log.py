"""Log lines and error chains of an image's `fim-*` commands (spec sections 1.2, 1.3, 16).

A log line is ``<L>::<file>::<line>::<message>`` (``D`` debug, ``I`` info,
``W`` warning, ``E`` error, ``C`` critical), one line per message. D and I go
to stdout, W, E and C to stderr. Which levels are printed is chosen once per
process by :func:`configure`.

A refused or failed command raises a :class:`CommandError` carrying its chain
of messages, innermost first; the boot prints the chain and exits 125.
"""

from __future__ import annotations

import os
import sys

from fim.app.errors import FimError

EXIT_FAILURE = 125  # every fim-level failure of an image exits with this
LEVELS = "DIWEC"
_printed = frozenset("IWEC")


def configure(levels: str) -> None:
    """Print only the levels in ``levels`` (a subset of ``LEVELS``) from now on."""
    global _printed
    _printed = frozenset(levels)


def emit(level: str, message: str, origin: str | None = None) -> None:
    """Write one log line if ``level`` is printed; ``origin`` defaults to the
    ``file::line`` of the code that called :func:`info` or :func:`warning`."""
    if level not in _printed:
        return
    if origin is None:
        frame = sys._getframe(2)
        origin = f"{os.path.basename(frame.f_code.co_filename)}::{frame.f_lineno}"
    text = " ".join(message.splitlines())
    stream = sys.stdout if level in "DI" else sys.stderr
    stream.write(f"{level}::{origin}::{text}\n")
    stream.flush()


def info(message: str) -> None:
    emit("I", message)


def warning(message: str) -> None:
    emit("W", message)


def notice(message: str) -> None:
    """A W line that every invocation prints, even the quiet ones (fim-exec, the boot
    command): something about the host the user should know once."""
    frame = sys._getframe(1)
    origin = f"{os.path.basename(frame.f_code.co_filename)}::{frame.f_lineno}"
    text = " ".join(message.splitlines())
    sys.stderr.write(f"W::{origin}::{text}\n")
    sys.stderr.flush()


class CommandError(FimError):
    """A command failed at run time: E-level messages, innermost first."""

    level = "E"

    def __init__(self, *messages: str) -> None:
        super().__init__(messages[0], EXIT_FAILURE)
        self.messages = messages

    def chain(self) -> list[tuple[str, str]]:
        """``(level, message)`` pairs to print, innermost first."""
        return [(self.level, m) for m in self.messages]


class UsageError(CommandError):
    """The command line was refused: C-level messages, then the parser's wrapper."""

    level = "C"

    def chain(self) -> list[tuple[str, str]]:
        return [*super().chain(), ("C", "Could not parse arguments")]


class Fatal(CommandError):
    """A failure every invocation shows, even the quiet ones (C level): the image
    cannot start, or a known command is not available in this build."""

    level = "C"


def trailing(command: str, extra: list[str]) -> UsageError:
    """The spec's ``Trailing arguments for <command>: ['a','b',]`` error."""
    listed = "".join(f"'{a}'," for a in extra)
    return UsageError(f"Trailing arguments for {command}: [{listed}]")


def silence_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so the exit-time flush is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass

"""What runs when an image is executed: start-up, dispatch, errors (spec 1, 7, 8.1, 8.3).

Start-up (:mod:`app.session`) exports the FIM_* variables, creates the data directory
beside the image, reads the configuration and picks the overlay backend; then the first
argument selects a ``fim-*`` command (a module of :mod:`cli.commands`, imported
only when used) or, when it does not start with ``fim-``, the boot command.
Every failure prints its chain of log lines and exits 125.
"""

from __future__ import annotations

import importlib
import os
import sys

from fim.app import log, session, timing
from fim.app.log import CommandError, Fatal, UsageError
from fim.app.session import Host

TYPE_CHECKING = False  # not typing's: importing typing slows every start-up
if TYPE_CHECKING:
    from types import TracebackType

# Every command FlatImage's parser knows; None: known, but this build cannot run it yet.
COMMANDS: dict[str, str | None] = {
    "fim-bind": "fim.cli.commands.bind",
    "fim-boot": "fim.cli.commands.boot_program",
    "fim-casefold": "fim.cli.commands.switch",
    "fim-desktop": "fim.cli.commands.desktop",
    "fim-env": "fim.cli.commands.env",
    "fim-exec": "fim.cli.commands.exec",
    "fim-help": "fim.cli.commands.help",
    "fim-instance": "fim.cli.commands.instance",
    "fim-layer": "fim.cli.commands.layer",
    "fim-notify": "fim.cli.commands.switch",
    "fim-overlay": "fim.cli.commands.overlay",
    "fim-perms": "fim.cli.commands.namesets",
    "fim-recipe": "fim.cli.commands.recipe",
    "fim-remote": "fim.cli.commands.remote",
    "fim-root": "fim.cli.commands.exec",
    "fim-unshare": "fim.cli.commands.namesets",
    "fim-update": "fim.cli.commands.update",
    "fim-version": "fim.cli.commands.version",
}
QUIET_COMMANDS = ("fim-exec", "fim-root")  # like the boot command: only C lines


def _levels(argv: list[str]) -> str:
    if os.environ.get("FIM_DEBUG") == "1":
        return log.LEVELS
    first = argv[0] if argv else ""
    if not first.startswith("fim-") or first in QUIET_COMMANDS:
        return "C"
    return "IWEC"


def _dispatch(image: str, argv: list[str], host: Host | None) -> int:
    command = argv[0] if argv else ""
    try:
        path, layout, build = session.locate(image, host.build if host else None)
    except CommandError as exc:
        raise Fatal(*exc.messages, "Failed to start the image") from exc
    if "FIM_MAIN_OFFSET" in os.environ:
        print(layout.reserved_offset)
        return 0
    if command.startswith("fim-") and command not in COMMANDS:
        # before anything is created (FlatImage makes the directories first, spec 18.1 #19)
        raise UsageError(f"Unknown command: {command}", "Invalid fim command")
    try:
        ctx = session.prepare(command, path, layout, build, host)
    except CommandError as exc:
        raise Fatal(*exc.messages, "Failed to start the image") from exc
    timing.mark("configured")
    if not command.startswith("fim-"):
        from fim.app import run

        return run.run_program(ctx, run.boot_program(ctx, argv), wants_root=False)
    module = COMMANDS[command]
    if module is None:
        raise Fatal(f"{command} is not available in this build of fim yet")
    return importlib.import_module(module).run(ctx, argv[1:])



def _origin(tb: TracebackType | None) -> str:
    """``file::line`` where an exception was raised."""
    if tb is None:
        return "boot.py"
    while tb.tb_next is not None:
        tb = tb.tb_next
    return f"{os.path.basename(tb.tb_frame.f_code.co_filename)}::{tb.tb_lineno}"


def main(image: str, argv: list[str], host: Host | None = None) -> int:
    """Run the image at ``image`` (a path, or a URL with ``host``) with the command line
    ``argv``; the exit code."""
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(errors="surrogateescape")  # type: ignore[union-attr]
    log.configure(_levels(argv))
    try:
        code = _dispatch(image, argv, host)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        log.silence_stdout()
        return 141  # what a shell reports for a writer killed by SIGPIPE
    except KeyboardInterrupt:
        log.emit("C", "Interrupted", "boot.py")
        return 130
    except Exception as exc:
        if os.environ.get("FIM_DEBUG") == "1":
            import traceback

            traceback.print_exc()
        if isinstance(exc, CommandError):
            chain = exc.chain()
        else:  # a bug: still one line, the traceback with FIM_DEBUG=1
            chain = [("C", f"Internal error: {type(exc).__name__}: {exc} "
                           "(set FIM_DEBUG=1 for a traceback)")]
        origin = _origin(exc.__traceback__)
    for level, message in chain:
        log.emit(level, message, origin)
    log.emit("C", "The program exited with an error", f"boot.py::{sys._getframe().f_lineno}")
    return log.EXIT_FAILURE

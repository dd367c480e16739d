"""What runs when an image is executed: start-up, dispatch, errors (spec 1, 7, 8.1, 8.3).

Start-up exports the FIM_* variables, creates the data directory beside the
image, reads the configuration and picks the overlay backend; then the first
argument selects a ``fim-*`` command (a module of :mod:`cli.commands`, imported
only when used) or, when it does not start with ``fim-``, the boot command.
Every failure prints its chain of log lines and exits 125.
"""

from __future__ import annotations

import importlib
import os
import sys

from cli import log, timing
from cli.log import CommandError, Fatal, UsageError

TYPE_CHECKING = False  # not typing's: importing typing slows every start-up
if TYPE_CHECKING:
    from collections.abc import Mapping
    from types import TracebackType

    from cli.config import Config
    from cli.image import Layout

# Every command FlatImage's parser knows; None: known, but this build cannot run it yet.
COMMANDS: dict[str, str | None] = {
    "fim-bind": "cli.commands.bind",
    "fim-boot": "cli.commands.boot_program",
    "fim-casefold": "cli.commands.switch",
    "fim-desktop": "cli.commands.desktop",
    "fim-env": "cli.commands.env",
    "fim-exec": "cli.run",
    "fim-help": "cli.commands.help",
    "fim-instance": "cli.commands.instance",
    "fim-layer": "cli.commands.layer",
    "fim-notify": "cli.commands.switch",
    "fim-overlay": "cli.commands.overlay",
    "fim-perms": "cli.commands.namesets",
    "fim-recipe": "cli.commands.recipe",
    "fim-remote": "cli.commands.remote",
    "fim-root": "cli.run",
    "fim-unshare": "cli.commands.namesets",
    "fim-update": "cli.commands.update",
    "fim-version": "cli.commands.version",
}
QUIET_COMMANDS = ("fim-exec", "fim-root")  # like the boot command: only C lines
#: FIM_DIR_GLOBAL and FIM_DIR_RUNTIME keep the spec's paths: they name the sandbox's
#: view (its /tmp is private); the runtime itself is in a directory private to the
#: user on the host (FIM_DIR_APP, cli.rundir).
DIR_GLOBAL = "/tmp/fim"
CASEFOLD_FALLBACK = "casefold cannot be used with bwrap overlayfs, falling back to unionfs"


class Context:
    """What a command gets: the image, its layout and configuration (as read at
    start-up; edits re-read it under the lock), the build constants and the
    overlay backend in effect."""

    __slots__ = ("command", "image", "layout", "config", "build", "overlay")

    def __init__(self, command: str, image: str, layout: Layout, config: Config,
                 build: dict[str, object], overlay: str) -> None:
        self.command = command
        self.image = image
        self.layout = layout
        self.config = config
        self.build = build
        self.overlay = overlay


def casefold_active(cfg: Config, environ: Mapping[str, str]) -> bool:
    """Casefold is on when stored, or for this run with FIM_CASEFOLD=1."""
    return cfg.casefold or environ.get("FIM_CASEFOLD") == "1"


def overlay_backend(cfg: Config, environ: Mapping[str, str]) -> str:
    """The backend of this run: FIM_OVERLAY if it names one, else the stored one; bwrap's
    kernel overlay cannot casefold, so with casefold it becomes unionfs (and warns)."""
    from cli.config import OVERLAYS

    wanted = environ.get("FIM_OVERLAY", "")
    backend = wanted if wanted in OVERLAYS else cfg.overlay
    if backend == "bwrap" and casefold_active(cfg, environ):
        log.warning(CASEFOLD_FALLBACK)
        return "unionfs"
    return backend


def _levels(argv: list[str]) -> str:
    if os.environ.get("FIM_DEBUG") == "1":
        return log.LEVELS
    first = argv[0] if argv else ""
    if not first.startswith("fim-") or first in QUIET_COMMANDS:
        return "C"
    return "IWEC"


def _export(image: str, data_dir: str, app: str | None) -> None:
    """The FIM_* variables of spec 7.2 that exist before a sandbox is started."""
    from cli.image import is_url
    from cli.runtime import app_dir

    app = app or app_dir()
    pid = str(os.getpid())
    os.environ.update({
        "FIM_DIR_SELF": data_dir if is_url(image) else os.path.dirname(image),
        "FIM_DIR_GLOBAL": DIR_GLOBAL,
        "FIM_DIR_APP": app,
        "FIM_DIR_APP_BIN": f"{app}/bin",
        "FIM_DIR_APP_SBIN": f"{app}/sbin",
        "FIM_DIR_INSTANCE": f"{app}/instance/{pid}",
        "FIM_PID": pid,
        "FIM_DIR_RUNTIME": f"{DIR_GLOBAL}/run",
        "FIM_DIR_RUNTIME_HOST": f"{DIR_GLOBAL}/run/host",
        "FIM_DIR_DATA": data_dir,
        "FIM_DIR_LAYERS": os.path.join(data_dir, "layers"),
    })


def _locate(image: str, build: dict[str, object] | None) -> tuple[str, Layout, dict[str, object]]:
    """The image's real path (or URL), layout and build constants, exported (spec 8.1
    steps 1-2)."""
    from cli import runtime
    from cli.image import is_url, read_layout

    path = image if is_url(image) else os.path.realpath(image)
    build = build or runtime.build_info()
    layout = read_layout(path)
    os.environ.update({
        "FIM_VERSION": str(build["version"]),
        "FIM_COMMIT": str(build["commit"]),
        "FIM_TIMESTAMP": str(build["timestamp"]),
        "FIM_DIST": layout.dist,
        "FIM_BIN_SELF": path,
        "FIM_OFFSET": str(layout.reserved_offset),
    })
    return path, layout, build


def _prepare(command: str, path: str, layout: Layout, build: dict[str, object],
             host: Host | None) -> Context:
    """The data directory, the other FIM_* variables, the configuration (spec 8.1 step 3)."""
    from cli import config, datadir

    if host is not None and host.data and not os.environ.get("FIM_DIR_DATA"):
        data_dir, fallback = host.data, False
    else:
        data_dir, fallback = datadir.locate(path, os.environ)
    try:
        new = datadir.create(data_dir)
    except datadir.DataDirError as exc:
        raise Fatal(f"Could not create directory '{exc.filename}': {exc.strerror}") from None
    if fallback and new:
        log.notice(f"'{os.path.dirname(path)}' is not writable, or another user's: the data "
                   f"of this image is kept in '{data_dir}'")
    _export(path, data_dir, host.app if host else None)
    cfg = config.load(layout)
    return Context(command, path, layout, cfg, build, overlay_backend(cfg, os.environ))


def _dispatch(image: str, argv: list[str], host: Host | None) -> int:
    command = argv[0] if argv else ""
    try:
        path, layout, build = _locate(image, host.build if host else None)
    except CommandError as exc:
        raise Fatal(*exc.messages, "Failed to start the image") from exc
    if "FIM_MAIN_OFFSET" in os.environ:
        print(layout.reserved_offset)
        return 0
    if command.startswith("fim-") and command not in COMMANDS:
        # before anything is created (FlatImage makes the directories first, spec 18.1 #19)
        raise UsageError(f"Unknown command: {command}", "Invalid fim command")
    try:
        ctx = _prepare(command, path, layout, build, host)
    except CommandError as exc:
        raise Fatal(*exc.messages, "Failed to start the image") from exc
    timing.mark("configured")
    if not command.startswith("fim-"):
        from cli import run

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


class Host:
    """An image run by the `fim` tool rather than by its own launcher (`fim run URL`):
    the tool's runtime directory (``app``, with ``bin/bash``), its build constants, and
    the data directory of a remote image (``""`` for a local one: its usual one)."""

    __slots__ = ("app", "build", "data")

    def __init__(self, app: str, build: dict[str, object], data: str) -> None:
        self.app = app
        self.build = build
        self.data = data


def main(image: str, argv: list[str], host: Host | None = None) -> int:
    """Run the image at ``image`` (a path, or a URL with ``host``) with the command line
    ``argv``; the exit code."""
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(errors="surrogateescape")  # type: ignore[attr-defined]
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

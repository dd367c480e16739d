"""A started image: what every command gets (spec 8.1 steps 1-3).

Start-up locates the image, creates the data directory beside it, reads the
configuration and picks the overlay backend: one :class:`Context` built once and passed
to every command as a value, with its directories (:class:`Paths`) computed once. The
FIM_* variables of spec 7.2 are not exported: :meth:`Context.environ` adds them to the
caller's environment where a child gets one (the container's, expansions of stored
values, a program run in an instance).
"""

from __future__ import annotations

import os

from fim.app import log
from fim.app.log import Fatal

TYPE_CHECKING = False  # not typing's: importing typing slows every start-up
if TYPE_CHECKING:
    from collections.abc import Mapping

    from fim.app.config import Config
    from fim.app.image import Layout

#: FIM_DIR_GLOBAL and FIM_DIR_RUNTIME keep the spec's paths: they name the sandbox's
#: view (its /tmp is private); the runtime itself is in a directory private to the
#: user on the host (FIM_DIR_APP, app.rundir).
DIR_GLOBAL = "/tmp/fim"
CASEFOLD_FALLBACK = "casefold cannot be used with bwrap overlayfs, falling back to unionfs"


class Paths:
    """The directories of one start (spec 7.1), computed once: the image's data
    directory (FIM_DIR_DATA) and what is in it, the runtime's (FIM_DIR_APP) and this
    run's instance directory in it, and FIM_DIR_SELF."""

    __slots__ = ("self_dir", "data", "layers", "upper", "tmp", "work", "app", "app_bin",
                 "app_sbin", "instances", "instance")

    def __init__(self, self_dir: str, data: str, app: str, pid: int) -> None:
        self.self_dir = self_dir
        self.data = data
        self.layers = os.path.join(data, "layers")
        self.upper = os.path.join(data, "root")  # the writable layer, committed by fim-layer
        self.tmp = os.path.join(data, "tmp")
        self.work = os.path.join(data, "work", str(pid))  # this run's overlay work directory
        self.app = app
        self.app_bin = f"{app}/bin"
        self.app_sbin = f"{app}/sbin"
        self.instances = f"{app}/instance"
        self.instance = f"{app}/instance/{pid}"


class Context:
    """What a command gets: the image, its layout and configuration (as read at
    start-up; edits re-read it under the lock), the build constants, the overlay
    backend in effect, the directories and the pid of this start (FIM_PID)."""

    __slots__ = ("command", "image", "layout", "config", "build", "overlay", "paths", "pid")

    def __init__(self, command: str, image: str, layout: Layout, config: Config,
                 build: dict[str, object], overlay: str, paths: Paths, pid: int) -> None:
        self.command = command
        self.image = image
        self.layout = layout
        self.config = config
        self.build = build
        self.overlay = overlay
        self.paths = paths
        self.pid = pid

    def with_config(self, config: Config) -> Context:
        """This context with ``config`` in place of its configuration (one run's changes)."""
        return Context(self.command, self.image, self.layout, config, self.build,
                       self.overlay, self.paths, self.pid)

    def variables(self) -> dict[str, str]:
        """The FIM_* variables of spec 7.2 that exist before a sandbox is started."""
        paths = self.paths
        return {
            "FIM_VERSION": str(self.build["version"]),
            "FIM_COMMIT": str(self.build["commit"]),
            "FIM_TIMESTAMP": str(self.build["timestamp"]),
            "FIM_DIST": self.layout.dist,
            "FIM_BIN_SELF": self.image,
            "FIM_OFFSET": str(self.layout.reserved_offset),
            "FIM_DIR_SELF": paths.self_dir,
            "FIM_DIR_GLOBAL": DIR_GLOBAL,
            "FIM_DIR_APP": paths.app,
            "FIM_DIR_APP_BIN": paths.app_bin,
            "FIM_DIR_APP_SBIN": paths.app_sbin,
            "FIM_DIR_INSTANCE": paths.instance,
            "FIM_PID": str(self.pid),
            "FIM_DIR_RUNTIME": f"{DIR_GLOBAL}/run",
            "FIM_DIR_RUNTIME_HOST": f"{DIR_GLOBAL}/run/host",
            "FIM_DIR_DATA": paths.data,
            "FIM_DIR_LAYERS": paths.layers,
        }

    def environ(self) -> dict[str, str]:
        """The caller's environment (read now) with :meth:`variables` over it: what a
        child of this start sees, and what stored values are expanded from."""
        return {**os.environ, **self.variables()}


def casefold_active(cfg: Config, environ: Mapping[str, str]) -> bool:
    """Casefold is on when stored, or for this run with FIM_CASEFOLD=1."""
    return cfg.casefold or environ.get("FIM_CASEFOLD") == "1"


def overlay_backend(cfg: Config, environ: Mapping[str, str]) -> str:
    """The backend of this run: FIM_OVERLAY if it names one, else the stored one; bwrap's
    kernel overlay cannot casefold, so with casefold it becomes unionfs (and warns)."""
    from fim.app.config import OVERLAYS

    wanted = environ.get("FIM_OVERLAY", "")
    backend = wanted if wanted in OVERLAYS else cfg.overlay
    if backend == "bwrap" and casefold_active(cfg, environ):
        log.warning(CASEFOLD_FALLBACK)
        return "unionfs"
    return backend


def locate(image: str, build: dict[str, object] | None) -> tuple[str, Layout, dict[str, object]]:
    """The image's real path (or URL), layout and build constants (spec 8.1 steps 1-2)."""
    from fim.app import runtime
    from fim.app.image import is_url, read_layout

    path = image if is_url(image) else os.path.realpath(image)
    build = build or runtime.build_info()
    return path, read_layout(path), build


def prepare(command: str, path: str, layout: Layout, build: dict[str, object],
             host: Host | None) -> Context:
    """The data directory, the configuration, the session's directories (spec 8.1 step 3)."""
    from fim.app import config, datadir
    from fim.app.image import is_url
    from fim.app.runtime import app_dir

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
    pid = os.getpid()
    paths = Paths(data_dir if is_url(path) else os.path.dirname(path), data_dir,
                  (host.app if host else None) or app_dir(), pid)
    cfg = config.load(layout)
    return Context(command, path, layout, cfg, build, overlay_backend(cfg, os.environ),
                   paths, pid)


class Host:
    """An image run by the `fim` tool rather than by its own launcher (`fim run URL`):
    the tool's runtime directory (``app``, with ``bin/bash``), its build constants, and
    the data directory of a remote image (``""`` for a local one: its usual one)."""

    __slots__ = ("app", "build", "data")

    def __init__(self, app: str, build: dict[str, object], data: str) -> None:
        self.app = app
        self.build = build
        self.data = data

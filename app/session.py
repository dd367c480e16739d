"""A started image: what every command gets (spec 8.1 steps 1-3).

Start-up exports the FIM_* variables, creates the data directory beside the image,
reads the configuration and picks the overlay backend.
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
    from fim.app.config import OVERLAYS

    wanted = environ.get("FIM_OVERLAY", "")
    backend = wanted if wanted in OVERLAYS else cfg.overlay
    if backend == "bwrap" and casefold_active(cfg, environ):
        log.warning(CASEFOLD_FALLBACK)
        return "unionfs"
    return backend


def _export(image: str, data_dir: str, app: str | None) -> None:
    """The FIM_* variables of spec 7.2 that exist before a sandbox is started."""
    from fim.app.image import is_url
    from fim.app.runtime import app_dir

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


def locate(image: str, build: dict[str, object] | None) -> tuple[str, Layout, dict[str, object]]:
    """The image's real path (or URL), layout and build constants, exported (spec 8.1
    steps 1-2)."""
    from fim.app import runtime
    from fim.app.image import is_url, read_layout

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


def prepare(command: str, path: str, layout: Layout, build: dict[str, object],
             host: Host | None) -> Context:
    """The data directory, the other FIM_* variables, the configuration (spec 8.1 step 3)."""
    from fim.app import config, datadir

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


class Host:
    """An image run by the `fim` tool rather than by its own launcher (`fim run URL`):
    the tool's runtime directory (``app``, with ``bin/bash``), its build constants, and
    the data directory of a remote image (``""`` for a local one: its usual one)."""

    __slots__ = ("app", "build", "data")

    def __init__(self, app: str, build: dict[str, object], data: str) -> None:
        self.app = app
        self.build = build
        self.data = data

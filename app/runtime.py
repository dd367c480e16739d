"""Where an image's runtime lives once unpacked, and its build constants.

The launcher unpacks the runtime payload (made by :mod:`cli.build.payload`) once per
build id into ``BASE/app/<build-id>/`` (FIM_DIR_APP), ``BASE`` being a directory
private to the user (:mod:`app.rundir`: ``/tmp/fim-UID``, else ``$XDG_RUNTIME_DIR/fim``,
else ``~/.cache/fim``): ``bin/`` (the static bash that starts programs in the sandbox;
with the frozen runtime also fim itself and bwrap) and, for the python runtime,
``lib/`` (fim's packages). ``build.json`` holds the version, commit, build time and
bundled dependencies.
"""

from __future__ import annotations

import json
import os
import sys

from fim.app import rundir

TYPE_CHECKING = False  # not typing's: importing typing slows every start-up
if TYPE_CHECKING:
    from collections.abc import Mapping

BUILD_INFO = "build.json"
#: The packages under ``fim`` in :func:`source_root`: what a runtime payload carries.
PACKAGES = ("app", "cli", "fimfs", "sandbox", "osutil")


def source_root() -> str:
    """The directory holding the ``fim`` package (the payload's lib/ when run from an
    image)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def find_bash() -> str:
    """Debian's static bash, which every image carries as ``APP/bin/bash`` (spec 3.1)."""
    from fim.app.errors import FimError

    for path in ("/bin/bash-static", "/usr/bin/bash-static"):
        if os.path.isfile(path):
            return path
    raise FimError("images bundle a static bash: apt-get install bash-static")


def build_info() -> dict[str, object]:
    """``build.json`` of the running payload: version, commit, timestamp, deps."""
    with open(os.path.join(source_root(), BUILD_INFO), encoding="utf-8") as f:
        return json.load(f)


def app_dir() -> str:
    """FIM_DIR_APP of the running payload, where the launcher unpacked it: the parent
    of ``bin/fim`` (frozen runtime) or of ``lib/`` (python runtime)."""
    if getattr(sys, "frozen", False):
        return os.path.dirname(os.path.dirname(sys.executable))
    return os.path.dirname(source_root())


def app_dirs(build_id: str, uid: int, environ: Mapping[str, str]) -> list[str]:
    """Every FIM_DIR_APP the runtime of ``build_id`` may be unpacked to for ``uid``
    with ``environ`` (its XDG_RUNTIME_DIR, XDG_CACHE_HOME and HOME)."""
    return [f"{base}/app/{build_id}" for base in rundir.candidates(uid, environ)]

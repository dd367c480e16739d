"""Entry point of the frozen runtime (PyInstaller): ``fim IMAGE ARGS...``, or the
portal's dispatcher or guest daemon with FIM_PORTAL_MODE (the wrappers of sandbox.portal).

First of all, what PyInstaller's bootloader changed in the environment is undone: its
LD_LIBRARY_PATH (the runtime's ``_internal``, which made the image's programs load the
runtime's libz or libzstd) and its ``_PYI_*`` variables must reach no program fim
starts, inside the sandbox or on the host. This process keeps its library search path
(the loader read it at start-up): fimfs.fuse loads libfuse3 by its soname, which finds
the copy bundled in ``_internal`` before the host's.
"""

import os
import sys
import time


def _restore_environment() -> None:
    """The caller's LD_LIBRARY_PATH (saved as LD_LIBRARY_PATH_ORIG, or none), no _PYI_*."""
    original = os.environ.pop("LD_LIBRARY_PATH_ORIG", None)
    if original is not None:
        os.environ["LD_LIBRARY_PATH"] = original
    elif os.environ.get("LD_LIBRARY_PATH", "").split(":")[0] == getattr(sys, "_MEIPASS", ""):
        del os.environ["LD_LIBRARY_PATH"]
    for name in [name for name in os.environ if name.startswith("_PYI_")]:
        del os.environ[name]


if __name__ == "__main__":
    _entered = time.monotonic_ns()
    _restore_environment()
    # the portal's dispatcher and guest daemon inside the sandbox (sandbox.portal)
    mode = os.environ.pop("FIM_PORTAL_MODE", None)
    if mode is not None:
        from fim.sandbox import portal

        sys.exit(portal.main(mode, sys.argv[1:]))
    if len(sys.argv) < 2:
        sys.stderr.write("C::launcher::usage: fim IMAGE [ARGS...] (started by the image)\n")
        sys.exit(125)
    from fim.app import timing

    timing.mark("python", _entered)
    from fim.cli.boot import main

    timing.mark("imported")
    code = main(sys.argv[1], sys.argv[2:])
    timing.write()
    # The run is over and cleaned up: skip the interpreter's teardown of every module
    # (~15 ms of a `fim-exec true`); only the standard streams hold unwritten data.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)

"""Entry point of the frozen runtime (PyInstaller): ``fim IMAGE ARGS...``, or the
portal's dispatcher or guest daemon with FIM_PORTAL_MODE (the wrappers of sandbox.portal).

The libfuse bundled next to the frozen interpreter is the one to load when the host
has none: mfusepy takes FUSE_LIBRARY_PATH before any search (fimfs.fuse too).
"""

import os
import sys
import time

if __name__ == "__main__":
    _entered = time.monotonic_ns()
    # the portal's dispatcher and guest daemon inside the sandbox (sandbox.portal)
    mode = os.environ.pop("FIM_PORTAL_MODE", None)
    if mode is not None:
        from sandbox import portal

        sys.exit(portal.main(mode, sys.argv[1:]))
    bundled = os.path.join(getattr(sys, "_MEIPASS", ""), "libfuse3.so.3")
    if "FUSE_LIBRARY_PATH" not in os.environ and os.path.isfile(bundled):
        os.environ["FUSE_LIBRARY_PATH"] = bundled
    if len(sys.argv) < 2:
        sys.stderr.write("C::launcher::usage: fim IMAGE [ARGS...] (started by the image)\n")
        sys.exit(125)
    from cli import timing

    timing.mark("python", _entered)
    from cli.boot import main

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

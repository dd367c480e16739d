"""The blueprint root of `fim build blueprint`: the skeleton, a static busybox with one
symbolic link per applet, and a static bash (Debian's busybox-static and bash-static)."""

from __future__ import annotations

import os
import shutil
import subprocess

from fim.app.errors import FimError
from fim.cli.build import rootfs

# what the blueprint calls the file -> where Debian's package puts it, and the package
BINARIES = {
    "bin/busybox": ("/bin/busybox", "busybox-static"),
    "bin/bash": ("/bin/bash-static", "bash-static"),
}


def _is_static(path: str) -> bool:
    """No PT_INTERP program header: the kernel runs it without a dynamic loader.
    (Debian's non-static busybox package installs the same path.)"""
    import struct

    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit ELF only
            return False
        phoff, = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))


def find_binaries() -> dict[str, str]:
    """The host's static busybox and bash, by their path in the blueprint."""
    found, missing = {}, []
    for name, (host, package) in BINARIES.items():
        if os.path.isfile(host) and _is_static(host):
            found[name] = host
        else:
            missing.append(package)
    if missing:
        raise FimError(f"the blueprint needs {' and '.join(missing)} "
                       f"(apt-get install {' '.join(missing)})")
    return found


def applets(busybox: str) -> list[str]:
    """The applets of ``busybox`` as paths relative to the root (``usr/bin/awk``...)."""
    out = subprocess.run([busybox, "--list-full"], capture_output=True, text=True, check=True)
    names = (line.strip() for line in out.stdout.splitlines())
    return sorted(n for n in names if "/" in n)  # not /linuxrc, busybox as init


def populate(root: str) -> None:
    """Make ``root`` (an empty directory) the blueprint root."""
    binaries = find_binaries()
    rootfs.add_skeleton(root)
    for name, host in binaries.items():
        target = os.path.join(root, name)
        shutil.copyfile(host, target)
        os.chmod(target, 0o755)
    for applet in applets(binaries["bin/busybox"]):
        link = os.path.join(root, applet)
        if os.path.lexists(link):
            continue  # bash stays bash
        os.makedirs(os.path.dirname(link), 0o755, exist_ok=True)
        os.symlink("/bin/busybox", link)

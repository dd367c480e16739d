"""The mount table and unmounting with whatever this host allows."""

from __future__ import annotations

import os
import subprocess

_MNT_DETACH = 2


def _unescape(field: bytes) -> bytes:
    # mountinfo writes space, tab, newline and backslash as \ooo
    out, i = bytearray(), 0
    while i < len(field):
        octal = field[i + 1:i + 4]
        if field[i] == 0x5C and len(octal) == 3 and octal.isdigit():
            out.append(int(octal, 8) & 0xFF)
            i += 4
        else:
            out.append(field[i])
            i += 1
    return bytes(out)


def mount_points() -> list[str] | None:
    """The mount points of /proc/self/mountinfo, in its order; None if it cannot be read."""
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            return [os.fsdecode(_unescape(fields[4])) for line in f
                    if len(fields := line.split(b" ")) > 4]
    except OSError:
        return None


def device_of(path: str) -> int | None:
    """The device number (st_dev) of the mount on top at ``path`` (exactly as written),
    from /proc/self/mountinfo, without a stat that the mounted filesystem would answer;
    None when nothing is mounted there."""
    found = None
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            for line in f:
                fields = line.split(b" ")
                if len(fields) > 4 and os.fsdecode(_unescape(fields[4])) == path:
                    major, minor = fields[2].split(b":")
                    found = os.makedev(int(major), int(minor))
    except (OSError, ValueError):
        return None
    return found


def is_mounted(path: str) -> bool:
    """Whether something is mounted on ``path`` exactly as written (also true for a
    disconnected FUSE mount; without a readable mount table, os.path.ismount)."""
    points = mount_points()
    return os.path.ismount(path) if points is None else path in points


#: Where the unmount helpers are looked for when PATH has none (a caller's PATH may
#: lack them, and a mount daemon outlives its caller: it must still unmount itself).
SYSTEM_DIRS = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def which(program: str) -> str | None:
    """shutil.which, else in :data:`SYSTEM_DIRS`; shutil imported on first use (it costs
    a mount's start ~4 ms)."""
    import shutil

    return shutil.which(program) or shutil.which(program, path=SYSTEM_DIRS)


def _run(argv: list[str], timeout: float) -> str | None:
    """Run an unmount helper: None on success, else its one-line reason."""
    try:
        res = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timed out"
    except OSError as exc:
        return exc.strerror or str(exc)
    if res.returncode == 0:
        return None
    lines = [ln.strip() for ln in (res.stderr or res.stdout).splitlines() if ln.strip()]
    reason = lines[-1] if lines else f"{argv[0]} exited with {res.returncode}"
    # "fusermount3: failed to unmount /x: Device or resource busy" -> the last part.
    return reason.rsplit(": ", 1)[-1] if reason.startswith(argv[0]) else reason


def umount2(path: str, lazy: bool) -> str | None:
    """The umount2 system call (root, or a mount namespace of this process's own): None
    on success, else its reason."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(os.fsencode(path), _MNT_DETACH if lazy else 0) == 0:
        return None
    return os.strerror(ctypes.get_errno())


def unmount(path: str, lazy: bool = False, timeout: float = 30) -> str | None:
    """Unmount ``path`` with fusermount3, fusermount or (as root) umount, else with the
    system call; None once it is no longer mounted, else the last helper's reason.

    ``lazy`` detaches it even while files in it are open. ``timeout``: per helper.
    """
    flag = ["-z"] if lazy else []
    candidates = [["fusermount3", "-u", *flag, "--"], ["fusermount", "-u", *flag, "--"]]
    if os.geteuid() == 0:
        candidates.append(["umount", "-l"] if lazy else ["umount"])
    reason: str | None = "no fusermount3, fusermount or umount found"
    for argv in candidates:
        if which(argv[0]) is None:
            continue
        failed = _run([*argv, path], timeout)
        if failed is None or not is_mounted(path):  # gone after all (a racing unmount)
            return None
        reason = failed
    return None if umount2(path, lazy) is None else reason

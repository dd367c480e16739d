"""bwrap arguments for the permissions and unshare options (spec sections 3.3 and 4).

Pure builders: they look at the host only through a `Host` (environment, existence
checks, directory listings), so every argument vector can be tested without bwrap.
Every bind uses a ``-try`` variant, so a missing host source is skipped by bwrap.

Deliberate differences from upstream FlatImage (issue 8, "Sandbox"):

* The host root is not bound at ``/tmp/fim/run/host``. The GPU driver files get one
  read-only bind each at ``/tmp/fim/run/host/<real path>``, the path upstream's
  symlinks point to (see `gpu_symlinks`).
* /tmp is private, so ``xorg`` also binds ``/tmp/.X11-unix`` (read-only).
* The network namespace is unshared unless ``network`` is given (`network_isolated`);
  ``network`` also brings the resolver files, as upstream.
* The pid and IPC namespaces are always unshared, IPC except with ``xorg`` (X11's
  MIT-SHM shares System V memory with the server) (`always_unshared`).
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Collection, Mapping

__all__ = [
    "GPU_HOST_DIR",
    "PERMISSIONS",
    "UNSHARE",
    "Host",
    "always_unshared",
    "dbus_socket_path",
    "gpu_symlinks",
    "network_isolated",
    "permission_args",
    "unshare_args",
]

#: Every permission, in emission order (spec 3.3): ``gpu`` first (its arguments come
#: right after the user binds), then home … dev. ``set(PERMISSIONS)`` is ``all``.
PERMISSIONS: tuple[str, ...] = (
    "gpu",
    "home",
    "media",
    "audio",
    "wayland",
    "xorg",
    "dbus_user",
    "dbus_system",
    "udev",
    "input",
    "usb",
    "network",
    "shm",
    "optical",
    "dev",
)

#: Unshare options in the order of the table of spec section 4.
UNSHARE: tuple[str, ...] = ("user", "ipc", "pid", "net", "uts", "cgroup")

_UNSHARE_FLAGS: dict[str, str] = {
    "user": "--unshare-user-try",
    "ipc": "--unshare-ipc",
    "pid": "--unshare-pid",
    "net": "--unshare-net",
    "uts": "--unshare-uts",
    "cgroup": "--unshare-cgroup-try",
}

#: Where the GPU driver files are bound inside (spec 7.1 FIM_DIR_RUNTIME_HOST); only
#: those files are bound there, not the host root.
GPU_HOST_DIR = "/tmp/fim/run/host"

# Spec 3.3 "GPU symlinks": directory -> substrings one of which the file name must
# contain. Paths containing one of _GPU_SKIP are left out.
_GPU_DIRS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("/usr/lib", ("nvidia", "cuda", "nvcuvid", "nvoptix")),
    ("/usr/lib/x86_64-linux-gnu", ("nvidia", "cuda", "nvcuvid", "nvoptix")),
    ("/usr/lib/i386-linux-gnu", ("nvidia", "cuda", "nvcuvid", "nvoptix")),
    ("/usr/bin", ("nvidia",)),
    ("/usr/share", ("nvidia",)),
    ("/usr/share/vulkan/icd.d", ("nvidia",)),
    ("/usr/lib32", ("nvidia", "cuda")),
)
_GPU_SKIP: tuple[str, ...] = ("gst", "icudata", "egl-wayland")

_OPTICAL_MAX = 255

_RESOLVER_FILES: tuple[str, ...] = (
    "/etc/host.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/resolv.conf",
)


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


class Host:
    """What the builders may look at on the host; every probe is injectable for tests.

    ``exists`` and ``isdir`` follow symlinks (like `os.path.exists`/`os.path.isdir`);
    ``listdir`` returns ``[]`` for a missing or unreadable directory.
    """

    def __init__(
        self,
        environ: Mapping[str, str],
        exists: Callable[[str], bool] = os.path.exists,
        listdir: Callable[[str], list[str]] = _listdir,
        uid: int | None = None,
        *,
        isdir: Callable[[str], bool] = os.path.isdir,
        realpath: Callable[[str], str] = os.path.realpath,
    ) -> None:
        self.environ = environ
        self.exists = exists
        self.listdir = listdir
        self.uid = os.getuid() if uid is None else uid
        self.isdir = isdir
        self.realpath = realpath

    def env(self, name: str) -> str | None:
        """The variable's value, or None when it is unset or empty."""
        return self.environ.get(name) or None

    @property
    def xdg_runtime_dir(self) -> str:
        """Host ``XDG_RUNTIME_DIR``, else ``/run/user/<uid>`` (spec 3.2, 7.3)."""
        return self.env("XDG_RUNTIME_DIR") or f"/run/user/{self.uid}"


def _same(option: str, *paths: str) -> list[str]:
    """``option p p`` for each path (a bind onto the same path inside)."""
    out: list[str] = []
    for p in paths:
        out += [option, p, p]
    return out


def _home(host: Host, msgs: list[str]) -> list[str]:
    home = host.env("HOME")
    if home is None:
        msgs.append("HOME environment variable is unset")
        return []
    return _same("--bind-try", home)


def _media(host: Host, msgs: list[str]) -> list[str]:
    return _same("--bind-try", "/media", "/run/media", "/mnt")


def _audio(host: Host, msgs: list[str]) -> list[str]:
    pulse = posixpath.join(host.xdg_runtime_dir, "pulse/native")
    pipewire = posixpath.join(host.xdg_runtime_dir, "pipewire-0")
    return [
        *_same("--bind-try", pulse),
        "--setenv", "PULSE_SERVER", f"unix:{pulse}",
        *_same("--bind-try", pipewire),
        *_same("--dev-bind-try", "/dev/dsp"),
        *_same("--bind-try", "/dev/snd", "/proc/asound"),
    ]  # fmt: skip


def _wayland(host: Host, msgs: list[str]) -> list[str]:
    display = host.env("WAYLAND_DISPLAY")
    if display is None:
        msgs.append("WAYLAND_DISPLAY is undefined")
        return []
    # An absolute WAYLAND_DISPLAY replaces the directory, as std::filesystem's `/`.
    socket = posixpath.join(host.xdg_runtime_dir, display)
    return [*_same("--bind-try", socket), "--setenv", "WAYLAND_DISPLAY", display]


def _xorg(host: Host, msgs: list[str]) -> list[str]:
    display, xauth = host.env("DISPLAY"), host.env("XAUTHORITY")
    if display is None:
        msgs.append("DISPLAY is undefined")
    if xauth is None:
        msgs.append("XAUTHORITY is undefined")
    if display is None or xauth is None:
        return []
    return [
        *_same("--ro-bind-try", xauth),
        "--setenv", "XAUTHORITY", xauth,
        "--setenv", "DISPLAY", display,
        # fim: /tmp is private, the X socket directory comes with this permission.
        *_same("--ro-bind-try", "/tmp/.X11-unix"),
    ]  # fmt: skip


def dbus_socket_path(address: str) -> str | None:
    """The socket path of a D-Bus address (spec 3.3 ``dbus_user``).

    Everything before the first ``/`` and from the first ``,`` on is removed:
    ``unix:path=/run/user/1000/bus,guid=…`` gives ``/run/user/1000/bus``.
    None when the address has no ``/``.
    """
    slash = address.find("/")
    if slash < 0:
        return None
    return address[slash:].split(",", 1)[0]


def _dbus_user(host: Host, msgs: list[str]) -> list[str]:
    address = host.env("DBUS_SESSION_BUS_ADDRESS")
    if address is None:
        msgs.append("DBUS_SESSION_BUS_ADDRESS is undefined")
        return []
    out = ["--setenv", "DBUS_SESSION_BUS_ADDRESS", address]
    path = dbus_socket_path(address)
    if path is not None:
        out += _same("--bind-try", path)
    return out


def _dbus_system(host: Host, msgs: list[str]) -> list[str]:
    return _same("--bind-try", "/run/dbus/system_bus_socket")


def _udev(host: Host, msgs: list[str]) -> list[str]:
    return _same("--bind-try", "/run/udev")


def _input(host: Host, msgs: list[str]) -> list[str]:
    return _same("--dev-bind-try", "/dev/input", "/dev/uinput")


def _usb(host: Host, msgs: list[str]) -> list[str]:
    return _same("--dev-bind-try", "/dev/bus/usb", "/dev/usb")


def _network(host: Host, msgs: list[str]) -> list[str]:
    return _same("--ro-bind-try", *_RESOLVER_FILES)


def _shm(host: Host, msgs: list[str]) -> list[str]:
    return _same("--dev-bind-try", "/dev/shm")


def _optical(host: Host, msgs: list[str]) -> list[str]:
    out: list[str] = []
    for i in range(_OPTICAL_MAX + 1):
        found = [d for d in (f"/dev/sr{i}", f"/dev/sg{i}") if host.exists(d)]
        if not found:
            break
        out += _same("--dev-bind-try", *found)
    return out


def _dev(host: Host, msgs: list[str]) -> list[str]:
    return _same("--dev-bind-try", "/dev")


def _gpu(host: Host, msgs: list[str]) -> list[str]:
    nodes = [f"/dev/{e}" for e in sorted(host.listdir("/dev")) if "nvidia" in e]
    out = _same("--dev-bind-try", "/dev/dri", *nodes)
    for real in dict.fromkeys(real for _path, real in _gpu_files(host)):
        out += ["--ro-bind-try", real, GPU_HOST_DIR + real]
    return out


_BUILDERS: dict[str, Callable[[Host, list[str]], list[str]]] = {
    "gpu": _gpu,
    "home": _home,
    "media": _media,
    "audio": _audio,
    "wayland": _wayland,
    "xorg": _xorg,
    "dbus_user": _dbus_user,
    "dbus_system": _dbus_system,
    "udev": _udev,
    "input": _input,
    "usb": _usb,
    "network": _network,
    "shm": _shm,
    "optical": _optical,
    "dev": _dev,
}
assert tuple(_BUILDERS) == PERMISSIONS


def _check(names: Collection[str], known: tuple[str, ...], what: str) -> None:
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(f"unknown {what}: {', '.join(unknown)}")


def permission_args(
    perms: Collection[str], host: Host, *, root_mode: bool
) -> tuple[list[str], list[str]]:
    """bwrap arguments for ``perms`` and the messages for the ones skipped (spec 3.3).

    Arguments come in `PERMISSIONS` order: the GPU arguments first (the caller puts
    them right after the user binds, spec 3.1), ``dev`` last so it supersedes every
    earlier ``/dev`` bind. ``home`` is skipped silently in root mode (spec 9). A
    permission whose variable is missing is skipped with the spec's message, e.g.
    ``WAYLAND_DISPLAY is undefined``; the caller logs them at E level. Empty
    variables count as unset. Raises ValueError for an unknown name (``all`` is
    not a name: pass ``PERMISSIONS``). Some destinations are under /tmp
    (``/tmp/.X11-unix``, the GPU files under `GPU_HOST_DIR`): the private /tmp must
    be set up before these arguments.
    """
    _check(perms, PERMISSIONS, "permission")
    args: list[str] = []
    msgs: list[str] = []
    for name in PERMISSIONS:
        if name not in perms or (name == "home" and root_mode):
            continue
        args += _BUILDERS[name](host, msgs)
    return args, msgs


def network_isolated(perms: Collection[str], unshare: Collection[str]) -> bool:
    """Whether the sandbox gets its own network namespace.

    fim differs from upstream (issue 8): the namespace is unshared unless the
    ``network`` permission is given; ``fim-unshare net`` unshares it anyway (spec 4).
    """
    return "network" not in perms or "net" in unshare


def always_unshared(perms: Collection[str]) -> set[str]:
    """The unshare options every sandbox gets whatever ``fim-unshare`` says: ``pid``
    (nothing of the host visible or signalable; nothing outlives the run) and ``ipc``
    (no host System V memory), but the IPC namespace stays the host's with ``xorg``."""
    return {"pid"} if "xorg" in perms else {"pid", "ipc"}


def unshare_args(options: Collection[str], *, network_isolated: bool = False) -> list[str]:
    """bwrap flags for the unshare options, in the table order of spec section 4.

    ``network_isolated=True`` (see `network_isolated`) adds ``--unshare-net`` when
    ``net`` is not among ``options``; the flag is emitted once, in its table place.
    Raises ValueError for an unknown option (``all`` is not one: pass ``UNSHARE``).
    """
    _check(options, UNSHARE, "unshare option")
    wanted = set(options)
    if network_isolated:
        wanted.add("net")
    return [_UNSHARE_FLAGS[name] for name in UNSHARE if name in wanted]


def gpu_symlinks(host: Host) -> list[tuple[str, str]]:
    """NVIDIA library links for the writable layer: ``(path inside, link target)`` pairs.

    Spec 3.3 "GPU symlinks": the non-directory entries directly inside (not
    recursive) of ``/usr/lib``, ``/usr/lib/x86_64-linux-gnu``, ``/usr/lib/i386-linux-gnu``
    whose name contains nvidia, cuda, nvcuvid or nvoptix; of ``/usr/bin``,
    ``/usr/share``, ``/usr/share/vulkan/icd.d`` containing nvidia; of ``/usr/lib32``
    containing nvidia or cuda; leaving out paths containing gst, icudata or
    egl-wayland, and dangling links. The target is ``/tmp/fim/run/host/<real path>``
    as upstream; since fim does not bind the host root there, the ``gpu`` permission
    binds exactly these real paths there read-only (`permission_args`). (A link to the
    bare real path would point at itself whenever the entry is the library file.)
    The caller creates each link in the upper dir, replacing an older symlink and
    leaving an existing regular file alone. Sorted by name within each directory.
    """
    return [(path, GPU_HOST_DIR + real) for path, real in _gpu_files(host)]


def _gpu_files(host: Host) -> list[tuple[str, str]]:
    """``(host path, host real path)`` of the GPU driver files (see `gpu_symlinks`)."""
    files: list[tuple[str, str]] = []
    for directory, needles in _GPU_DIRS:
        for name in sorted(host.listdir(directory)):
            path = posixpath.join(directory, name)
            if not any(n in name for n in needles) or any(s in path for s in _GPU_SKIP):
                continue
            if host.isdir(path) or not host.exists(path):
                continue
            files.append((path, host.realpath(path)))
    return files

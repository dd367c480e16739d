"""The fallback overlay backends that are other programs (``fim-overlay set ...``).

The in-process stack (``app/stack.py``: one FUSE mount serving
``CaseFold(Union(HostDir(upper), [DwarfsImage, ...]))``) is the default. The
backends here are what FlatImage itself does (docs/flatimage-cli.md, 11.2):

* every layer is mounted read-only on its own directory ``RUNTIME/layers/<i>``
  (0 = bottom), served by fim's DwarFS reader (``open_layer``, run in a child
  process through :func:`fimfs.fuse.mount`) or, with ``native=True``, by the
  native ``dwarfs`` program when it is on PATH;
* ``overlayfs``: ``fuse-overlayfs`` unites them with the upper directory on
  ``RUNTIME/mount``;
* ``unionfs``: ``unionfs-fuse -o cow`` does the same;
* ``bwrap``: nothing more is mounted; bwrap (>= 0.10) builds a kernel overlay from
  ``ExternalStack.layer_dirs`` (the caller asks :mod:`sandbox.bwrap` for the arguments);
* ``casefold=True`` (not with bwrap): ``CaseFold(HostDir(RUNTIME/mount))`` served by
  fim on ``RUNTIME/casefold``, where FlatImage runs ciopfs (not packaged by Debian).

Upper directory: the same one works with every backend. fuse-overlayfs, kernel
overlayfs and fim's union all write overlayfs whiteouts (character device 0:0) and
opaque markers, and read each other's. unionfs-fuse keeps its deletion markers in
``UPPER/.unionfs-fuse/`` (a documented upstream limitation, as in FlatImage):
deletions made through unionfs are not understood by the other backends, and the
others' whiteouts are not understood by unionfs.

Processes: every mount is served by a child process of the caller, started by
:func:`fimfs.servers.spawn` (fim's own mounts serve in the foreground, the programs
are exec'd), each with a parent-death signal, so a caller that dies does not leave
them running: call :func:`start` from a thread that lives as long as the stack
(normally the main thread). The mount points are also listed in
``ExternalStack.mountpoints`` for a janitor.

This module imports nothing from ``cli`` or ``sandbox``.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Sequence
from typing import Any

from fim.fimfs import fuse, servers
from fim.fimfs.errors import FimfsError
from fim.fimfs.remote import is_url
from fim.fimfs.vfs import Filesystem

log = logging.getLogger(__name__)

#: The backends :func:`start` knows, and the program each needs besides the layer mounts.
PROGRAMS: dict[str, str | None] = {
    "overlayfs": "fuse-overlayfs",
    "unionfs": "unionfs-fuse",
    "bwrap": None,
}
BACKENDS = tuple(PROGRAMS)
#: The native DwarFS FUSE driver used with ``native=True``.
DWARFS = "dwarfs"

#: ``open_layer(path, offset, size)``: a layer's Filesystem (``size`` None: up to the end
#: of the file; a layer followed by others in one image needs its size).
OpenLayer = Callable[[str, int, "int | None"], Filesystem]
#: A layer: ``(path, offset)`` or ``(path, offset, size)``.
LayerSpec = tuple[str, int, "int | None"]


class BackendMissing(FimfsError):
    """The program a backend needs is not installed; the caller may fall back to fim's stack."""

    def __init__(self, program: str, backend: str) -> None:
        self.program = program
        self.backend = backend
        super().__init__(f"{program} not found on PATH (needed by the {backend} backend)")


# -- command lines (pure) ---------------------------------------------------------------


def _check_path(path: str, what: str, forbidden: str) -> str:
    bad = sorted({c for c in path if c in forbidden})
    if bad:
        shown = " or ".join(repr(c) for c in bad)
        raise FimfsError(f"{what} {path} contains {shown}: this backend cannot take it in a path")
    return path


def fuse_overlayfs_argv(layer_dirs: Sequence[str], upper: str, work: str, mountpoint: str,
                        *, uid: int | None = None, gid: int | None = None,
                        program: str = "fuse-overlayfs") -> list[str]:
    """``fuse-overlayfs -f -o lowerdir=TOP:...:BOTTOM,upperdir=,workdir= MP`` (layers bottom first).

    fuse-overlayfs splits ``lowerdir`` on ``:`` and the options on ``,`` with no way to
    escape either, so a path containing one is refused with a FimfsError.
    """
    if not layer_dirs:
        raise FimfsError("no layers given")
    lowers = [_check_path(os.fspath(d), "layer directory", ":,") for d in reversed(layer_dirs)]
    opts = [
        "lowerdir=" + ":".join(lowers),
        "upperdir=" + _check_path(os.fspath(upper), "upper directory", ":,"),
        "workdir=" + _check_path(os.fspath(work), "work directory", ":,"),
    ]
    if uid is not None:
        opts.append(f"squash_to_uid={int(uid)}")
    if gid is not None:
        opts.append(f"squash_to_gid={int(gid)}")
    return [program, "-f", "-o", ",".join(opts), os.fspath(mountpoint)]


def unionfs_argv(layer_dirs: Sequence[str], upper: str, mountpoint: str,
                 *, program: str = "unionfs-fuse") -> list[str]:
    """``unionfs-fuse -f -o cow,hide_meta_files UPPER=RW:TOP=RO:...:BOTTOM=RO MP``.

    unionfs-fuse splits branches on ``:`` and a branch from its mode on ``=`` with no
    escape, so a path containing either (or a comma) is refused with a FimfsError.
    ``hide_meta_files`` keeps its ``.unionfs-fuse`` directory out of listings.
    """
    if not layer_dirs:
        raise FimfsError("no layers given")
    branches = [_check_path(os.fspath(upper), "upper directory", ":=,") + "=RW"]
    branches += [_check_path(os.fspath(d), "layer directory", ":=,") + "=RO"
                 for d in reversed(layer_dirs)]
    return [program, "-f", "-o", "cow,hide_meta_files", ":".join(branches), os.fspath(mountpoint)]


def dwarfs_argv(image: str, offset: int, size: int, mountpoint: str, *,
                uid: int | None = None, gid: int | None = None,
                program: str = DWARFS) -> list[str]:
    """The native driver: ``dwarfs IMAGE MP -f -o offset=N,imagesize=S[,uid=,gid=]``."""
    opts = [f"offset={int(offset)}", f"imagesize={int(size)}"]
    if uid is not None:
        opts.append(f"uid={int(uid)}")
    if gid is not None:
        opts.append(f"gid={int(gid)}")
    if fuse.allow_other_permitted():
        opts.append("allow_other")  # read-only, the kernel checks permissions
    return [program, os.fspath(image), os.fspath(mountpoint), "-f", "-o", ",".join(opts)]


def image_size(path: str, offset: int) -> int:
    """The size of the DwarFS image at ``offset`` in ``path`` (what dwarfs' ``imagesize`` wants)."""
    from fim.fimfs.dwarfs import sections

    f = sections.open_source(path)
    try:
        return sections.read_layout(f, offset).end - offset
    finally:
        f.close()


def default_open_layer(path: str, offset: int, size: int | None = None) -> Filesystem:
    """fim's DwarFS reader on the image at ``offset`` in ``path`` (``size`` bytes)."""
    from fim.fimfs.dwarfs import DwarfsImage

    return DwarfsImage.from_path(path, offset=offset, size=size)


# -- the stack -----------------------------------------------------------------------------


class ExternalStack:
    """The mounts of one external backend, with their servers; ``close()`` takes them down.

    ``root``: the directory bwrap binds as ``/`` (None for the bwrap backend, whose
    root bwrap makes from ``layer_dirs``, ``upper`` and ``work``). ``layer_dirs``: the
    per-layer mounts, bottom first. ``mountpoints``: every mount point, top first (the
    order of unmounting), for a janitor.
    """

    def __init__(self, backend: str, upper: str, work: str) -> None:
        self.backend = backend
        self.upper = upper
        self.work = work
        self.root: str | None = None
        self.layer_dirs: list[str] = []
        self._servers: list[servers.Server] = []  # bottom first, in the order started

    @property
    def mountpoints(self) -> list[str]:
        return [s.mountpoint for s in reversed(self._servers)]

    @property
    def pids(self) -> list[int]:
        """Process ids of the servers still running (top first)."""
        return [s.pid for s in reversed(self._servers) if s.poll() is None]

    def _add(self, server: servers.Server, timeout: float | None = None) -> None:
        self._servers.append(server)
        servers.wait_ready(server, timeout)

    def close(self) -> None:
        """Unmount everything, top first, and reap the servers. Never raises for a gone mount.

        A mount still busy is detached lazily; a server that does not exit after its
        mount went away is sent SIGTERM, then SIGKILL. Problems are logged; the first
        one that left something mounted is raised as a FimfsError at the end.
        """
        problem: str | None = None
        while self._servers:
            server = self._servers.pop()
            error = servers.take_down(server)
            if error and problem is None:
                problem = error
        if problem:
            raise FimfsError(problem)

    def __enter__(self) -> ExternalStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ExternalStack {self.backend} root={self.root} mounts={self.mountpoints}>"


def _layer_spec(layer: Sequence[Any]) -> LayerSpec:
    if len(layer) not in (2, 3):
        raise FimfsError(f"a layer is (path, offset[, size]), not {layer!r}")
    size = None if len(layer) == 2 or layer[2] is None else int(layer[2])
    path = os.fsdecode(layer[0])
    return path if is_url(path) else os.path.abspath(path), int(layer[1]), size


def _fresh_dir(path: str) -> str:
    os.makedirs(path, exist_ok=True)
    return fuse.check_mountpoint(path)


def start(
    backend: str,
    layers: Sequence[tuple[str, int] | tuple[str, int, int]],
    upper: str,
    work: str,
    runtime_dir: str,
    *,
    casefold: bool = False,
    native: bool = False,
    open_layer: OpenLayer | None = None,
    uid: int | None = None,
    gid: int | None = None,
) -> ExternalStack:
    """Mount ``layers`` (bottom first: ``(file, offset[, size])`` of each DwarFS image) for
    ``backend``.

    ``backend``: ``overlayfs`` (fuse-overlayfs), ``unionfs`` (unionfs-fuse) or ``bwrap``
    (layer mounts only; the caller has bwrap stack ``layer_dirs`` over ``upper``). ``upper`` and
    ``work`` (empty, on the filesystem of ``upper``; unused by unionfs) must exist.
    ``runtime_dir`` gets ``layers/<i>``, ``mount``, ``casefold`` and ``logs/``.

    ``open_layer(path, offset, size)`` makes the Filesystem of a layer, in the child that
    serves it (default: fim's DwarFS reader). ``native``: serve the layers with the
    ``dwarfs`` program when it is on PATH (else ours, with a warning). ``uid``/``gid``:
    the owner the native driver presents the layers with, and fuse-overlayfs'
    ``squash_to_uid/gid``. ``casefold``: a case-insensitive view over the union
    (not with bwrap).

    Raises :class:`BackendMissing` (before mounting anything) when the backend's
    program is not installed, FimfsError when a mount does not come up; whatever was
    already mounted is then taken down again.
    """
    if backend not in PROGRAMS:
        raise FimfsError(f"unknown overlay backend {backend!r} (one of {', '.join(BACKENDS)})")
    if casefold and backend == "bwrap":
        raise FimfsError("casefold cannot be used with the bwrap backend")
    specs = [_layer_spec(layer) for layer in layers]
    if not specs:
        raise FimfsError("no layers given")
    program = PROGRAMS[backend]
    program_path = shutil.which(program) if program else None
    if program and program_path is None:
        raise BackendMissing(program, backend)
    dwarfs_path = shutil.which(DWARFS) if native else None
    if native and dwarfs_path is None:
        log.warning("%s not found on PATH: serving the layers with fim's DwarFS reader", DWARFS)
    upper, work = os.path.abspath(upper), os.path.abspath(work)
    for what, d in (("upper", upper), ("work", work)):
        if not os.path.isdir(d):
            raise FimfsError(f"{what} directory {d} does not exist")
    runtime_dir = os.path.abspath(runtime_dir)
    logs = os.path.join(runtime_dir, "logs")
    os.makedirs(logs, exist_ok=True)
    opener = open_layer or default_open_layer

    stack = ExternalStack(backend, upper, work)
    try:
        _mount_layers(stack, specs, opener, dwarfs_path, runtime_dir, logs, uid, gid)
        if backend != "bwrap":
            assert program is not None and program_path is not None
            _mount_union(stack, program, program_path, runtime_dir, logs, uid, gid, casefold)
        return stack
    except BaseException:
        try:
            stack.close()
        except FimfsError as e:
            log.warning("%s", e)
        raise


def _mount_layers(stack: ExternalStack, specs: Sequence[LayerSpec], opener: OpenLayer,
                  dwarfs_path: str | None, runtime_dir: str, logs: str,
                  uid: int | None, gid: int | None) -> None:
    """One read-only mount per layer, bottom first, on ``RUNTIME/layers/<i>``."""
    for i, (path, offset, size) in enumerate(specs):
        mp = _fresh_dir(os.path.join(runtime_dir, "layers", str(i)))
        log_path = os.path.join(logs, f"layer-{i}.log")
        if dwarfs_path is not None:
            argv = dwarfs_argv(path, offset, image_size(path, offset) if size is None else size,
                               mp, uid=uid, gid=gid, program=dwarfs_path)
            server = servers.spawn(f"dwarfs (layer {i})", mp, log_path, servers.program(argv))
        else:
            serve = servers.filesystem(_bind(opener, path, offset, size), mp, fsname=path,
                                       options={"use_ino": True})
            server = servers.spawn(f"fim (layer {i})", mp, log_path, serve)
        stack._add(server)
        stack.layer_dirs.append(mp)


def _mount_union(stack: ExternalStack, program: str, program_path: str, runtime_dir: str,
                 logs: str, uid: int | None, gid: int | None, casefold: bool) -> None:
    """The union program over the layer mounts on ``RUNTIME/mount``, and the casefold
    view over it on ``RUNTIME/casefold``."""
    mp = _fresh_dir(os.path.join(runtime_dir, "mount"))
    log_path = os.path.join(logs, f"{stack.backend}.log")
    if stack.backend == "overlayfs":
        argv = fuse_overlayfs_argv(stack.layer_dirs, stack.upper, stack.work, mp, uid=uid,
                                   gid=gid, program=program_path)
    else:
        argv = unionfs_argv(stack.layer_dirs, stack.upper, mp, program=program_path)
    stack._add(servers.spawn(program, mp, log_path, servers.program(argv)))
    stack.root = mp
    if casefold:
        cf = _fresh_dir(os.path.join(runtime_dir, "casefold"))
        serve = servers.filesystem(_casefold_over(mp), cf, fsname=f"casefold:{mp}",
                                   options={"entry_timeout": 0, "negative_timeout": 0})
        stack._add(servers.spawn("fim (casefold)", cf, os.path.join(logs, "casefold.log"), serve))
        stack.root = cf


def _bind(opener: OpenLayer, path: str, offset: int,
          size: int | None) -> Callable[[], Filesystem]:
    def source() -> Filesystem:
        return opener(path, offset, size)

    return source


def _casefold_over(directory: str) -> Callable[[], Filesystem]:
    def source() -> Filesystem:
        from fim.fimfs.casefold import CaseFold
        from fim.fimfs.hostdir import HostDir

        return CaseFold(HostDir(directory))

    return source


__all__ = [
    "BACKENDS",
    "BackendMissing",
    "ExternalStack",
    "PROGRAMS",
    "default_open_layer",
    "dwarfs_argv",
    "fuse_overlayfs_argv",
    "image_size",
    "start",
    "unionfs_argv",
]

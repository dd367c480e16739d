"""The fallback overlay backends that are other programs (``fim-overlay set ...``).

The in-process stack (``cli/stack.py``: one FUSE mount serving
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
  the layer directories (:func:`bwrap_overlay_args`, in ``ExternalStack.extra_bwrap_args``);
* ``casefold=True`` (not with bwrap): ``CaseFold(HostDir(RUNTIME/mount))`` served by
  fim on ``RUNTIME/casefold``, where FlatImage runs ciopfs (not packaged by Debian).

Upper directory: the same one works with every backend. fuse-overlayfs, kernel
overlayfs and fim's union all write overlayfs whiteouts (character device 0:0) and
opaque markers, and read each other's. unionfs-fuse keeps its deletion markers in
``UPPER/.unionfs-fuse/`` (a documented upstream limitation, as in FlatImage):
deletions made through unionfs are not understood by the other backends, and the
others' whiteouts are not understood by unionfs.

Processes: every mount is served by a child process of the caller (fim's own
mounts are forked and serve in the foreground; the programs are spawned), each
with a parent-death signal (SIGTERM, on which they unmount and exit), so a caller
that dies does not leave them running. Note that Linux sends it when the *thread*
that started the child exits: call :func:`start` from a thread that lives as long
as the stack (normally the main thread). The mount points are also listed in
``ExternalStack.mountpoints`` for a janitor.

This module imports nothing from ``cli`` or ``sandbox``.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fimfs import fuse
from fimfs.errors import FimfsError
from fimfs.fuse.lifecycle import adopt_stdio
from fimfs.remote import is_url
from fimfs.vfs import Filesystem

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
#: How long a mount may take to come up (seconds).
READY_TIMEOUT = 10.0
#: How long a server may take to exit after its mount went away, before it is killed.
EXIT_TIMEOUT = 5.0
_POLL = 0.02
_PR_SET_PDEATHSIG = 1
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

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


def bwrap_overlay_args(layer_dirs: Sequence[str], upper: str, work: str) -> list[str]:
    """bwrap's arguments making the kernel overlay of ``layer_dirs`` (bottom first) the root.

    bwrap stacks ``--overlay-src`` directories in the order given, each on top of the
    previous ones (the last one wins; it reverses them into overlayfs' ``lowerdir``,
    which lists the top first), so the bottom layer comes first, as in FlatImage.
    ``work`` must be an empty directory on the filesystem of ``upper``.
    """
    if not layer_dirs:
        raise FimfsError("no layers given")
    args: list[str] = []
    for d in layer_dirs:
        args += ["--overlay-src", os.fspath(d)]
    return [*args, "--overlay", os.fspath(upper), os.fspath(work), "/"]


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
    from fimfs.dwarfs import sections

    f = sections.open_source(path)
    try:
        return sections.read_layout(f, offset).end - offset
    finally:
        f.close()


def default_open_layer(path: str, offset: int, size: int | None = None) -> Filesystem:
    """fim's DwarFS reader on the image at ``offset`` in ``path`` (``size`` bytes)."""
    from fimfs.dwarfs import DwarfsImage

    return DwarfsImage.from_path(path, offset=offset, size=size)


# -- child processes ---------------------------------------------------------------------


_prctl: Any = None


def _load_prctl() -> Any:
    """libc's prctl, looked up in the parent (a child between fork and exec should not dlopen)."""
    global _prctl
    if _prctl is None:
        try:
            _prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            _prctl = False
    return _prctl


def _set_pdeathsig(parent: int, prctl: Any) -> None:
    """In a new child: die with SIGTERM when the parent goes (and at once if it already has).

    SIGTERM, SIGINT and SIGHUP get their default action and are unblocked first: an
    ignored or blocked disposition would survive exec and swallow the signal.
    """
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    if prctl:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def _tail(log_path: str | None, lines: int = 1) -> str:
    if log_path is None:
        return ""
    try:
        with open(log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    kept = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " | ".join(kept[-lines:])


@dataclass
class _Server:
    """One mount and the child process serving it."""

    name: str  # for messages: "fuse-overlayfs", "layer 0 (fim)", ...
    mountpoint: str
    pid: int
    log_path: str | None
    popen: subprocess.Popen | None = None
    status: int | None = field(default=None)

    def poll(self) -> int | None:
        """The exit status once the child has ended (reaped), else None."""
        if self.status is not None:
            return self.status
        if self.popen is not None:
            self.status = self.popen.poll()
            return self.status
        try:
            pid, st = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            self.status = -1
            return self.status
        if pid:
            self.status = os.waitstatus_to_exitcode(st)
        return self.status

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL)
        return True

    def signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def reason(self) -> str:
        return _tail(self.log_path)


def _answers(path: str, timeout: float) -> bool | None:
    """statvfs ``path`` in a helper thread: True answered, False failed, None still waiting."""
    result: list[bool] = []

    def probe() -> None:
        try:
            os.statvfs(path)
            result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe, name="fim-external-probe", daemon=True)
    t.start()
    t.join(timeout)
    return result[0] if result else None


def _wait_ready(server: _Server, timeout: float | None = None) -> None:
    """Until ``server``'s mount answers; else a one-line FimfsError with its stderr."""
    timeout = READY_TIMEOUT if timeout is None else timeout
    deadline = time.monotonic() + timeout
    while True:
        status = server.poll()
        if status is not None:
            why = server.reason() or "no message"
            raise FimfsError(f"{server.name} on {server.mountpoint} exited with status "
                             f"{status} before mounting: {why}")
        left = deadline - time.monotonic()
        if fuse.is_mounted(server.mountpoint) and _answers(server.mountpoint, max(left, 0.1)):
            return
        if time.monotonic() >= deadline:
            why = server.reason()
            raise FimfsError(f"{server.name} did not mount {server.mountpoint} within "
                             f"{timeout:.0f} s" + (f": {why}" if why else ""))
        time.sleep(_POLL)


def _spawn(name: str, argv: list[str], mountpoint: str, log_path: str,
           env: dict[str, str] | None = None) -> _Server:
    parent, prctl = os.getpid(), _load_prctl()
    with open(log_path, "wb") as err:  # this run's messages only
        popen = subprocess.Popen(  # noqa: S603 - argv built here from fixed program names
            argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err, close_fds=True,
            start_new_session=True, preexec_fn=lambda: _set_pdeathsig(parent, prctl), env=env,
        )
    return _Server(name, mountpoint, popen.pid, log_path, popen)




def _fork_fim(name: str, source: Callable[[], Filesystem], mountpoint: str, log_path: str,
              fsname: str, options: dict[str, Any]) -> _Server:
    """Serve ``source()`` on ``mountpoint`` from a forked child (foreground libfuse)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with open(log_path, "wb"):  # this run's messages only
        pass
    parent, prctl = os.getpid(), _load_prctl()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.setsid()
            _set_pdeathsig(parent, prctl)
            fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            adopt_stdio("fim-layer")
            fuse.mount(source, mountpoint, foreground=True, fsname=fsname, options=options)
            code = 0
        except FimfsError as e:
            print(f"fim: {e}", file=sys.stderr)
        except OSError as e:
            where = f"{os.fsdecode(e.filename)}: " if e.filename else ""
            print(f"fim: {where}{e.strerror or e}", file=sys.stderr)
        except BaseException as e:  # noqa: BLE001 - reported, then the child exits
            print(f"fim: {type(e).__name__}: {e}", file=sys.stderr)
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os._exit(code)
    return _Server(name, mountpoint, pid, log_path)


# -- the stack -----------------------------------------------------------------------------


class ExternalStack:
    """The mounts of one external backend, with their servers; ``close()`` takes them down.

    ``root``: the directory bwrap binds as ``/`` (None for the bwrap backend, whose
    root is made by ``extra_bwrap_args``). ``layer_dirs``: the per-layer mounts,
    bottom first. ``mountpoints``: every mount point, top first (the order of
    unmounting), for a janitor.
    """

    def __init__(self, backend: str, upper: str, work: str) -> None:
        self.backend = backend
        self.upper = upper
        self.work = work
        self.root: str | None = None
        self.layer_dirs: list[str] = []
        self.extra_bwrap_args: list[str] = []
        self._servers: list[_Server] = []  # bottom first, in the order started

    @property
    def mountpoints(self) -> list[str]:
        return [s.mountpoint for s in reversed(self._servers)]

    @property
    def pids(self) -> list[int]:
        """Process ids of the servers still running (top first)."""
        return [s.pid for s in reversed(self._servers) if s.poll() is None]

    def _add(self, server: _Server, timeout: float | None = None) -> None:
        self._servers.append(server)
        _wait_ready(server, timeout)

    def close(self) -> None:
        """Unmount everything, top first, and reap the servers. Never raises for a gone mount.

        A mount still busy is detached lazily; a server that does not exit after its
        mount went away is sent SIGTERM, then SIGKILL. Problems are logged; the first
        one that left something mounted is raised as a FimfsError at the end.
        """
        problem: str | None = None
        while self._servers:
            server = self._servers.pop()
            error = _take_down(server)
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


def _take_down(server: _Server) -> str | None:
    """Unmount one server's mount and reap it; a message if its mount is still there."""
    mp = server.mountpoint
    if not fuse.is_mounted(mp):  # never came up (or already gone): nothing to wait for
        server.signal(signal.SIGTERM)
    else:
        try:
            fuse.umount(mp)
        except FimfsError as e:
            log.debug("%s; detaching it lazily", e)
            try:
                fuse.umount(mp, lazy=True)
            except FimfsError as e2:
                if fuse.is_mounted(mp):
                    log.warning("%s", e2)
    if not server.wait(EXIT_TIMEOUT):
        server.signal(signal.SIGTERM)  # servers unmount on SIGTERM
        if not server.wait(EXIT_TIMEOUT):
            server.signal(signal.SIGKILL)
            server.wait(EXIT_TIMEOUT)
    if fuse.is_mounted(mp):  # the server is gone: a lazy detach of the dead mount clears it
        with contextlib.suppress(FimfsError):
            fuse.umount(mp, lazy=True)
    if fuse.is_mounted(mp):
        return f"cannot unmount {mp}"
    return None


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
    (layer mounts only; the caller passes ``extra_bwrap_args`` to bwrap). ``upper`` and
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
        if backend == "bwrap":
            stack.extra_bwrap_args = bwrap_overlay_args(stack.layer_dirs, upper, work)
        else:
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
            server = _spawn(f"dwarfs (layer {i})", argv, mp, log_path)
        else:
            server = _fork_fim(f"fim (layer {i})", _bind(opener, path, offset, size), mp, log_path,
                               fsname=path, options={"use_ino": True})
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
    stack._add(_spawn(program, argv, mp, log_path))
    stack.root = mp
    if casefold:
        cf = _fresh_dir(os.path.join(runtime_dir, "casefold"))
        stack._add(_fork_fim("fim (casefold)", _casefold_over(mp), cf,
                             os.path.join(logs, "casefold.log"), fsname=f"casefold:{mp}",
                             options={"entry_timeout": 0, "negative_timeout": 0}))
        stack.root = cf


def _bind(opener: OpenLayer, path: str, offset: int,
          size: int | None) -> Callable[[], Filesystem]:
    def source() -> Filesystem:
        return opener(path, offset, size)

    return source


def _casefold_over(directory: str) -> Callable[[], Filesystem]:
    def source() -> Filesystem:
        from fimfs.casefold import CaseFold
        from fimfs.hostdir import HostDir

        return CaseFold(HostDir(directory))

    return source


__all__ = [
    "BACKENDS",
    "BackendMissing",
    "ExternalStack",
    "PROGRAMS",
    "bwrap_overlay_args",
    "default_open_layer",
    "dwarfs_argv",
    "fuse_overlayfs_argv",
    "image_size",
    "start",
    "unionfs_argv",
]

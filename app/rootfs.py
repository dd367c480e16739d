"""The container's root filesystem for one run (spec 10, 11): the layers stacked over the
upper directory with the backend in effect, how to wait until it is up, and how to
take it down.

fim's own stack (app.stack) is one FUSE mount served by a forked daemon that opens
the layers while the run goes on preparing the sandbox, or the user's mount of the
same stack that another run left up (app.sharing); an external backend
(fimfs.external) mounts each layer and its union program; without FUSE the layers
are extracted (app.extractcache) and bwrap's kernel overlay stacks them. A backend
whose program is missing falls back to fim's stack with one warning; a FUSE mount
that fusermount3 cannot make is tried again in a user namespace (app.hostmount).
"""

from __future__ import annotations

import os

from fim.app import hostmount, log
from fim.app.log import Fatal

TYPE_CHECKING = False  # not typing's: importing typing slows every start-up
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from fim.app.image import Layer
    from fim.app.session import Context
    from fim.fimfs.fuse.lifecycle import PendingMount
    from fim.sandbox.bwrap import Identity
    from fim.sandbox.instance import Instance


class Root:
    """What bwrap makes ``/`` from, how to wait until it is up, and how to take it down."""

    def __init__(self, root_args: list[str], mountpoints: list[str],
                 close: Callable[[], None], ready: Callable[[], None] = lambda: None) -> None:
        self.root_args = root_args
        self.mountpoints = mountpoints  # top first, for the janitor
        self.close = close
        self._ready = ready
        #: another way to mount the same root when this one fails (see mount)
        self.retry: Callable[[], Root] | None = None

    def up(self) -> Root:
        """Wait for the root; if it failed and there is another way (:attr:`retry`: the
        same root arguments, the same mount point), the root mounted that way."""
        try:
            self.wait()
        except Fatal:
            if self.retry is None:
                raise
            again = self.retry()
            again.wait()
            return again
        return self

    def wait(self) -> None:
        """Return once the root is mounted (its daemon may still be opening the layers)."""
        from fim.fimfs.errors import FimfsError

        try:
            self._ready()
        except FimfsError as exc:
            raise Fatal(f"Could not mount the filesystem of the image: {exc}") from None


def _owners(ident: Identity) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """A normal user's sandbox maps only the caller's uid: the mount presents every file
    as the caller's and stores the owners the container sets (docs/owners.md)."""
    if os.getuid() == 0:
        return None, None
    return (os.getuid(), os.getgid()), (ident.uid, ident.gid)


def _mount_fimfs(ctx: Context, inst: Instance, ident: Identity,
                 layers: list[Layer], upper: str, casefold: bool,
                 shared: bool = False, mountpoint: str | None = None) -> Root:
    """The in-process stack (app.stack) on the instance's mount point, served by a
    forked daemon that opens the layers itself while the run goes on preparing the
    sandbox (:meth:`Root.wait` before bwrap starts); ``shared``: the user's mount of
    the same stack when one is up (app.sharing), else one the next runs may share;
    ``mountpoint``: another than the instance's."""
    import functools

    from fim.app import sharing
    from fim.app.layers import log_overlay
    from fim.app.runlock import held_fds

    owner, inside = _owners(ident)
    log_overlay((layer.path, layer.offset) for layer in layers)
    start = functools.partial(_start_mount, ctx.image, layers, upper, casefold, owner, inside)
    slot = shared and sharing.slot_directory(ctx.paths.app, layers, upper,
                                             casefold, owner, inside, ctx.image)
    shared_root = sharing.open_root(slot, start, held_fds()) if slot else None
    if shared_root is not None:
        return Root(["--bind", shared_root.mountpoint, "/"], [], shared_root.close,
                    shared_root.ready)
    from fim.fimfs.errors import FimfsError
    from fim.fimfs.fuse import umount

    target = mountpoint or inst.mount
    pending = start(target, log_file=inst.log)

    def close() -> None:
        try:
            pending.wait()  # a run that failed before bwrap: the daemon may still be mounting
        except FimfsError:
            return
        try:
            umount(target)
        except Exception:  # busy (a process of the sandbox lingers) or already gone
            from fim.sandbox import janitor

            janitor.detach(target)

    return Root(["--bind", target, "/"], [target], close, pending.wait)


def _start_mount(fsname: str, layers: list[Layer], upper: str, casefold: bool,
                 owner: tuple[int, int] | None, inside: tuple[int, int] | None,
                 mountpoint: str, **options: Any) -> PendingMount:
    """Fork the daemon serving the stack on ``mountpoint`` (``options``: the rest of
    fimfs.fuse.mount's); the FUSE modules are loaded here, not by a run that attaches
    to a shared mount."""
    import functools

    from fim.app.stack import build_stack
    from fim.fimfs.fuse import mount

    source = functools.partial(build_stack, layers, upper, casefold, owner=owner, inside=inside)
    pending = mount(source, mountpoint, foreground=False, fsname=fsname, wait=False, **options)
    assert pending is not None
    return pending


def _open_owned_layer(uid: int, gid: int, path: str, offset: int, size: int | None) -> object:
    from fim.fimfs.dwarfs import DwarfsImage
    from fim.fimfs.owners import OwnerView

    return OwnerView(DwarfsImage.from_path(path, offset=offset, size=size), uid, gid)


def _work_dir(ctx: Context) -> str:
    """This run's ``DATA/work/<pid>`` (the kernel overlay's and fuse-overlayfs' work)."""
    os.makedirs(ctx.paths.work, exist_ok=True)
    return ctx.paths.work


def _mount_extracted(ctx: Context, layers: list[Layer], upper: str,
                     casefold: bool) -> Root:
    """Without FUSE: the layers extracted into the per-user cache (app.extractcache),
    stacked with the upper by bwrap's kernel overlay."""
    from fim.app import extractcache
    from fim.app.datadir import remove_work
    from fim.sandbox import bwrap

    hostmount.extract_notice()
    if casefold:
        log.emit("W", "casefold needs FUSE: this run is case-sensitive", "rootfs.py")
    held = extractcache.acquire(layers, os.environ)
    work = _work_dir(ctx)

    def close() -> None:
        held.close()
        remove_work(work)

    return Root(bwrap.overlay_args(held.dirs, upper, work), [], close)


def _mount_external(ctx: Context, backend: str, inst: Instance, ident: Identity,
                    layers: list[Layer], upper: str, casefold: bool, *,
                    native: bool) -> Root:
    """An external backend (fimfs.external) over one mount per layer; ``native``: the
    native dwarfs may serve them (FIM_DWARFS=native)."""
    import functools

    from fim.app.layers import log_overlay
    from fim.fimfs import external

    owner, _ = _owners(ident)
    work = _work_dir(ctx)
    opener = None if owner is None else functools.partial(_open_owned_layer, *owner)
    specs = [(layer.path, layer.offset, layer.size) for layer in layers]  # fimfs's own type
    stack = external.start(backend, specs, upper, work, inst.path, casefold=casefold,
                           native=native and os.environ.get("FIM_DWARFS") == "native",
                           open_layer=opener,  # type: ignore[arg-type]
                           uid=None if owner is None else owner[0],
                           gid=None if owner is None else owner[1])
    log_overlay((directory, None) for directory in stack.layer_dirs)
    def close() -> None:
        from fim.app.datadir import remove_work

        stack.close()
        remove_work(work)  # FlatImage leaves DATA/work/<pid> behind

    if stack.root is None:  # bwrap builds the kernel overlay itself
        from fim.sandbox import bwrap

        overlay = bwrap.overlay_args(stack.layer_dirs, stack.upper, stack.work)
        return Root(overlay, stack.mountpoints, close)
    return Root(["--bind", stack.root, "/"], stack.mountpoints, close)


#: The names FlatImage's debug line gives the backends (spec 11.1).
_DEBUG_NAMES = {"fimfs": "FIMFS", "overlayfs": "FUSE_OVERLAYFS", "unionfs": "UNIONFS_FUSE",
                "bwrap": "BWRAP"}


def mount(ctx: Context, inst: Instance, ident: Identity) -> Root:
    """The container's root with the backend of this run (spec 11); a backend whose
    program is missing falls back to fim's own stack with one warning."""
    from fim.app.errors import FimError
    from fim.app.layers import discover, log_mounting
    from fim.app.session import casefold_active
    from fim.fimfs.errors import FimfsError

    layers = discover(ctx.layout, ctx.paths.layers, ctx.environ())
    if not layers:
        raise Fatal("The image has no layer to run")
    log_mounting(layers)
    upper = ctx.paths.upper
    casefold = casefold_active(ctx.config, os.environ)
    backend = ctx.overlay
    log.emit("D", f"Overlay type: {_DEBUG_NAMES[backend]}", "rootfs.py")
    log.emit("D", f"casefold is {'enabled' if casefold else 'disabled'}", "rootfs.py")
    how = hostmount.choose()
    try:
        if how == hostmount.EXTRACT:
            return _mount_extracted(ctx, layers, upper, casefold)
        if how == hostmount.USERNS:
            hostmount.enter_userns()
            if backend in ("overlayfs", "unionfs"):  # exec'd, they could not mount there
                log.emit("W", f"the {backend} backend needs fusermount3: falling back to "
                              "fimfs", "rootfs.py")
                backend = "fimfs"
        if backend != "fimfs":
            from fim.fimfs.external import BackendMissing

            try:
                return _mount_external(ctx, backend, inst, ident, layers, upper, casefold,
                                       native=how == hostmount.FUSE)
            except BackendMissing as exc:
                log.emit("W", f"{exc}: falling back to fimfs", "rootfs.py")
        root = _mount_fimfs(ctx, inst, ident, layers, upper, casefold,
                            shared=how == hostmount.FUSE)
    except (FimfsError, FimError, OSError) as exc:
        raise Fatal(f"Could not mount the filesystem of the image: {exc}") from None
    if how == hostmount.FUSE and os.getuid() != 0:
        where = root.root_args[1]  # the sandbox is described with this root's arguments
        root.retry = lambda: _remount_in_userns(ctx, inst, ident, layers, upper, casefold,
                                                where)
    return root


def _remount_in_userns(ctx: Context, inst: Instance, ident: Identity,
                       layers: list[Layer], upper: str, casefold: bool,
                       mountpoint: str) -> Root:
    """fusermount3 failed (a setuid helper the host does not honour): the same mount
    again, on the same mount point, in a user namespace of the run's own (app.hostmount;
    seen by this run only, so not shared)."""
    from fim.fimfs.errors import FimfsError

    hostmount.enter_userns()
    try:
        return _mount_fimfs(ctx, inst, ident, layers, upper, casefold, mountpoint=mountpoint)
    except (FimfsError, OSError) as exc:
        raise Fatal(f"Could not mount the filesystem of the image: {exc}") from None

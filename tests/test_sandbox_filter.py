"""The seccomp program, run by a small classic-BPF interpreter over seccomp_data records
of every architecture it knows (the kernel runs it for real in
tests/test_security_sandbox.py), and bwrap's command: the environment only in the
hidden arguments."""

from __future__ import annotations

import errno
import struct

import pytest

from fim.sandbox import seccomp
from fim.sandbox.bwrap import Identity, Sandbox, command


def _run(program: bytes, nr: int, arch: int, args: tuple[int, ...] = ()) -> int:
    """Classic BPF as seccomp runs it, for the instructions the filter uses."""
    data = struct.pack("=iIQ6Q", nr, arch, 0, *(list(args) + [0] * (6 - len(args))))
    insns = [struct.unpack_from("=HBBI", program, i) for i in range(0, len(program), 8)]
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        if code == 0x20:
            acc = struct.unpack_from("=I", data, k)[0]
            pc += 1
        elif code == 0x15:
            pc += 1 + (jt if acc == k else jf)
        elif code == 0x06:
            return k
        else:
            raise AssertionError(f"unexpected instruction {code:#x}")


EPERM = seccomp.RET_ERRNO | errno.EPERM


@pytest.mark.parametrize("arch,numbers", seccomp.IOCTL_NUMBERS.items())
def test_blocked_ioctls_on_every_architecture(arch: int, numbers: tuple[int, ...]) -> None:
    program = seccomp.program()
    for nr in numbers:
        for request in seccomp.BLOCKED_IOCTLS:
            assert _run(program, nr, arch, (0, request)) == EPERM
            assert _run(program, nr, arch, (0, request | 1 << 32)) == EPERM  # low 32 bits
        for request in (0x5401, 0x5413, 0x540F):  # TCGETS, TIOCGWINSZ, TIOCGPGRP
            assert _run(program, nr, arch, (0, request)) == seccomp.RET_ALLOW
    # another system call with the same argument is not an ioctl
    assert _run(program, 1, arch, (0, seccomp.TIOCSTI)) == seccomp.RET_ALLOW


def test_unknown_architecture_passes() -> None:
    """Documented (docs/security.md): other architectures are not filtered."""
    assert _run(seccomp.program(), 54, 0x80000016, (0, seccomp.TIOCSTI)) == seccomp.RET_ALLOW


def test_environment_is_only_in_the_hidden_arguments() -> None:
    sb = Sandbox(root_args=["--bind", "/m", "/"], identity=Identity(0, 0, "root", "/root",
                                                                     "/bin/bash"),
                 shell="/app/bash", passwd="/i/passwd",
                 permission_args=["--bind-try", "/x", "/x", "--setenv", "DISPLAY", ":0"],
                 setenv={"XDG_RUNTIME_DIR": "/run/user/0"},
                 environ={"TOKEN": "s3cret", "DISPLAY": ":9"})
    cmd = command(sb, "bwrap", ["prog"], args_fd=7, seccomp_fd=8)
    assert "s3cret" not in " ".join(cmd.argv) and "--setenv" not in cmd.argv
    assert cmd.argv[:4] == ["bwrap", "--die-with-parent", "--args", "7"]
    assert cmd.argv[cmd.argv.index("--bind-try"):][:3] == ["--bind-try", "/x", "/x"]
    assert "CAP_SYS_ADMIN" not in cmd.argv and cmd.argv[
        cmd.argv.index("--cap-drop") + 1] == "ALL"
    hidden = cmd.hidden.split(b"\0")
    assert hidden[-1] == b"" and hidden[0] == b"--clearenv"
    text = [h.decode() for h in hidden[1:-1]]
    # the permission's DISPLAY is set after the stored one, so it wins
    assert text.index(":9") < text.index(":0")
    assert text[:3] == ["--setenv", "TOKEN", "s3cret"]

"""The seccomp filter of every sandbox (bwrap ``--seccomp FD``): a classic BPF program
that refuses the ioctls which push input into a terminal.

``TIOCSTI`` (fake input on a terminal: the program types a command into the shell
that started it, which runs it outside the sandbox once the program exits) and
``TIOCLINUX`` (the virtual console's selection paste, the same attack on a VT) answer
``EPERM``. Since the sandbox keeps the caller's terminal as its controlling terminal
(no ``--new-session``, which would end job control), this filter is what stops them.
As Flatpak does, the request number is compared on its low 32 bits only: the kernel
truncates it to an ``unsigned int``, so a request with high bits set is the same ioctl.

Architectures: x86_64 (with its i386 and x32 system calls), i386, aarch64 (with its
32-bit arm ones) and arm. A process of any other architecture passes the filter
unchanged (the kernel's ``dev.tty.legacy_tiocsti=0`` is then the only guard); the
docs/security.md says so.
"""

from __future__ import annotations

import errno
import struct

TIOCSTI = 0x5412
TIOCLINUX = 0x541C
BLOCKED_IOCTLS = (TIOCSTI, TIOCLINUX)

# linux/audit.h: the value of seccomp_data.arch
AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
AUDIT_ARCH_AARCH64 = 0xC00000B7
AUDIT_ARCH_ARM = 0x40000028
_X32_SYSCALL_BIT = 0x40000000
#: arch -> the numbers of ioctl(2) there (x86_64's x32 ABI: 514 with the x32 bit)
IOCTL_NUMBERS: dict[int, tuple[int, ...]] = {
    AUDIT_ARCH_X86_64: (16, _X32_SYSCALL_BIT | 514),
    AUDIT_ARCH_I386: (54,),
    AUDIT_ARCH_AARCH64: (29,),
    AUDIT_ARCH_ARM: (54,),
}

# linux/filter.h, linux/seccomp.h
_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_RET_K = 0x06  # BPF_RET | BPF_K
RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000
# struct seccomp_data: nr, arch, instruction_pointer, args[6]; args[1]'s low 32 bits
# (little-endian: every architecture above) are at 24
_OFF_NR, _OFF_ARCH, _OFF_ARG1_LOW = 0, 4, 24


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def program() -> bytes:
    """The filter as ``struct sock_filter`` records, what bwrap reads from its fd.

    Layout: one block per architecture (load the system call number; each ioctl number
    jumps to the shared request check), then ``ALLOW``, then the request check (load the
    request's low 32 bits; a blocked one returns ``EPERM``; else ``ALLOW``).
    """
    arches = list(IOCTL_NUMBERS.items())
    # the arch dispatch: one JEQ per architecture, then ALLOW (an unknown one)
    blocks = [[_insn(_LD_W_ABS, _OFF_NR)] for _ in arches]
    dispatch_len = 1 + len(arches) + 1
    block_lens = [1 + len(numbers) + 1 for _, numbers in arches]
    starts = []
    pos = dispatch_len
    for length in block_lens:
        starts.append(pos)
        pos += length
    check = pos  # index of the request check
    out = [_insn(_LD_W_ABS, _OFF_ARCH)]
    for i, (arch, _) in enumerate(arches):
        here = len(out)
        out.append(_insn(_JEQ_K, arch, jt=starts[i] - here - 1, jf=0))
    out.append(_insn(_RET_K, RET_ALLOW))
    for i, (_, numbers) in enumerate(arches):
        code = blocks[i]
        for number in numbers:
            here = starts[i] + len(code)
            code.append(_insn(_JEQ_K, number, jt=check - here - 1, jf=0))
        code.append(_insn(_RET_K, RET_ALLOW))
        out += code
    assert len(out) == check
    out.append(_insn(_LD_W_ABS, _OFF_ARG1_LOW))
    for i, request in enumerate(BLOCKED_IOCTLS):
        remaining = len(BLOCKED_IOCTLS) - i - 1
        # a match jumps over the remaining tests and the ALLOW to the EPERM return
        out.append(_insn(_JEQ_K, request, jt=remaining + 1, jf=0))
    out.append(_insn(_RET_K, RET_ALLOW))
    out.append(_insn(_RET_K, RET_ERRNO | errno.EPERM))
    return b"".join(out)

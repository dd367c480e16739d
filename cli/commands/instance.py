"""`fim-instance list|exec` (spec 2.14): the running instances of this build, and a
program run inside one of them through its guest portal daemon (sandbox.portal)."""

from __future__ import annotations

import os

from fim.app import log
from fim.app.log import CommandError, UsageError, trailing
from fim.cli.commands.args import keyword, print_lines

TYPE_CHECKING = False  # not typing's: importing typing slows every start-up
if TYPE_CHECKING:
    from fim.app.session import Context


def run(ctx: Context, args: list[str]) -> int:
    from fim.sandbox import instance, portal

    if not args:
        raise UsageError("Missing op for 'fim-instance' (<exec|list>)")
    op = keyword(args[0])
    if op == "LIST":
        if args[1:]:
            raise trailing("fim-instance", args[1:])
        found = instance.running(ctx.paths.instances, exclude=os.getpid())
        print_lines(f"{i}:{inst.pid}" for i, inst in enumerate(found))
        return 0
    if op != "EXEC":
        raise UsageError("Invalid instance operation")
    if len(args) < 2:
        raise UsageError("Missing 'id' argument for 'fim-instance'")
    if not args[1].isdigit():
        raise UsageError("Id argument must be a digit")
    if len(args) < 3:
        raise UsageError("Missing 'cmd' argument for 'fim-instance'")
    found = instance.running(ctx.paths.instances, exclude=os.getpid())
    if not found:
        raise CommandError("No instances are running")
    index = int(args[1])
    if index >= len(found):
        raise CommandError("Instance index out of bounds")
    try:
        return instance.exec_in(found[index], args[2:])
    except portal.PortalError as exc:
        log.emit("E", str(exc), "portal.py")
        return portal.EXIT_FAILURE

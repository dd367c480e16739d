"""`fim-boot set|show|clear`: the program run when the image gets no `fim-*` command."""

from __future__ import annotations

from fim.app.log import UsageError, trailing
from fim.cli.commands.args import editing, keyword, pretty_json

TYPE_CHECKING = False  # not typing's: importing typing slows every start-up
if TYPE_CHECKING:
    from fim.app.session import Context

DEFAULT_PROGRAM = "bash"


def run(ctx: Context, args: list[str]) -> int:
    if not args:
        raise UsageError("Missing op for 'fim-boot' (<set|show|clear>)")
    op = keyword(args[0])
    if op not in ("SET", "SHOW", "CLEAR"):
        raise UsageError("Invalid boot operation")
    if op == "SET":
        if len(args) < 2:
            raise UsageError("Missing program for 'set' operation")
        with editing(ctx) as cfg:
            cfg.boot.program, cfg.boot.args = args[1], args[2:]
        return 0
    if args[1:]:
        raise trailing("fim-boot", args[1:])
    if op == "SHOW":
        boot = ctx.config.boot
        print(pretty_json({"args": boot.args, "program": boot.program or DEFAULT_PROGRAM}))
    else:
        with editing(ctx) as cfg:
            cfg.boot.program, cfg.boot.args = "", []
    return 0

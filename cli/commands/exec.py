"""`fim-exec PROGRAM ARGS...` and `fim-root PROGRAM ARGS...` (spec 2.3)."""

from __future__ import annotations

from fim.app.log import UsageError
from fim.app.run import run_program

TYPE_CHECKING = False
if TYPE_CHECKING:
    from fim.app.session import Context


def run(ctx: Context, args: list[str]) -> int:
    if not args:
        raise UsageError(f"Incorrect number of arguments for {ctx.command}")
    return run_program(ctx, args, wants_root=ctx.command == "fim-root")

"""`fim-overlay set|show`: the filesystem that joins the layers and the writable one.

``fimfs`` (fim's in-process stack) is known besides FlatImage's three and is
the default; ``show`` prints the backend in effect (FIM_OVERLAY, then the
stored one, then the casefold fallback; see app.session.overlay_backend).
"""

from __future__ import annotations

from fim.app.config import OVERLAYS
from fim.app.log import CommandError, UsageError, trailing
from fim.cli.commands.args import editing, keyword

TYPE_CHECKING = False  # not typing's: importing typing slows every start-up
if TYPE_CHECKING:
    from fim.app.session import Context


def run(ctx: Context, args: list[str]) -> int:
    if not args:
        raise UsageError("Missing op for 'fim-overlay' (<set|show>)")
    op = keyword(args[0])
    if op == "NONE":
        raise UsageError("Invalid operation for fim-overlay")
    if op == "SET":
        if len(args) < 2:
            raise UsageError("Missing argument for 'set'")
        if args[2:]:
            raise trailing("fim-overlay", args[2:])
        value = keyword(args[1])
        if value == "NONE":
            raise CommandError("Invalid overlay option", "Failed to set overlay type")
        if value.lower() not in OVERLAYS:
            raise UsageError("Invalid overlay type")
        with editing(ctx) as cfg:
            cfg.overlay = value.lower()
    elif op == "SHOW":
        if args[1:]:
            raise trailing("fim-overlay", args[1:])
        print(ctx.overlay.upper())
    else:
        raise UsageError("Invalid overlay operation")
    return 0

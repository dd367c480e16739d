"""`fim-casefold on|off` and `fim-notify on|off`: flags stored in the image.

Deliberate difference from FlatImage: ``none`` is an invalid switch (upstream
takes it as ``off``, spec 18.1 item 8).
"""

from __future__ import annotations

from fim.app.log import UsageError, trailing
from fim.cli.commands.args import editing, keyword

TYPE_CHECKING = False  # not typing's: importing typing slows every start-up
if TYPE_CHECKING:
    from fim.app.session import Context

_USAGE = "Incorrect number of arguments for '{}' (<on|off>)"


def run(ctx: Context, args: list[str]) -> int:
    name = ctx.command.removeprefix("fim-")
    if not args or (args[1:] and name == "notify"):
        raise UsageError(_USAGE.format(ctx.command))
    if args[1:]:
        raise trailing(ctx.command, args[1:])
    switch = keyword(args[0])
    if switch not in ("ON", "OFF"):
        raise UsageError(f"Invalid {name} switch")
    with editing(ctx) as cfg:
        setattr(cfg, name, switch == "ON")
    return 0

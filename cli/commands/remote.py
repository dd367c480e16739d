"""`fim-remote set|show|clear`: the URL of the recipe repository."""

from __future__ import annotations

from fim.app import log
from fim.app.log import CommandError, UsageError, trailing
from fim.cli.commands.args import editing, keyword

TYPE_CHECKING = False  # not typing's: importing typing slows every start-up
if TYPE_CHECKING:
    from fim.app.session import Context

_NO_SPACE = "Not enough space to fit remote URL"
#: The recipe repository FlatImage's official images ship with (spec 2.16); `fim build`
#: stores it in every image it makes.
OFFICIAL = "https://raw.githubusercontent.com/flatimage/recipes/master"


def run(ctx: Context, args: list[str]) -> int:
    if not args:
        raise UsageError("Missing op for 'fim-remote' (<set|show|clear>)")
    op = keyword(args[0])
    if op not in ("SET", "SHOW", "CLEAR"):
        raise UsageError("Invalid remote operation")
    if op == "SET":
        if len(args) < 2:
            raise UsageError("Missing URL for 'set' operation")
        if args[2:]:
            raise trailing("fim-remote", args[2:])
        with editing(ctx, _NO_SPACE) as cfg:
            cfg.remote = args[1]
        log.info(f"Set remote URL to '{args[1]}'")
        return 0
    if args[1:]:
        raise trailing("fim-remote", args[1:])
    if op == "SHOW":
        if ctx.config.remote is None:
            raise CommandError("No remote URL configured", "Failed to get remote URL")
        print(ctx.config.remote)
    else:
        with editing(ctx, _NO_SPACE) as cfg:
            cfg.remote = None
        log.info("Cleared remote URL")
    return 0

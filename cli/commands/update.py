"""`fim-update set URL|show|clear|run`: where the image's next version lives, and the
delta update to it (app.update). Like AppImage's update information, the URL is stored
in the image's configuration."""

from __future__ import annotations

from fim.app import log
from fim.app.log import CommandError, UsageError, trailing
from fim.cli.commands.args import editing, keyword

TYPE_CHECKING = False  # not typing's: importing typing slows every start-up
if TYPE_CHECKING:
    from fim.app.session import Context

_NO_SPACE = "Not enough space to fit update URL"


def _set(ctx: Context, url: str) -> None:
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"Invalid update URL '{url}' (http:// or https://)")
    with editing(ctx, _NO_SPACE) as cfg:
        cfg.update = url
    log.info(f"Set update URL to '{url}'")


def _run(ctx: Context) -> None:
    from fim.app import update

    url = ctx.config.update
    if url is None:
        raise CommandError("No update URL configured (fim-update set URL)",
                           "Failed to update")
    try:
        result = update.run(ctx.layout, url)
    except CommandError as exc:
        raise CommandError(*exc.messages, "Failed to update") from None
    if not result.updated:
        log.info(f"'{ctx.image}' is up to date with '{url}'")
        return
    share = 100 * result.fetched / result.size if result.size else 0
    log.info(f"Updated '{ctx.image}' from '{url}': fetched {result.fetched} of "
             f"{result.size} bytes ({share:.1f}%)")


def run(ctx: Context, args: list[str]) -> int:
    if not args:
        raise UsageError("Missing op for 'fim-update' (<set|show|clear|run>)")
    op = keyword(args[0])
    if op not in ("SET", "SHOW", "CLEAR", "RUN"):
        raise UsageError("Invalid update operation")
    if op == "SET":
        if len(args) < 2:
            raise UsageError("Missing URL for 'set' operation")
        if args[2:]:
            raise trailing("fim-update", args[2:])
        _set(ctx, args[1])
        return 0
    if args[1:]:
        raise trailing("fim-update", args[1:])
    if op == "SHOW":
        if ctx.config.update is None:
            raise CommandError("No update URL configured", "Failed to get update URL")
        print(ctx.config.update)
    elif op == "CLEAR":
        with editing(ctx, _NO_SPACE) as cfg:
            cfg.update = None
        log.info("Cleared update URL")
    else:
        _run(ctx)
    return 0

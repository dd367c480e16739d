"""`fim-recipe fetch|info|install NAMES` (spec 2.17, 14): the recipes of
:mod:`app.recipe`; ``install`` then applies the last ``desktop`` section
(`fim-desktop setup`, cli.commands.desktop)."""

from __future__ import annotations

from fim.app import log, recipe
from fim.app.log import CommandError, UsageError, trailing
from fim.cli.commands.args import keyword

TYPE_CHECKING = False  # not typing's: importing typing slows every start-up
if TYPE_CHECKING:
    from fim.app.session import Context

_INFO_FAILED = "Failed to get recipe info"


def _names(args: list[str]) -> list[str]:
    if not args:
        raise UsageError("Missing recipe for operation", "Invalid recipes")
    if args[1:]:
        raise trailing("fim-recipe", args[1:])
    if not args[0]:
        raise UsageError("Recipe argument is empty", "Invalid recipes")
    return args[0].split(",")


def _info(ctx: Context, names: list[str]) -> int:
    for name in names:
        found = recipe.cached(ctx, name)
        if found is None:
            raise CommandError(f"Recipe '{name}' not found locally. "
                               f"Use 'fim-recipe fetch {name}' first.", _INFO_FAILED)
        lines = [f"Recipe: {name}", f"Location: {found.path}",
                 f"Description: {found.description}",
                 f"Package count: {len(found.packages)}", "Packages:",
                 *(f"  - {p}" for p in found.packages),
                 f"Dependencies: {len(found.dependencies)}",
                 *(f"  - {d}" for d in found.dependencies)]
        print("\n".join(lines), flush=True)
    return 0


def _install(ctx: Context, names: list[str]) -> int:
    code, desktop = recipe.install(ctx, names)
    if desktop is not None:
        from fim.cli.commands.desktop import setup

        log.info("Setting up desktop integration from recipe")
        try:
            setup(ctx, desktop)
            log.info("Desktop integration setup successful")
        except CommandError as exc:
            log.warning(f"Failed to setup desktop integration: {exc.messages[0]}")
    return code


def run(ctx: Context, args: list[str]) -> int:
    if not args:
        raise UsageError("Missing op for 'fim-recipe' (<fetch|info|install>)")
    op = keyword(args[0])
    if op not in ("FETCH", "INFO", "INSTALL"):
        raise UsageError("Invalid recipe operation")
    names = _names(args[1:])
    if op == "FETCH":
        recipe.fetch(ctx, names)
        return 0
    if op == "INFO":
        return _info(ctx, names)
    return _install(ctx, names)

"""`fim-version short|full|deps`: the build constants (nothing stored in the image)."""

from __future__ import annotations

from fim.app.log import UsageError, trailing
from fim.cli.commands.args import keyword, pretty_json

TYPE_CHECKING = False  # not typing's: importing typing slows every start-up
if TYPE_CHECKING:
    from fim.app.session import Context


def run(ctx: Context, args: list[str]) -> int:
    if not args:
        raise UsageError("Missing op for 'fim-version' (<short|full|deps>)")
    op = keyword(args[0])
    if op == "NONE":
        raise UsageError("Invalid operation for fim-version")
    if op not in ("SHORT", "FULL", "DEPS"):
        raise UsageError("Invalid version operation")
    if args[1:]:
        raise trailing("fim-version", args[1:])
    build = ctx.build
    if op == "SHORT":
        print(build["version"])
    elif op == "FULL":
        print(pretty_json({"COMMIT": build["commit"], "DISTRIBUTION": ctx.layout.dist,
                           "TIMESTAMP": build["timestamp"], "VERSION": build["version"]}))
    else:
        print(pretty_json(build["deps"]))
    return 0

"""`fim-layer list|add`: the layers an image stacks (spec 2.10). `create` and `commit`
come with the layer-building commands; until then they say they are not available."""

from __future__ import annotations

import os

from cli import log
from cli.commands.args import keyword, print_lines
from cli.log import CommandError, Fatal, UsageError, trailing

TYPE_CHECKING = False  # not typing's: importing typing slows every start-up
if TYPE_CHECKING:
    from cli.boot import Context


def _list(ctx: Context) -> None:
    from cli.layers import discover

    layers_dir = os.path.join(os.environ["FIM_DIR_DATA"], "layers")
    print_lines(f"{i}:{la.offset}:{la.size}:{la.path}"
                for i, la in enumerate(discover(ctx.layout, layers_dir, os.environ)))


def _add(ctx: Context, source: str) -> None:
    from cli import image

    try:
        image.append_layer(ctx.layout, source)
    except CommandError as exc:
        raise CommandError(*exc.messages, "Failed to add layer") from None
    log.info(f"Included novel layer from file '{source}'")


def run(ctx: Context, args: list[str]) -> int:
    if not args:
        raise UsageError("Missing op for 'fim-layer' (create,add,commit,list)")
    op = keyword(args[0])
    if op == "LIST":
        if args[1:]:
            raise trailing("fim-layer list", args[1:])
        _list(ctx)
    elif op == "ADD":
        if len(args) != 2:
            raise UsageError("add requires exactly one argument (/path/to/file.layer)")
        _add(ctx, args[1])
    elif op in ("CREATE", "COMMIT"):
        raise Fatal(f"fim-layer {args[0]} is not available in this build of fim yet")
    else:
        raise UsageError("Invalid layer operation")
    return 0

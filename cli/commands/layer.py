"""`fim-layer`: the layers an image stacks (spec 2.10): `list`, `add`, and `create` and
`commit` (app.layercommit)."""

from __future__ import annotations

import os

from fim.app import log
from fim.app.log import CommandError, UsageError, trailing
from fim.cli.commands.args import keyword, print_lines

TYPE_CHECKING = False  # not typing's: importing typing slows every start-up
if TYPE_CHECKING:
    from fim.app.session import Context


def _list(ctx: Context) -> None:
    from fim.app.layers import discover

    print_lines(f"{i}:{la.offset}:{la.size}:{la.path}"
                for i, la in enumerate(discover(ctx.layout, ctx.paths.layers, ctx.environ())))


def _add(ctx: Context, source: str) -> None:
    from fim.app import image

    image.check_writable(ctx.layout.path)
    try:
        if image.is_url(source):
            _add_url(ctx, source)
        else:
            image.append_layer(ctx.layout, source)
    except CommandError as exc:
        raise CommandError(*exc.messages, "Failed to add layer") from None
    log.info(f"Included novel layer from file '{source}'")


def _add_url(ctx: Context, url: str) -> None:
    """Download the layer at ``url`` into DATA/tmp (by ranges, progress on a TTY), then
    append it as a file would be."""
    from fim.app import image

    layer = image.remote(url)
    tmp = os.path.join(ctx.paths.tmp, f"layer-{os.getpid()}.download")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            layer.copy_to(fd)
        finally:
            os.close(fd)
        image.append_layer(ctx.layout, tmp)
    except OSError as exc:
        raise CommandError(f"Could not download layer '{url}': {exc.strerror}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _commit(ctx: Context, args: list[str]) -> None:
    if not args:
        raise UsageError("Missing op for 'commit' (binary,layer,file)")
    mode = keyword(args[0])
    if mode not in ("BINARY", "LAYER", "FILE"):
        raise UsageError("Invalid commit operation")
    path = None
    extra = args[1:]
    if mode == "FILE":
        if not extra:
            raise UsageError("Missing path for 'file' operation")
        path, extra = extra[0], extra[1:]
    if extra:
        raise trailing("fim-layer commit", extra)
    from fim.app import image, layercommit

    if mode == "BINARY":
        image.check_writable(ctx.layout.path)
    layercommit.commit(ctx, mode, path)


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
    elif op == "CREATE":
        if len(args) != 3:
            raise UsageError("create requires exactly two arguments "
                             "(/path/to/dir /path/to/file.layer)")
        from fim.app import layercommit

        layercommit.create(args[1], args[2])
    elif op == "COMMIT":
        _commit(ctx, args[1:])
    else:
        raise UsageError("Invalid layer operation")
    return 0

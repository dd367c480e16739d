"""`fim-bind add|del|list`: host paths bound into every sandbox, in index order.

Deliberate differences from FlatImage: the type ``none`` is refused (upstream
stores it as ``dev``), ``dev`` binds stay device binds (upstream reads them back
as plain binds, spec 18.1 item 2), and bindings keep their numeric order
(upstream orders the stored keys as strings, so "10" came before "2").
"""

from __future__ import annotations

from fim.app import log
from fim.app.config import BIND_TYPES, Bind
from fim.app.log import UsageError
from fim.cli.commands.args import editing, keyword, pretty_json

TYPE_CHECKING = False  # not typing's: importing typing slows every start-up
if TYPE_CHECKING:
    from fim.app.session import Context


def run(ctx: Context, args: list[str]) -> int:
    if not args:
        raise UsageError("Missing op for 'fim-bind' command (add,del,list)")
    op = keyword(args[0])
    if op == "NONE":
        raise UsageError("Invalid operation for bind")
    if op == "ADD":
        _add(ctx, args[1:])
    elif op == "DEL":
        _delete(ctx, args[1:])
    elif op == "LIST":
        if args[1:]:
            raise UsageError("'list' command takes no arguments")
        binds = ctx.config.binds
        if binds:
            print(pretty_json({str(i): b.to_json() for i, b in enumerate(binds)}))
    else:
        raise UsageError("Invalid bind operation")
    return 0


def _add(ctx: Context, args: list[str]) -> None:
    """``add TYPE SRC DST``: the type is checked as soon as it is read, the count after
    (upstream's order: ``add roo`` is an invalid type)."""
    wrong_count = "Incorrect number of arguments for 'add' (<ro,rw,dev> <src> <dst>)"
    if not args:
        raise UsageError(wrong_count)
    kind = args[0].lower()
    if kind not in BIND_TYPES:
        raise UsageError("Invalid bind type")
    if len(args) != 3:
        raise UsageError(wrong_count)
    with editing(ctx) as cfg:
        cfg.binds.append(Bind(kind, args[1], args[2]))
        index = len(cfg.binds) - 1
    log.info(f"Binding index is '{index}'")


def _delete(ctx: Context, args: list[str]) -> None:
    """``del INDEX``: the index is checked before the extra arguments, as upstream."""
    wrong_count = "Incorrect number of arguments for 'del' (<index>)"
    if not args:
        raise UsageError(wrong_count)
    if not (args[0].isascii() and args[0].isdigit()):
        raise UsageError("Index argument for 'del' is not a number")
    if len(args) != 1:
        raise UsageError(wrong_count)
    index = int(args[0])
    with editing(ctx) as cfg:
        found = index < len(cfg.binds)
        if found:
            del cfg.binds[index]
    log.info(f"Erase element with index '{index}'" if found
             else f"No element with index '{index}' found")

"""`fim-env add|set|del|list|clear`: variables given to every sandboxed program.

``list`` shows ``KEY=VALUE`` with ``$NAME``/``${NAME}`` expanded from the
environment (app/expand.py; never a command substitution). Deliberate
differences from FlatImage: ``set`` checks its arguments before it empties the
store (an invalid ``set`` changes nothing), the last of repeated keys wins, an
empty key is invalid, and values with spaces are listed whole.
"""

from __future__ import annotations

from fim.app import log
from fim.app.expand import expand
from fim.app.log import UsageError, trailing
from fim.cli.commands.args import editing, keyword, print_lines

TYPE_CHECKING = False  # not typing's: importing typing slows every start-up
if TYPE_CHECKING:
    from fim.app.session import Context


def _assignments(args: list[str]) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise UsageError(f"Variable assignment '{arg}' is invalid")
        pairs[key] = value
    return pairs


def run(ctx: Context, args: list[str]) -> int:
    if not args:
        raise UsageError("Missing op for 'fim-env' (add,del,list,set,clear)")
    op = keyword(args[0])
    if op == "NONE":
        raise UsageError("Invalid operation for environment")
    if op not in ("ADD", "SET", "DEL", "LIST", "CLEAR"):
        raise UsageError("Invalid env operation")
    if op in ("LIST", "CLEAR"):
        if args[1:]:
            raise trailing("fim-env", args[1:])
        if op == "LIST":
            env = ctx.environ()
            shown = sorted((expand(k, env), expand(v, env)) for k, v in ctx.config.env.items())
            print_lines(f"{key}={value}" for key, value in shown)
        else:
            with editing(ctx) as cfg:
                cfg.env.clear()
        return 0
    if not args[1:]:
        raise UsageError(f"Missing arguments for '{op}'")
    if op == "DEL":
        with editing(ctx) as cfg:
            erased = [(key, cfg.env.pop(key, None) is not None) for key in args[1:]]
        for key, found in erased:
            log.info(f"Erase key '{key}'" if found else f"Key '{key}' not found for deletion")
        return 0
    pairs = _assignments(args[1:])
    with editing(ctx) as cfg:
        if op == "SET":
            cfg.env.clear()
        cfg.env.update(pairs)
    for key, value in pairs.items():
        log.info(f"Included variable '{key}' with value '{value}'")
    return 0

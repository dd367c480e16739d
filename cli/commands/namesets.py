"""`fim-perms` and `fim-unshare`: sets of names edited with add|del|set|list|clear.

Deliberate difference from FlatImage: ``del all`` removes every name (upstream
sets them all, spec 18.1 item 1).
"""

from __future__ import annotations

from fim.app.log import CommandError, UsageError, trailing
from fim.cli.commands.args import comma_list, editing, keyword, print_lines
from fim.sandbox.permissions import PERMISSIONS, UNSHARE

TYPE_CHECKING = False  # not typing's: importing typing slows every start-up
if TYPE_CHECKING:
    from fim.app.session import Context


class _Words:
    """The names and messages of one of the two commands."""

    def __init__(self, attr: str, names: tuple[str, ...], ops: str, invalid: str,
                 noun: str, all_mixed: str) -> None:
        self.attr = attr  # the Config attribute, also the word in "Invalid operation for"
        self.names = names
        self.ops = ops
        self.invalid = invalid
        self.noun = noun
        self.all_mixed = all_mixed


_COMMANDS = {
    "fim-perms": _Words("permissions", PERMISSIONS, "add,del,list,set,clear",
                        "Invalid permission", "permissions",
                        "Permission 'all' should not be used with others"),
    "fim-unshare": _Words("unshare", UNSHARE, "add,clear,del,list,set",
                          "Invalid unshare option", "unshare options",
                          "Unshare option 'all' should not be used with others"),
}
_VERBS = {"ADD": "add", "DEL": "delete", "SET": "set"}


def _parse(words: _Words, op: str, text: str) -> set[str]:
    """The names of a comma list; ``all`` alone stands for every name."""
    failed = f"Failed to process {words.noun}"
    chosen: set[str] = set()
    for item in comma_list(text):
        word = keyword(item)
        if word == "NONE":
            raise UsageError(f"{words.invalid} 'NONE'", failed)
        if word != "ALL" and word.lower() not in words.names:
            raise UsageError(words.invalid, failed)
        chosen.add(word.lower())
    if "all" in chosen:
        if len(chosen) > 1:
            raise CommandError(words.all_mixed, f"Failed to {_VERBS[op]} {words.noun}")
        return set(words.names)
    return chosen


def run(ctx: Context, args: list[str]) -> int:
    words = _COMMANDS[ctx.command]
    if not args:
        raise UsageError(f"Missing op for {ctx.command} ({words.ops})")
    op = keyword(args[0])
    if op == "NONE":
        raise UsageError(f"Invalid operation for {words.attr}")
    if op not in ("ADD", "DEL", "SET", "LIST", "CLEAR"):
        raise UsageError(f"Invalid {ctx.command.removeprefix('fim-')} operation")
    if op in ("LIST", "CLEAR"):
        if args[1:]:
            raise trailing(ctx.command, args[1:])
        if op == "LIST":
            print_lines(sorted(getattr(ctx.config, words.attr)))
        else:
            with editing(ctx) as cfg:
                setattr(cfg, words.attr, set())
        return 0
    if not args[1:]:
        raise UsageError(f"No arguments for '{op}' command")
    if args[2:]:
        raise trailing(ctx.command, args[2:])
    names = _parse(words, op, args[1])
    with editing(ctx) as cfg:
        current: set[str] = getattr(cfg, words.attr)
        if op == "ADD":
            current |= names
        elif op == "DEL":
            current -= names
        else:
            setattr(cfg, words.attr, names)
    return 0

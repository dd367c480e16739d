"""Helpers shared by the command modules: keywords, comma lists, JSON output, edits."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from fim.app import config
from fim.app.log import CommandError

TYPE_CHECKING = False  # not typing's: importing typing slows every start-up
if TYPE_CHECKING:
    from fim.app.session import Context

NO_SPACE = "Not enough space to fit json data"


def keyword(word: str) -> str:
    """Keywords are case-insensitive: compared in upper case, as FlatImage does."""
    return word.upper()


def comma_list(text: str) -> list[str]:
    """``fim-perms``/``fim-unshare`` lists: split on commas like lines (``""`` is no
    item, ``a,,b`` has an empty middle item, one trailing comma is dropped)."""
    items = text.split(",")
    if items[-1] == "":
        items.pop()
    return items


def print_lines(lines: Iterable[str]) -> None:
    """Plain output: each line followed by a newline, nothing for no lines."""
    sys.stdout.write("".join(f"{line}\n" for line in lines))


def pretty_json(value: object) -> str:
    """FlatImage's JSON output: 2-space indent, sorted keys, UTF-8 kept as is."""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


@contextmanager
def editing(ctx: Context, *too_large: str) -> Iterator[config.Config]:
    """Edit the image's configuration; a result too large for the reserved space
    fails with the chain ``too_large`` (default: the spec's json message)."""
    try:
        with config.edit(ctx.layout) as cfg:
            yield cfg
    except config.ConfigTooLarge as exc:
        raise CommandError(*exc.messages, *(too_large or (NO_SPACE,))) from None

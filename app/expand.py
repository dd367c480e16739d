"""Variable expansion of stored values (env, binds, boot program, FIM_LAYERS).

FlatImage passes these through wordexp(3) on the host, which runs ``$(...)``
and backquoted commands outside the sandbox every time the image starts, and
keeps only the first word. fim expands ``$NAME`` and ``${NAME}`` only (an unset
variable gives the empty string) and keeps everything else as typed: command
substitutions (with any ``$NAME`` inside them), ``~``, globs, quotes, spaces.
An image someone downloads must not run code on the host outside the sandbox.
"""

from __future__ import annotations

from collections.abc import Mapping

_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_REST = _FIRST | frozenset("0123456789")


def _name_end(text: str, start: int) -> int:
    """End of the variable name starting at ``start`` (== start: no name there)."""
    if start >= len(text) or text[start] not in _FIRST:
        return start
    end = start + 1
    while end < len(text) and text[end] in _REST:
        end += 1
    return end


def _literal_end(text: str, start: int) -> int:
    """End of the command substitution starting at ``start`` (``$(`` or a backquote),
    or the end of the text when it is not closed."""
    if text[start] == "`":
        close = text.find("`", start + 1)
        return len(text) if close < 0 else close + 1
    depth = 0
    for i in range(start + 1, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return i + 1
    return len(text)


def expand(text: str, environ: Mapping[str, str]) -> str:
    """``text`` with ``$NAME`` and ``${NAME}`` replaced from ``environ``."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "`" or text.startswith("$(", i):
            end = _literal_end(text, i)
            out.append(text[i:end])
            i = end
            continue
        if char == "$":
            braced = text.startswith("${", i)
            start = i + 2 if braced else i + 1
            end = _name_end(text, start)
            if end > start and (not braced or text.startswith("}", end)):
                out.append(environ.get(text[start:end], ""))
                i = end + 1 if braced else end
                continue
        out.append(char)
        i += 1
    return "".join(out)

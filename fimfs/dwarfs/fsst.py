"""FSST symbol tables as DwarFS stores them (format doc 6.9): import and decode.

A symbol table maps codes 0..254 to byte strings of 1 to 8 bytes; code 255 escapes
the next byte. The stored form lists the symbols grouped by length: 2..8, then 1.
"""

from __future__ import annotations

from ..errors import ImageError

VERSION = 20190218


class FsstError(ImageError):
    pass


def parse_symtab(raw: bytes) -> list[bytes]:
    """The symbols of a stored table, indexed by code."""
    if len(raw) < 17:
        raise FsstError("fsst: symbol table too short")
    if int.from_bytes(raw[:8], "little") >> 32 != VERSION:
        raise FsstError("fsst: unknown symbol table version")
    zero_terminated = raw[8] & 1
    histo = raw[9:17]
    symbols: list[bytes] = [b"\0"] if zero_terminated else []
    pos = 17
    for length in (2, 3, 4, 5, 6, 7, 8, 1):
        count = histo[length - 1] - (zero_terminated if length == 1 else 0)
        for _ in range(max(count, 0)):
            if pos + length > len(raw):
                raise FsstError("fsst: truncated symbol table")
            symbols.append(bytes(raw[pos:pos + length]))
            pos += length
    if pos != len(raw):
        raise FsstError(f"fsst: read {pos} symtab bytes, expected {len(raw)}")
    if len(symbols) > 255:
        raise FsstError("fsst: too many symbols")
    return symbols


class Decoder:
    """Decodes FSST-compressed strings with one symbol table."""

    def __init__(self, raw_symtab: bytes) -> None:
        self.symbols = parse_symtab(raw_symtab)

    def decode(self, data: bytes) -> bytes:
        out = bytearray()
        syms = self.symbols
        n = len(syms)
        i, end = 0, len(data)
        while i < end:
            c = data[i]
            i += 1
            if c == 255:
                if i >= end:
                    raise FsstError("fsst: escape at end of string")
                out.append(data[i])
                i += 1
            elif c < n:
                out += syms[c]
            else:
                raise FsstError("fsst: unused code")
        return bytes(out)

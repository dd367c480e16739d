"""Frozen2 writer: lay out and freeze a metadata value, and save its schema.

The inverse of :mod:`fimfs.dwarfs.frozen_decode`, following format doc 4.6 (the
algorithm of Frozen2's ``LayoutRoot``/``FreezeRoot``): one mutable layout per
field occurrence grows until a whole layout pass changes nothing; then the value
is written depth-first into an append-only buffer and the layouts are saved
post-order with de-duplication. For equal values this reproduces mkdwarfs byte
for byte.

Values are plain Python: dicts for structs (missing keys mean the default, None
means an unset optional), ints, bools, bytes for strings, sequences for lists and
sets, dicts for maps. A list of plain-integer structs may also be given as a
:class:`fimfs.dwarfs.frozen_decode.Table` (columns), which is how the writer passes its
big tables and how the decoder returns them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import thrift
from .frozen_decode import Table, Zeros
from .idl import FROZEN_SCHEMA, Struct

_INT, _BOOL, _STRUCT, _OPT, _STRING, _LIST, _MAP, _PAIR = range(8)
_SIZE_T = ("int", 64)
_MAX_PASSES = 1000


class _Field:
    __slots__ = ("id", "key", "layout", "byte", "bit")

    def __init__(self, fid: int, key: str | int, layout: _Layout) -> None:
        self.id = fid
        self.key = key  # dict key (struct) or tuple index (map pair)
        self.layout = layout
        self.byte = 0
        self.bit = 0


class _Layout:
    __slots__ = ("kind", "size", "bits", "inlined", "fields", "save_order", "item", "plain",
                 "width", "sort")

    def __init__(self, kind: int, fields: Sequence[_Field] = (), width: int = 0) -> None:
        self.kind = kind
        self.size = 0
        self.bits = 0
        self.inlined = False
        self.fields = list(fields)  # layout order
        self.save_order = self.fields
        self.item: _Field | None = None
        self.plain = False  # a struct of integers only: lists of it take the column path
        self.width = width  # the IDL width of an integer
        self.sort = False  # a set: stored sorted and without duplicates

    @property
    def empty(self) -> bool:
        return self.size == 0 and self.bits == 0


def _build(typ: Any) -> _Layout:
    """The layout tree of an IDL type (doc 4.6.1: children in declaration order)."""
    if isinstance(typ, Struct):
        fields = [_Field(f.id, f.name, _optional(f.type) if f.optional else _build(f.type))
                  for f in typ.fields]
        lay = _Layout(_STRUCT, fields)
        lay.plain = all(not f.optional and isinstance(f.type, tuple) and f.type[0] == "int"
                        for f in typ.fields)
        return lay
    kind = typ[0]
    if kind == "int":
        return _Layout(_INT, width=typ[1])
    if kind == "bool":
        return _Layout(_BOOL, width=1)
    if kind == "string":
        return _Layout(_STRING, [_Field(1, 0, _build(_SIZE_T)), _Field(2, 0, _build(_SIZE_T))])
    count, distance = _Field(2, 0, _build(_SIZE_T)), _Field(1, 0, _build(_SIZE_T))
    if kind == "map":
        pair = _Layout(_PAIR, [_Field(1, 0, _build(typ[1])), _Field(2, 1, _build(typ[2]))])
        lay = _Layout(_MAP, [count, distance])
        lay.item = _Field(3, 0, pair)
    else:
        lay = _Layout(_LIST, [count, distance])
        lay.item = _Field(3, 0, _build(typ[1]))
        lay.sort = kind == "set"
    lay.save_order = [distance, count, lay.item]
    return lay


def _optional(typ: Any) -> _Layout:
    return _Layout(_OPT, [_Field(1, 0, _build(("bool",))), _Field(2, 0, _build(typ))])


def _default(lay: _Layout) -> Any:
    return {_INT: 0, _BOOL: False, _STRING: b"", _STRUCT: {}, _OPT: None}.get(lay.kind, ())


def _items(lay: _Layout, value: Any) -> Sequence:
    """The elements of a list/set/map value in storage order (sets and maps sorted)."""
    if isinstance(value, dict):
        return sorted(value.items())
    if lay.sort:
        return sorted(set(value))
    return value


def _columns(item: _Layout, value: Sequence) -> list[tuple[_Layout, Sequence[int]]]:
    """(layout, column) per field of a plain-struct list, from a Table or dicts."""
    out = []
    for f in item.fields:
        if isinstance(value, Table):
            col = value.column(f.key)  # type: ignore[arg-type]  # plain-struct fields have str keys
            col = Zeros(len(value)) if col is None else col
        else:
            col = [d.get(f.key, 0) for d in value]  # type: ignore[assignment]  # a column: any int sequence
        out.append((f.layout, col))
    return out  # type: ignore[return-value]  # a column: any int sequence


def _max_bits(col: Sequence[int]) -> int:
    if isinstance(col, Zeros) or not len(col):
        return 0
    return max(col).bit_length()


def _pack(values: Sequence[int], stride: int, nbytes: int) -> bytes:
    """Concatenate ``stride``-bit values LSB-first into ``nbytes`` bytes."""
    vals = list(values)
    s = stride
    while s % 8 or s < 256:  # pair up neighbours until groups are whole, largish bytes
        if len(vals) % 2:
            vals.append(0)
        vals = [a | (b << s) for a, b in zip(vals[0::2], vals[1::2])]
        s *= 2
        if len(vals) == 1:
            break
    n = (s + 7) // 8
    return b"".join(v.to_bytes(n, "little") for v in vals)[:nbytes]


class Freezer:
    """Layout and freeze of one root value (doc 4.6.3-4.6.5)."""

    def __init__(self, root_type: Struct) -> None:
        self.root = _build(root_type)
        self.cursor = 0
        self.grew = False
        self.out = bytearray()

    # -- layout (4.6.2) -----------------------------------------------------------
    def _resize(self, lay: _Layout, byte: int, bit: int, inline: bool) -> None:
        if lay.width and bit > lay.width:
            raise ValueError(f"value of {bit} bits does not fit its {lay.width}-bit type")
        lay.inlined = lay.size == 0 and inline
        if not lay.inlined and byte > lay.size:
            lay.size = byte
            self.grew = True
        if bit > lay.bits:
            lay.bits = bit
            self.grew = True

    def _distance(self, origin: int, nbytes: int) -> int:
        if nbytes == 0:
            return 0
        self.cursor = max(self.cursor, origin)
        d = self.cursor - origin
        self.cursor += nbytes
        return d

    def _field(self, sbyte: int, sbit: int, fbyte: int, fbit: int, f: _Field,
               value: Any) -> tuple[int, int]:
        lay = f.layout
        if lay.size == 0:
            ab, abit = self._lay(lay, value, sbyte, sbit + fbit)
            if ab == 0:
                self._resize(lay, ab, abit, True)
                if not lay.empty:
                    f.byte, f.bit = 0, fbit
                    fbit += lay.bits
                return fbyte, fbit
        ab, abit = self._lay(lay, value, sbyte + fbyte, sbit)
        self._resize(lay, ab, abit, False)
        if not lay.empty:
            f.byte, f.bit = fbyte, 0
            fbyte += lay.size
        return fbyte, fbit

    def _lay(self, lay: _Layout, value: Any, byte: int, bit: int) -> tuple[int, int]:
        pb, pbit = (0, 0) if lay.inlined else ((lay.bits + 7) >> 3, 0)
        kind = lay.kind
        if kind == _INT:
            return pb, pbit + int(value).bit_length()
        if kind == _BOOL:
            return pb, pbit + (1 if value else 0)
        if kind == _STRUCT:
            for f in lay.fields:
                v = value.get(f.key)
                pb, pbit = self._field(byte, bit, pb, pbit, f,
                                       _default(f.layout) if v is None else v)
            return pb, pbit
        if kind == _PAIR:
            for f in lay.fields:
                pb, pbit = self._field(byte, bit, pb, pbit, f, value[f.key])
            return pb, pbit
        if kind == _OPT:
            isset, val = lay.fields
            pb, pbit = self._field(byte, bit, pb, pbit, isset, value is not None)
            if value is not None:
                pb, pbit = self._field(byte, bit, pb, pbit, val, value)
            return pb, pbit
        if kind == _STRING:
            n = len(value)
            if n == 0:
                return pb, pbit
            distance, count = lay.fields
            pb, pbit = self._field(byte, bit, pb, pbit, distance, self._distance(byte, n))
            return self._field(byte, bit, pb, pbit, count, n)
        return self._lay_list(lay, value, byte, bit, pb, pbit)

    def _lay_list(self, lay: _Layout, value: Any, byte: int, bit: int, pb: int,
                  pbit: int) -> tuple[int, int]:
        count, distance = lay.fields
        items = _items(lay, value)
        n = len(items)
        pb, pbit = self._field(byte, bit, pb, pbit, count, n)
        if n == 0:
            return self._field(byte, bit, pb, pbit, distance, 0)
        item = lay.item.layout  # type: ignore[union-attr]  # a list layout has an item
        ib = item.size
        ibits = 0 if ib else item.bits
        nbytes = (n * ibits + 7) // 8 if ibits else n * ib
        d = self._distance(byte, nbytes)
        pb, pbit = self._field(byte, bit, pb, pbit, distance, d)
        if item.kind == _INT:
            self._resize(item, 0, _max_bits(items), True)
        elif item.kind == _STRUCT and item.plain:
            self._lay_columns(item, _columns(item, items))
        else:
            base = byte + d
            for i, e in enumerate(items):
                self._field(base + i * ib, i * ibits, 0, 0, lay.item, e)  # type: ignore[arg-type]  # a list layout has an item
        return pb, pbit

    def _lay_columns(self, item: _Layout, cols: list[tuple[_Layout, Sequence[int]]]) -> None:
        """Lay out all elements of a plain-struct list at once: the same result as one
        element after the other, since each field just grows to its widest value."""
        pos = 0
        for f, (flay, col) in zip(item.fields, cols):
            self._resize(flay, 0, _max_bits(col), True)
            if not flay.empty:
                f.byte, f.bit = 0, pos
                pos += flay.bits
        self._resize(item, 0, pos, True)

    def layout(self, value: dict) -> int:
        """Run layout passes to the fixed point; returns the payload size."""
        root = self.root
        for _ in range(_MAX_PASSES):
            self.grew = False
            self.cursor = root.size
            ab, abit = self._lay(root, value, 0, 0)
            self._resize(root, ab, abit, False)
            if not self.grew:
                return self.cursor + 8
        raise ValueError("frozen layout did not converge")

    # -- freeze (4.6.4) -----------------------------------------------------------
    def _put(self, byte: int, bit: int, width: int, value: int) -> None:
        if value >> width:
            raise ValueError(f"value {value} does not fit in {width} bits")
        if not value:
            return
        pos = byte * 8 + bit
        first, shift = pos >> 3, pos & 7
        n = (shift + width + 7) >> 3
        cur = int.from_bytes(self.out[first:first + n], "little") | (value << shift)
        self.out[first:first + n] = cur.to_bytes(n, "little")

    def _append(self, origin: int, n: int) -> tuple[int, int]:
        start = len(self.out)
        self.out += bytes(n)
        return start, start - origin

    def _freeze(self, lay: _Layout, value: Any, byte: int, bit: int) -> None:
        kind = lay.kind
        if lay.empty:
            return
        if kind in (_INT, _BOOL):
            self._put(byte, bit, lay.bits, int(value))
        elif kind in (_STRUCT, _PAIR):
            for f in lay.fields:
                v = value.get(f.key) if kind == _STRUCT else value[f.key]
                self._freeze(f.layout, _default(f.layout) if v is None else v,
                             byte + f.byte, bit + f.bit)
        elif kind == _OPT:
            isset, val = lay.fields
            self._freeze(isset.layout, value is not None, byte + isset.byte, bit + isset.bit)
            if value is not None:
                self._freeze(val.layout, value, byte + val.byte, bit + val.bit)
        elif kind == _STRING:
            n = len(value)
            if n:
                distance, count = lay.fields
                start, d = self._append(byte, n)
                self.out[start:start + n] = value
                self._freeze(distance.layout, d, byte + distance.byte, bit + distance.bit)
                self._freeze(count.layout, n, byte + count.byte, bit + count.bit)
        else:
            self._freeze_list(lay, value, byte, bit)

    def _freeze_list(self, lay: _Layout, value: Any, byte: int, bit: int) -> None:
        count, distance = lay.fields
        items = _items(lay, value)
        n = len(items)
        self._freeze(count.layout, n, byte + count.byte, bit + count.bit)
        item = lay.item.layout  # type: ignore[union-attr]  # a list layout has an item
        ib = item.size
        ibits = 0 if ib else item.bits
        nbytes = (n * ibits + 7) // 8 if ibits else n * ib
        if n == 0 or nbytes == 0:
            return
        start, d = self._append(byte, nbytes)
        self._freeze(distance.layout, d, byte + distance.byte, bit + distance.bit)
        if ibits and item.kind == _INT:
            self.out[start:start + nbytes] = _pack(items, ibits, nbytes)
        elif ibits and item.kind == _STRUCT and item.plain:
            self.out[start:start + nbytes] = _pack(self._combine(item, items), ibits, nbytes)
        else:
            for i, e in enumerate(items):
                self._freeze(item, e, start + i * ib, i * ibits)

    @staticmethod
    def _combine(item: _Layout, items: Sequence) -> list[int]:
        """Each plain-struct element as one integer of ``item.bits`` bits."""
        combined: list[int] | None = None
        for f, (flay, col) in zip(item.fields, _columns(item, items)):
            if flay.empty:
                continue
            if _max_bits(col) > flay.bits:
                raise ValueError(f"value does not fit in {flay.bits} bits")
            s = f.bit
            combined = ([v << s for v in col] if combined is None
                        else [a | (v << s) for a, v in zip(combined, col)])
        return combined if combined is not None else [0] * len(items)

    def freeze(self, value: dict) -> bytes:
        """The METADATA payload of ``value`` (after :meth:`layout`)."""
        self.out = bytearray(self.root.size)
        self._freeze(self.root, value, 0, 0)
        self.out += bytes(8)
        return bytes(self.out)

    # -- schema (4.6.5) -----------------------------------------------------------
    def schema(self) -> bytes:
        """The METADATA_V2_SCHEMA payload: thrift-compact, layouts de-duplicated."""
        layouts: dict[tuple, int] = {}

        def save(lay: _Layout) -> int:
            fields = []
            for f in lay.save_order:
                if f.layout.empty:
                    continue
                fields.append((f.id, save(f.layout), -f.bit if f.bit else f.byte))
            key = (lay.size, lay.bits, tuple(fields))
            return layouts.setdefault(key, len(layouts))

        root = save(self.root)
        return thrift.encode_struct(FROZEN_SCHEMA, {
            "fileVersion": 1,
            "relaxTypeChecks": True,
            "layouts": {lid: {"size": size, "bits": bits, "typeName": "",
                              "fields": {fid: {"layoutId": c, "offset": off}
                                         for fid, c, off in fields}}
                        for (size, bits, fields), lid in layouts.items()},
            "rootLayout": root,
        })


def freeze(root_type: Struct, value: dict) -> tuple[bytes, bytes]:
    """``(schema, payload)`` of ``value``: the SCHEMA and METADATA section payloads."""
    f = Freezer(root_type)
    size = f.layout(value)
    payload = f.freeze(value)
    if len(payload) != size:
        raise AssertionError(f"frozen size {len(payload)} != laid out {size}")
    return f.schema(), payload

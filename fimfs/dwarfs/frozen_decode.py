"""Frozen2: the bit-packed metadata layout, decoded under the direction of its schema.

Format doc section 4. The schema (a thrift-compact ``Schema``) gives, per layout,
a size, a bit width and child fields at byte or bit offsets; the IDL in
:mod:`fimfs.dwarfs.idl` gives the types. Nothing about bit widths is hard-coded.

Lists of plain-integer structs (chunks, inodes, dir entries, directories) decode
column-wise into compact ``array`` columns, which keeps a mount's memory small and
lookups fast. Every list and string is bounds-checked against the payload before
anything is materialised, so hostile counts cannot exhaust memory.
"""

from __future__ import annotations

import functools
from array import array
from collections.abc import Callable, Iterator
from typing import NamedTuple, overload

from . import thrift
from .idl import FROZEN_SCHEMA, Struct
from .thrift import ThriftError


class FrozenError(ThriftError):
    """The metadata does not fit its schema (out of bounds, too wide, too large)."""


class Layout(NamedTuple):
    size: int
    bits: int
    fields: dict[int, tuple[int, int]]  # field id -> (layout id, offset: >=0 bytes, <0 -bits)


class Schema(NamedTuple):
    layouts: list[Layout]
    root: int


def parse_schema(data: bytes) -> Schema:
    """Decode and validate a METADATA_V2_SCHEMA payload (doc 3.1)."""
    d = thrift.decode(data, FROZEN_SCHEMA)
    if d.get("fileVersion", 0) > 1:
        raise FrozenError(f"schema: unsupported frozen file version {d['fileVersion']}")
    raw = d.get("layouts", {})
    n = len(raw)
    if any(not 0 <= k < n for k in raw):
        raise FrozenError("schema: layout ids are not dense")
    root = d.get("rootLayout", 0)
    if root not in raw:
        raise FrozenError("schema: root layout missing")
    layouts = []
    for k in range(n):
        lay = raw[k]
        size, bits = lay.get("size", 0), lay.get("bits", 0)
        if size < 0 or bits < 0:
            raise FrozenError("schema: negative layout size or bits")
        fields = {}
        for fid, f in lay.get("fields", {}).items():
            lid = f.get("layoutId", 0)
            if lid not in raw:
                raise FrozenError("schema: invalid layoutId")
            fields[fid] = (lid, f.get("offset", 0))
        layouts.append(Layout(size, bits, fields))
    return Schema(layouts, root)


class Zeros:
    """A read-only sequence of ``n`` zeros: a column that the layout does not store."""

    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    @overload
    def __getitem__(self, i: int) -> int: ...
    @overload
    def __getitem__(self, i: slice) -> Zeros: ...
    def __getitem__(self, i: int | slice) -> int | Zeros:
        if isinstance(i, slice):
            return Zeros(len(range(*i.indices(self.n))))
        if not -self.n <= i < self.n:
            raise IndexError(i)
        return 0

    def __iter__(self) -> Iterator[int]:
        return iter(range(0)) if self.n == 0 else (0 for _ in range(self.n))


Column = array | Zeros


class Table:
    """A decoded list of plain-integer structs, stored as one column per field.

    A column is unpacked from the payload when it is first read (its bounds were checked
    when the table was decoded): what opening an image does not look at (the times, the
    link counts) costs nothing until a stat needs it."""

    def __init__(self, n: int, columns: dict[str, Column], present: frozenset[str],
                 pending: dict[str, Callable[[], Column]] | None = None) -> None:
        # The columns are plain attributes (``table.block``): readers look them up once per
        # chunk or inode, and __getattr__ is a Python call each time; it runs only for a
        # column not unpacked yet, which it then makes a plain attribute.
        self.__dict__.update(columns)
        self._pending = pending or {}
        self.n = n
        self.present = present  # fields the item layout actually stores

    def __len__(self) -> int:
        return self.n

    def __getattr__(self, name: str) -> Column:
        unpack = self.__dict__.get("_pending", {}).get(name)
        if unpack is None:
            raise AttributeError(name)
        col = self.__dict__[name] = unpack()  # racing threads unpack the same values
        return col

    def column(self, name: str) -> Column | None:
        """The column of field ``name``, None when the struct has no such field."""
        try:
            return getattr(self, name)
        except AttributeError:
            return None


class StringList(list):
    """A decoded list of strings that remembers where its bytes lie in the payload."""

    span: tuple[int, int] = (0, 0)  # (start of the first string, end of the last one)


def _is_plain_struct(t: object) -> bool:
    return isinstance(t, Struct) and all(
        not f.optional and isinstance(f.type, tuple) and f.type[0] == "int" for f in t.fields)


class Decoder:
    """Decodes values of IDL types from a frozen payload."""

    def __init__(self, schema: Schema, data: bytes) -> None:
        self.layouts = schema.layouts
        self.root = schema.root
        self.data = bytes(data)
        self.nbits = 8 * len(self.data)
        # No list in a real image has more items than the payload has bits (every
        # inode needs a distinct dir entry), so this bounds hostile counts.
        self.max_items = self.nbits + 64

    # -- primitives --------------------------------------------------------------
    def _bits(self, start: int, bit: int, width: int) -> int:
        if width == 0:
            return 0
        pos = start * 8 + bit
        if pos + width > self.nbits:
            raise FrozenError("metadata: field out of bounds")
        first = pos >> 3
        shift = pos & 7
        v = int.from_bytes(self.data[first:first + ((shift + width + 7) >> 3)], "little")
        return (v >> shift) & ((1 << width) - 1)

    def _child(self, lay: Layout, fid: int, start: int, bit: int) -> tuple[int, int, int] | None:
        f = lay.fields.get(fid)
        if f is None:
            return None
        lid, off = f
        return (lid, start + off, bit) if off >= 0 else (lid, start, bit - off)

    def _int_child(self, lay: Layout, fid: int, start: int, bit: int, width: int = 64) -> int:
        c = self._child(lay, fid, start, bit)
        return 0 if c is None else self._int(c[0], c[1], c[2], width)

    def _int(self, lid: int, start: int, bit: int, width: int) -> int:
        bits = self.layouts[lid].bits
        if bits > width:
            raise FrozenError(f"metadata: integer layout of {bits} bits exceeds {width}")
        return self._bits(start, bit, bits)

    # -- values -------------------------------------------------------------------
    def root_value(self, typ: Struct) -> dict:
        return self.value(typ, self.root, 0, 0)

    def value(self, typ, lid: int | None, start: int, bit: int):  # noqa: ANN001 - IDL type
        if lid is None:
            return self.default(typ)
        lay = self.layouts[lid]
        if isinstance(typ, Struct):
            return self._struct(typ, lay, start, bit)
        kind = typ[0]
        if kind == "int":
            return self._int(lid, start, bit, typ[1])
        if kind == "bool":
            return bool(self._bits(start, bit, min(lay.bits, 1)))
        if kind == "string":
            return self._string(lay, start, bit)
        return self._list(typ, lay, start, bit)

    def default(self, typ):  # noqa: ANN001
        if isinstance(typ, Struct):
            return self._struct(typ, Layout(0, 0, {}), 0, 0)
        return {"int": 0, "bool": False, "string": b""}.get(typ[0]) if typ[0] in (
            "int", "bool", "string") else self._empty(typ)

    def _empty(self, typ):  # noqa: ANN001
        if typ[0] == "map":
            return {}
        item = typ[1]
        if _is_plain_struct(item):
            return Table(0, {f.name: Zeros(0) for f in item.fields}, frozenset())
        if isinstance(item, tuple) and item[0] == "int":
            return array("Q")
        return []

    def _struct(self, typ: Struct, lay: Layout, start: int, bit: int) -> dict:
        out = {}
        for f in typ.fields:
            c = self._child(lay, f.id, start, bit)
            if not f.optional:
                out[f.name] = self.value(f.type, *c) if c else self.default(f.type)
                continue
            if c is None:
                out[f.name] = None
                continue
            olay = self.layouts[c[0]]
            if not self._int_child(olay, 1, c[1], c[2], 1):
                out[f.name] = None
                continue
            v = self._child(olay, 2, c[1], c[2])
            out[f.name] = self.value(f.type, *v) if v else self.default(f.type)
        return out

    def _string(self, lay: Layout, start: int, bit: int) -> bytes:
        count = self._int_child(lay, 2, start, bit)
        if count == 0:
            return b""
        begin = start + self._int_child(lay, 1, start, bit)
        if begin + count > len(self.data):
            raise FrozenError("metadata: string out of bounds")
        return self.data[begin:begin + count]

    def _list(self, typ, lay: Layout, start: int, bit: int):  # noqa: ANN001
        count = self._int_child(lay, 2, start, bit)
        if count == 0:
            return self._empty(typ)
        if count > self.max_items:
            raise FrozenError(f"metadata: implausible list size {count}")
        base = start + self._int_child(lay, 1, start, bit)
        item = self._child(lay, 3, base, 0)
        ilay = self.layouts[item[0]] if item else Layout(0, 0, {})
        stride = ilay.size * 8 if ilay.size else ilay.bits  # bits from one item to the next
        if base * 8 + count * stride > self.nbits:
            raise FrozenError("metadata: list out of bounds")
        kind, elem = typ[0], typ[1]
        if kind != "map" and _is_plain_struct(elem):
            return self._table(elem, ilay, item[0] if item else None, base, count, stride)
        if kind != "map" and isinstance(elem, tuple) and elem[0] == "int":
            width = ilay.bits
            if width > elem[1]:
                raise FrozenError(f"metadata: integer layout of {width} bits exceeds {elem[1]}")
            return self.column(base * 8, count, stride, width)
        lid = item[0] if item else None
        if kind == "map":
            out: dict = {}
            for i in range(count):
                s, b = self._item(base, i, ilay)
                k = self.value(typ[1], *(self._child(ilay, 1, s, b) or (None, 0, 0)))
                v = self.value(typ[2], *(self._child(ilay, 2, s, b) or (None, 0, 0)))
                out.setdefault(k, v)
            return out
        if elem == ("string",):
            return self._strings(lid, ilay, base, count)
        return [self.value(elem, lid, *self._item(base, i, ilay)) for i in range(count)]

    def _strings(self, lid: int | None, ilay: Layout, base: int, count: int) -> StringList:
        out = StringList()
        starts = []
        for i in range(count):
            s, b = self._item(base, i, ilay)
            out.append(self._string(ilay, s, b) if lid is not None else b"")
            if lid is not None:
                starts.append(s + self._int_child(ilay, 1, s, b))
        out.span = (starts[0], starts[-1] + len(out[-1])) if starts else (0, 0)
        return out

    @staticmethod
    def _item(base: int, i: int, ilay: Layout) -> tuple[int, int]:
        return (base + i * ilay.size, 0) if ilay.size else (base, i * ilay.bits)

    def _table(self, typ: Struct, ilay: Layout, lid: int | None, base: int, count: int,
               stride: int) -> Table:
        cols: dict[str, Column] = {}
        pending: dict[str, Callable[[], Column]] = {}
        present = set()
        for f in typ.fields:
            c = self._child(ilay, f.id, base, 0) if lid is not None else None
            width = self.layouts[c[0]].bits if c else 0
            if width > f.type[1]:  # type: ignore[index]  # a plain struct: int fields
                raise FrozenError(f"metadata: {typ.name}.{f.name} is {width} bits wide")
            if not width:
                cols[f.name] = Zeros(count)
                continue
            present.add(f.name)
            first = c[1] * 8 + c[2]  # type: ignore[index]  # width > 0 implies c
            self._check_bounds(first, count, stride, width)
            pending[f.name] = functools.partial(self.column, first, count, stride, width)
        return Table(count, cols, frozenset(present), pending)

    def _check_bounds(self, first_bit: int, count: int, stride: int, width: int) -> None:
        if first_bit + (count - 1) * stride + width > self.nbits:
            raise FrozenError("metadata: list out of bounds")

    def column(self, first_bit: int, count: int, stride: int, width: int) -> Column:
        """``count`` unsigned ``width``-bit values, the first at ``first_bit``, ``stride`` apart."""
        if width == 0:
            return Zeros(count)
        if stride == 0:  # every item is the same (degenerate, but well defined)
            return array("I" if width <= 32 else "Q", [self._bits(0, first_bit, width)]) * count
        self._check_bounds(first_bit, count, stride, width)
        out = array("I" if width <= 32 else "Q")
        mask = (1 << width) - 1
        data = self.data
        group = max(1, 512 // max(stride, 1))  # 512-bit windows: the fastest measured
        span = range(0, group * stride, stride)
        for j in range(0, count, group):
            g = min(group, count - j)
            pos = first_bit + j * stride
            lo = pos >> 3
            hi = (pos + (g - 1) * stride + width + 7) >> 3
            big = int.from_bytes(data[lo:hi], "little") >> (pos & 7)
            if g == group:
                out.extend([(big >> s) & mask for s in span])
            else:
                out.extend([(big >> (k * stride)) & mask for k in range(g)])
        return out

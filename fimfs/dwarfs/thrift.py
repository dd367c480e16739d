"""Thrift compact protocol: a typed decoder and an encoder (format doc, section 3).

Decoding is driven by the expected type, with the native reader's rules: unknown
fields are skipped, a known field with an unexpected wire type is skipped (it keeps
its default), a container whose element types do not match is consumed and left
empty, varints are range-checked against their declared width, and reading past
the end is an error.

Types are small tuples: ``("bool",)``, ``("byte",)``, ``("i16",)``, ``("i32",)``,
``("i64",)``, ``("string",)``, ``("list", T)``, ``("set", T)``, ``("map", K, V)``
and ``("struct", {field_id: (name, T)})``. Structs decode to dicts holding the
fields present; missing fields are simply absent.
"""

from __future__ import annotations

from typing import Any

from ..errors import ImageError

STOP, TRUE, FALSE, BYTE, I16, I32, I64, DOUBLE, BINARY, LIST, SET, MAP, STRUCT, UUID = range(14)

Type = tuple
_WIRE = {"bool": TRUE, "byte": BYTE, "i16": I16, "i32": I32, "i64": I64, "string": BINARY,
         "list": LIST, "set": SET, "map": MAP, "struct": STRUCT}
_VARINT_BYTES = {I16: 3, I32: 5, I64: 10}
_BITS = {I16: 16, I32: 32, I64: 64}
_MAX_SIZE = 2**31 - 1
_MAX_DEPTH = 64


class ThriftError(ImageError):
    """The bytes are not valid Thrift compact data of the expected type."""


def _wire_matches(expected: Type, wire: int) -> bool:
    want = _WIRE[expected[0]]
    return wire in (TRUE, FALSE) if want == TRUE else wire == want


class _Reader:
    def __init__(self, data: bytes | memoryview) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise ThriftError("thrift: unexpected end of input")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def take(self, n: int) -> bytes:
        if n > len(self.data) - self.pos:
            raise ThriftError("thrift: unexpected end of input")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return bytes(out)

    def varint(self, max_bytes: int = 10, bits: int = 64) -> int:
        value = shift = 0
        for _ in range(max_bytes):
            b = self.byte()
            value |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                if value >> bits:
                    raise ThriftError("thrift: varint overflow")
                return value
        raise ThriftError("thrift: varint overflow")

    def signed(self, wire: int) -> int:
        u = self.varint(_VARINT_BYTES[wire], _BITS[wire])
        return (u >> 1) ^ -(u & 1)

    def size(self) -> int:
        n = self.varint(5, 32)
        if n > _MAX_SIZE:
            raise ThriftError("thrift: container size too large")
        return n

    # -- values ---------------------------------------------------------------
    def value(self, wire: int, typ: Type | None, depth: int) -> Any:
        """Read one value of wire type ``wire``; ``typ`` None means skip it."""
        if depth > _MAX_DEPTH:
            raise ThriftError("thrift: nesting too deep")
        if wire in (TRUE, FALSE):
            return wire == TRUE
        if wire == BYTE:
            return self.byte()
        if wire in (I16, I32, I64):
            return self.signed(wire)
        if wire == DOUBLE:
            return self.take(8)
        if wire == BINARY:
            return self.take(self.size())
        if wire == UUID:
            return self.take(16)
        if wire in (LIST, SET):
            return self._list(typ, depth)
        if wire == MAP:
            return self._map(typ, depth)
        if wire == STRUCT:
            return self.struct(typ[1] if typ else {}, depth + 1)
        raise ThriftError(f"thrift: unknown compact type {wire}")

    def _elem(self, wire: int, typ: Type | None, depth: int) -> Any:
        if wire in (TRUE, FALSE):  # bool elements are one byte each
            return self.byte() == TRUE
        return self.value(wire, typ, depth + 1)

    def _list(self, typ: Type | None, depth: int) -> list:
        head = self.byte()
        n = head >> 4
        if n == 15:
            n = self.size()
        wire = head & 0x0F
        ok = typ is not None and _wire_matches(typ[1], wire)
        if not ok and wire not in (TRUE, FALSE) and wire not in range(BYTE, UUID + 1):
            raise ThriftError(f"thrift: unknown compact type {wire}")
        items = [self._elem(wire, typ[1] if ok else None, depth) for _ in range(n)]  # type: ignore[index]  # ok implies typ is not None
        return items if ok else []

    def _map(self, typ: Type | None, depth: int) -> dict:
        n = self.size()
        if n == 0:
            return {}
        kv = self.byte()
        kw, vw = kv >> 4, kv & 0x0F
        ok = typ is not None and _wire_matches(typ[1], kw) and _wire_matches(typ[2], vw)
        out: dict = {}
        for _ in range(n):
            k = self._elem(kw, typ[1] if ok else None, depth)  # type: ignore[index]  # ok implies typ is not None
            v = self._elem(vw, typ[2] if ok else None, depth)  # type: ignore[index]  # ok implies typ is not None
            if ok and k not in out:  # the first occurrence of a key wins
                out[k] = v
        return out

    def struct(self, fields: dict, depth: int = 0) -> dict:
        out: dict = {}
        last = 0
        while True:
            head = self.byte()
            wire = head & 0x0F
            if wire == STOP:
                return out
            delta = head >> 4
            fid = last + delta if delta else self.signed(I16)
            last = fid
            spec = fields.get(fid)
            if spec is not None and _wire_matches(spec[1], wire):
                out[spec[0]] = self.value(wire, spec[1], depth)
            else:
                self.value(wire, None, depth)


def decode(data: bytes, struct_type: Type, *, exact: bool = True) -> dict:
    """Decode one struct; with ``exact`` the input must be consumed completely."""
    r = _Reader(memoryview(data))
    out = r.struct(struct_type[1])
    if exact and r.pos != len(data):
        raise ThriftError("thrift: trailing bytes after struct")
    return out


# -- encoding ------------------------------------------------------------------

def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _zigzag(n: int) -> bytes:
    return _uvarint((n << 1) ^ (n >> 63))


def _encode_value(typ: Type, v: Any) -> bytes:
    kind = typ[0]
    if kind == "byte":
        return bytes([v & 0xFF])
    if kind in ("i16", "i32", "i64"):
        return _zigzag(v)
    if kind == "string":
        b = v.encode() if isinstance(v, str) else bytes(v)
        return _uvarint(len(b)) + b
    if kind in ("list", "set"):
        et = typ[1]
        wire = _WIRE[et[0]]
        items = sorted(v) if kind == "set" else list(v)
        n = len(items)
        head = bytes([(n << 4) | wire]) if n < 15 else bytes([0xF0 | wire]) + _uvarint(n)
        if et[0] == "bool":
            return head + bytes(TRUE if x else FALSE for x in items)
        return head + b"".join(_encode_value(et, x) for x in items)
    if kind == "map":
        if not v:
            return b"\x00"
        kt, vt = typ[1], typ[2]
        out = [_uvarint(len(v)), bytes([(_WIRE[kt[0]] << 4) | _WIRE[vt[0]]])]
        for k in sorted(v):
            out.append(_encode_value(kt, k))
            out.append(_encode_value(vt, v[k]))
        return b"".join(out)
    if kind == "struct":
        return encode_struct(typ, v)
    raise ValueError(f"cannot encode thrift type {kind}")


def encode_struct(struct_type: Type, value: dict, order: list[int] | None = None) -> bytes:
    """Encode a struct; fields absent from ``value`` (or None) are not written.

    ``order`` gives the field ids in the order to write them (default: by id).
    """
    fields = struct_type[1]
    out = bytearray()
    last = 0
    for fid in order or sorted(fields):
        name, typ = fields[fid]
        v = value.get(name)
        if v is None:
            continue
        wire = (TRUE if v else FALSE) if typ[0] == "bool" else _WIRE[typ[0]]
        delta = fid - last
        if 0 < delta <= 15:
            out.append((delta << 4) | wire)
        else:
            out.append(wire)
            out += _zigzag(fid)
        last = fid
        if typ[0] != "bool":
            out += _encode_value(typ, v)
    out.append(STOP)
    return bytes(out)

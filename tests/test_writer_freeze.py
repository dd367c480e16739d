"""The Frozen2 freezer against mkdwarfs: decode real metadata, re-freeze, compare bytes.

Format doc 8.4: for every image written by DwarFS 0.5 or later, the re-frozen
payload must be byte-identical, and so must the schema for images of the current
mkdwarfs (0.15 writes the schema fields in id order; 0.5-0.14 wrote field 4
first, so for those the schema is compared after parsing).
"""

from __future__ import annotations

from array import array

import pytest

from fim.fimfs.dwarfs import codecs, idl, sections
from fim.fimfs.dwarfs import frozen_decode as frozen
from fim.fimfs.dwarfs import frozen_encode as freeze
from tests.manifest import DWARFS

NATIVE = sorted((DWARFS / "native").glob("*.dwarfs"))
OLDER = [p for p in sorted(DWARFS.glob("*.dwarfs")) + sorted((DWARFS / "compat").glob("*.dwarfs"))
         if not any(v in p.name for v in ("v0.2.", "v0.3.", "v0.4."))]  # v2.2 layout: aligned


def _metadata(path) -> tuple[bytes, bytes]:  # noqa: ANN001
    f = sections.ImageFile(path)
    try:
        found = {}
        for s in sections.read_layout(f).sections:
            s = sections.resolve(f, s)
            if s.type in (sections.SCHEMA, sections.METADATA):
                found[s.type] = codecs.decompress(s.compression, sections.read_payload(f, s),
                                                  1 << 30)
        return found[sections.SCHEMA], found[sections.METADATA]
    finally:
        f.close()


def _refreeze(path) -> tuple[bytes, bytes, bytes, bytes]:  # noqa: ANN001
    schema, payload = _metadata(path)
    value = frozen.Decoder(frozen.parse_schema(schema), payload).root_value(idl.METADATA)
    return (schema, payload, *freeze.freeze(idl.METADATA, value))


@pytest.mark.parametrize("path", NATIVE, ids=lambda p: p.stem)
def test_native_images_refreeze_byte_identical(path) -> None:  # noqa: ANN001
    schema, payload, schema2, payload2 = _refreeze(path)
    assert payload2 == payload
    assert schema2 == schema


@pytest.mark.parametrize("path", OLDER, ids=lambda p: p.stem)
def test_older_images_refreeze_same_payload_and_layouts(path) -> None:  # noqa: ANN001
    schema, payload, schema2, payload2 = _refreeze(path)
    assert payload2 == payload
    assert frozen.parse_schema(schema2) == frozen.parse_schema(schema)


def test_plain_values_and_tables_freeze_alike() -> None:
    """A list of plain structs may be dicts or a Table; both give the same bytes."""
    rows = [{"block": b, "offset": o, "size": s} for b, o, s in
            [(0, 0, 5), (1, 7, 2**20), (3, 65535, 0)]]
    cols = {k: array("I", [r[k] for r in rows]) for k in ("block", "offset", "size")}
    table = frozen.Table(3, cols, frozenset(cols))
    value = {"chunks": rows, "features": {b"b", b"a"}, "block_size": 1 << 24,
             "reg_file_size_cache": {"size_lookup": {5: 10, 1: 2}, "min_chunk_count": 3}}
    a = freeze.freeze(idl.METADATA, value)
    b = freeze.freeze(idl.METADATA, {**value, "chunks": table})
    assert a == b
    back = frozen.Decoder(frozen.parse_schema(a[0]), a[1]).root_value(idl.METADATA)
    assert list(back["chunks"].size) == [5, 2**20, 0]
    assert back["features"] == [b"a", b"b"]
    assert back["reg_file_size_cache"]["size_lookup"] == {1: 2, 5: 10}
    assert a[1].endswith(bytes(8))


def test_value_wider_than_its_type_is_refused() -> None:
    with pytest.raises(ValueError, match="32-bit"):
        freeze.freeze(idl.METADATA, {"block_size": 1 << 32})


def test_a_table_column_beyond_the_payload_is_refused_when_decoded() -> None:
    """Columns unpack on first use, but their bounds are checked when the table is read:
    a truncated payload fails at open, not at some later stat."""
    rows = [{"block": b, "offset": o, "size": s} for b, o, s in
            [(0, 0, 5), (1, 7, 2**20), (3, 65535, 0)] * 50]
    schema, payload = freeze.freeze(idl.METADATA, {"chunks": rows, "block_size": 1 << 24})
    decoded = frozen.Decoder(frozen.parse_schema(schema), payload).root_value(idl.METADATA)
    assert list(decoded["chunks"].offset) == [r["offset"] for r in rows]
    with pytest.raises(frozen.FrozenError, match="list out of bounds"):
        frozen.Decoder(frozen.parse_schema(schema), payload[:-40]).root_value(idl.METADATA)

"""The DwarFS Thrift IDL as data: metadata (frozen) and the thrift-compact schema/history.

Frozen2 layouts say where bits are, not what they mean; the reader and the writer
walk these type descriptions in parallel with a schema (format doc, sections 4-5).
Struct fields are listed in IDL *declaration* order, which the writer's layout
algorithm depends on.

Frozen types: ``("int", bits)``, ``("bool",)``, ``("string",)``, ``("list", T)``,
``("set", T)``, ``("map", K, V)``, and :class:`Struct`.
"""

from __future__ import annotations

from typing import NamedTuple


class Field(NamedTuple):
    id: int
    name: str
    type: tuple | Struct
    optional: bool = False


class Struct:
    """A struct type: not a tuple, so that code can tell it from the tuple types."""

    __slots__ = ("fields", "name")

    def __init__(self, name: str, fields: tuple[Field, ...]) -> None:
        self.name = name
        self.fields = fields  # declaration order

    def __repr__(self) -> str:
        return f"Struct({self.name!r})"


U8, U16, U32, U64 = ("int", 8), ("int", 16), ("int", 32), ("int", 64)
BOOL, STRING = ("bool",), ("string",)


def List(t: tuple | Struct) -> tuple:  # noqa: N802 - reads like the IDL
    return ("list", t)


def _f(fid: int, name: str, typ: tuple | Struct, optional: bool = False) -> Field:
    return Field(fid, name, typ, optional)


CHUNK = Struct("chunk", (_f(1, "block", U32), _f(2, "offset", U32), _f(3, "size", U32)))
DIRECTORY = Struct("directory", (
    _f(1, "parent_entry", U32), _f(2, "first_entry", U32), _f(3, "self_entry", U32)))
INODE_DATA = Struct("inode_data", (
    _f(2, "mode_index", U32), _f(4, "owner_index", U32), _f(5, "group_index", U32),
    _f(6, "atime_offset", U64), _f(7, "mtime_offset", U64), _f(8, "ctime_offset", U64),
    _f(9, "btime_offset", U64), _f(10, "atime_subsec", U64), _f(11, "mtime_subsec", U64),
    _f(12, "ctime_subsec", U64), _f(13, "btime_subsec", U64), _f(14, "nlink_minus_one", U32),
    _f(1, "name_index_v2_2", U32), _f(3, "inode_v2_2", U32)))
DIR_ENTRY = Struct("dir_entry", (_f(1, "name_index", U32), _f(2, "inode_num", U32)))
FS_OPTIONS = Struct("fs_options", (
    _f(1, "mtime_only", BOOL), _f(2, "time_resolution_sec", U32, True),
    _f(3, "packed_chunk_table", BOOL), _f(4, "packed_directories", BOOL),
    _f(5, "packed_shared_files_table", BOOL),
    _f(6, "subsecond_resolution_nsec_multiplier", U32, True),
    _f(7, "has_btime", BOOL), _f(8, "inodes_have_nlink", BOOL)))
STRING_TABLE = Struct("string_table", (
    _f(1, "buffer", STRING), _f(2, "symtab", STRING, True), _f(3, "index", List(U32)),
    _f(4, "packed_index", BOOL)))
INODE_SIZE_CACHE = Struct("inode_size_cache", (
    _f(1, "size_lookup", ("map", U32, U64)), _f(2, "min_chunk_count", U64),
    _f(3, "allocated_size_lookup", ("map", U32, U64))))
HISTORY_ENTRY = Struct("history_entry", (
    _f(1, "major", U8), _f(2, "minor", U8), _f(3, "dwarfs_version", STRING, True),
    _f(4, "block_size", U32), _f(5, "options", FS_OPTIONS, True)))

METADATA = Struct("metadata", (
    _f(1, "chunks", List(CHUNK)),
    _f(2, "directories", List(DIRECTORY)),
    _f(3, "inodes", List(INODE_DATA)),
    _f(4, "chunk_table", List(U32)),
    _f(5, "entry_table_v2_2", List(U32)),
    _f(6, "symlink_table", List(U32)),
    _f(7, "uids", List(U32)),
    _f(8, "gids", List(U32)),
    _f(9, "modes", List(U32)),
    _f(10, "names", List(STRING)),
    _f(11, "symlinks", List(STRING)),
    _f(12, "timestamp_base", U64),
    _f(15, "block_size", U32),
    _f(16, "total_fs_size", U64),
    _f(17, "devices", List(U64), True),
    _f(18, "options", FS_OPTIONS, True),
    _f(19, "dir_entries", List(DIR_ENTRY), True),
    _f(20, "shared_files_table", List(U32), True),
    _f(21, "total_hardlink_size", U64, True),
    _f(22, "dwarfs_version", STRING, True),
    _f(23, "create_timestamp", U64, True),
    _f(24, "compact_names", STRING_TABLE, True),
    _f(25, "compact_symlinks", STRING_TABLE, True),
    _f(26, "preferred_path_separator", U32, True),
    _f(27, "features", ("set", STRING), True),
    _f(28, "category_names", List(STRING), True),
    _f(29, "block_categories", List(U32), True),
    _f(30, "reg_file_size_cache", INODE_SIZE_CACHE, True),
    _f(31, "category_metadata_json", List(STRING), True),
    _f(32, "block_category_metadata", ("map", U32, U32), True),
    _f(33, "metadata_version_history", List(HISTORY_ENTRY), True),
    _f(34, "hole_block_index", U32, True),
    _f(35, "large_hole_size", List(U64), True),
    _f(36, "total_allocated_fs_size", U64, True),
))

# Thrift-compact structs (types as in fimfs.dwarfs.thrift).
FROZEN_FIELD = ("struct", {1: ("layoutId", ("i16",)), 2: ("offset", ("i16",))})
FROZEN_LAYOUT = ("struct", {1: ("size", ("i32",)), 2: ("bits", ("i16",)),
                            3: ("fields", ("map", ("i16",), FROZEN_FIELD)),
                            4: ("typeName", ("string",))})
FROZEN_SCHEMA = ("struct", {4: ("fileVersion", ("i32",)), 1: ("relaxTypeChecks", ("bool",)),
                            2: ("layouts", ("map", ("i16",), FROZEN_LAYOUT)),
                            3: ("rootLayout", ("i16",))})

DWARFS_VERSION = ("struct", {1: ("major", ("i16",)), 2: ("minor", ("i16",)),
                             3: ("patch", ("i16",)), 4: ("is_release", ("bool",)),
                             5: ("git_rev", ("string",)), 6: ("git_branch", ("string",)),
                             7: ("git_desc", ("string",))})
HISTORY_SECTION_ENTRY = ("struct", {1: ("version", DWARFS_VERSION),
                                    2: ("system_id", ("string",)),
                                    3: ("compiler_id", ("string",)),
                                    4: ("arguments", ("list", ("string",))),
                                    5: ("timestamp", ("i64",)),
                                    6: ("library_versions", ("set", ("string",)))})
HISTORY = ("struct", {1: ("entries", ("list", HISTORY_SECTION_ENTRY))})

"""`Native` blocks at a client's protocol revision, from the engine's revision-0 blocks.

Clients of ClickHouse's HTTP interface that speak the TCP protocol's block format over HTTP
(clickhouse-go, and so Grafana's ClickHouse plugin) send `client_protocol_version` and decode
`Native` as the server writes it for that revision: each block starts with its block info, and
each column's type is followed by a byte saying whether it has a custom serialization. chDB
writes `Native` as revision 0 and has no setting for another (docs/findings.md), so the query
service rewrites the blocks: it walks each column's data to find where it ends (the data itself
is the same at every revision) and adds what the revision asks for.

Types whose data cannot be walked here (JSON, Variant, Dynamic, aggregate states) raise
`UnsupportedType`; the interface answers with a 400 naming the type and another format to ask for.
"""

from __future__ import annotations

import re

# The protocol revisions that changed the block format (ClickHouse's ProtocolDefines.h).
WITH_BLOCK_INFO = 51903
WITH_CUSTOM_SERIALIZATION = 54454
# Block info as the server writes it: field 1 is_overflows = 0, field 2 bucket_num = -1, end.
_BLOCK_INFO = b"\x01\x00\x02\xff\xff\xff\xff\x00"

_FIXED = {
    **dict.fromkeys(("UInt8", "Int8", "Bool", "Enum8", "Nothing"), 1),
    **dict.fromkeys(("UInt16", "Int16", "Enum16", "Date", "BFloat16"), 2),
    **dict.fromkeys(("UInt32", "Int32", "Float32", "Date32", "DateTime", "IPv4", "Decimal32", "Time"), 4),
    **dict.fromkeys(("UInt64", "Int64", "Float64", "DateTime64", "Decimal64", "Time64"), 8),
    **dict.fromkeys(("UInt128", "Int128", "Decimal128", "UUID", "IPv6"), 16),
    **dict.fromkeys(("UInt256", "Int256", "Decimal256"), 32),
}
_LC_INDEX_BYTES = (1, 2, 4, 8)
_NAMED_ELEMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\s+(?=[A-Z])")


class UnsupportedType(Exception):
    """A column type whose `Native` data this module cannot walk; the message names it."""


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def varint(self) -> int:
        shift = result = 0
        while True:
            byte = self.data[self.pos]
            self.pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result
            shift += 7

    def string(self) -> bytes:
        size = self.varint()
        start = self.pos
        self.pos += size
        return self.data[start : self.pos]

    def uint64(self) -> int:
        value = int.from_bytes(self.data[self.pos : self.pos + 8], "little")
        self.pos += 8
        return value

    def skip(self, size: int) -> None:
        if self.pos + size > len(self.data):
            raise ValueError("the Native data ends inside a column")
        self.pos += size


def _split_arguments(inner: str) -> list[str]:
    """`a, b(c, d), 'e,f'` -> ['a', 'b(c, d)', "'e,f'"]: top-level commas only."""
    parts, depth, quoted, start = [], 0, False, 0
    for i, char in enumerate(inner):
        if quoted:
            if char == "\\":
                continue
            if char == "'" and inner[i - 1] != "\\":
                quoted = False
        elif char == "'":
            quoted = True
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(inner[start:i].strip())
            start = i + 1
    parts.append(inner[start:].strip())
    return parts


def _parse(type_name: str) -> tuple[str, list[str]]:
    """`Array(Nullable(String))` -> ('Array', ['Nullable(String)'])."""
    type_name = type_name.strip()
    if "(" not in type_name:
        return type_name, []
    name, _, rest = type_name.partition("(")
    return name.strip(), _split_arguments(rest[: rest.rindex(")")])


def _decimal_bytes(precision: int) -> int:
    return 4 if precision <= 9 else 8 if precision <= 18 else 16 if precision <= 38 else 32


def _prefix(type_name: str, reader: _Reader) -> None:
    """Skip the serialization state prefix of `type_name` (LowCardinality's key version)."""
    name, args = _parse(type_name)
    if name == "LowCardinality":
        reader.skip(8)
    elif name in ("Array", "Nullable", "SimpleAggregateFunction"):
        _prefix(args[-1], reader)
    elif name == "Tuple":
        for element in args:
            _prefix(_NAMED_ELEMENT.sub("", element), reader)
    elif name == "Map":
        _prefix(args[0], reader)
        _prefix(args[1], reader)


def _data(type_name: str, rows: int, reader: _Reader) -> None:
    """Skip `rows` values of `type_name`'s bulk data."""
    name, args = _parse(type_name)
    if name in _FIXED:
        reader.skip(_FIXED[name] * rows)
    elif name == "Decimal":
        reader.skip(_decimal_bytes(int(args[0])) * rows)
    elif name == "FixedString":
        reader.skip(int(args[0]) * rows)
    elif name == "String":
        for _ in range(rows):
            reader.skip(reader.varint())
    elif name == "Nullable":
        reader.skip(rows)
        _data(args[0], rows, reader)
    elif name == "SimpleAggregateFunction":
        _data(args[-1], rows, reader)
    elif name in ("Array", "Map"):
        nested = 0
        if rows:  # offsets: the last is the number of nested values
            reader.skip(8 * (rows - 1))
            nested = reader.uint64()
        for element in args[:1] if name == "Array" else args[:2]:
            _data(element, nested, reader)
    elif name == "Tuple":
        for element in args:
            _data(_NAMED_ELEMENT.sub("", element), rows, reader)
    elif name == "LowCardinality":
        if rows == 0:
            return
        flags = reader.uint64()
        keys = reader.uint64()
        inner_name, inner_args = _parse(args[0])
        _data(inner_args[0] if inner_name == "Nullable" else args[0], keys, reader)
        reader.skip(_LC_INDEX_BYTES[flags & 0xFF] * reader.uint64())
    else:
        raise UnsupportedType(type_name)


def at_revision(native: bytes, revision: int) -> bytes:
    """`native` (blocks at revision 0, as the engine writes them) as a server writes them for a
    client at protocol `revision`; UnsupportedType for a column it cannot walk."""
    if revision < WITH_BLOCK_INFO:
        return native
    reader = _Reader(native)
    out = bytearray()
    while reader.pos < len(native):
        out += _BLOCK_INFO
        start = reader.pos
        columns = reader.varint()
        rows = reader.varint()
        out += native[start : reader.pos]
        for _ in range(columns):
            start = reader.pos
            reader.string()  # the column's name
            type_name = reader.string().decode()
            out += native[start : reader.pos]
            if revision >= WITH_CUSTOM_SERIALIZATION:
                out += b"\x00"  # no custom serialization
            start = reader.pos
            if rows:
                _prefix(type_name, reader)
                _data(type_name, rows, reader)
            out += native[start : reader.pos]
    return bytes(out)

"""Derive a :class:`struct.Struct` from a construct definition of fixed fields.

construct is the source of truth for every layout, but parsing 100,000
records through it costs seconds; :mod:`struct` does the same in
milliseconds.  Deriving the format from the construct definition (instead of
writing it twice) keeps the two from drifting apart; tests still compare the
bytes both produce.
"""

import struct

from construct import Bytes, FormatField, Renamed, Struct


def struct_mirror(definition) -> struct.Struct:
    """A little-endian ``struct.Struct`` laid out exactly like ``definition``."""
    return struct.Struct("<" + _format(definition))


def array_mirror(record: struct.Struct, count: int) -> struct.Struct:
    """``count`` packed copies of ``record``, to pack or unpack an array in one call."""
    return struct.Struct("<" + record.format[1:] * count)


def _format(definition) -> str:
    if isinstance(definition, Renamed):
        return _format(definition.subcon)
    if isinstance(definition, Struct):
        return "".join(_format(field) for field in definition.subcons)
    if isinstance(definition, FormatField) and definition.fmtstr[0] == "<":
        return definition.fmtstr[1:]
    if isinstance(definition, Bytes) and isinstance(definition.length, int):
        return f"{definition.length}s"
    raise TypeError(f"no fixed little-endian struct format for {definition!r}")

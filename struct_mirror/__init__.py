"""Derive a :class:`struct.Struct` from a construct definition of fixed fields.

construct is the source of truth for every layout, but parsing 100,000
records (or one ioctl argument per FUSE request) through it costs far more
than :mod:`struct` does.  Deriving the format from the construct definition
instead of writing it twice keeps the two from drifting apart; tests still
compare the bytes both produce.

A leaf (construct and the standard library only), so that every layer that
has construct definitions may use it: ``kho``, ``luofs.uapi``, ``devices``.

Unhappy path: a field with no fixed little-endian struct format (a big-endian
or variable-length field, an adapter) raises TypeError naming it, when the
mirror is derived, i.e. at import time of the module that defines it.
"""

import struct

from construct import Bytes, FormatField, Renamed, Struct, Terminated

__all__ = ["struct_mirror", "array_mirror", "field_formats"]


def struct_mirror(definition) -> struct.Struct:
    """A little-endian ``struct.Struct`` laid out exactly like ``definition``."""
    return struct.Struct("<" + _format(definition))


def array_mirror(record: struct.Struct, count: int) -> struct.Struct:
    """``count`` packed copies of ``record``, to pack or unpack an array in one call."""
    return struct.Struct("<" + record.format[1:] * count)


def field_formats(definition: Struct) -> list[tuple[str, str]]:
    """``(name, struct format)`` of each top-level field of ``definition``, in order."""
    return [(field.name, _format(field)) for field in definition.subcons
            if field is not Terminated]


def _format(definition) -> str:
    if isinstance(definition, Renamed):
        return _format(definition.subcon)
    if isinstance(definition, Struct):
        return "".join(_format(field) for field in definition.subcons if field is not Terminated)
    if isinstance(definition, FormatField) and definition.fmtstr[0] == "<":
        return definition.fmtstr[1:]
    if isinstance(definition, Bytes) and isinstance(definition.length, int):
        return f"{definition.length}s"
    raise TypeError(f"no fixed little-endian struct format for {definition!r}")

"""FDT container helpers shared by the KHO root tree and its subtrees.

KHO uses only the flattened-device-tree container (kho.md §1): property values
are raw little-endian integers and strings, with no cells or ``reg``.  The
``fdt`` library builds and walks trees, but it guesses a type for every
property value and trusts the header, so this module checks the header itself
(:data:`FdtHeader`) and recovers exact raw bytes from whatever type the library
guessed.
"""

import string
import struct

import fdt
from construct import Int32ub, Struct

from .errors import KhoFormatError

FDT_MAGIC = 0xD00DFEED
#: KHO writes version 17 trees (last compatible version 16), as libfdt does.
FDT_VERSION = 17

# struct fdt_header (big-endian, as every FDT header is).
FdtHeader = Struct(
    "magic" / Int32ub,
    "totalsize" / Int32ub,
    "off_dt_struct" / Int32ub,
    "off_dt_strings" / Int32ub,
    "off_mem_rsvmap" / Int32ub,
    "version" / Int32ub,
    "last_comp_version" / Int32ub,
    "boot_cpuid_phys" / Int32ub,
    "size_dt_strings" / Int32ub,
    "size_dt_struct" / Int32ub,
)
FDT_HEADER_SIZE = FdtHeader.sizeof()

# Characters dtc accepts in names; anything else makes `dtc -I dtb` fail.
# '@' is left out of node names because it introduces a unit address.
_NODE_NAME_CHARS = frozenset(string.ascii_letters + string.digits + ",._+-")
_PROP_NAME_CHARS = frozenset(string.ascii_letters + string.digits + ",._+*#?-")


# -- reading ---------------------------------------------------------------------------

def fdt_header(blob: bytes, what: str):
    """Parse and check the fixed part of an FDT header (magic and version)."""
    if len(blob) < FDT_HEADER_SIZE:
        raise KhoFormatError(
            f"{what}: {len(blob)} bytes, shorter than the {FDT_HEADER_SIZE}-byte FDT header")
    header = FdtHeader.parse(blob)
    if header.magic != FDT_MAGIC:
        raise KhoFormatError(f"{what}: bad FDT magic {header.magic:#010x}, expected {FDT_MAGIC:#x}")
    if header.version < FDT_VERSION or header.last_comp_version > FDT_VERSION:
        raise KhoFormatError(
            f"{what}: FDT version {header.version} (last compatible "
            f"{header.last_comp_version}) is not supported; need version {FDT_VERSION}")
    return header


def fdt_totalsize(blob: bytes, what: str) -> int:
    """Validate the FDT header at the start of ``blob``; return its totalsize.

    ``blob`` may be longer than the tree (a page, a debugfs buffer); every
    block the header names must fit inside totalsize, and totalsize inside
    ``blob``.
    """
    header = fdt_header(blob, what)
    if not FDT_HEADER_SIZE <= header.totalsize <= len(blob):
        raise KhoFormatError(
            f"{what}: FDT totalsize {header.totalsize} does not fit the {len(blob)} bytes "
            f"available (the header alone is {FDT_HEADER_SIZE})")
    blocks = (("memory reservation block", header.off_mem_rsvmap, 16),
              ("structure block", header.off_dt_struct, header.size_dt_struct),
              ("strings block", header.off_dt_strings, header.size_dt_strings))
    for name, offset, size in blocks:
        if offset < FDT_HEADER_SIZE or offset + size > header.totalsize:
            raise KhoFormatError(
                f"{what}: FDT {name} [{offset}, {offset + size}) lies outside the "
                f"tree [{FDT_HEADER_SIZE}, {header.totalsize})")
    return header.totalsize


def parse_fdt(blob: bytes, what: str) -> fdt.FDT:
    """Parse a validated tree; any structural damage becomes a :class:`KhoFormatError`."""
    totalsize = fdt_totalsize(blob, what)
    try:
        tree = fdt.parse_dtb(bytes(blob[:totalsize]))
    # The library signals bad tags with a bare Exception and truncation with
    # IndexError/struct.error; all of them mean the same thing here.
    except Exception as exc:
        raise KhoFormatError(f"{what}: malformed FDT structure block: {exc}") from exc
    if tree.root is None:
        raise KhoFormatError(f"{what}: FDT has no root node")
    return tree


def raw_value(prop) -> bytes:
    """The exact bytes of a property, whatever type the ``fdt`` library guessed.

    The library reads printable NUL-separated bytes as strings and multiples of
    four bytes as big-endian words; both guesses are lossless, so packing
    them back gives the stored bytes.
    """
    if isinstance(prop, fdt.PropStrings):
        return b"".join(text.encode("ascii") + b"\0" for text in prop.data)
    if isinstance(prop, fdt.PropWords):
        return struct.pack(f">{len(prop.data)}I", *prop.data)
    if isinstance(prop, fdt.PropBytes):
        return bytes(prop.data)
    return b""


def get_prop(node, name: str, what: str) -> bytes:
    prop = node.get_property(name)
    if prop is None:
        raise KhoFormatError(f"{what}: property '{name}' is missing")
    return raw_value(prop)


def get_u64(node, name: str, what: str) -> int:
    """A KHO u64 property: exactly 8 bytes, little-endian (kho.md §10)."""
    value = get_prop(node, name, what)
    if len(value) != 8:
        raise KhoFormatError(f"{what}: property '{name}' is {len(value)} bytes, expected 8")
    return int.from_bytes(value, "little")


def get_subnode(node, name: str, what: str):
    subnode = node.get_subnode(name)
    if subnode is None:
        raise KhoFormatError(f"{what}: node '{name}' is missing")
    return subnode


def check_compatible(node, expected: str, what: str) -> None:
    """Accept ``expected`` anywhere in the compatible string list, as libfdt does."""
    value = get_prop(node, "compatible", what)
    if not value.endswith(b"\0"):
        raise KhoFormatError(f"{what}: compatible {value!r} is not NUL-terminated")
    found = value[:-1].split(b"\0")
    if expected.encode() not in found:
        shown = ", ".join(repr(text.decode("ascii", "backslashreplace")) for text in found)
        raise KhoFormatError(f"{what}: compatible is {shown}, expected '{expected}'")


# -- writing ---------------------------------------------------------------------------

def new_tree(compatible: str) -> fdt.FDT:
    # fdt.FDT's `entries` defaults to one list shared by every tree, which parse_dtb
    # fills with the memory reservations of any blob it reads: always pass our own.
    tree = fdt.FDT(entries=[])
    tree.root = fdt.Node("/")
    tree.root.append(fdt.PropStrings("compatible", compatible))
    return tree


def new_node(name: str, compatible: str = None) -> fdt.Node:
    check_node_name(name)
    node = fdt.Node(name)
    if compatible is not None:
        node.append(fdt.PropStrings("compatible", compatible))
    return node


def u64_prop(name: str, value: int) -> fdt.PropBytes:
    """A u64 stored the KHO way: 8 little-endian bytes, not big-endian cells."""
    check_prop_name(name)
    if not isinstance(value, int) or not 0 <= value < 1 << 64:
        raise ValueError(f"property '{name}': {value!r} is not a u64")
    return fdt.PropBytes(name, data=struct.pack("<Q", value))


def to_blob(tree: fdt.FDT) -> bytes:
    return tree.to_dtb(version=FDT_VERSION)


def check_node_name(name: str) -> None:
    if not name or not set(name) <= _NODE_NAME_CHARS:
        raise ValueError(f"{name!r} is not a valid FDT node name (letters, digits and ',._+-')")


def check_prop_name(name: str) -> None:
    if not name or not set(name) <= _PROP_NAME_CHARS:
        raise ValueError(
            f"{name!r} is not a valid FDT property name (letters, digits and ',._+*#?-')")

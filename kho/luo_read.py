"""The new kernel's side of LUO's subtree: decode it and the blocks it points to,
validating everything, since it is what another kernel left in memory.

Happy path: a kernel checks :func:`read_luo_header` (the number and the session
and file counts) at boot and decodes the whole image with :func:`read_luo` when
it needs the sessions.  It keeps the blocks reserved for its whole life (debugfs
``in/`` decodes them again); the kernel after it starts from a fresh memory map.

Unhappy paths: any inconsistency (a bad pointer or count, an unterminated or
non-ASCII name, a session or FLB twice, a token twice in a session, a malformed
FDT) raises KhoFormatError naming the place.

Decoding 100,000 records allocates as many objects: callers on the live update
path hold the cyclic collector off around it (``luofs.gcpause``).
"""

from bisect import bisect_right
from functools import partial
from itertools import accumulate
from operator import attrgetter
from typing import NamedTuple

from struct_mirror import array_mirror

from .errors import KhoFormatError
from .fdt_blob import check_compatible, get_subnode, get_u64, parse_fdt
from .luo_format import (FILE_RECORD, SESSION_HEADER, SESSION_RECORD, LuoFlbBlock,
                         LuoFlbHeaderSer, LuoFlbSer)
from .luo_image import (FLB_COMPATIBLE, FLB_HEADER_PROP, FLB_NODE, LUO_COMPATIBLE, NUMBER_PROP,
                        SESSION_COMPATIBLE, SESSION_HEADER_PROP, SESSION_NODE,
                        SUBSYSTEMS_COMPATIBLE, SUBSYSTEMS_NODE, WHAT, FileImage,
                        FlbImage, LuoImage, SessionImage, show_name)
from .memory import PAGE_SIZE, pages_for, read_handover


class _LuoTree(NamedTuple):
    liveupdate_number: int
    session_phys: int
    flb_phys: int
    subsystems: dict[str, int]


def read_luo(memory, fdt_bytes: bytes) -> LuoImage:
    """Decode LUO's subtree and the blocks it points to, validating everything."""
    tree = _read_tree(fdt_bytes)
    sessions = _read_sessions(memory, tree.session_phys)
    flbs = _read_flbs(memory, tree.flb_phys)
    return LuoImage(tree.liveupdate_number, sessions, flbs, tree.subsystems)


class LuoHeader(NamedTuple):
    liveupdate_number: int
    sessions: int
    files: int


def read_luo_header(memory, fdt_bytes: bytes) -> LuoHeader:
    """The number and the session and file counts, from the tree and the session block
    only: what a kernel checks at boot before it decodes the files at first use."""
    tree = _read_tree(fdt_bytes)
    _names, _addresses, counts, _size = _read_session_block(memory, tree.session_phys)
    return LuoHeader(tree.liveupdate_number, len(counts), sum(counts))


def luo_blocks(memory, fdt_bytes: bytes) -> list[tuple[int, int]]:
    """The page ranges ``write_luo`` preserved for this subtree: the session block, the
    file arrays and the FLB block, found without decoding a record."""
    tree = _read_tree(fdt_bytes)
    names, addresses, counts, size = _read_session_block(memory, tree.session_phys)
    ranges = [(tree.session_phys, size)]
    ranges += [(run_phys, files * FILE_RECORD.size)
               for run_phys, files, _ in _file_runs(names, addresses, counts)]
    ranges.append((tree.flb_phys, _read_flb_header(memory, tree.flb_phys).pgcnt * PAGE_SIZE))
    return [(phys, pages_for(nbytes) * PAGE_SIZE) for phys, nbytes in ranges]


def _read_tree(fdt_bytes: bytes) -> _LuoTree:
    root = parse_fdt(fdt_bytes, WHAT).root
    check_compatible(root, LUO_COMPATIBLE, WHAT)
    headers = []
    for name, compatible, prop in ((SESSION_NODE, SESSION_COMPATIBLE, SESSION_HEADER_PROP),
                                   (FLB_NODE, FLB_COMPATIBLE, FLB_HEADER_PROP)):
        node = get_subnode(root, name, WHAT)
        what = f"{WHAT}: node '{name}'"
        check_compatible(node, compatible, what)
        headers.append(get_u64(node, prop, what))
    subsystems = {}
    node = root.get_subnode(SUBSYSTEMS_NODE)
    if node is not None:
        what = f"{WHAT}: node '{SUBSYSTEMS_NODE}'"
        check_compatible(node, SUBSYSTEMS_COMPATIBLE, what)
        subsystems = {prop.name: get_u64(node, prop.name, what)
                      for prop in node.props if prop.name != "compatible"}
    return _LuoTree(get_u64(root, NUMBER_PROP, WHAT), *headers, subsystems)


def _read_sessions(memory, phys: int) -> list[SessionImage]:
    names, addresses, counts, _size = _read_session_block(memory, phys)
    records = []
    for run_phys, files, first in _file_runs(names, addresses, counts):
        data = read_handover(memory, run_phys, files * FILE_RECORD.size,
                             f"{WHAT}: {files} file records from session {show_name(first)} on")
        locate = partial(_locate, names, counts, len(records))
        records.extend(_decode_files(data, files, locate))
    starts = list(accumulate(counts, initial=0))
    _check_tokens(names, starts, counts, list(map(attrgetter("token"), records)))
    return [SessionImage(name, records[start:start + files])
            for name, start, files in zip(names, starts, counts)]


def _read_session_block(memory, phys: int):
    """Return the session block's names, file-array addresses, file counts and size."""
    what = f"{WHAT}: session block"
    count, = SESSION_HEADER.unpack(read_handover(memory, phys, SESSION_HEADER.size, what))
    size = SESSION_HEADER.size + count * SESSION_RECORD.size
    block = read_handover(memory, phys, size, f"{what} of {count} sessions")
    fields = array_mirror(SESSION_RECORD, count).unpack_from(block, SESSION_HEADER.size)
    names = [_session_name(raw, number) for number, raw in enumerate(fields[0::3])]
    if len(set(names)) != count:
        first = next(name for number, name in enumerate(names) if name in names[:number])
        raise KhoFormatError(f"{WHAT}: session {show_name(first)} appears twice")
    return names, fields[1::3], fields[2::3], size


def _file_runs(names, addresses, counts) -> list[list]:
    """Group file arrays that follow each other, to read and decode each group at once.

    With write_luo's layout all sessions form a single group.  Returns
    ``[phys, records, name of the group's first session]`` items.
    """
    runs = []
    for name, files_phys, files in zip(names, addresses, counts):
        if not files:
            continue
        if not files_phys:
            raise KhoFormatError(
                f"{WHAT}: session {show_name(name)} has {files} files but no file array (address 0)")
        if runs and runs[-1][0] + runs[-1][1] * FILE_RECORD.size == files_phys:
            runs[-1][1] += files
        else:
            runs.append([files_phys, files, name])
    return runs


def _check_tokens(names, starts, counts, tokens) -> None:
    """Tokens are unique within a session (PRESERVE_FD refuses duplicates)."""
    for name, start, files in zip(names, starts, counts):
        if len(set(tokens[start:start + files])) != files:
            mine = tokens[start:start + files]
            twice = next(token for number, token in enumerate(mine) if token in mine[:number])
            raise KhoFormatError(f"{WHAT}: session {show_name(name)}: token {twice:#x} appears twice")


def _decode_files(data: bytes, count: int, locate) -> list[FileImage]:
    """Decode packed luo_file_ser records; ``locate(i)`` names record ``i`` in errors."""
    fields = array_mirror(FILE_RECORD, count).unpack(data)
    raw_compatibles = fields[0::3]
    texts = {}
    for raw in set(raw_compatibles):  # few distinct handlers, so validate each once
        texts[raw] = _c_string(raw, lambda: f"{locate(raw_compatibles.index(raw))}: compatible")
    return list(map(FileImage, map(texts.__getitem__, raw_compatibles), fields[1::3], fields[2::3]))


def _read_flbs(memory, phys: int) -> list[FlbImage]:
    what = f"{WHAT}: FLB block"
    header = _read_flb_header(memory, phys)
    block = LuoFlbBlock.parse(read_handover(memory, phys, header.pgcnt * PAGE_SIZE, what))
    flbs = []
    for number, entry in enumerate(block.flbs):
        name = _c_string(entry.name, lambda: f"{what} entry {number}: name")
        if any(flb.name == name for flb in flbs):
            raise KhoFormatError(f"{what}: FLB '{name}' appears twice")
        flbs.append(FlbImage(name, entry.data, entry.count))
    return flbs


def _read_flb_header(memory, phys: int):
    """The FLB block's header, checked to describe a block that holds its entries."""
    what = f"{WHAT}: FLB block"
    header = LuoFlbHeaderSer.parse(read_handover(memory, phys, LuoFlbHeaderSer.sizeof(), what))
    need = LuoFlbHeaderSer.sizeof() + header.count * LuoFlbSer.sizeof()
    if header.pgcnt == 0 or need > header.pgcnt * PAGE_SIZE:
        raise KhoFormatError(
            f"{what}: {header.count} entries need {need} bytes, but pgcnt {header.pgcnt} "
            f"holds {header.pgcnt * PAGE_SIZE}")
    return header


def _session_name(raw: bytes, number: int) -> bytes:
    end = raw.find(0)
    if end < 0:
        raise KhoFormatError(
            f"{WHAT}: session {number}: name is not NUL-terminated within {len(raw)} bytes")
    return raw[:end]


def _c_string(raw: bytes, describe) -> str:
    """A NUL-terminated, non-empty ASCII string from a char[] field."""
    end = raw.find(0)
    if end < 0:
        raise KhoFormatError(f"{describe()} is not NUL-terminated within {len(raw)} bytes")
    if end == 0:
        raise KhoFormatError(f"{describe()} is empty")
    if not raw[:end].isascii():
        raise KhoFormatError(f"{describe()} {raw[:end]!r} is not ASCII")
    return raw[:end].decode("ascii")


def _locate(names: list[bytes], counts, offset: int, position: int) -> str:
    """Name record ``offset + position`` of all sessions' file arrays, concatenated."""
    position += offset
    starts = list(accumulate(counts, initial=0))
    # The last session starting at or before the record; sessions without
    # files share their start with the next one, which bisect_right skips.
    number = bisect_right(starts, position) - 1
    return f"{WHAT}: session {show_name(names[number])} file {position - starts[number]}"

"""LUO's KHO subtree: mainline 6.19 layout (kho.md §3) plus subsystem handles.

The subtree is a small FDT that points into preserved blocks::

    / { compatible = "luo-v1"; liveupdate-number = <u64>;
        luo-session { compatible = "luo-session-v2"; luo-session-header = <u64 phys>; };
        luo-flb     { compatible = "luo-flb-v1";     luo-flb-header     = <u64 phys>; };
        luo-subsystems { compatible = "luo-subsystems-v1"; <name> = <u64>; ... }; };

``luo-subsystems`` is the emulator's home for RFC v2 subsystem handles
(rfc.md §5); it is only written when there are subsystems, so a mainline
image is exactly the kernel's layout.  Unlike the kernel's fixed 16-page
session block, blocks are sized to their content, so there is no cap.  All
file records of all sessions share one block, in session order; each
session points at its slice.

Order carries meaning: sessions stay in creation order and files in
preservation order, because the next kernel's behaviour follows it (FINISH,
for one, walks a session's files in reverse preservation order).

Happy path: the old kernel calls :func:`publish_luo` (at boot, and again at
each reboot attempt): :func:`write_luo` stores the blocks, the FDT becomes
the ``LUO`` subtree, and whatever an earlier publish preserved is released
(:func:`release_luo`), so retries preserve nothing extra.  The new kernel
calls :func:`read_luo_header` at boot and :func:`read_luo` when it needs the
sessions; it keeps the blocks reserved for its whole life (debugfs ``in/``
decodes them again), and the kernel after it starts from a fresh memory map.

Unhappy paths: an image the format cannot carry raises ValueError before
anything is allocated; running out of memory (OutOfPhysicalMemory) or a
frozen preserved map (EBUSY) on the way frees and unpreserves whatever was
done.  Any inconsistency in what the previous kernel left (bad pointers,
counts, names, duplicate tokens) raises KhoFormatError naming the place.

Decoding 100,000 records allocates as many objects: callers on the live
update path hold the cyclic collector off around it (``luofs.gcpause``).
"""

import struct
from bisect import bisect_right
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from itertools import accumulate, chain
from operator import attrgetter
from typing import NamedTuple

from struct_mirror import array_mirror

from .errors import KhoFormatError
from .fdt_blob import (check_compatible, check_prop_name, get_subnode, get_u64, new_node,
                       new_tree, parse_fdt, to_blob, u64_prop)
from .luo_format import (COMPATIBLE_LENGTH, FILE_RECORD, SESSION_HEADER, SESSION_NAME_LENGTH,
                         SESSION_RECORD, LuoFlbBlock, LuoFlbHeaderSer, LuoFlbSer)
from .memory import PAGE_SIZE, pages_for, read_handover

LUO_SUBTREE = "LUO"
LUO_COMPATIBLE = "luo-v1"
NUMBER_PROP = "liveupdate-number"
SESSION_NODE = "luo-session"
SESSION_COMPATIBLE = "luo-session-v2"
SESSION_HEADER_PROP = "luo-session-header"
FLB_NODE = "luo-flb"
FLB_COMPATIBLE = "luo-flb-v1"
FLB_HEADER_PROP = "luo-flb-header"
SUBSYSTEMS_NODE = "luo-subsystems"
SUBSYSTEMS_COMPATIBLE = "luo-subsystems-v1"

_WHAT = "LUO"
_U64_LIMIT = 1 << 64


# The records are plain (not frozen, not self-validating) dataclasses on
# purpose: the next kernel creates 100,000 of them per handover, and frozen
# or validating __init__s triple that cost.  write_luo validates instead.

@dataclass(slots=True)
class FileImage:
    """One preserved file: its handler's compatible, the handler's u64, the user's token."""

    compatible: str
    data: int
    token: int


@dataclass(slots=True)
class SessionImage:
    """A session's name (up to 63 bytes, no NUL) and its files in preservation order."""

    name: bytes
    files: list[FileImage] = field(default_factory=list)


@dataclass(slots=True)
class FlbImage:
    """A file-lifecycle-bound object: compatible name, u64 data, count of files using it."""

    name: str
    data: int
    count: int


@dataclass(slots=True)
class LuoImage:
    """Everything LUO hands to the next kernel."""

    liveupdate_number: int
    sessions: list[SessionImage] = field(default_factory=list)
    flbs: list[FlbImage] = field(default_factory=list)
    subsystems: dict[str, int] = field(default_factory=dict)


# -- writing ---------------------------------------------------------------------------

def write_luo(memory, preserved, image: LuoImage) -> bytes:
    """Store ``image`` in new preserved pages of ``memory``; return the LUO FDT.

    Raises ValueError for an image the format cannot carry.  On any failure
    every page allocated so far is unpreserved and freed again.
    """
    _check_image(image)
    files = list(chain.from_iterable(session.files for session in image.sessions))
    files_block = _pack_files(image, files)
    flb_block = LuoFlbBlock.build(dict(flbs=[
        dict(name=flb.name.encode().ljust(COMPATIBLE_LENGTH, b"\0"), data=flb.data, count=flb.count)
        for flb in image.flbs]))
    with ExitStack() as undo:
        # Sessions point into the file block, so it is placed first; a
        # session without files points nowhere (0).
        files_phys = _store(memory, preserved, undo, files_block) if files else 0
        session_phys = _store(memory, preserved, undo, _pack_sessions(image.sessions, files_phys))
        flb_phys = _store(memory, preserved, undo, flb_block)
        blob = _build_tree(image, session_phys, flb_phys)
        undo.pop_all()
    return blob


def _store(memory, preserved, undo: ExitStack, data: bytes) -> int:
    """Put one block in new preserved pages (one write), registering its undo."""
    npages = pages_for(len(data))
    phys = memory.alloc_pages(npages)
    undo.callback(memory.free_pages, phys, npages)
    memory.write(phys, data)
    preserved.preserve(phys, npages * PAGE_SIZE)
    undo.callback(preserved.unpreserve, phys, npages * PAGE_SIZE)
    return phys


def _pack_files(image: LuoImage, files: list[FileImage]) -> bytes:
    compatibles = list(map(attrgetter("compatible"), files))
    encoded = {text: _encode_c_string(text, COMPATIBLE_LENGTH, "file compatible")
               for text in set(compatibles)}
    fields = [None] * (3 * len(files))
    fields[0::3] = map(encoded.__getitem__, compatibles)
    fields[1::3] = map(attrgetter("data"), files)
    fields[2::3] = map(attrgetter("token"), files)
    try:
        return array_mirror(FILE_RECORD, len(files)).pack(*fields)
    except struct.error:
        for session in image.sessions:
            for number, file in enumerate(session.files):
                what = f"session {_show(session.name)} file {number}"
                _check_u64(file.data, f"{what} data")
                _check_u64(file.token, f"{what} token")
        raise


def _pack_sessions(sessions: list[SessionImage], files_phys: int) -> bytes:
    counts = [len(session.files) for session in sessions]
    fields = [None] * (3 * len(sessions))
    fields[0::3] = map(attrgetter("name"), sessions)  # struct pads each to 64 bytes with NULs
    fields[1::3] = [files_phys + offset * FILE_RECORD.size if count else 0
                    for offset, count in zip(accumulate(counts, initial=0), counts)]
    fields[2::3] = counts
    records = array_mirror(SESSION_RECORD, len(sessions)).pack(*fields)
    return SESSION_HEADER.pack(len(sessions)) + records


def _build_tree(image: LuoImage, session_phys: int, flb_phys: int) -> bytes:
    tree = new_tree(LUO_COMPATIBLE)
    tree.root.append(u64_prop(NUMBER_PROP, image.liveupdate_number))
    for name, compatible, prop, phys in (
            (SESSION_NODE, SESSION_COMPATIBLE, SESSION_HEADER_PROP, session_phys),
            (FLB_NODE, FLB_COMPATIBLE, FLB_HEADER_PROP, flb_phys)):
        node = new_node(name, compatible)
        node.append(u64_prop(prop, phys))
        tree.root.append(node)
    if image.subsystems:
        node = new_node(SUBSYSTEMS_NODE, SUBSYSTEMS_COMPATIBLE)
        for name, value in image.subsystems.items():
            node.append(u64_prop(name, value))
        tree.root.append(node)
    return to_blob(tree)


def _check_image(image: LuoImage) -> None:
    _check_u64(image.liveupdate_number, "liveupdate_number")
    names = set()
    for session in image.sessions:
        name = session.name
        if not isinstance(name, bytes) or len(name) >= SESSION_NAME_LENGTH or b"\0" in name:
            raise ValueError(f"session name {name!r} must be bytes of at most "
                             f"{SESSION_NAME_LENGTH - 1} without NUL")
        if name in names:
            raise ValueError(f"session name {_show(name)} is used twice")
        names.add(name)
        tokens = set(map(attrgetter("token"), session.files))
        if len(tokens) != len(session.files):
            seen = set()
            for file in session.files:
                if file.token in seen:
                    raise ValueError(f"session {_show(name)}: token {file.token!r} is used twice")
                seen.add(file.token)
    flb_names = set()
    for flb in image.flbs:
        _encode_c_string(flb.name, COMPATIBLE_LENGTH, "FLB name")
        if flb.name in flb_names:
            raise ValueError(f"FLB {flb.name!r} appears twice")
        flb_names.add(flb.name)
        _check_u64(flb.data, f"FLB {flb.name!r} data")
        _check_u64(flb.count, f"FLB {flb.name!r} count")
    for name, value in image.subsystems.items():
        check_prop_name(name)
        if name == "compatible":
            raise ValueError("a subsystem cannot be named 'compatible'")
        _check_u64(value, f"subsystem {name!r}")


def _encode_c_string(text: str, size: int, what: str) -> bytes:
    if not isinstance(text, str) or not 0 < len(text) < size or not text.isascii() or "\0" in text:
        raise ValueError(f"{what} {text!r} must be 1 to {size - 1} ASCII characters without NUL")
    return text.encode("ascii")


def _check_u64(value, what: str) -> None:
    if not isinstance(value, int) or not 0 <= value < _U64_LIMIT:
        raise ValueError(f"{what} {value!r} is not a u64")


# -- reading ---------------------------------------------------------------------------

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


def release_luo(memory, fdt_bytes: bytes, preserved) -> None:
    """Unpreserve and free the blocks :func:`write_luo` laid out for ``fdt_bytes``.

    The old kernel's undo of :func:`write_luo`, for an image it will not hand
    over after all (it publishes another, or none).  Only the session block,
    the FLB header and the file arrays' addresses are read; the records are
    not decoded.
    """
    for phys, nbytes in _blocks(memory, _read_tree(fdt_bytes)):
        preserved.unpreserve(phys, nbytes)
        memory.free_pages(phys, nbytes // PAGE_SIZE)


def publish_luo(handover, image: LuoImage | None) -> None:
    """Make ``image`` LUO's subtree in ``handover``, or drop the subtree (None).

    A subtree published before goes first, with every block preserved for it,
    so publishing again and again preserves no more than publishing once.  On
    failure nothing of the new image stays allocated or preserved (the old
    one is gone already: the caller refuses the reboot and publishes again).
    """
    old = handover.subtrees.get(LUO_SUBTREE)
    if old is not None:
        release_luo(handover.memory, old, handover.preserved)
        handover.remove_subtree(LUO_SUBTREE)
    if image is None:
        return
    blob = write_luo(handover.memory, handover.preserved, image)
    try:
        handover.add_subtree(LUO_SUBTREE, blob)
    except BaseException:
        release_luo(handover.memory, blob, handover.preserved)
        raise


def _blocks(memory, tree: "_LuoTree") -> list[tuple[int, int]]:
    """The page ranges :func:`write_luo` preserved for ``tree``: session block, file
    arrays, FLB block."""
    names, addresses, counts, size = _read_session_block(memory, tree.session_phys)
    ranges = [(tree.session_phys, size)]
    ranges += [(run_phys, files * FILE_RECORD.size)
               for run_phys, files, _ in _file_runs(names, addresses, counts)]
    ranges.append((tree.flb_phys, _read_flb_header(memory, tree.flb_phys).pgcnt * PAGE_SIZE))
    return [(phys, pages_for(nbytes) * PAGE_SIZE) for phys, nbytes in ranges]


def _read_tree(fdt_bytes: bytes) -> _LuoTree:
    root = parse_fdt(fdt_bytes, _WHAT).root
    check_compatible(root, LUO_COMPATIBLE, _WHAT)
    headers = []
    for name, compatible, prop in ((SESSION_NODE, SESSION_COMPATIBLE, SESSION_HEADER_PROP),
                                   (FLB_NODE, FLB_COMPATIBLE, FLB_HEADER_PROP)):
        node = get_subnode(root, name, _WHAT)
        what = f"{_WHAT}: node '{name}'"
        check_compatible(node, compatible, what)
        headers.append(get_u64(node, prop, what))
    subsystems = {}
    node = root.get_subnode(SUBSYSTEMS_NODE)
    if node is not None:
        what = f"{_WHAT}: node '{SUBSYSTEMS_NODE}'"
        check_compatible(node, SUBSYSTEMS_COMPATIBLE, what)
        subsystems = {prop.name: get_u64(node, prop.name, what)
                      for prop in node.props if prop.name != "compatible"}
    return _LuoTree(get_u64(root, NUMBER_PROP, _WHAT), *headers, subsystems)


def _read_sessions(memory, phys: int) -> list[SessionImage]:
    names, addresses, counts, _size = _read_session_block(memory, phys)
    records = []
    for run_phys, files, first in _file_runs(names, addresses, counts):
        data = read_handover(memory, run_phys, files * FILE_RECORD.size,
                             f"{_WHAT}: {files} file records from session {_show(first)} on")
        locate = partial(_locate, names, counts, len(records))
        records.extend(_decode_files(data, files, locate))
    starts = list(accumulate(counts, initial=0))
    _check_tokens(names, starts, counts, list(map(attrgetter("token"), records)))
    return [SessionImage(name, records[start:start + files])
            for name, start, files in zip(names, starts, counts)]


def _read_session_block(memory, phys: int):
    """Return the session block's names, file-array addresses, file counts and size."""
    what = f"{_WHAT}: session block"
    count, = SESSION_HEADER.unpack(read_handover(memory, phys, SESSION_HEADER.size, what))
    size = SESSION_HEADER.size + count * SESSION_RECORD.size
    block = read_handover(memory, phys, size, f"{what} of {count} sessions")
    fields = array_mirror(SESSION_RECORD, count).unpack_from(block, SESSION_HEADER.size)
    names = [_session_name(raw, number) for number, raw in enumerate(fields[0::3])]
    if len(set(names)) != count:
        first = next(name for number, name in enumerate(names) if name in names[:number])
        raise KhoFormatError(f"{_WHAT}: session {_show(first)} appears twice")
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
                f"{_WHAT}: session {_show(name)} has {files} files but no file array (address 0)")
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
            raise KhoFormatError(f"{_WHAT}: session {_show(name)}: token {twice:#x} appears twice")


def _decode_files(data: bytes, count: int, locate) -> list[FileImage]:
    """Decode packed luo_file_ser records; ``locate(i)`` names record ``i`` in errors."""
    fields = array_mirror(FILE_RECORD, count).unpack(data)
    raw_compatibles = fields[0::3]
    texts = {}
    for raw in set(raw_compatibles):  # few distinct handlers, so validate each once
        texts[raw] = _c_string(raw, lambda: f"{locate(raw_compatibles.index(raw))}: compatible")
    return list(map(FileImage, map(texts.__getitem__, raw_compatibles), fields[1::3], fields[2::3]))


def _read_flbs(memory, phys: int) -> list[FlbImage]:
    what = f"{_WHAT}: FLB block"
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
    what = f"{_WHAT}: FLB block"
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
            f"{_WHAT}: session {number}: name is not NUL-terminated within {len(raw)} bytes")
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
    return f"{_WHAT}: session {_show(names[number])} file {position - starts[number]}"


def _show(name: bytes) -> str:
    return repr(name.decode("utf-8", "backslashreplace"))

"""The old kernel's side of LUO's subtree: lay an image out in preserved memory,
publish it as the ``LUO`` subtree, release it again.

Happy path: :func:`publish_luo` runs at boot (mainline) and at each reboot
attempt: :func:`write_luo` stores the file, session and FLB blocks in new
preserved pages and returns the FDT, which becomes the subtree; whatever an
earlier publish preserved goes first (:func:`release_luo`), so retries
preserve nothing extra.

Unhappy paths: an image the format cannot carry raises ValueError before
anything is allocated; running out of memory (OutOfPhysicalMemory) or a
frozen preserved map (EBUSY, KHO is finalized) on the way frees and
unpreserves whatever the call did.
"""

import struct
from contextlib import ExitStack
from itertools import accumulate, chain
from operator import attrgetter

from struct_mirror import array_mirror

from .fdt_blob import check_prop_name, new_node, new_tree, to_blob, u64_prop
from .luo_format import (COMPATIBLE_LENGTH, FILE_RECORD, SESSION_HEADER, SESSION_NAME_LENGTH,
                         SESSION_RECORD, LuoFlbBlock)
from .luo_image import (FLB_COMPATIBLE, FLB_HEADER_PROP, FLB_NODE, LUO_COMPATIBLE, LUO_SUBTREE,
                        NUMBER_PROP, SESSION_COMPATIBLE, SESSION_HEADER_PROP, SESSION_NODE,
                        SUBSYSTEMS_COMPATIBLE, SUBSYSTEMS_NODE, FileImage, LuoImage,
                        SessionImage, show_name)
from .luo_read import luo_blocks
from .memory import PAGE_SIZE, pages_for

_U64_LIMIT = 1 << 64


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
                what = f"session {show_name(session.name)} file {number}"
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
            raise ValueError(f"session name {show_name(name)} is used twice")
        names.add(name)
        tokens = set(map(attrgetter("token"), session.files))
        if len(tokens) != len(session.files):
            seen = set()
            for file in session.files:
                if file.token in seen:
                    raise ValueError(f"session {show_name(name)}: token {file.token!r} is used twice")
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


def release_luo(memory, fdt_bytes: bytes, preserved) -> None:
    """Unpreserve and free the blocks :func:`write_luo` laid out for ``fdt_bytes``.

    The old kernel's undo of :func:`write_luo`, for an image it will not hand
    over after all (it publishes another, or none).  Only the session block,
    the FLB header and the file arrays' addresses are read; the records are
    not decoded.
    """
    for phys, nbytes in luo_blocks(memory, fdt_bytes):
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

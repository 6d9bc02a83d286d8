"""Reading the previous kernel's hand-over: KHO's root, LUO's image, the files.

DOC: Shared by every personality's `thaw()`. The happy path: KHO's root tree loads
and validates, LUO's subtree (if any) decodes, and the handed-over files are matched
to the image's entries by handler and data handle.
Unhappy paths, each a `Panic` naming what is wrong: a damaged root or subtree, an
image that lists another number of files than were handed over, or two files of one
handler with the same handle. Files that end up unused go back to the store.
"""

from __future__ import annotations

import logging

from kho import LUO_SUBTREE, IncomingHandover, KhoFormatError, LuoImage, read_luo

from ..core import HandlerRegistry
from ..fdutil import OwnedFile
from ..filestore import FileStore
from ..gcpause import gc_paused
from .base import Panic

log = logging.getLogger("luofs.personality")


def load_root(memory, root_phys: int, root_size: int) -> IncomingHandover:
    try:
        return IncomingHandover.load(memory, root_phys, root_size)
    except KhoFormatError as e:
        raise Panic(str(e)) from None


def luo_blob(incoming: IncomingHandover) -> bytes | None:
    return incoming.subtrees.get(LUO_SUBTREE)


def read_image(memory, blob: bytes) -> LuoImage:
    try:
        return read_luo(memory, blob)
    except KhoFormatError as e:
        raise Panic(str(e)) from None


def check_number(found: int, expected: int) -> None:
    """LUO's image counts live updates: it must be the one the machine handed over."""
    if found + 1 != expected:
        raise Panic(f"LUO image is from live update {found}, the hand-over from "
                    f"{expected - 1}")


def check_count(listed: int, sources: list) -> None:
    if listed != len(sources):
        raise Panic(f"LUO image lists {listed} files but {len(sources)} were handed over")


def match(image: LuoImage, files: list[OwnedFile]) -> dict[str, dict[int, OwnedFile]]:
    """The handed-over files by handler and data handle, in the image's order (the
    counts agree: check_count said so)."""
    handed: dict[str, dict[int, OwnedFile]] = {}
    listed = [f for s in image.sessions for f in s.files]
    for compatible in {f.compatible for f in listed}:
        pairs = [(f.data, file) for f, file in zip(listed, files) if f.compatible == compatible]
        handed[compatible] = dict(pairs)
        if len(handed[compatible]) != len(pairs):
            seen: set[int] = set()
            data = next(d for d, _file in pairs if d in seen or seen.add(d))
            raise Panic(f"LUO image: two {compatible} files share handle {data:#x}")
    return handed


def known(handlers: HandlerRegistry, handed: dict[str, dict[int, OwnedFile]]
          ) -> dict[str, dict[int, OwnedFile]]:
    """The handed-over files some handler here knows; the others are let go (their
    sessions fail at the first open, EIO)."""
    kept = {}
    for compatible, files in handed.items():
        if handlers.by_compatible(compatible) is not None:
            kept[compatible] = files
            continue
        log.warning("handed-over %s files have no handler here", compatible)
        for f in files.values():
            f.close()
    return kept


@gc_paused()
def decode(memory, blob: bytes, store: FileStore, sources: list,
           handlers: HandlerRegistry) -> tuple[LuoImage, dict[str, dict[int, OwnedFile]]]:
    """LUO's image decoded, and the handed-over files its handlers will find in their
    files' private slots; on a Panic every handed-over file goes back to the store."""
    try:
        image = read_image(memory, blob)
        return image, known(handlers, match(image, store.owned(sources)))
    except Panic:
        store.release(sources)
        raise

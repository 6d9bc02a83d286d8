"""The kernel side of a live update: LUO's state out through KHO, and back in.

Old kernel: freeze (core), write LUO's image into preserved memory, finalize KHO,
and give the machine the root's address plus the preserved files themselves (their
fds, in image order) — never their contents. New kernel: validate the handover
(a bad one is a "panic": the kernel refuses to serve and says what is wrong),
reserve preserved memory, and rebuild sessions at the first open of the device.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from kho import (LUO_SUBTREE, Handover, IncomingHandover, KhoFormatError, LuoImage,
                 PhysicalMemory, read_luo, write_luo)
from kho.memory import pages_for

from .core import HandlerRegistry, Luo, LuoError
from .core.faults import NONE, Faults
from .core.serialize import incoming_sessions, luo_image
from .fdutil import OwnedFile
from .handlers import MemfdHandler
from .uapi import errnos

log = logging.getLogger("luofs.handover")


class Panic(Exception):
    """The previous kernel's data cannot be used; the real kernel would panic."""


class KhoOut:
    """Preserved-memory services for handlers: store a record, drop it, read it back."""

    def __init__(self, memory: PhysicalMemory, handover: Handover):
        self.memory = memory
        self.handover = handover
        self._sizes: dict[int, int] = {}

    def store(self, blob: bytes) -> int:
        npages = pages_for(len(blob))
        phys = self.memory.alloc_pages(npages)
        self.memory.write(phys, blob)
        self.handover.preserved.preserve(phys, npages * 4096)
        self._sizes[phys] = npages
        return phys

    def drop(self, phys: int) -> None:
        npages = self._sizes.pop(phys, 0)
        if npages:
            self.handover.preserved.unpreserve(phys, npages * 4096)
            self.memory.free_pages(phys, npages)

    def read(self, phys: int, n: int) -> bytes:
        return self.memory.read(phys, n)


@dataclass
class Boot:
    """Everything a kernel process starts from: a cold boot or a hand-over."""

    luo: Luo
    memory: PhysicalMemory
    handover: Handover
    faults: Faults = NONE
    incoming: IncomingHandover | None = None
    incoming_image: LuoImage | None = None


def _publish_luo(handover: Handover, memory: PhysicalMemory, image: LuoImage) -> None:
    """(Re)register LUO's subtree; at boot it holds no sessions, as mainline's does."""
    if LUO_SUBTREE in handover.subtrees:
        handover.remove_subtree(LUO_SUBTREE)
    handover.add_subtree(LUO_SUBTREE, write_luo(memory, handover.preserved, image))


def cold_boot(ram_fd: int, faults: Faults = NONE) -> Boot:
    memory = PhysicalMemory.adopt(ram_fd)
    handover = Handover(memory)
    kho = KhoOut(memory, handover)
    handlers = HandlerRegistry()
    handlers.register(MemfdHandler(kho, faults=faults), sessions_exist=False)
    luo = Luo(handlers, liveupdate_number=0)
    _publish_luo(handover, memory, luo_image(0, []))
    return Boot(luo, memory, handover, faults)


def handover_boot(ram_fd: int, root_phys: int, root_size: int, fds: list[int],
                  faults: Faults = NONE) -> Boot:
    """Rebuild from the previous kernel's hand-over; Panic if it cannot be trusted."""
    memory = PhysicalMemory.adopt(ram_fd)
    files = [OwnedFile(fd) for fd in fds]
    try:
        try:
            incoming = IncomingHandover.load(memory, root_phys, root_size)
            blob = incoming.subtrees.get(LUO_SUBTREE)
            if blob is None:
                raise Panic("KHO handover has no LUO subtree")
            image = read_luo(memory, blob)
        except KhoFormatError as e:
            raise Panic(str(e)) from None
        count = sum(len(s.files) for s in image.sessions)
        if count != len(files):
            raise Panic(f"LUO image lists {count} files but {len(files)} were handed over")
        handed: dict[str, dict[int, OwnedFile]] = {}
        it = iter(files)
        for s in image.sessions:
            for f in s.files:
                by_data = handed.setdefault(f.compatible, {})
                if f.data in by_data:
                    raise Panic(f"LUO image: two {f.compatible} files share handle {f.data:#x}")
                by_data[f.data] = next(it)
    except Panic:
        for f in files:
            f.close()
        raise
    handover = Handover(memory)
    kho = KhoOut(memory, handover)
    handlers = HandlerRegistry()
    handlers.register(MemfdHandler(kho, handed.pop(MemfdHandler.compatible, {}), faults),
                      sessions_exist=False)
    number = image.liveupdate_number + 1
    luo = Luo(handlers, liveupdate_number=number,
              load_incoming=lambda: incoming_sessions(image, handlers))
    for compatible, stray in handed.items():  # no handler: they fail at first open (EIO)
        log.warning("handed-over %s files have no handler here", compatible)
        for f in stray.values():
            f.close()
    _publish_luo(handover, memory, luo_image(number, []))
    log.info("liveupdate number %d: %d incoming session(s), %d file(s)",
             number, len(image.sessions), count)
    return Boot(luo, memory, handover, faults, incoming, image)


def reboot(boot: Boot) -> tuple[dict, list[int]]:
    """Freeze and write the hand-over; (message for the machine, fds to pass).

    On failure the old kernel keeps running with everything as it was (LuoError).
    """
    luo = boot.luo
    carried = luo.reboot()
    try:
        boot.faults.check("kho.finalize")
        _publish_luo(boot.handover, boot.memory, luo_image(luo.liveupdate_number, carried))
        root_phys, root_size = boot.handover.finalize()
    except LuoError:
        luo.cancel_reboot()
        raise
    except (MemoryError, OSError, ValueError) as e:
        luo.cancel_reboot()
        raise LuoError(errnos.ENOMEM if isinstance(e, MemoryError) else errnos.EIO,
                       f"KHO finalize failed: {e}") from None
    if "handover.corrupt" in boot.faults:  # damage in transit: flip the root's magic
        boot.memory.write(root_phys, b"\xde\xad")
    fds = [f.file.fd for s in carried for f in s.files]
    message = {"root_phys": root_phys, "root_size": root_size,
               "liveupdate_number": luo.liveupdate_number,
               "sessions": len(carried), "files": len(fds)}
    return message, fds

"""An mm-style subsystem: it keeps a few physical pages across a live update.

At PREPARE it allocates pages, fills them with a pattern that names the kernel that
wrote them, preserves them through KHO and returns their address as its u64 handle.
The next kernel gets the handle back (liveupdate_get_subsystem_data), checks every
byte and, at FINISH, releases the pages. `describe()` is what
sys/kernel/liveupdate/subsystems/mm shows, so a shell can see it work.
"""

from __future__ import annotations

import hashlib

from kho import PAGE_SIZE, PhysicalMemory, PreservedMemory

from ..core.errors import LuoError
from ..core.subsystem_registry import Subsystem, SubsystemRegistry
from ..uapi import errnos

NAME = "mm"
PAGES = 4


def pattern(number: int, page: int) -> bytes:
    return hashlib.sha256(f"luofs mm kernel {number} page {page}".encode()).digest() * (
        PAGE_SIZE // 32)


class MmSubsystem:
    def __init__(self, memory: PhysicalMemory, preserved: PreservedMemory, number: int):
        self.memory = memory
        self.preserved = preserved
        self.number = number
        self.phys = 0  # outgoing pages, while prepared
        self.incoming_phys = 0
        self.verdict = "none"  # what the previous kernel left: none, intact or corrupt
        self.handle: Subsystem | None = None

    def register(self, registry: SubsystemRegistry) -> None:
        self.handle = registry.register_subsystem(
            NAME, prepare=self._prepare, freeze=self._freeze, cancel=self._cancel,
            finish=self._finish)
        try:
            self.incoming_phys = registry.get_subsystem_data(self.handle)
        except LuoError:
            return  # a cold boot, or the previous kernel saved nothing for us
        self.verdict = "intact" if self._intact(self.incoming_phys) else "corrupt"

    def _intact(self, phys: int) -> bool:
        if not self.memory.contains(phys, PAGES * PAGE_SIZE):
            return False
        return all(self.memory.read(phys + i * PAGE_SIZE, PAGE_SIZE) == pattern(self.number - 1, i)
                   for i in range(PAGES))

    def _prepare(self, arg, data: int) -> int:
        try:
            phys = self.memory.alloc_pages(PAGES)
        except MemoryError:
            raise LuoError(errnos.ENOMEM, "mm: no memory for the preserved pages") from None
        for i in range(PAGES):
            self.memory.write(phys + i * PAGE_SIZE, pattern(self.number, i))
        self.preserved.preserve(phys, PAGES * PAGE_SIZE)
        self.phys = phys
        return phys

    def _freeze(self, arg, data: int) -> int:
        return data

    def _cancel(self, arg, data: int) -> None:
        if self.phys:
            self.preserved.unpreserve(self.phys, PAGES * PAGE_SIZE)
            self.memory.free_pages(self.phys, PAGES)
            self.phys = 0

    def _finish(self, arg, data: int) -> None:
        if self.incoming_phys:  # the previous kernel's pages are ours to release now
            self.memory.free_pages(self.incoming_phys, PAGES)
            self.incoming_phys = 0

    def describe(self) -> bytes:
        return (f"pages={PAGES}\noutgoing=0x{self.phys:x}\nincoming=0x{self.incoming_phys:x}\n"
                f"received={self.verdict}\n").encode()

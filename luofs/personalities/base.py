"""What every personality is, and the parts all of them run on.

DOC: `KernelParts` is a kernel's hardware-facing half, the same under every ABI:
emulated RAM, KHO's outgoing hand-over and its record slabs, the fault points, the
file store and the handler registry, the incoming hand-over if there was one.
A `Personality` adds the ABI on top.

Happy path (old kernel): `freeze()` runs the ABI's freeze, publishes LUO's image
and finalizes KHO, and returns the HandOver with its fd groups; once the machine
has it, `after_handover()` stops what must not outlive the kernel.
Unhappy paths: a refused freeze raises LuoError with everything as it was; a
hand-over the machine could not take is undone with `undo_freeze()` (the kernel
serves on, as after a refused freeze); a hand-over the next kernel cannot trust is
a `Panic` at construction (the real kernel would panic).
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass
from typing import Callable, ClassVar

from kho import Handover, IncomingHandover, LuoImage, PhysicalMemory, publish_luo

from .. import device_adapter, trace
from ..core import HandlerRegistry, LuoError
from ..core.faults import Faults
from ..core.state import GlobalState
from ..filestore import FileStore
from ..fs.nodes import Node
from ..handlers import MemfdHandler
from ..protocol import FILES, KEEPERS, HandOver
from ..record_slabs import RecordSlabs
from ..uapi import errnos

log = logging.getLogger("luofs.personality")


class Panic(Exception):
    """The previous kernel's data cannot be used; the real kernel would panic."""


@dataclass
class KernelParts:
    memory: PhysicalMemory
    handover: Handover  # KHO out: what this kernel will hand over
    slabs: RecordSlabs  # small records (memfd records) in preserved memory
    faults: Faults
    store: FileStore
    handlers: HandlerRegistry
    liveupdate_number: int
    incoming: IncomingHandover | None = None

    @classmethod
    def build(cls, memory: PhysicalMemory, faults: Faults, number: int,
              store: FileStore | None = None,
              incoming: IncomingHandover | None = None) -> "KernelParts":
        handover = Handover(memory)
        slabs = RecordSlabs(memory, handover)
        store = store or FileStore()
        handlers = HandlerRegistry()
        handlers.register(MemfdHandler(slabs, faults, store, memory.size),
                          sessions_exist=False)
        return cls(memory, handover, slabs, faults, store, handlers, number, incoming)

    def publish_luo(self, image: LuoImage | None) -> None:
        """(Re)register LUO's subtree, or drop it (`None`: nothing to hand over)."""
        publish_luo(self.handover, image)

    def finalize(self, image: LuoImage | None, devices_blob, undo: Callable[[], None] | None
                 ) -> tuple[int, int]:
        """Publish LUO's image and the devices' state, finalize KHO: (root address, size).
        On failure `undo` thaws what the freeze did, and the error is a LuoError."""
        try:
            with trace.span("finalize KHO", "kho"):
                self.faults.check("kho.finalize")
                self.slabs.flush()
                self.publish_luo(image)
                device_adapter.publish(self.handover, devices_blob)
                root = self.handover.finalize()
        except LuoError:
            if undo:
                undo()
            raise
        except (MemoryError, OSError, ValueError) as e:
            if undo:
                undo()
            raise LuoError(errnos.ENOMEM if isinstance(e, MemoryError) else errnos.EIO,
                           f"KHO finalize failed: {e}") from None
        if "handover.corrupt" in self.faults:  # damage in transit: flip the root's magic
            self.memory.write(root[0], b"\xde\xad")
        return root

    def hand_over(self, root: tuple[int, int], carried: list, devices: tuple[str, ...],
                  dropped: int = 0) -> tuple[HandOver, dict[str, list[int]]]:
        """The HandOver for `carried` sessions (CarriedSession) and its fd groups;
        `dropped`: what came in and ends with this kernel, unretrieved."""
        with trace.span("list the files to hand over", "kernel"):
            fds, parked = self.store.split(f.file for s in carried for f in s.files)
        message = HandOver(root_phys=root[0], root_size=root[1],
                           liveupdate_number=self.liveupdate_number,
                           sessions=len(carried), files=sum(len(s.files) for s in carried),
                           parked=tuple(parked), devices=devices,
                           keeper_pids=tuple(self.store.keeper_pids()) if parked else (),
                           dropped=dropped)
        return message, {FILES: fds, KEEPERS: self.store.sockets() if parked else []}


def describe_lost(lost: dict) -> str:
    """{owner: count} for a message: "session 'vm' (3), session 'db' (1)"."""
    return ", ".join(f"{owner} ({n})" for owner, n in lost.items())


class Personality(abc.ABC):
    """One ABI. Subclasses set `name` and build themselves with `cold()` / `thaw()`."""

    name: ClassVar[str]

    def __init__(self, parts: KernelParts, state: GlobalState):
        self.parts = parts
        self.state = state  # the global state the `state` file shows
        self.devices = None  # DeviceDrivers, once attached
        self.lost_at_boot: dict | None = None  # files the hand-over brought in dead keepers

    # ---- construction --------------------------------------------------------------

    @classmethod
    @abc.abstractmethod
    def cold(cls, parts: KernelParts) -> "Personality":
        """Kernel #0, or a kernel after a plain kexec: nothing incoming."""

    @classmethod
    @abc.abstractmethod
    def thaw(cls, parts: KernelParts, handover: HandOver, sources: list) -> "Personality":
        """Rebuild from the previous kernel's hand-over (`parts.incoming` is loaded;
        `sources` are its files in image order, see FileStore.adopt); Panic if it cannot
        be trusted. Whatever is not used must be given back to the store."""

    # ---- what the file system serves -----------------------------------------------

    @property
    def device(self):
        """The dev/liveupdate behind the FUSE layer (open/close/ioctl), or None."""
        return None

    @abc.abstractmethod
    def liveupdate_nodes(self, intern) -> dict[bytes, Node]:
        """sys/kernel/liveupdate/'s entries. `intern(key, make)` gives a dynamic node a
        stable inode while its name exists."""

    # ---- a live update -------------------------------------------------------------

    @abc.abstractmethod
    def freeze(self) -> tuple[HandOver, dict[str, list[int]]]:
        """Freeze and write the hand-over; LuoError (everything as it was) if refused."""

    def outgoing_files(self):
        """(owner, OwnedFile) for every file a live update would carry now; the owner
        names it for people (a session name, a token)."""
        return ()

    def refuse_lost_files(self) -> None:
        """A freeze cannot carry files whose keeper died: refuse it, naming them, and
        serve on (the files are gone either way; what is left is not lost silently)."""
        with trace.span("check the file keepers", "kernel"):
            lost = self.parts.store.lost(self.outgoing_files())
        if lost:
            raise LuoError(errnos.EIO, f"{sum(lost.values())} preserved file(s) died with "
                                       f"their file keeper: {describe_lost(lost)}; close "
                                       "what holds them, then live-update again")

    @abc.abstractmethod
    def undo_freeze(self) -> None:
        """The machine never got the hand-over: thaw and serve on."""

    def after_handover(self) -> None:
        """device_shutdown() at the kexec, once the machine has the hand-over: every
        device that is not preserved stops (its in-flight work is lost, as on hardware)."""
        if self.devices is not None:
            self.devices.shutdown()

    def close(self) -> None:
        """Shutdown without a live update: the devices run on in the machine."""
        if self.devices is not None:
            self.devices.close()

    # ---- luofs status --------------------------------------------------------------

    def status(self) -> dict:
        out = {"abi": self.name, "state": str(self.state.state),
               "liveupdate_number": self.parts.liveupdate_number,
               "device_open": None, "sessions": []}
        if self.devices is not None:
            out["devices"] = self.devices.status()
        store = self.parts.store
        if store.keepers:
            out["keepers"] = store.keeper_status()
        lost = store.lost(self.outgoing_files())
        if lost:
            out["lost"] = {str(owner): n for owner, n in lost.items()}
        if self.lost_at_boot:
            out["lost_at_boot"] = self.lost_at_boot
        return out

    def device_state(self) -> str:
        """What the device layer sees as LUO's state."""
        return str(self.state.state)

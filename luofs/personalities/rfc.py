"""What the two RFC personalities share: LUO's global state machine, the subsystem
registry with its `mm` and `kvm` subsystems, and the device layer as a participant.

DOC: Under the RFCs user space (or the kernel) moves the global state with events;
the participants (RFC v2's file table, every registered subsystem, the device layer)
prepare, freeze, cancel and finish in order, undone in reverse on failure. A live
update from PREPARED (or FROZEN) hands LUO's data over; from NORMAL it is a plain
kexec that carries nothing, and the next kernel starts in NORMAL.
Unhappy paths: a participant that refuses the freeze leaves the state as it was (the
caller sees its LuoError); a hand-over whose LUO subtree is damaged is a Panic.
"""

from __future__ import annotations

from typing import ClassVar

from .. import trace
from ..core import CarriedSession
from ..core.rfc_sysfs import render_state
from ..core.serialize import luo_image
from ..core.state import Event, GlobalState
from ..core.subsystem_registry import SubsystemRegistry
from ..fs.nodes import DynamicDir, Node, TextFile
from ..gcpause import gc_paused
from ..protocol import Ok
from ..protocol_vmm import KvmRetrieve
from ..subsystems import KvmSubsystem, MmSubsystem
from . import incoming as inc
from .base import KernelParts, Personality


class RfcPersonality(Personality):
    """An RFC kernel; subclasses add their device (v2) or control files (v1)."""

    profile: ClassVar[str]

    def __init__(self, parts: KernelParts, image=None, handed: dict | None = None):
        """`handed`: the files the previous kernel handed over, by compatible and data
        handle (RFC v2 gives each to its file's private slot)."""
        state = GlobalState(self.profile, self._participants, updated=image is not None,
                            faults=parts.faults)
        super().__init__(parts, state)
        self.device_participant = None  # the device layer, once devices are attached
        self.subsystems = SubsystemRegistry(lambda: state.state,
                                            incoming=image.subsystems if image else None,
                                            faults=parts.faults)
        self.mm = MmSubsystem(parts.memory, parts.handover.preserved, parts.liveupdate_number)
        self.mm.register(self.subsystems)
        self.kvm = KvmSubsystem(parts)  # the VMs: their VMMs register them (KvmRegister)
        self.kvm.register(self.subsystems, lambda: state.state, image, handed)

    def _participants(self) -> list:
        """Read at each event: later registrations count."""
        devices = [self.device_participant] if self.device_participant else []
        return self._own_participants() + self.subsystems.participants() + devices

    def _own_participants(self) -> list:
        return []

    def _carried(self) -> list[CarriedSession]:
        """The files LUO's image carries for this ABI (the kvm subsystem adds its own)."""
        return []

    def _dropped(self) -> int:
        """What came in, was never taken, and ends with this kernel."""
        return 0

    def dropped(self) -> int:
        return self._dropped() + int(self.kvm.unretrieved() > 0)

    @classmethod
    def cold(cls, parts: KernelParts) -> "RfcPersonality":
        return cls(parts)

    @classmethod
    def thaw(cls, parts: KernelParts, handover, sources: list) -> "RfcPersonality":
        blob = inc.luo_blob(parts.incoming)
        if blob is None:  # the previous kernel was not prepared: a plain kexec
            inc.check_count(0, sources)
            return cls(parts)
        image = inc.read_image(parts.memory, blob)
        inc.check_number(image.liveupdate_number, parts.liveupdate_number)
        inc.check_count(sum(len(s.files) for s in image.sessions), sources)
        return cls(parts, image, inc.known(parts.handlers,
                                           inc.match(image, parts.store.owned(sources))))

    # ---- what the file system serves -----------------------------------------------

    def liveupdate_nodes(self, intern) -> dict[bytes, Node]:
        state = self.state
        return {
            b"state": TextFile(lambda: render_state(state.state), version=lambda: state.version),
            b"subsystems": DynamicDir(lambda: self._subsystem_files(intern), 0o555),
        }

    def _subsystem_files(self, intern) -> dict[bytes, Node]:
        registry = self.subsystems
        views = {self.mm.handle: self.mm.describe, self.kvm.handle: self.kvm.describe}

        def render(handle) -> bytes:
            text = f"data=0x{registry.data(handle):x}\n".encode() if handle in registry else b""
            return text + (views[handle]() if handle in views else b"")

        return {h.name.encode(): intern(("subsystem", h.name),
                                        lambda h=h: TextFile(lambda: render(h)))
                for h in registry}

    # ---- a live update -------------------------------------------------------------

    @gc_paused()
    def freeze(self):
        self.refuse_lost_files()
        if self.state.reboot():  # PREPARED (or FROZEN) hands LUO data over
            trace.progress("writing the hand-over")
            carried = self._carried() + self.kvm.carried()
            with trace.span("write LUO's image", "luo"):
                image = luo_image(self.parts.liveupdate_number, carried,
                                  self.subsystems.export())
            blob = self.device_participant.blob if self.device_participant else None
            root = self.parts.finalize(image, blob, self.state.cancel)
        else:  # not prepared: a plain kexec, nothing carried
            carried = []
            root = self.parts.finalize(None, None, None)
        devices = tuple(self.devices.preserved_paths()) if self.devices else ()
        return self.parts.hand_over(root, carried, devices, self.dropped())

    def undo_freeze(self) -> None:
        if self.parts.handover.finalized:
            self.parts.handover.abort()
        if self.state.allowed(Event.CANCEL):
            self.state.cancel()

    def status(self) -> dict:
        out = super().status()
        out["subsystems"] = self.subsystems.export()
        out["kvm"] = self.kvm.status()
        return out

    def kvm_request(self, request, fds: dict):
        """KvmRegister / KvmRetrieve from a VMM: (reply, its fds); LuoError if refused."""
        if isinstance(request, KvmRetrieve):
            return self.kvm.retrieve_vm(request.name)
        self.kvm.register_vm(request, fds)
        return Ok(), {}

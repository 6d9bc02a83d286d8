"""RFC v2 (spec/rfc.md): dev/liveupdate with kernel-chosen tokens and state events.

DOC: Any privileged process may open the device; FD_PRESERVE/UNPRESERVE/RESTORE work
on one file table (no sessions), and EVENT_PREPARE/FREEZE/CANCEL/FINISH move the
global state. At a live update the file table travels in LUO's image as one
pseudo-session, `rfc-v2`.
Unhappy paths: a file table the next kernel cannot rebuild (an unknown handler, a
duplicate token) is a Panic; ioctl errors are the core's (luofs/core/rfc_v2.py).
"""

from __future__ import annotations

from ..core import CarriedSession, LuoError, Request
from ..core.rfc_v2 import RfcV2Device, RfcV2Files
from .base import Panic
from .rfc import RfcPersonality

V2_SESSION = b"rfc-v2"  # RFC v2 has no sessions: its files travel as one in LUO's image


class V2Device:
    """dev/liveupdate as the FUSE layer drives it: any root opener, unsized structs."""

    sized = False
    has_sessions = False
    rebooting = False  # nothing is memoized for this device

    def __init__(self, device: RfcV2Device):
        self.device = device

    def open(self, flags: int, uid: int) -> None:
        # FUSE strips O_EXCL before open reaches us: only the shim could refuse it.
        self.device.open(flags, privileged=uid == 0)

    def close(self) -> None:
        pass

    def ioctl(self, request: Request, caller):
        return self.device.ioctl(request.cmd, None if request.arg_fault else request.arg, caller)


class RfcV2(RfcPersonality):
    name = "rfc-v2"
    profile = "rfc-v2"

    def __init__(self, parts, image=None, handed: dict | None = None):
        super().__init__(parts, image, handed)
        handed = handed or {}
        carried = [(f.token, f.compatible, f.data, handed.get(f.compatible, {}).get(f.data))
                   for s in (image.sessions if image else []) if s.name == V2_SESSION
                   for f in s.files]
        try:
            self.files = RfcV2Files(parts.handlers, lambda: self.state.state, incoming=carried)
        except LuoError as e:
            raise Panic(f"RFC v2 files: {e.reason}") from None
        self._device = V2Device(RfcV2Device(self.state, self.files))

    def _own_participants(self) -> list:
        return [self.files]

    def outgoing_files(self):
        return ((f"token {token:#x}", entry.file) for token, entry in self.files.outgoing.items())

    def _dropped(self) -> int:
        """The incoming pseudo-session, if a file of it was never restored."""
        return int(any(not entry.reclaimed for entry in self.files.incoming.values()))

    def _carried(self) -> list[CarriedSession]:
        return [CarriedSession(V2_SESSION, tuple(self.files.carried()))]

    @property
    def device(self) -> V2Device:
        return self._device

    def status(self) -> dict:
        out = super().status()
        out["files"] = {"outgoing": sorted(self.files.outgoing),
                        "incoming": sorted(self.files.incoming)}
        return out

"""Mainline LUO (spec/uapi.md): sessions on an exclusive dev/liveupdate, no global
state of its own (the `state` file shows the one the reboot path drives implicitly).

DOC: A mainline kernel registers LUO's subtree at boot with its number and no
sessions. At a live update the device layer freezes first, then every outgoing
session's files, all or nothing; LUO's image lists them. The next kernel checks only
the image's header at boot (number, session and file counts) and decodes the
sessions and files at the first open of dev/liveupdate, as the kernel deserializes
them then.
Unhappy paths: a refused freeze thaws the devices and the files (the caller sees the
LuoError); a hand-over without LUO's subtree or with a damaged header is a Panic at
boot; a damaged file list makes the first open, and every later one, fail with EIO.
"""

from __future__ import annotations

from kho import read_luo_header, KhoFormatError

from .. import device_adapter, trace
from ..core import Luo, LuoError, Request, Session
from ..core.serialize import incoming_sessions, luo_image
from ..fs.escape import escape_name
from ..fs.nodes import Dir, DynamicDir, Node, TextFile
from ..gcpause import gc_paused
from ..core.rfc_sysfs import render_state
from ..uapi import errnos
from . import incoming as inc
from .base import KernelParts, Panic, Personality


class MainlineDevice:
    """dev/liveupdate as the FUSE layer drives it: exclusive open, sized structs."""

    sized = True  # every argument starts with its u32 size
    has_sessions = True

    def __init__(self, luo: Luo):
        self.luo = luo

    @property
    def rebooting(self) -> bool:
        return self.luo.rebooting

    def open(self, flags: int, uid: int) -> None:
        self.luo.open_device()

    def close(self) -> None:
        self.luo.close_device()

    def ioctl(self, request: Request, caller):
        return self.luo.device_ioctl(request, caller)

    def session_ioctl(self, session: Session, request: Request, caller):
        return self.luo.session_ioctl(session, request, caller)

    def close_session(self, session: Session) -> None:
        self.luo.close_session(session)


class Mainline(Personality):
    name = "mainline"

    def __init__(self, parts: KernelParts, luo: Luo, incoming_sessions: int = 0):
        super().__init__(parts, luo.state)
        self.luo = luo
        self._unopened = incoming_sessions  # until the first open deserializes them
        self._device = MainlineDevice(luo)
        # Mainline registers LUO's subtree at boot, with the number and no sessions yet.
        parts.publish_luo(luo_image(parts.liveupdate_number, []))

    @classmethod
    def cold(cls, parts: KernelParts) -> "Mainline":
        return cls(parts, Luo(parts.handlers, liveupdate_number=parts.liveupdate_number,
                              faults=parts.faults))

    @classmethod
    def thaw(cls, parts: KernelParts, handover, sources: list) -> "Mainline":
        blob = inc.luo_blob(parts.incoming)
        if blob is None:
            raise Panic("KHO handover has no LUO subtree")
        try:
            header = read_luo_header(parts.memory, blob)
        except KhoFormatError as e:
            raise Panic(str(e)) from None
        inc.check_number(header.liveupdate_number, parts.liveupdate_number)
        inc.check_count(header.files, sources)

        def load_incoming():  # at the first open of the device
            with trace.Late(parts.liveupdate_number).span(
                    "decode incoming sessions (first open)", "luo", files=header.files):
                try:
                    image, handed = inc.decode(parts.memory, blob, parts.store, sources,
                                               parts.handlers)
                except Panic as e:  # every open of the device fails with EIO from now on
                    raise LuoError(errnos.EIO, str(e)) from None
                return incoming_sessions(image, parts.handlers, handed)

        return cls(parts, Luo(parts.handlers, liveupdate_number=parts.liveupdate_number,
                              load_incoming=load_incoming, updated=header.sessions > 0,
                              faults=parts.faults), header.sessions)

    # ---- what the file system serves -----------------------------------------------

    @property
    def device(self) -> MainlineDevice:
        return self._device

    def liveupdate_nodes(self, intern) -> dict[bytes, Node]:
        state = self.state
        return {
            b"state": TextFile(lambda: render_state(state.state), version=lambda: state.version),
            b"sessions": Dir(0o555, {
                b"outgoing": DynamicDir(lambda: self._session_dirs(intern, True), 0o555),
                b"incoming": DynamicDir(lambda: self._session_dirs(intern, False), 0o555),
            }),
        }

    def _session_dirs(self, intern, outgoing: bool) -> dict[bytes, Node]:
        # Keyed by the session object, not its name: a name can be reused by a new
        # session while the kernel still remembers the old one's inodes.
        return {escape_name(s.name): intern(("view", s), lambda s=s: _session_dir(intern, s))
                for s in self.luo.sessions if s.outgoing == outgoing}

    # ---- a live update -------------------------------------------------------------

    def outgoing_files(self):
        return ((f"session {s.name.decode(errors='backslashreplace')!r}", pf.file)
                for s in self.luo.sessions if s.outgoing and s.open
                for pf in s.files.values())

    @gc_paused()
    def freeze(self):
        self.refuse_lost_files()
        devices_blob = None
        if self.devices is not None:  # the device layer freezes first, all in one
            with trace.span("freeze devices", "device"):
                devices_blob = device_adapter.freeze(self.devices)
        try:
            carried = self.luo.reboot()
        except LuoError:
            if self.devices is not None:
                device_adapter.cancel(self.devices)
            raise
        trace.progress("writing the hand-over")
        with trace.span("write LUO's image", "luo"):
            image = luo_image(self.parts.liveupdate_number, carried, {})
        root = self.parts.finalize(image, devices_blob, self.undo_freeze)
        return self.parts.hand_over(root, carried, self._preserved_devices(), self._dropped())

    def _dropped(self) -> int:
        """Incoming sessions nobody finished: a reboot ends them (§14), unopened or not."""
        if not self.luo.incoming_loaded:
            return self._unopened
        return sum(1 for s in self.luo.sessions
                   if not s.outgoing and not (s.retrieved and not s.files))  # not finished

    def undo_freeze(self) -> None:
        if self.parts.handover.finalized:
            self.parts.handover.abort()
        self.luo.cancel_reboot()
        if self.devices is not None:
            device_adapter.cancel(self.devices)

    def _preserved_devices(self) -> tuple[str, ...]:
        return tuple(self.devices.preserved_paths()) if self.devices else ()

    # ---- luofs status --------------------------------------------------------------

    def status(self) -> dict:
        out = super().status()
        out["device_open"] = self.luo.device_open
        out["sessions"] = [
            {"name": escape_name(s.name).decode(), "direction": s.direction.value,
             "retrieved": s.retrieved, "files": len(s.files)} for s in self.luo.sessions]
        return out

    def device_state(self) -> str:
        return "frozen" if self.luo.rebooting else "normal"


def _session_dir(intern, s: Session) -> Node:
    def render_files() -> bytes:
        lines = [f"{pf.token:#x} {pf.handler.compatible}"
                 f"{' retrieved' if pf.retrieved and not s.outgoing else ''}\n"
                 for pf in s.files.values()]
        return "".join(lines).encode()

    def render_state() -> bytes:
        if s.outgoing:
            return b"outgoing\n"
        return b"retrieved\n" if s.retrieved else b"incoming\n"

    key = ("view", s)
    return Dir(0o555, {
        b"name": intern(key + ("name",), lambda: TextFile(lambda: s.name + b"\n")),
        b"state": intern(key + ("state",), lambda: TextFile(render_state)),
        b"files": intern(key + ("files",), lambda: TextFile(render_files)),
    })

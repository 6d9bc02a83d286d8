"""The kernel side of a live update: LUO's state out through KHO, and back in.

Old kernel: freeze (core), write LUO's image into preserved memory, finalize KHO,
and give the machine the root's address plus the preserved files themselves (their
fds, in image order) — never their contents. New kernel: validate the handover
(a bad one is a "panic": the kernel refuses to serve and says what is wrong),
reserve preserved memory, and rebuild sessions at the first open of the device.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from dataclasses import dataclass

from kho import (LUO_SUBTREE, Handover, IncomingHandover, KhoFormatError, LuoImage,
                 PhysicalMemory, read_luo, read_luo_header, write_luo)

from devices import (DeviceDrivers, DeviceParticipant, SocketTransport, incoming_images,
                     publish as publish_devices)

from .core import CarriedSession, HandlerRegistry, Luo, LuoError
from .core.faults import NONE, Faults
from .core.rfc_v2 import RfcV2Device, RfcV2Files
from .core.serialize import incoming_sessions, luo_image
from .core.state import Event, StateMachine
from .core.subsystems import SubsystemRegistry
from .fdutil import OwnedFile
from .gcpause import gc_paused
from .handlers import MemfdHandler
from .kho_records import KhoOut
from .vault import Keeper, Vault
from .subsystems import MmSubsystem
from .uapi import errnos

log = logging.getLogger("luofs.handover")


class Panic(Exception):
    """The previous kernel's data cannot be used; the real kernel would panic."""


PROFILES = ("mainline", "rfc-v1", "rfc-v2")
V2_SESSION = b"rfc-v2"  # RFC v2 has no sessions: its files travel as one in LUO's image


@dataclass
class Boot:
    """Everything a kernel process runs on: its memory, KHO, and the LUO of its profile.

    mainline: `luo` (sessions; its implicit state machine is `machine`).
    rfc-v1: the state machine and subsystems, driven through sysfs; no device.
    rfc-v2: the state machine, subsystems and `v2` (the device and its file table).
    """

    profile: str
    memory: PhysicalMemory
    handover: Handover
    kho: KhoOut
    machine: StateMachine
    liveupdate_number: int
    faults: Faults = NONE
    vault: Vault | None = None
    luo: Luo | None = None
    v2: RfcV2Device | None = None
    subsystems: SubsystemRegistry | None = None
    mm: MmSubsystem | None = None
    devices: DeviceDrivers | None = None
    device_participant: DeviceParticipant | None = None
    incoming: IncomingHandover | None = None
    incoming_image: LuoImage | None = None


def _publish_luo(handover: Handover, memory: PhysicalMemory, image: LuoImage | None) -> None:
    """(Re)register LUO's subtree, or drop it (`None`: nothing to hand over)."""
    if LUO_SUBTREE in handover.subtrees:
        handover.remove_subtree(LUO_SUBTREE)
    if image is not None:
        handover.add_subtree(LUO_SUBTREE, write_luo(memory, handover.preserved, image))


def _assemble(profile: str, memory: PhysicalMemory, faults: Faults, number: int,
              image: LuoImage | None = None, handed: dict | None = None,
              incoming: IncomingHandover | None = None, device_fd: int | None = None,
              vault: Vault | None = None, deferred=None, has_sessions: bool = False) -> Boot:
    """`deferred` (mainline): a call that decodes the image and matches the handed-over
    files at the first open of the device, as the kernel deserializes its sessions then;
    `has_sessions` says, from the image's header, whether there are any."""
    if profile not in PROFILES:
        raise ValueError(f"unknown ABI {profile!r}; known: {', '.join(PROFILES)}")
    handover = Handover(memory)
    kho = KhoOut(memory, handover)
    vault = vault or Vault()
    handlers = HandlerRegistry()
    handlers.register(MemfdHandler(kho, None, faults, vault), sessions_exist=False)
    _adopt(handlers, handed or {})
    if profile == "mainline":
        def load_incoming():
            if deferred is None:
                return incoming_sessions(image, handlers)
            try:
                decoded, files = deferred()
            except Panic as e:  # every open of the device fails with EIO from now on
                raise LuoError(errnos.EIO, str(e)) from None
            _adopt(handlers, files)
            return incoming_sessions(decoded, handlers)

        luo = Luo(handlers, liveupdate_number=number,
                  load_incoming=load_incoming if image or deferred else None,
                  updated=bool(image and image.sessions) or has_sessions, faults=faults)
        # Mainline registers LUO's subtree at boot, with the number and no sessions yet.
        _publish_luo(handover, memory, luo_image(number, []))
        boot = Boot(profile, memory, handover, kho, luo.state, number, faults, vault=vault,
                    luo=luo, incoming=incoming, incoming_image=image)
        _attach_devices(boot, device_fd, lambda: "frozen" if luo.rebooting else "normal")
        return boot

    def participants() -> list:  # read at each event: later registrations count
        devices = [boot.device_participant] if boot.device_participant else []
        return ([v2.files] if v2 else []) + registry.participants() + devices

    machine = StateMachine(profile, participants, updated=image is not None, faults=faults)
    registry = SubsystemRegistry(lambda: machine.state,
                                 incoming=image.subsystems if image else None, faults=faults)
    v2 = None
    if profile == "rfc-v2":
        carried = [(f.token, f.compatible, f.data)
                   for s in (image.sessions if image else []) for f in s.files]
        try:
            files = RfcV2Files(handlers, lambda: machine.state, incoming=carried)
        except LuoError as e:
            raise Panic(f"RFC v2 files: {e.reason}") from None
        v2 = RfcV2Device(machine, files)
    mm = MmSubsystem(memory, handover.preserved, number)
    mm.register(registry)
    boot = Boot(profile, memory, handover, kho, machine, number, faults, vault=vault, v2=v2,
                subsystems=registry, mm=mm, incoming=incoming, incoming_image=image)
    _attach_devices(boot, device_fd, lambda: str(machine.state))
    return boot


def _adopt(handlers: HandlerRegistry, handed: dict[str, dict[int, OwnedFile]]) -> None:
    """Give each handler the files handed over for it (by data handle)."""
    for compatible, files in handed.items():
        handler = handlers.by_compatible(compatible)
        if handler is not None and hasattr(handler, "adopt"):
            handler.adopt(files)
            continue
        log.warning("handed-over %s files have no handler here", compatible)
        for f in files.values():  # their sessions fail at first open (EIO)
            f.close()


def _attach_devices(boot: Boot, device_fd: int | None, luo_state) -> None:
    """Bind drivers to the machine's devices, re-attaching those the previous kernel
    handed over (a damaged devices subtree only means fresh probes, never a panic)."""
    if device_fd is None:
        return
    transport = SocketTransport(socket.socket(fileno=device_fd))
    boot.devices = DeviceDrivers(transport, boot.memory, boot.handover.preserved,
                                 luo_state=luo_state)
    if boot.luo is None:  # the RFCs run the device layer as a state-machine participant
        boot.device_participant = DeviceParticipant(boot.devices)
    report = boot.devices.boot(incoming_images(boot.incoming),
                               boot.incoming.preserved if boot.incoming else None)
    log.info("devices: %s", {k: len(v) for k, v in report.items()})


def cold_boot(ram_fd: int, faults: Faults = NONE, profile: str = "mainline",
              device_fd: int | None = None) -> Boot:
    return _assemble(profile, PhysicalMemory.adopt(ram_fd), faults, 0, device_fd=device_fd)


@gc_paused()
def handover_boot(ram_fd: int, root_phys: int, root_size: int, fds: list[int],
                  faults: Faults = NONE, profile: str = "mainline", number: int = 1,
                  device_fd: int | None = None, parked: list | None = None,
                  keepers: int = 0) -> Boot:
    """Rebuild from the previous kernel's hand-over; Panic if it cannot be trusted.

    Under the RFC profiles a hand-over without LUO's subtree is a plain kexec (the
    previous kernel was not PREPARED): the new kernel starts in NORMAL, and its
    number is the machine's count (`number`), there being no LUO data to count.
    """
    memory = PhysicalMemory.adopt(ram_fd)
    # The last `keepers` fds are the previous kernel's file keepers: adopt them, and the
    # files parked there (runs of [position in the image, keeper, first slot, count]).
    split = len(fds) - keepers
    vault = Vault(keepers=[Keeper(socket.socket(fileno=fd)) for fd in fds[split:]])
    sources = _sources(fds[:split], parked or [], vault)
    try:
        header = image = None
        try:
            incoming = IncomingHandover.load(memory, root_phys, root_size)
            blob = incoming.subtrees.get(LUO_SUBTREE)
            if profile == "mainline":
                if blob is None:
                    raise Panic("KHO handover has no LUO subtree")
                header = read_luo_header(memory, blob)
                count, sessions = header.files, header.sessions
                number = header.liveupdate_number + 1
            elif blob is not None:
                image = read_luo(memory, blob)
                count, sessions = sum(len(s.files) for s in image.sessions), len(image.sessions)
                number = image.liveupdate_number + 1
            else:
                count = sessions = 0
        except KhoFormatError as e:
            raise Panic(str(e)) from None
        if count != len(sources):
            raise Panic(f"LUO image lists {count} files but {len(sources)} were handed over")
        if header is not None:  # mainline: the files are decoded at the first open
            boot = _assemble(profile, memory, faults, number, None, None, incoming, device_fd,
                             vault, functools.partial(_decode_handed, memory, blob, sources, vault),
                             has_sessions=sessions > 0)
        else:
            handed = _match(image, _owned(sources, vault)) if image else {}
            boot = _assemble(profile, memory, faults, number, image, handed, incoming, device_fd,
                             vault)
    except Panic:
        _close(sources, vault)
        raise
    log.info("liveupdate number %d: %d incoming session(s), %d file(s)", number, sessions, count)
    return boot


def _sources(direct: list[int], parked: list, vault: Vault) -> list:
    """The handed-over files in image order: an fd held here, or a (keeper, slot)."""
    sources: list = []
    taken = 0
    try:
        for first, k, slot, count in parked:
            if first < len(sources) or first - len(sources) > len(direct) - taken:
                raise Panic(f"parked files at {first} overlap or outrun the direct ones")
            fill = first - len(sources)
            sources += direct[taken:taken + fill]
            taken += fill
            vault.keepers[k].count += count
            sources += [(k, s) for s in range(slot, slot + count)]
    except (IndexError, TypeError, ValueError, Panic) as e:
        for fd in direct:
            os.close(fd)
        raise e if isinstance(e, Panic) else Panic(f"malformed parked-file runs: {e}") from None
    sources += direct[taken:]
    vault.direct = len(direct)
    return sources


def _owned(sources: list, vault: Vault) -> list[OwnedFile]:
    return [OwnedFile(src, vault=vault) if src.__class__ is int
            else OwnedFile(-1, parked=src, vault=vault) for src in sources]


def _close(sources: list, vault: Vault) -> None:
    """Let go of handed-over files nobody will use: fds closed, parked ones dropped."""
    for src in sources:
        if src.__class__ is int:
            os.close(src)
    vault.drop_many([src for src in sources if src.__class__ is not int])
    vault.direct = 0


def _match(image: LuoImage, files: list[OwnedFile]) -> dict[str, dict[int, OwnedFile]]:
    """The handed-over files by handler and data handle, in the image's order (the
    counts agree: handover_boot checked them)."""
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


@gc_paused()
def _decode_handed(memory: PhysicalMemory, blob: bytes, sources: list, vault: Vault):
    """Mainline's first open: LUO's image decoded and the files matched to it."""
    try:
        try:
            image = read_luo(memory, blob)
        except KhoFormatError as e:
            raise Panic(str(e)) from None
        return image, _match(image, _owned(sources, vault))
    except Panic:
        _close(sources, vault)
        raise


def undo_reboot(boot: Boot) -> None:
    """The machine never got the hand-over: thaw everything and serve on, as after a
    refused freeze (a kernel must not stay frozen with nobody to take over)."""
    if boot.handover.finalized:
        boot.handover.abort()
    if boot.luo is not None:
        _undo_mainline(boot)()
    elif boot.machine.allowed(Event.CANCEL):
        boot.machine.cancel()


@gc_paused()
def reboot(boot: Boot) -> tuple[dict, list[int]]:
    """Freeze and write the hand-over; (message for the machine, fds to pass).

    On failure the old kernel keeps running with everything as it was (LuoError).
    """
    number = boot.liveupdate_number
    devices_blob = None
    if boot.luo is not None:
        if boot.devices is not None:  # mainline: the device layer freezes first, all in one
            devices_blob = boot.devices.freeze()
        try:
            carried = boot.luo.reboot()
        except LuoError:
            if boot.devices is not None:
                boot.devices.cancel()
            raise
        undo = _undo_mainline(boot)
        subsystems = {}
    elif boot.machine.reboot():  # RFC: PREPARED (or FROZEN) hands LUO data over
        carried = [CarriedSession(V2_SESSION, tuple(boot.v2.files.carried()))] if boot.v2 else []
        undo = boot.machine.cancel
        subsystems = boot.subsystems.export()
        if boot.device_participant is not None:
            devices_blob = boot.device_participant.blob
    else:  # RFC, not prepared: a plain kexec, nothing carried
        carried, undo, subsystems = None, None, {}
    try:
        boot.faults.check("kho.finalize")
        boot.kho.flush()
        _publish_luo(boot.handover, boot.memory,
                     None if carried is None else luo_image(number, carried, subsystems))
        publish_devices(boot.handover, devices_blob)
        root_phys, root_size = boot.handover.finalize()
    except LuoError:
        if undo:
            undo()
        raise
    except (MemoryError, OSError, ValueError) as e:
        if undo:
            undo()
        raise LuoError(errnos.ENOMEM if isinstance(e, MemoryError) else errnos.EIO,
                       f"KHO finalize failed: {e}") from None
    if "handover.corrupt" in boot.faults:  # damage in transit: flip the root's magic
        boot.memory.write(root_phys, b"\xde\xad")
    carried = carried or []
    fds, parked = _split_parked(f.file for s in carried for f in s.files)
    keepers = boot.vault.sockets() if parked else []
    message = {"root_phys": root_phys, "root_size": root_size, "liveupdate_number": number,
               "sessions": len(carried), "files": sum(len(s.files) for s in carried),
               "parked": parked,
               "keepers": len(keepers),
               "devices": boot.devices.preserved_paths() if boot.devices else []}
    return message, fds + keepers


def _split_parked(files) -> tuple[list[int], list[list[int]]]:
    """The fds of files held here, and the parked ones as runs of [first position in the
    image, keeper, first slot, count]: files are parked in the order they are preserved,
    so 100,000 make a handful of runs."""
    fds: list[int] = []
    runs: list[list[int]] = []
    last = [-2, -1, -2, 0]
    for i, file in enumerate(files):
        ref = file.parked
        if ref is None:
            fds.append(file.fd)
        elif last[0] + last[3] == i and last[1] == ref[0] and last[2] + last[3] == ref[1]:
            last[3] += 1
        else:
            last = [i, ref[0], ref[1], 1]
            runs.append(last)
    return fds, runs


def _undo_mainline(boot: Boot):
    def undo() -> None:
        boot.luo.cancel_reboot()
        if boot.devices is not None:
            boot.devices.cancel()
    return undo


def shut_devices_down(boot: Boot) -> None:
    """device_shutdown() at the kexec, once the machine has the hand-over: every device
    that is not preserved stops (its in-flight work is lost, as on hardware)."""
    if boot.devices is not None:
        boot.devices.shutdown()

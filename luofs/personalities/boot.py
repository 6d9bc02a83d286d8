"""Bringing a personality up: cold, or from the previous kernel's hand-over.

DOC: `cold_boot()` starts kernel #0 (or a kernel after a cold restart) on emulated
RAM; `handover_boot()` rebuilds from a HandOver and its fd groups: the files held
directly and the keepers' sockets become the file store, KHO's root is validated,
and the personality thaws. Either way the devices, if the machine has any, are then
bound to their drivers, re-attached where the previous kernel preserved them.
Unhappy paths: anything the next kernel cannot trust is a Panic, and every fd the
hand-over brought is closed or dropped; a damaged devices subtree only means fresh
probes (never a panic).
"""

from __future__ import annotations

import logging

from kho import PhysicalMemory

from .. import device_adapter, trace
from ..core.faults import NONE, Faults
from ..filestore import FileStore
from ..gcpause import gc_paused
from ..protocol import FILES, KEEPERS, HandOver
from . import incoming as inc
from . import load
from .base import KernelParts, Panic, Personality
from .rfc import RfcPersonality

log = logging.getLogger("luofs.personality")


def cold_boot(abi: str, ram_fd: int, faults: Faults = NONE,
              device_fd: int | None = None) -> Personality:
    parts = KernelParts.build(PhysicalMemory.adopt(ram_fd), faults, 0)
    personality = load(abi).cold(parts)
    _attach_devices(personality, device_fd)
    return personality


@gc_paused()
def handover_boot(abi: str, ram_fd: int, handover: HandOver, fds: dict[str, list[int]],
                  faults: Faults = NONE, device_fd: int | None = None) -> Personality:
    """Rebuild from the previous kernel's hand-over; Panic if it cannot be trusted."""
    cls = load(abi)
    memory = PhysicalMemory.adopt(ram_fd)
    try:
        with trace.span("adopt the handed-over files", "kernel"):
            store, sources = FileStore.adopt(fds.get(FILES, []), handover.parked,
                                             fds.get(KEEPERS, []), handover.keeper_pids)
    except ValueError as e:
        raise Panic(str(e)) from None
    try:
        with trace.span("load KHO's root", "kho"):
            incoming = inc.load_root(memory, handover.root_phys, handover.root_size)
        parts = KernelParts.build(memory, faults, handover.next_number, store, incoming)
        with trace.span(f"thaw ({abi})", "luo"):
            personality = cls.thaw(parts, handover, sources)
    except Panic:
        store.release(sources)
        raise
    log.info("liveupdate number %d: %d incoming session(s), %d file(s)",
             handover.next_number, handover.sessions, handover.files)
    dead = store.dead_keepers()
    if dead:
        personality.lost_at_boot = _lost_with(parts, handover, dead)
        log.error("files lost with their keepers: %s", personality.lost_at_boot)
    _attach_devices(personality, device_fd)
    return personality


def _lost_with(parts: KernelParts, handover: HandOver, dead: set[int]) -> dict:
    """What the hand-over brought in keepers that died on the way: how many files, and
    which sessions they belong to (from LUO's image, when it reads)."""
    lost = {p for run in handover.parked if run.keeper in dead
            for p in range(run.first, run.first + run.count)}
    sessions: dict[str, int] = {}
    blob = inc.luo_blob(parts.incoming)
    try:
        image = inc.read_image(parts.memory, blob) if blob is not None else None
    except Panic:  # mainline reads it again at the first open, and fails there
        image = None
    at = 0
    for s in image.sessions if image else ():
        n = sum(1 for p in range(at, at + len(s.files)) if p in lost)
        if n:
            sessions[s.name.decode(errors="backslashreplace")] = n
        at += len(s.files)
    return {"files": len(lost), "sessions": sessions}


def _attach_devices(personality: Personality, device_fd: int | None) -> None:
    """Bind drivers to the machine's devices, re-attaching those the previous kernel
    handed over (a damaged devices subtree only means fresh probes, never a panic)."""
    parts = personality.parts
    if device_fd is None:
        return
    with trace.span("attach devices", "device"):
        personality.devices = device_adapter.attach(
            parts.memory, parts.handover.preserved, device_fd, parts.incoming,
            personality.device_state, trace.Late(parts.liveupdate_number))
    if personality.devices is not None and isinstance(personality, RfcPersonality):
        personality.device_participant = device_adapter.DeviceParticipant(personality.devices)

"""The machine's live update: load the next kernel, prepare the participants, freeze,
hand over, bring the next kernel up, and let the successors take over.

The next kernel is loaded before the freeze (it imports and waits, as `kexec -l`
loads an image), so the blackout holds only the freeze, the hand-over and the next
kernel's rebuild; the successors take over after it, on a thread of their own
(participants.Resuming), while the machine serves on and holds the reply back.

Unhappy paths: a participant or a freeze callback that refuses leaves the old kernel
serving (Error with the errno; prepared participants are told to cancel); a kernel
that dies mid-freeze loses what it held (Error; the machine has no kernel then); a
next kernel that dies while reloading is replaced RELOAD_RETRIES times, the hand-over
kept; one that panics is the machine's panic.
"""

from __future__ import annotations

import errno
import logging

from . import participants, protocol, trace, userspace
from .control import stopped_note
from .kernel_process import KERNEL_STOP_TIMEOUT, KernelError, KernelPanic, KernelProcess
from .mounts import detach_mount
from .protocol import Error, HandOver, KexecDone
from .protocol_kernel import MountRoot, Ready, Reboot, Unmounted

log = logging.getLogger("luofs.machine")

RELOAD_RETRIES = 2  # a kernel that dies while reloading is replaced, the hand-over kept


def refusal(machine) -> Error | None:
    """Why no live update can start now, or None."""
    if machine.resuming is not None:
        return Error("the previous live update's successors are still taking over",
                     errno.EBUSY)
    if machine.kernel is None:
        return Error(f"no kernel is running ({machine.panic or 'stopped'}); "
                     "`luofs boot` starts a fresh one")
    return None


def kexec(machine):
    """The live update (refusal() has found nothing in its way): KexecDone, or Error."""
    old = machine.kernel
    stopped = stopped_note(old.proc.pid)
    if stopped:  # it could not freeze, and might wake up in the middle of a hand-over
        return Error(f"kernel #{old.number} (pid {old.proc.pid}) cannot freeze{stopped}; "
                     "nothing was changed")
    machine.updates.phase("loading the next kernel")
    with trace.span("load the next kernel", "machine"):
        nxt = machine._load(old.number + 1)  # loaded before the freeze: not in the blackout
    try:  # user-space participants (a VMM) get ready first: luofs/participants.py
        machine.updates.phase("preparing participants")
        number = machine.updates.number
        with trace.span("participants prepare", "machine"):
            update = (participants.prepare(machine.state, number)
                      if machine.kernel_config.abi == "mainline"  # RFC: the kernel's kvm
                      else participants.Update([], machine.state, number))
    except participants.Refused as e:
        machine.standby = nxt  # nothing reached it: still the next kernel
        trace.instant("refused", "machine", error=str(e))
        return Error(str(e), e.errno)
    written_before = _records_written(machine)
    machine.updates.phase("freezing")
    t_freeze = trace.clock()
    handover, fds = _freeze(machine, old, nxt)
    if not isinstance(handover, HandOver):
        update.cancel()
        trace.instant("refused" if handover.errno else "failed", "machine",
                      error=handover.error)
        return handover  # the refusal (the old kernel serves on) or the loss
    t_reply = trace.clock()
    machine.userspace.end()  # the old kernel's userspace ends with it, as at a reboot
    trace.instant("end the old userspace", "machine")
    nxt.number = handover.next_number
    try:
        machine.updates.phase("handing over")
        sent = _hand_over(machine, old, nxt, handover, fds)
        t_handed = trace.clock()
        machine.kernel = None
        machine.updates.phase("starting the next kernel")
        nxt, ready = _bring_up(machine, nxt, handover, fds, sent)
    except KernelError as e:
        machine.panic = str(e)
        log.error("kernel #%d did not come up: %s", nxt.number, e)
        return Error(str(e))
    finally:
        protocol.close_fds(fds)
        old.kill()  # (when the next kernel went ahead, its exit did not hold anything up)
    machine.kernel = nxt
    t_ready = trace.clock()
    written_after = _records_written(machine)
    blackout_records = {label: written_after[label] - n
                        for label, n in written_before.items()}
    trace.complete("ask the old kernel to freeze", "machine", t_freeze, t_reply,
                   sessions=handover.sessions, files=handover.files)
    trace.complete("hand over", "machine", t_reply, t_handed)
    trace.complete("next kernel comes up", "machine", t_handed, t_ready)
    trace.complete("blackout", "machine", t_freeze, t_ready, records=blackout_records)
    userspace.adopt_next(machine)  # (a userspace made ahead of time gets this kernel's files)
    # The successors take over (on a thread: one may need the machine meanwhile);
    # the standby kernel's start and the old userspace's end wait until they have.
    machine.updates.phase("resuming participants")
    machine.resuming = participants.Resuming(update)
    machine.kexecs += 1
    machine.last_blackout_ms = round((t_ready - t_freeze) / 1e6, 3)
    log.info("kexec to #%d: hand-over %.1f ms, old kernel unmounted %.1f ms, next kernel "
             "serving %.1f ms; blackout %.1f ms", nxt.number, (t_reply - t_freeze) / 1e6,
             (t_handed - t_reply) / 1e6, (t_ready - t_handed) / 1e6, machine.last_blackout_ms)
    if ready.lost:
        log.error("kexec to #%d lost files with their keepers: %s", nxt.number, ready.lost)
    return KexecDone(
        liveupdate_number=nxt.number, sessions=handover.sessions, files=handover.files,
        blackout_ms=machine.last_blackout_ms, freeze_ms=round((t_handed - t_freeze) / 1e6, 3),
        start_ms=round((t_ready - t_handed) / 1e6, 3), blackout_records=blackout_records,
        dropped=handover.dropped, lost=ready.lost)

def _freeze(machine, old: KernelProcess, nxt: KernelProcess):
    """Ask the running kernel to freeze: (HandOver, its fds), or (Error, {}) with the
    next kernel dropped — the old one serves on, or died and lost what it held."""
    old.on_progress = machine.updates.forward
    try:
        reply, fds = old.ask(Reboot(machine.updates.progress_ms))
    except KernelError as e:
        reply, fds = Error(str(e)), {}
    finally:
        old.on_progress = None
    if isinstance(reply, HandOver):
        return reply, fds
    protocol.close_fds(fds)
    nxt.kill()
    if reply is None:  # it died mid-freeze: nothing was handed over
        machine.kernel_died()
        return Error(f"kernel #{old.number} died during the freeze; "
                     f"preserved state is lost ({machine.panic})"), {}
    if not isinstance(reply, Error):
        reply = Error(f"kernel #{old.number} answered the freeze with {reply.TAG}")
    return reply, {}

def _hand_over(machine, old: KernelProcess, nxt: KernelProcess, handover: HandOver,
               fds: dict) -> bool:
    """The next kernel rebuilds from the hand-over while the old one unmounts, and
    mounts once the mount point is free; True if its boot went ahead so. Not with
    devices: their drivers must see the old kernel stop before the next one attaches."""
    sent = machine.devices is None and machine._send_boot(nxt, handover, fds, hold=True)
    try:
        with trace.span("old kernel unmounts", "machine"):
            unmounted = old.expect(Unmounted, KERNEL_STOP_TIMEOUT)
        trace.recorder().adopt(unmounted.trace)  # its lines are written after the update
    except KernelError as e:
        log.warning("old kernel after the hand-over: %s; detaching its mount", e)
        detach_mount(machine.root)
    if sent:  # the mount point is free: the next kernel need not wait for the old exit
        try:
            protocol.send(nxt.sock, MountRoot())
        except OSError:
            pass  # what it said before it went (a panic, say) is read in _start
    else:
        with trace.span("old kernel is killed", "machine"):
            old.kill()
    if machine.devices is not None:  # interrupts latch until the next drivers attach
        with trace.span("devices: interrupts latch", "machine",
                        preserved=list(handover.devices)):
            machine.devices.kexec(list(handover.devices))
    return sent

def _bring_up(machine, nxt: KernelProcess, handover: HandOver, fds: dict,
              sent: bool) -> tuple[KernelProcess, Ready]:
    """The hand-over is complete: the machine keeps the files until a kernel has
    them, so a next kernel that dies while reloading is simply replaced."""
    for attempt in range(RELOAD_RETRIES + 1):
        try:
            return nxt, machine._start(nxt, handover, fds, sent=sent)
        except KernelPanic:
            raise
        except KernelError as e:
            if attempt == RELOAD_RETRIES:
                raise
            log.error("%s while reloading; starting another kernel", e)
            trace.instant("next kernel died while reloading", "machine", error=str(e))
            nxt = machine._load(nxt.number)
            sent = False
    raise AssertionError("unreachable")

def _records_written(machine) -> dict[str, int]:
    if machine.devices is None:
        return {}
    return {d["label"]: d["records_written"] for d in machine.devices.status()
            if d.get("kind") == "dma"}

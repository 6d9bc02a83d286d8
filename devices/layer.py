"""``dev_liveupdate``: the device layer's part of a live update (spec/rfc.md §6, RFC v1).

Phases and their order, as one table (the moves are :data:`TRANSITIONS`; a move that is
not there is EBUSY):

=========  ==============  =============================================================
phase      allowed from    what runs
=========  ==============  =============================================================
prepare    idle            collect requested devices plus ancestors, deepest first; per
                           device the driver's ``prepare`` then the bus's; ``preserved``
                           is set once both succeeded. On a failure every callback that
                           succeeded gets ``cancel``, in exactly the reverse order, and
                           the flags are as before.
reboot     prepared        the same list and order with ``reboot`` (RFC v1's name; RFC v2
                           calls the LUO event FREEZE). A failure cancels *every* device
                           of the list in reverse (all were prepared), as v1's notifier
                           chain sends CANCEL to all on a REBOOT error.
cancel     prepared,       ``cancel`` for the whole list in reverse (bus, then driver, per
           rebooted        device); ``preserved`` cleared.
finish     (new kernel)    every ``preserved`` device deepest first: warn if it was not
                           reclaimed, driver ``finish`` then bus ``finish``, clear
                           ``preserved`` and ``reclaimed``.
=========  ==============  =============================================================

Half: drivers (the kernel process). Unhappy paths: every refusal is DeviceError — EBUSY
for a move the table does not have or a previous update not finished, the callback's
errno for a veto (EIO for a callback that raised something else), EINVAL for
reclaiming a device that was not preserved; ``cancel`` and ``finish`` callbacks that
raise are logged and the rest goes on.

Deviations, on purpose: FINISH keeps ``requested`` (the user's policy for the next
update; RFC v1 cleared "flags" without saying which), and the new kernel sets
``reclaimed`` when a driver re-attaches (v1 had no setter, so it always read 0).
"""

from __future__ import annotations

import logging
from enum import Enum
from typing import Callable

from luofs.unwind import do_all

from .errors import EBUSY, EINVAL, EIO, DeviceError
from .model import (Device, DeviceTree, collect_for_update, deepest_first, parse_bool,
                    set_requested)

log = logging.getLogger("devices.layer")

PHASES = ("prepare", "reboot")  # the callbacks that may fail (and may have faults injected)
TARGETS = ("driver", "bus")


class LayerState(Enum):
    IDLE = "idle"
    PREPARED = "prepared"
    REBOOTED = "rebooted"

    def __str__(self) -> str:  # as the messages say it: "… while idle"
        return self.value


class Step(Enum):
    PREPARE = "prepare"
    REBOOT = "reboot"
    CANCEL = "cancel"
    FINISH = "finish"


#: (state, step) → the state the step leaves on success. A pair that is not here is an
#: illegal move, EBUSY. FINISH belongs to the new kernel and leaves the layer idle; a failed
#: prepare leaves it idle, a failed reboot cancels (idle again).
TRANSITIONS = {
    (LayerState.IDLE, Step.PREPARE): LayerState.PREPARED,
    (LayerState.PREPARED, Step.REBOOT): LayerState.REBOOTED,
    (LayerState.PREPARED, Step.CANCEL): LayerState.IDLE,
    (LayerState.REBOOTED, Step.CANCEL): LayerState.IDLE,
    (LayerState.IDLE, Step.FINISH): LayerState.IDLE,
}

Trace = Callable[[str, str, Device], None]


class DevLiveupdate:
    """The device layer of one kernel. Not thread-safe: the kernel calls it from one thread.

    ``luo_state`` returns LUO's global state (``normal``, ``prepared``, ``frozen``,
    ``updated``); under the mainline ABI, which has none, pass ``lambda: "normal"``.
    ``trace(phase, target, device)`` is called before every callback, for tests
    and debugging; ``events.span(name, **args)`` (see :mod:`devices.drivers`) times
    each callback, for a live update's trace.
    """

    def __init__(self, tree: DeviceTree, luo_state: Callable[[], str] = lambda: "normal",
                 trace: Trace | None = None, events=None):
        self.tree = tree
        self.luo_state = luo_state
        self.trace = trace
        self.events = events
        self.state = LayerState.IDLE
        self.devices: list[Device] = []  # the update's devices, deepest first
        self._faults: dict[tuple[str, str, str], int] = {}

    # -- sysfs -----------------------------------------------------------------------

    def set_requested(self, device: Device, value: bool) -> None:
        set_requested(device, value, self.luo_state())

    def store_requested(self, device: Device, buf: bytes) -> None:
        """A write of ``buf`` to ``liveupdate/requested`` (``echo 1 > …``)."""
        self.set_requested(device, parse_bool(buf))

    # -- fault injection -------------------------------------------------------------

    def fail_at(self, path: str, phase: str, errno: int, target: str = "driver") -> None:
        """Make ``target``'s ``phase`` callback for the device at ``path`` fail with ``errno``."""
        if phase not in PHASES or target not in TARGETS:
            raise ValueError(f"fail_at: phase must be one of {PHASES} and target one of "
                             f"{TARGETS}, not {phase!r}/{target!r}")
        device = self.tree.get(path)
        if self._ops(device, target) is None:
            raise ValueError(f"fail_at: {path} has no {target} with liveupdate callbacks")
        self._faults[(path, phase, target)] = errno

    def clear_faults(self) -> None:
        self._faults.clear()

    # -- the old kernel --------------------------------------------------------------

    def prepare(self) -> list[Device]:
        """Prepare every device of the update; returns them, deepest first."""
        after = self._move(Step.PREPARE)
        stale = [d.path for d in self.tree if d.lu.preserved]
        if stale:
            raise DeviceError(EBUSY, f"the previous live update is not finished: "
                                     f"{', '.join(stale)} still preserved")
        devices = collect_for_update(self.tree)
        do_all(devices, self._prepare_one, self._unprepare_one)
        self.devices = devices
        self.state = after
        return list(devices)

    def _prepare_one(self, device: Device) -> list[bool]:
        """Driver then bus; which of the two ran. A failing bus undoes the driver here."""
        ran = do_all(TARGETS, lambda target: self._call(device, "prepare", target),
                     lambda target, did: self._cancel_if(did, device, target))
        device.lu.preserved = True
        return ran

    def _unprepare_one(self, device: Device, ran: list[bool]) -> None:
        for target, did in reversed(list(zip(TARGETS, ran))):
            self._cancel_if(did, device, target)
        device.lu.preserved = False

    def _cancel_if(self, prepared: bool, device: Device, target: str) -> None:
        """Only a callback whose prepare ran gets cancel (a missing one is not called)."""
        if prepared:
            self._call(device, "cancel", target)

    def reboot(self) -> list[Device]:
        """The kexec itself is about to happen: ``reboot`` callbacks, same order.

        Not a "do all, undo in reverse": a failure cancels *every* device of the update,
        the failing one and those not reached too, since all of them were prepared.
        """
        after = self._move(Step.REBOOT)
        try:
            for device in self.devices:
                for target in TARGETS:
                    self._call(device, "reboot", target)
        except DeviceError:
            self.cancel()
            raise
        self.state = after
        return list(self.devices)

    def cancel(self) -> None:
        """Back out of prepare (or reboot): cancel all in reverse; flags as before."""
        after = self._move(Step.CANCEL)
        for device in reversed(self.devices):
            for target in reversed(TARGETS):
                self._call(device, "cancel", target)
            device.lu.preserved = False
        self.devices = []
        self.state = after

    def shutdown_order(self) -> list[Device]:
        """What ``device_shutdown()`` shuts down at the kexec: every device that is not
        preserved, children before parents (preserved ones are skipped)."""
        return [d for d in deepest_first(reversed(list(self.tree))) if not d.lu.preserved]

    # -- the new kernel --------------------------------------------------------------

    def adopt(self, device: Device) -> None:
        """The previous kernel preserved ``device``: it stays requested and preserved."""
        device.lu.requested = device.lu.preserved = True
        device.lu.depth = device.depth

    def reclaimed(self, device: Device) -> None:
        """The device's driver re-attached to it from its handed-over state."""
        if not device.lu.preserved:
            raise DeviceError(EINVAL, f"{device.path} was not preserved; nothing to reclaim")
        device.lu.reclaimed = True

    @property
    def pending_finish(self) -> bool:
        """True while devices handed over by the previous kernel await :meth:`finish`."""
        return self.state is LayerState.IDLE and any(d.lu.preserved for d in self.tree)

    def finish(self) -> list[Device]:
        """Finish the update that brought this kernel up; returns the unreclaimed devices."""
        if (self.state, Step.FINISH) not in TRANSITIONS:
            raise DeviceError(EBUSY, f"the device layer is {self.state}; cancel first")
        devices = deepest_first(d for d in self.tree if d.lu.preserved)
        unreclaimed = [d for d in devices if not d.lu.reclaimed]
        for device in unreclaimed:
            log.warning("%s was preserved but no driver reclaimed it", device.path)
        for device in devices:
            for target in TARGETS:
                self._call(device, "finish", target)
            device.lu.preserved = device.lu.reclaimed = False
        return unreclaimed

    # -- helpers ---------------------------------------------------------------------

    def _move(self, step: Step) -> LayerState:
        """The state ``step`` leads to from here; EBUSY if the table has no such move."""
        after = TRANSITIONS.get((self.state, step))
        if after is None:
            raise DeviceError(EBUSY, f"device layer: {step.value} is not possible while "
                                     f"{self.state}")
        return after

    @staticmethod
    def _ops(device: Device, target: str):
        owner = device.driver if target == "driver" else device.bus
        return None if owner is None else owner.liveupdate

    def _call(self, device: Device, phase: str, target: str) -> bool:
        """Run one callback; True if it ran and succeeded. Only prepare/reboot may fail."""
        ops = self._ops(device, target)
        if ops is None:
            return False
        callback = getattr(ops, phase)
        fault = self._faults.get((device.path, phase, target))
        if callback is None and fault is None:
            return False
        if self.trace is not None:
            self.trace(phase, target, device)
        if fault is not None:
            raise DeviceError(fault, f"{target} {phase} of {device.path}: fault injected")
        if self.events is None:
            return self._run(device, phase, target, callback)
        with self.events.span(f"{target} {phase} {device.label or device.path}", "device",
                              path=device.path):
            return self._run(device, phase, target, callback)

    def _run(self, device: Device, phase: str, target: str, callback) -> bool:
        if phase in PHASES:
            try:
                callback(device)
            except DeviceError:
                raise
            except Exception as e:  # a driver bug must still unwind cleanly
                log.exception("%s %s of %s failed", target, phase, device.path)
                raise DeviceError(EIO, f"{target} {phase} of {device.path}: {e}") from e
            return True
        try:
            callback(device)
        except Exception:  # finish and cancel cannot fail: warn and go on
            log.exception("%s %s of %s failed; ignored", target, phase, device.path)
        return True

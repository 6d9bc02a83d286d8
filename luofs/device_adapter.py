"""The kernel process's one seam to ``devices/``: driving the device layer from LUO.

``devices/`` stands alone and speaks :class:`~devices.errors.DeviceError`; the LUO side
speaks :class:`~luofs.core.LuoError`. Everything the kernel process does with its
devices goes through here, and this is the only place one error becomes the other
(same errno, same reason, so users see exactly what the device layer said):

* :func:`attach` — at boot, bind drivers to the machine's devices over the device
  socket, re-attaching those the previous kernel handed over;
* :class:`DeviceParticipant` — the device layer as a participant of the RFC
  profiles' global state machine;
* :func:`freeze` / :func:`cancel` — mainline's calls (it has no global state
  machine: the device layer freezes first, and is cancelled if the rest fails);
* :func:`sysfs_tree` — the ``sys/devices`` and ``sys/bus`` entries for ``fs/``, whose
  ``requested`` writes fail with the device layer's errno;
* :func:`publish` — the devices subtree into this kernel's KHO hand-over.

Unhappy paths: a damaged devices subtree only means fresh probes (logged, never a
panic); a machine that does not answer the device socket fails the boot (EIO); a
device veto at prepare/freeze refuses the live update with the device's errno, and
the device layer is left as before.
"""

from __future__ import annotations

import functools
import logging
import socket
from contextlib import contextmanager
from dataclasses import replace
from typing import Callable

from devices.drivers import DeviceDrivers, incoming_images, publish
from devices.errors import DeviceError
from devices.layer import LayerState
from devices.sysfs import Attribute, sysfs_tree as _device_sysfs_tree
from devices.transport import SocketTransport

from .core.errors import LuoError

__all__ = ["DeviceDrivers", "DeviceParticipant", "attach", "cancel", "freeze", "luo_errors",
           "publish", "sysfs_tree"]

log = logging.getLogger("luofs.device_adapter")


@contextmanager
def luo_errors():
    """Inside, a DeviceError leaves as the LuoError with the same errno and reason."""
    try:
        yield
    except DeviceError as e:
        raise LuoError(e.errno, e.reason) from e


def attach(memory, preserved, device_fd: int | None, incoming,
           luo_state: Callable[[], str], events=None) -> DeviceDrivers | None:
    """The kernel's drivers for the machine's devices (None without a device socket).

    ``memory``: this kernel's PhysicalMemory; ``preserved``: the PreservedMemory of the
    hand-over it is building; ``incoming``: the IncomingHandover it booted from (None
    after a cold boot); ``luo_state()``: LUO's global state, for ``requested`` writes;
    ``events``: where the drivers' spans go (luofs.trace.Late, for a live update's trace).
    """
    if device_fd is None:
        return None
    drivers = DeviceDrivers(SocketTransport(socket.socket(fileno=device_fd)), memory,
                            preserved, luo_state=luo_state, events=events)
    with luo_errors():
        report = drivers.boot(incoming_images(incoming),
                              incoming.preserved if incoming is not None else None)
    log.info("devices: %s", {k: len(v) for k, v in report.items()})
    return drivers


def freeze(drivers: DeviceDrivers) -> bytes | None:
    """Mainline: prepare + reboot the device layer in one go; its KHO subtree."""
    with luo_errors():
        return drivers.freeze()


def cancel(drivers: DeviceDrivers) -> None:
    """Undo :func:`freeze` (the rest of the live update failed); devices run on here."""
    with luo_errors():
        drivers.cancel()


def sysfs_tree(drivers: DeviceDrivers) -> dict:
    """The device layer's sysfs entries (see :func:`devices.sysfs.sysfs_tree`), with
    every store converting its DeviceError."""
    return _converted(_device_sysfs_tree(drivers.layer))


def _converted(entry):
    if isinstance(entry, dict):
        return {name: _converted(child) for name, child in entry.items()}
    if isinstance(entry, Attribute) and entry.store is not None:
        return replace(entry, store=functools.partial(_store, entry.store))
    return entry


def _store(store, buf: bytes) -> None:
    with luo_errors():
        store(buf)


class DeviceParticipant:
    """The device layer as a participant of LUO's global state machine
    (``luofs.core.state.GlobalState``: prepare/freeze/cancel/finish, prepare and
    freeze veto with LuoError, cancel and finish never fail).

    ``freeze`` is RFC v1's REBOOT: its KHO subtree is left in :attr:`blob` for the
    reboot path to publish. Under the mainline profile a kernel that was handed
    devices but no sessions never sees FINISH, so ``prepare`` finishes the previous
    update first, as :meth:`DeviceDrivers.freeze` does.
    """

    name = "dev_liveupdate"

    def __init__(self, drivers: DeviceDrivers):
        self.drivers = drivers
        self.blob: bytes | None = None

    def prepare(self) -> None:
        self.blob = None
        with luo_errors():
            if self.drivers.layer.pending_finish:
                self.drivers.finish()
            self.drivers.prepare()

    def freeze(self) -> None:
        with luo_errors():
            self.blob = self.drivers.reboot()  # on failure the layer has cancelled itself

    def cancel(self) -> None:
        self.blob = None
        if self.drivers.layer.state is not LayerState.IDLE:
            with luo_errors():
                self.drivers.cancel()

    def finish(self) -> None:
        with luo_errors():
            self.drivers.finish()

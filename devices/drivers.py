"""The kernel process's devices: enumeration, driver binding, interrupts, live update.

:class:`DeviceDrivers` is what a kernel holds: it asks the machine what hardware
there is, builds the device tree, binds a driver to each device — re-attaching
from the previous kernel's hand-over where there is one, probing fresh otherwise —
and services interrupts in a thread of its own (the kernel's trio loop is never
involved). For a live update it drives :class:`~devices.layer.DevLiveupdate` and
returns the KHO subtree; at the kexec it shuts down what is not preserved.

Call order in the old kernel (``luofs/device_adapter.py`` wraps the first three for
LUO's global state machine)::

    drivers.prepare()            # or freeze() = [finish()] + prepare() + reboot()
    blob = drivers.reboot()      # KHO subtree bytes, None if nothing is preserved
    publish(handover, blob)      # then KHO finalize; on any failure: drivers.cancel()
    paths = drivers.shutdown()   # the point of no return; paths for DeviceHost.kexec

and in the new one: ``drivers.boot(incoming_images(incoming), incoming.preserved)``.

``events``, if given, times what a live update's trace shows: an object with
``span(name, cat, **args)`` (a context manager whose ``set(**args)`` adds to it) and
``instant(name, cat, **args)``. Spans: each layer callback, each device's re-attach
or probe, the service of what latched in the blackout; instant: the first interrupt
the service thread takes after the boot.

Half: drivers (the kernel process).

Unhappy paths: a device whose hand-over cannot be used (wrong path or compatible,
damaged state, reset meanwhile) is probed fresh (``fallback``); a failed probe leaves
it unbound; a damaged devices subtree is logged and every device starts fresh
(:func:`incoming_images`); a refused prepare or reboot raises DeviceError with the
layer as before (interrupts re-attached); a failed shutdown of one device is logged
and the others go on; an interrupt handler that raises is logged and the thread
serves on. A machine that does not answer makes :meth:`DeviceDrivers.boot` fail
with DeviceError (EIO).
"""

from __future__ import annotations

import logging
import os
import selectors
import threading

from kho.errors import KhoFormatError
from luofs.trace import NO_SPAN  # a leaf, as luofs.unwind is to the layer

from .dma_driver import DmaDriver
from .errors import DeviceError
from .layer import DevLiveupdate
from .model import Device, DeviceTree
from .pci import BridgeDriver, PciBus
from .spec import ROOT_NAME, DeviceConfig
from .state import DEVICES_SUBTREE, DeviceImage, build_devices_fdt, parse_devices_fdt
from .transport import DeviceClient

log = logging.getLogger("devices.drivers")

#: With no interrupt for this long, the service thread drains anyway (a watchdog, so a
#: lost wake-up can only delay records, never strand them).
WATCHDOG_S = 0.1


class DeviceDrivers:
    def __init__(self, transport, memory, preserved, *, luo_state=lambda: "normal",
                 on_records=None, trace=None, irq_thread: bool = True, events=None):
        """``memory``: this kernel's PhysicalMemory; ``preserved``: the PreservedMemory of
        the hand-over this kernel is building (``boot.handover.preserved``)."""
        self.client = DeviceClient(transport)
        self.memory = memory
        self.preserved = preserved
        self.events = events or _NO_EVENTS
        self.tree = DeviceTree()
        self.layer = DevLiveupdate(self.tree, luo_state, trace, events)
        self.bus = PciBus()
        self.configs: dict[str, DeviceConfig] = {}
        self._drivers = {
            ("dma", True): DmaDriver(self.client, memory, preserved, on_records=on_records),
            ("dma", False): DmaDriver(self.client, memory, preserved, liveupdate=False,
                                      on_records=on_records),
            ("bridge", True): BridgeDriver(self.client),
            ("bridge", False): BridgeDriver(self.client, liveupdate=False),
        }
        self._use_irq_thread = irq_thread
        self._irq: _ServiceThread | None = None
        self.report: dict[str, list[str]] = {}

    # -- boot ------------------------------------------------------------------------

    def boot(self, incoming: list[DeviceImage] | None = None, incoming_preserved=None) -> dict:
        """Enumerate, then bind parents before children. Returns what happened per device:
        ``reclaimed``, ``probed`` (fresh), ``fallback`` (hand-over unusable, probed
        fresh), ``unbound`` (probe failed)."""
        configs = self.client.list()
        if configs:
            self.tree.add(Device(ROOT_NAME))
        for config in configs:
            self.configs[config.path] = config
            parent = self.tree.get(config.parent)
            self.tree.add(Device(config.name, parent, bus=self.bus, label=config.label,
                                 kind=config.kind))
        images = {image.label: image for image in incoming or ()}
        report = {"reclaimed": [], "probed": [], "fallback": [], "unbound": []}
        for dev in self.tree:
            config = self.configs.get(dev.path)
            if config is None:
                continue  # the root complex: no driver
            driver = self._drivers[(config.kind, config.lu)]
            image = images.pop(dev.label, None)
            if image is not None and (image.path != dev.path
                                      or image.compatible != driver.compatible):
                log.warning("hand-over for %s describes %s (%s), not this device; ignored",
                            dev.label, image.path, image.compatible)
                image = None
            if image is not None:
                self.layer.adopt(dev)
                try:
                    with self.events.span(f"re-attach {dev.label}", "device",
                                          path=dev.path) as span:
                        driver.reattach(dev, config, image.state, incoming_preserved)
                        span.set(latched_irqs=getattr(dev.driver_data, "latched_at_attach", 0))
                except (DeviceError, KhoFormatError) as e:
                    log.warning("%s: cannot re-attach (%s); probing it fresh", dev.path, e)
                    report["fallback"].append(dev.path)
                else:
                    dev.driver = driver
                    self.layer.reclaimed(dev)
                    report["reclaimed"].append(dev.path)
                    continue
            try:
                with self.events.span(f"probe {dev.label or dev.path}", "device", path=dev.path):
                    driver.probe(dev, config)
            except DeviceError as e:
                log.error("%s: probe failed: %s", dev.path, e)
                report["unbound"].append(dev.path)
                continue
            dev.driver = driver
            if image is None:
                report["probed"].append(dev.path)
        for label in images:
            log.warning("hand-over names device %s, which this machine does not have", label)
        for dev in self.tree:
            config = self.configs.get(dev.path)
            if config is not None and config.fail and dev.driver and dev.driver.liveupdate:
                self.layer.fail_at(dev.path, config.fail[0], config.fail[1])
        with self.events.span("service what latched", "device") as span:
            # what arrived during the blackout, and the latched interrupts
            span.set(records=self.service_all())
        self._start_irq()
        self.report = report
        return report

    # -- interrupts ------------------------------------------------------------------

    def dma_devices(self) -> list[Device]:
        return [d for d in self.tree if isinstance(d.driver, DmaDriver)
                and d.driver_data is not None]

    def service_all(self) -> int:
        """Run every DMA device's interrupt handler once (also used by the watchdog)."""
        return sum(dev.driver.service(dev) for dev in self.dma_devices()
                   if dev.driver.irq_fd(dev) is not None)

    def stop_service(self) -> None:
        """Stop the interrupt thread (``service_all`` still works, by hand)."""
        self._stop_irq()

    def _start_irq(self) -> None:
        if self._use_irq_thread and self._irq is None:
            sources = [(dev.driver.irq_fd(dev), dev) for dev in self.dma_devices()
                       if dev.driver.irq_fd(dev) is not None]
            self._irq = _ServiceThread(sources, self.events)

    def _stop_irq(self) -> None:
        if self._irq is not None:
            self._irq.stop()
            self._irq = None

    # -- live update -----------------------------------------------------------------

    def prepare(self) -> list[str]:
        return [d.path for d in self.layer.prepare()]

    def reboot(self) -> bytes | None:
        """Stop servicing, run the reboot callbacks; the KHO subtree (None: nothing kept)."""
        self._stop_irq()
        try:
            devices = self.layer.reboot()
        except DeviceError:
            self._start_irq()  # the layer cancelled: interrupts are attached again
            raise
        images = []
        for dev in devices:
            state = dev.driver.kho_state(dev) if dev.driver is not None else None
            if state is not None:
                images.append(DeviceImage(dev.label, dev.path, dev.driver.compatible, state))
        return build_devices_fdt(images) if images else None

    def freeze(self) -> bytes | None:
        """prepare + reboot in one go, as the mainline reboot path does. A previous update
        not finished yet (mainline has no FINISH event) is finished first."""
        if self.layer.pending_finish:
            self.finish()
        self.layer.prepare()
        return self.reboot()

    def cancel(self) -> None:
        """Undo prepare/reboot (the live update was refused); devices run on here."""
        self.layer.cancel()
        self._start_irq()

    def finish(self) -> list[str]:
        """The device layer's FINISH; returns preserved devices no driver reclaimed."""
        return [d.path for d in self.layer.finish()]

    def preserved_paths(self) -> list[str]:
        return [d.path for d in self.layer.devices]

    def shutdown(self) -> list[str]:
        """``device_shutdown()`` at the kexec: stop every device that is not preserved, close
        everything of this kernel's. Returns the preserved paths (for the machine)."""
        self._stop_irq()
        for dev in self.layer.shutdown_order():
            if dev.driver is not None:
                try:
                    dev.driver.shutdown(dev)
                except DeviceError as e:
                    log.warning("%s: shutdown failed: %s", dev.path, e)
        for dev in self.layer.devices:
            if dev.driver is not None:
                dev.driver.release(dev)
        return self.preserved_paths()

    def close(self) -> None:
        """The kernel process ends without a live update: just let go (devices run on)."""
        self._stop_irq()
        for dev in self.tree:
            if dev.driver is not None:
                dev.driver.release(dev)

    # -- status ----------------------------------------------------------------------

    def status(self) -> list[dict]:
        out = []
        for dev in self.tree:
            entry = {"path": dev.path, "label": dev.label or None,
                     "driver": dev.driver.name if dev.driver else None,
                     "requested": dev.lu.requested, "preserved": dev.lu.preserved,
                     "reclaimed": dev.lu.reclaimed}
            if dev.driver is not None:
                entry.update(dev.driver.info(dev))
            out.append(entry)
        return out


def publish(handover, blob: bytes | None) -> None:
    """(Re)register the devices subtree in this kernel's KHO ``handover`` (before finalize);
    ``None`` removes it."""
    if DEVICES_SUBTREE in handover.subtrees:
        handover.remove_subtree(DEVICES_SUBTREE)
    if blob is not None:
        handover.add_subtree(DEVICES_SUBTREE, blob)


def incoming_images(incoming) -> list[DeviceImage]:
    """The device states in an ``IncomingHandover`` (none after a cold boot). A damaged
    subtree is logged and ignored — its devices are probed fresh, not a panic."""
    blob = None if incoming is None else incoming.subtrees.get(DEVICES_SUBTREE)
    if blob is None:
        return []
    try:
        return parse_devices_fdt(blob)
    except KhoFormatError as e:
        log.error("the devices hand-over is unusable (%s); every device starts fresh", e)
        return []


class _NoEvents:
    def span(self, _name: str, _cat: str = "", **_args):
        return NO_SPAN

    def instant(self, _name: str, _cat: str = "", **_args) -> None:
        pass


_NO_EVENTS = _NoEvents()


class _ServiceThread:
    """One thread waiting on every DMA device's eventfd; runs the handler of each that fires."""

    def __init__(self, sources: list[tuple[int, Device]], events):
        self._events = events  # until the first interrupt is taken
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake, selectors.EVENT_READ, None)
        self._devices = [dev for _, dev in sources]
        for fd, dev in sources:
            self._selector.register(fd, selectors.EVENT_READ, dev)
        self._thread = threading.Thread(target=self._run, name="device-irq", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            events = self._selector.select(WATCHDOG_S)
            if any(key.data is None for key, _ in events):
                return
            ready = [key.data for key, _ in events] if events else self._devices
            if events and self._events is not None:
                self._events.instant("first interrupt", "device",
                                     device=ready[0].label or ready[0].path)
                self._events = None
            for dev in ready:
                try:
                    dev.driver.service(dev)
                except Exception:
                    log.exception("%s: interrupt service failed", dev.path)

    def stop(self) -> None:
        os.eventfd_write(self._wake, 1)
        self._thread.join()
        self._selector.close()
        os.close(self._wake)

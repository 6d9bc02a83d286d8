"""The machine's side of devices: the hardware that outlives every kernel.

:class:`DeviceHost` owns the emulated devices of a :class:`~devices.spec.Topology`
(bridges and DMA engines), answers the kernel's requests about them, and is told
by the machine when a kernel goes away. It never allocates RAM: drivers program
it with memory their kernel allocated.

Requests are small JSON-able dicts, one reply each, so any transport carries
them (see :mod:`devices.transport`). Every request names a device by its sysfs
path (``"device": "pci0000:00/0000:00:01.0/0000:01:00.0"``); failures are
``{"ok": False, "errno": n, "error": "…"}``.

==============  ====================================================================
op              reply (and fds)
==============  ====================================================================
device-list     ``devices``: every device's :meth:`DeviceConfig.to_message`, parents
                first
device-attach   a driver binds: DMA engines answer with fds ``[bar, eventfd]`` and
                ``pending`` (latched interrupts delivered into the new eventfd);
                bridges answer with ``enabled`` and no fds
device-detach   stop routing interrupts (they latch from now on); ``latched``: what
                the eventfd still held
device-reset    forget everything (a bridge resets everything behind it, as a
                secondary bus reset does); ``epoch`` is the new reset count
device-start    DMA engine: latch the registers and run (EINVAL if they are bad);
                bridge: enable forwarding
device-stop     DMA engine: pause (keeps position); bridge: disable forwarding
device-info     the device's counters
==============  ====================================================================

The fds of a reply are the host's own: a transport sends copies (SCM_RIGHTS
does) and never closes them.

Half: hardware (the machine process).

Unhappy paths: an unknown op is EINVAL, an unknown device ENODEV, bad registers at
``device-start`` EINVAL, all as error replies (the host never raises to the
transport); at a kexec, a device that is neither preserved nor shut down by the old
kernel is reset, with a warning.
"""

from __future__ import annotations

import logging
import threading

from .dma_engine import DmaEngine
from .errors import EINVAL, ENODEV, DeviceError
from .spec import ROOT_NAME, DeviceConfig, Topology, parse_spec

log = logging.getLogger("devices.host")


class Bridge:
    """A PCI bridge: forwards its children's DMA while enabled; a reset resets them too."""

    kind = "bridge"

    def __init__(self, config: DeviceConfig):
        self.config = config
        self.enabled = False
        self.epoch = 1
        self.resets = 0

    @property
    def label(self) -> str:
        return self.config.label

    def info(self) -> dict:
        return {"label": self.label, "kind": "bridge", "path": self.config.path,
                "enabled": self.enabled, "epoch": self.epoch, "resets": self.resets,
                "secondary_bus": self.config.secondary_bus}


class DeviceHost:
    """All emulated devices of one machine; thread-safe (one lock for requests)."""

    def __init__(self, ram, topology: Topology | str | None, *, tick: float | None = None,
                 start_clocks: bool = True):
        if not isinstance(topology, Topology):
            topology = parse_spec(topology)
        self.topology = topology
        self.ram = ram
        self._lock = threading.RLock()
        self.devices: dict[str, Bridge | DmaEngine] = {}
        for number, config in enumerate(topology.devices, start=1):
            if config.kind == "bridge":
                self.devices[config.path] = Bridge(config)
            else:
                self.devices[config.path] = DmaEngine(
                    config, ram, number, upstream_ok=self._upstream_check(config), tick=tick)
        if start_clocks:
            self.start_clocks()

    def start_clocks(self) -> None:
        for device in self.devices.values():
            if isinstance(device, DmaEngine):
                device.start_clock()

    # -- lookup ----------------------------------------------------------------------

    def _upstream_check(self, config: DeviceConfig):
        def upstream_ok() -> bool:  # every bridge above the device forwards
            path = config.parent
            while path != ROOT_NAME:
                bridge = self.devices[path]
                if not bridge.enabled:
                    return False
                path = bridge.config.parent
            return True
        return upstream_ok

    def device(self, label_or_path: str):
        """The device with this label (``dma0``) or path; KeyError if there is none."""
        found = self.devices.get(label_or_path)
        if found is None:
            found = next((d for d in self.devices.values() if d.label == label_or_path), None)
        if found is None:
            raise KeyError(label_or_path)
        return found

    def engine(self, label_or_path: str) -> DmaEngine:
        device = self.device(label_or_path)
        if not isinstance(device, DmaEngine):
            raise KeyError(f"{label_or_path} is not a DMA engine")
        return device

    def _below(self, path: str) -> list:
        prefix = path + "/"
        return [d for p, d in self.devices.items() if p.startswith(prefix)]

    # -- requests --------------------------------------------------------------------

    def handle(self, message: dict) -> tuple[dict, list[int]]:
        """Answer one request: (reply, fds lent for sending)."""
        op = message.get("op")
        try:
            with self._lock:
                if op == "device-list":
                    return {"ok": True, "devices": [c.to_message() for c in
                                                    self.topology.devices]}, []
                handler = _OPS.get(op)
                if handler is None:
                    raise DeviceError(EINVAL, f"unknown device op {op!r}")
                path = message.get("device")
                device = self.devices.get(path) if isinstance(path, str) else None
                if device is None:
                    raise DeviceError(ENODEV, f"no device {path!r}")
                return handler(self, device)
        except DeviceError as e:
            return {"ok": False, "errno": e.errno, "error": e.reason}, []

    def _attach(self, device) -> tuple[dict, list[int]]:
        if isinstance(device, Bridge):
            return {"ok": True, "enabled": device.enabled, "epoch": device.epoch}, []
        fd, pending = device.attach_irq()
        return ({"ok": True, "pending": pending, "epoch": device.epoch,
                 "device_id": device.device_id}, [device.bar.fd, fd])

    def _detach(self, device) -> tuple[dict, list[int]]:
        latched = 0 if isinstance(device, Bridge) else device.detach_irq()
        return {"ok": True, "latched": latched}, []

    def _reset(self, device) -> tuple[dict, list[int]]:
        self._reset_device(device)
        return {"ok": True, "epoch": device.epoch}, []

    def _reset_device(self, device) -> None:
        if isinstance(device, Bridge):
            for child in self._below(device.config.path):  # secondary bus reset
                self._reset_one(child)
        self._reset_one(device)

    @staticmethod
    def _reset_one(device) -> None:
        if isinstance(device, Bridge):
            device.enabled = False
            device.epoch += 1
            device.resets += 1
        else:
            device.reset()

    def _start(self, device) -> tuple[dict, list[int]]:
        if isinstance(device, Bridge):
            device.enabled = True
        else:
            try:
                device.start()
            except ValueError as e:
                raise DeviceError(EINVAL, f"{device.label}: {e}") from None
        return {"ok": True}, []

    def _stop(self, device) -> tuple[dict, list[int]]:
        if isinstance(device, Bridge):
            device.enabled = False
        else:
            device.stop()
        return {"ok": True}, []

    def _info(self, device) -> tuple[dict, list[int]]:
        return {"ok": True, "info": device.info()}, []

    # -- the machine's calls ---------------------------------------------------------

    def status(self) -> list[dict]:
        """Per-device counters, for ``luofs status``."""
        with self._lock:
            return [device.info() for device in self.devices.values()]

    def kexec(self, preserved_paths=()) -> dict:
        """The old kernel has handed over. Detach every interrupt (they latch until the
        next kernel's drivers attach) and reset any device that is not preserved but
        still runs — the old kernel's shutdown should have done that."""
        preserved = set(preserved_paths)
        reset = []
        with self._lock:
            for path, device in self.devices.items():
                if path in preserved:
                    if isinstance(device, DmaEngine):
                        device.detach_irq()
                    continue
                busy = device.enabled or (isinstance(device, DmaEngine) and device.irq_attached)
                carries = any(p.startswith(path + "/") for p in preserved)
                if busy and not carries:
                    log.warning("%s was not shut down by the old kernel; resetting it", path)
                    self._reset_device(device)
                    reset.append(path)
        return {"reset": reset}

    def kernel_gone(self) -> None:
        """A kernel died: nobody serves interrupts any more, so they latch."""
        with self._lock:
            for device in self.devices.values():
                if isinstance(device, DmaEngine):
                    device.detach_irq()

    def reset_all(self) -> None:
        """Cold boot: every device forgets everything (before RAM is cleared)."""
        with self._lock:
            for device in self.devices.values():
                self._reset_one(device)

    def close(self) -> None:
        with self._lock:
            for device in self.devices.values():
                if isinstance(device, DmaEngine):
                    device.close()


_OPS = {
    "device-attach": DeviceHost._attach,
    "device-detach": DeviceHost._detach,
    "device-reset": DeviceHost._reset,
    "device-start": DeviceHost._start,
    "device-stop": DeviceHost._stop,
    "device-info": DeviceHost._info,
}

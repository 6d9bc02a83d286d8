"""The kernel's PCI bus and its bridge driver (``pcieport``).

A bridge matters to a live update because it carries its children's DMA: a reset
bridge stops forwarding and resets everything behind it. So a bridge above a
preserved device is preserved too (the device layer adds all ancestors), is not
shut down at the kexec, and the next kernel re-attaches it without a reset.

Half: drivers (the kernel process).

Unhappy paths: a hand-over whose secondary bus differs from the machine's is
KhoFormatError, a bridge reset since the hand-over is DeviceError (ENODEV); either
way the caller probes the bridge fresh.
"""

from __future__ import annotations

from kho.errors import KhoFormatError

from .errors import ENODEV, DeviceError
from .model import Bus, Device, Driver, LiveupdateOps
from .spec import DeviceConfig
from .state import BRIDGE_COMPATIBLE, BridgeState, decode_bridge_state, encode_bridge_state
from .transport import DeviceClient


class PciBus(Bus):
    """The ``pci`` bus type. Its liveupdate callbacks have nothing to save (config space
    lives on in the machine) but exist, so PCI devices can be requested; ``calls``
    counts them."""

    def __init__(self):
        self.calls = dict.fromkeys(("prepare", "reboot", "finish", "cancel"), 0)
        super().__init__("pci", LiveupdateOps(*(self._counter(phase) for phase in self.calls)))

    def _counter(self, phase: str):
        def callback(dev: Device) -> None:
            self.calls[phase] += 1
        return callback


class BridgeData:
    def __init__(self, secondary_bus: int):
        self.secondary_bus = secondary_bus
        self.saved: bytes | None = None


class BridgeDriver(Driver):
    compatible = BRIDGE_COMPATIBLE

    def __init__(self, client: DeviceClient, *, liveupdate: bool = True):
        ops = LiveupdateOps(prepare=None, reboot=self._reboot, cancel=self._cancel)
        super().__init__("pcieport", ops if liveupdate else None)
        self.client = client

    def probe(self, dev: Device, config: DeviceConfig) -> None:
        """Reset the bridge (and so everything behind it), then enable forwarding."""
        self.client.simple("device-reset", dev.path)
        self.client.simple("device-start", dev.path)
        dev.driver_data = BridgeData(config.secondary_bus)

    def reattach(self, dev: Device, config: DeviceConfig, data: bytes,
                 incoming_preserved=None) -> None:
        state = decode_bridge_state(data)
        if state.secondary_bus != config.secondary_bus:
            raise KhoFormatError(f"{dev.path}: hand-over says secondary bus "
                                 f"{state.secondary_bus}, the bridge has {config.secondary_bus}")
        reply = self.client.simple("device-attach", dev.path)
        if state.enabled and not reply["enabled"]:
            raise DeviceError(ENODEV, f"{dev.path} was reset since the hand-over")
        dev.driver_data = BridgeData(config.secondary_bus)

    def shutdown(self, dev: Device) -> None:
        self.client.simple("device-reset", dev.path)

    def remove(self, dev: Device) -> None:
        self.shutdown(dev)
        dev.driver_data = None

    def release(self, dev: Device) -> None:
        pass

    def _reboot(self, dev: Device) -> None:
        data: BridgeData = dev.driver_data
        data.saved = encode_bridge_state(BridgeState(data.secondary_bus, enabled=True))

    def _cancel(self, dev: Device) -> None:
        dev.driver_data.saved = None

    def kho_state(self, dev: Device) -> bytes | None:
        data: BridgeData | None = dev.driver_data
        return None if data is None else data.saved

    def info(self, dev: Device) -> dict:
        data: BridgeData | None = dev.driver_data
        return {} if data is None else {"secondary_bus": data.secondary_bus}

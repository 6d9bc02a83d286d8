"""The kernel's view of devices: buses, drivers, the device tree and the per-device
liveupdate flags of RFC v1's ``dev_liveupdate`` (spec/rfc.md §6), with its rules.

Everything here is data and pure rules, no I/O. A :class:`Device` is the kernel's
``struct device``: it lives in one kernel process and is rebuilt by the next one
(the hardware it stands for lives on in the machine process). A :class:`Driver`
and a :class:`Bus` may carry :class:`LiveupdateOps`, the emulator's
``struct dev_liveupdate_cbs``; ``None`` means "no liveupdate support", which is
what makes a device (or anything below it) impossible to request.

Half: drivers (the kernel process).

Unhappy paths: building a malformed tree (bad name, a name twice, an unregistered
parent) is ValueError, a bug; an unknown path is DeviceError (ENODEV); the rules
say no with DeviceError (EINVAL): not a boolean, LUO not normal, no liveupdate
callbacks on the device or an ancestor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

from .errors import EINVAL, ENODEV, DeviceError

#: The LUO states in which ``requested`` may change (rfc.md §6: normal only).
WRITABLE_STATES = ("normal",)

Callback = Callable[["Device"], None]


@dataclass(frozen=True)
class LiveupdateOps:
    """``struct dev_liveupdate_cbs``: four optional callbacks, each given the device.

    ``prepare`` and ``reboot`` fail by raising :class:`DeviceError` (the kernel's
    negative errno); ``finish`` and ``cancel`` must not fail — if they raise
    anyway, the layer logs it and goes on, as the kernel only warns.
    """

    prepare: Callback | None = None
    reboot: Callback | None = None
    finish: Callback | None = None
    cancel: Callback | None = None


@dataclass(eq=False)
class Bus:
    name: str
    liveupdate: LiveupdateOps | None = None


@dataclass(eq=False)
class Driver:
    """A driver as the device layer sees it: a name and maybe liveupdate callbacks."""

    name: str
    liveupdate: LiveupdateOps | None = None


@dataclass
class LiveupdateFlags:
    """``struct dev_liveupdate``: three bits and the depth recorded at prepare."""

    requested: bool = False
    preserved: bool = False
    reclaimed: bool = False
    depth: int = 0


@dataclass(eq=False)
class Device:
    """``struct device``: a name under its parent, maybe on a bus, maybe bound to a driver."""

    name: str
    parent: Device | None = None
    bus: Bus | None = None
    driver: Driver | None = None
    label: str = ""            # the machine's label (dma0), also the KHO node name
    kind: str = ""             # the hardware kind (bridge, dma), or "" for the root complex
    driver_data: object = None
    lu: LiveupdateFlags = field(default_factory=LiveupdateFlags)
    children: list[Device] = field(default_factory=list)

    def __post_init__(self):
        if not self.name or "/" in self.name or self.name in (".", ".."):
            raise ValueError(f"{self.name!r} is not a device name")
        if self.parent is not None:
            if any(child.name == self.name for child in self.parent.children):
                raise ValueError(f"{self.parent.path} already has a device {self.name!r}")
            self.parent.children.append(self)

    @property
    def path(self) -> str:
        """Path under ``sys/devices``: ``pci0000:00/0000:00:01.0/0000:01:00.0``."""
        return self.name if self.parent is None else f"{self.parent.path}/{self.name}"

    @property
    def depth(self) -> int:
        """Hops to the root: the root complex has depth 0."""
        return 0 if self.parent is None else self.parent.depth + 1

    def ancestry(self) -> Iterator[Device]:
        """The device itself, then its parent, up to the root."""
        device = self
        while device is not None:
            yield device
            device = device.parent

    def __repr__(self):
        return f"<Device {self.path}>"


class DeviceTree:
    """All devices of one kernel, in registration order (parents before children)."""

    def __init__(self):
        self._devices: dict[str, Device] = {}

    def add(self, device: Device) -> Device:
        if device.parent is not None and self._devices.get(device.parent.path) is not device.parent:
            raise ValueError(f"{device.path}: its parent is not registered")
        if device.path in self._devices:
            raise ValueError(f"{device.path} is registered twice")
        self._devices[device.path] = device
        return device

    def get(self, path: str) -> Device:
        try:
            return self._devices[path]
        except KeyError:
            raise DeviceError(ENODEV, f"no device {path}") from None

    def by_label(self, label: str) -> Device | None:
        return next((d for d in self._devices.values() if d.label == label), None)

    def __iter__(self) -> Iterator[Device]:
        return iter(list(self._devices.values()))

    def __len__(self) -> int:
        return len(self._devices)

    def __contains__(self, path: str) -> bool:
        return path in self._devices

    def on_bus(self, bus: str) -> list[Device]:
        return [d for d in self._devices.values() if d.bus is not None and d.bus.name == bus]


# -- rules ---------------------------------------------------------------------------

def parse_bool(buf: bytes) -> bool:
    """The kernel's ``kstrtobool``: 1/y/t/on → True, 0/n/f/off → False, else EINVAL.

    Only the first character (two for on/off) counts, so ``1\\n`` and ``yes`` work.
    """
    text = bytes(buf)
    first = text[:1].lower()
    if first in (b"1", b"y", b"t"):
        return True
    if first in (b"0", b"n", b"f"):
        return False
    if first == b"o" and text[1:2].lower() in (b"n", b"f"):
        return text[1:2].lower() == b"n"
    raise DeviceError(EINVAL, f"{text[:16]!r} is not a boolean (1/0, y/n, on/off)")


def missing_callbacks(device: Device) -> str | None:
    """Why ``device`` cannot be requested, or None if it can.

    The device and every ancestor that has a driver or a bus must have
    liveupdate callbacks on each of them (rfc.md §6). A device with neither
    (the root complex) is neutral.
    """
    for node in device.ancestry():
        if node.driver is not None and node.driver.liveupdate is None:
            return f"driver {node.driver.name} of {node.path} has no liveupdate callbacks"
        if node.bus is not None and node.bus.liveupdate is None:
            return f"bus {node.bus.name} of {node.path} has no liveupdate callbacks"
    return None


def set_requested(device: Device, value: bool, luo_state: str) -> None:
    """A write to ``liveupdate/requested``.

    Order of checks: the LUO state first (any write outside ``normal`` is
    EINVAL, even of the current value), then "same value" (a no-op), then the
    callbacks up the ancestry (EINVAL) for a 1.
    """
    if luo_state not in WRITABLE_STATES:
        raise DeviceError(EINVAL,
                          f"{device.path}: liveupdate/requested can change only while LUO is "
                          f"normal (it is {luo_state})")
    if device.lu.requested == value:
        return
    if value:
        reason = missing_callbacks(device)
        if reason is not None:
            raise DeviceError(EINVAL, f"{device.path} cannot be requested: {reason}")
    device.lu.requested = value


def collect_for_update(tree: DeviceTree) -> list[Device]:
    """Every requested device plus all its ancestors, deepest first.

    Ties (same depth) keep registration order, so the order is stable from one
    run to the next; each device's ``lu.depth`` is recorded, as the kernel does.
    """
    chosen: dict[str, Device] = {}
    for device in tree:
        if device.lu.requested:
            for node in device.ancestry():
                chosen.setdefault(node.path, node)
    order = {path: index for index, path in enumerate(d.path for d in tree)}
    devices = sorted(chosen.values(), key=lambda d: (-d.depth, order.get(d.path, 0)))
    for device in devices:
        device.lu.depth = device.depth
    return devices


def deepest_first(devices) -> list[Device]:
    devices = list(devices)
    index = {id(d): i for i, d in enumerate(devices)}
    return sorted(devices, key=lambda d: (-d.depth, index[id(d)]))

"""The device part of sysfs, as data: what ``sys/devices`` and ``sys/bus`` hold.

The FUSE layer turns this into nodes; nothing here does I/O. Layout::

    sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0/liveupdate/requested   0644
                                                               /preserved   0444
                                                               /reclaimed   0444
    sys/bus/pci/devices/0000:01:00.0 -> ../../../devices/pci0000:00/0000:00:01.0/0000:01:00.0

Every device directory has ``liveupdate/`` (RFC v1 creates the group for every
device while LUO is enabled), the root complex included. Files read ``0\\n`` or
``1\\n``; a write to ``requested`` goes through :meth:`DevLiveupdate.store_requested`
and fails with the DeviceError's errno.

Half: drivers (the kernel process). Unhappy paths: a bad or refused write is
DeviceError (EINVAL: not a boolean, LUO not normal, no liveupdate callbacks up the
ancestry); the kernel process's adapter turns it into the file system's errno.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .layer import DevLiveupdate
from .model import Device

ATTRIBUTE_MODES = {"requested": 0o644, "preserved": 0o444, "reclaimed": 0o444}


@dataclass(frozen=True)
class Attribute:
    mode: int
    render: Callable[[], bytes]
    store: Callable[[bytes], None] | None = None


@dataclass(frozen=True)
class Link:
    """A symbolic link; ``target`` is relative to the link's directory."""

    target: str


def liveupdate_attributes(layer: DevLiveupdate, device: Device) -> dict[str, Attribute]:
    """The three files of ``<device>/liveupdate/``."""
    def flag(name: str) -> Callable[[], bytes]:
        return lambda: b"1\n" if getattr(device.lu, name) else b"0\n"

    return {
        "requested": Attribute(ATTRIBUTE_MODES["requested"], flag("requested"),
                               lambda buf: layer.store_requested(device, buf)),
        "preserved": Attribute(ATTRIBUTE_MODES["preserved"], flag("preserved")),
        "reclaimed": Attribute(ATTRIBUTE_MODES["reclaimed"], flag("reclaimed")),
    }


def bus_link(device: Device) -> Link:
    """``sys/bus/<bus>/devices/<name>`` → the device's directory."""
    return Link("../../../devices/" + device.path)


def sysfs_tree(layer: DevLiveupdate) -> dict:
    """Nested dicts (directories) of Attribute and Link leaves, rooted at ``sys/``:
    ``{"devices": {...}, "bus": {"pci": {"devices": {...}}}}``."""
    devices: dict = {}
    buses: dict = {}
    for device in layer.tree:
        directory = devices
        for part in device.path.split("/"):
            directory = directory.setdefault(part, {})
        directory["liveupdate"] = liveupdate_attributes(layer, device)
        if device.bus is not None:
            buses.setdefault(device.bus.name, {"devices": {}})["devices"][device.name] = \
                bus_link(device)
    return {"devices": devices, "bus": buses}


def resolve(tree: dict, path: str):
    """The entry at ``path`` (``devices/pci0000:00/…/liveupdate/requested``) of a
    :func:`sysfs_tree`; KeyError if there is none."""
    node = tree
    for part in path.strip("/").split("/"):
        node = node[part]
    return node

"""Emulated devices that keep working across a live update, and RFC v1's device layer.

Two halves, one per process (DESIGN.md "Processes"):

* the machine (survives every kexec): :class:`DeviceHost` owns the hardware —
  PCI bridges and :class:`DmaEngine` s writing sequence-numbered records into rings
  in RAM through an IOMMU (:func:`translate`), raising interrupts on eventfds and
  latching them while no kernel listens;
* a kernel (replaced at each kexec): :class:`DeviceDrivers` enumerates the
  hardware, binds drivers (re-attaching from the KHO hand-over where it can),
  services interrupts, and runs :class:`DevLiveupdate` — per-device
  ``requested/preserved/reclaimed`` and callbacks deepest first, driver then bus,
  cancel in reverse (spec/rfc.md §6).

They talk through small JSON requests (:meth:`DeviceHost.handle`) carried by a
transport (:class:`SocketTransport`, :func:`serve_connection`), share RAM, and
the device's registers and interrupt travel as fds. Nothing here imports pyfuse3
or trio.
"""

from .dma_driver import DmaDriver
from .dma_engine import DmaEngine
from .drivers import DeviceDrivers, DeviceParticipant, incoming_images, publish
from .host import DeviceHost
from .iommu import IommuFault, IoPageTable, translate
from .layer import DevLiveupdate
from .model import (Bus, Device, DeviceTree, Driver, LiveupdateFlags, LiveupdateOps,
                    collect_for_update, missing_callbacks, parse_bool, set_requested)
from .pci import BridgeDriver, PciBus
from .ram import RamView
from .ring import RECORD_SIZE, Record, pack_records, unpack_records
from .spec import DEFAULT_SPEC, DeviceConfig, Topology, parse_spec
from .state import (DEVICES_SUBTREE, DeviceImage, DmaState, build_devices_fdt,
                    decode_dma_state, describe_devices_fdt, encode_dma_state, parse_devices_fdt)
from .sysfs import Attribute, Link, liveupdate_attributes, sysfs_tree
from .transport import (DeviceClient, LoopbackTransport, SocketTransport, TransportError,
                        serve_connection, start_server)

__all__ = [
    # specification of the hardware
    "DEFAULT_SPEC", "DeviceConfig", "Topology", "parse_spec",
    # machine side
    "DeviceHost", "DmaEngine", "RamView", "IommuFault", "translate",
    # kernel side
    "DeviceDrivers", "DeviceParticipant", "publish", "incoming_images", "DmaDriver",
    "BridgeDriver", "PciBus", "IoPageTable",
    # the device model and dev_liveupdate
    "Bus", "Device", "DeviceTree", "Driver", "LiveupdateFlags", "LiveupdateOps",
    "collect_for_update", "missing_callbacks", "parse_bool", "set_requested", "DevLiveupdate",
    # sysfs
    "Attribute", "Link", "liveupdate_attributes", "sysfs_tree",
    # hand-over format
    "DEVICES_SUBTREE", "DeviceImage", "DmaState", "build_devices_fdt", "parse_devices_fdt",
    "encode_dma_state", "decode_dma_state", "describe_devices_fdt",
    # records
    "RECORD_SIZE", "Record", "pack_records", "unpack_records",
    # transport
    "DeviceClient", "LoopbackTransport", "SocketTransport", "TransportError",
    "serve_connection", "start_server",
]

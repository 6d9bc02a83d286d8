"""Emulated devices that keep working across a live update, and RFC v1's device layer.

Two halves, one per process (DESIGN.md "Processes"), and a few modules both use:

* the hardware half, in the machine (survives every kexec): :class:`DeviceHost`
  (``host``) owns the hardware — PCI bridges and :class:`DmaEngine` s (``dma_engine``)
  writing sequence-numbered records into rings in RAM (``ram``) through an IOMMU,
  raising interrupts on eventfds and latching them while no kernel listens;
* the drivers half, in a kernel (replaced at each kexec): :class:`DeviceDrivers`
  (``drivers``) enumerates the hardware, binds drivers (``dma_driver``, ``pci``),
  re-attaching from the KHO hand-over (``state``) where it can, services
  interrupts, and runs :class:`DevLiveupdate` (``layer``, over the ``model``) —
  per-device ``requested/preserved/reclaimed`` (``sysfs``) and callbacks deepest
  first, driver then bus, cancel in reverse (spec/rfc.md §6);
* shared: the error type (``errors``), the SPEC (``spec``), the register page
  (``registers``), the record ring (``ring``), the IOMMU page table and its walk
  (``iommu``), and the line between the halves (``transport``: the machine's server,
  the kernel's client). ``testing`` and ``soak`` are test tools that use both.

They talk through small JSON requests (:meth:`DeviceHost.handle`) carried by a
transport, share RAM, and the device's registers and interrupt travel as fds.

Names are loaded on first use (PEP 562), so the machine process, which imports only
the hardware half, loads none of the drivers half. Nothing here imports the LUO
core, pyfuse3 or trio: failures are :class:`DeviceError` (an errno and a reason),
which the kernel process turns into LUO's error in ``luofs/device_adapter.py``.
"""

from importlib import import_module

#: module → public names, by half. A test pins that the hardware modules never load
#: a drivers module.
HARDWARE = {
    "host": ("DeviceHost",),
    "dma_engine": ("DmaEngine",),
    "ram": ("RamView",),
}
SHARED = {
    "errors": ("DeviceError",),
    "spec": ("DEFAULT_SPEC", "DeviceConfig", "Topology", "parse_spec"),
    "iommu": ("IommuFault", "IoPageTable", "translate"),
    "ring": ("RECORD_SIZE", "Record", "pack_records", "unpack_records"),
    "transport": ("DeviceClient", "LoopbackTransport", "SocketTransport", "TransportError",
                  "serve_connection", "start_server"),
}
DRIVERS = {
    "drivers": ("DeviceDrivers", "publish", "incoming_images"),
    "dma_driver": ("DmaDriver",),
    "pci": ("BridgeDriver", "PciBus"),
    "layer": ("DevLiveupdate",),
    "model": ("Bus", "Device", "DeviceTree", "Driver", "LiveupdateFlags", "LiveupdateOps",
              "collect_for_update", "missing_callbacks", "parse_bool", "set_requested"),
    "sysfs": ("Attribute", "Link", "liveupdate_attributes", "sysfs_tree"),
    "state": ("DEVICES_SUBTREE", "DeviceImage", "DmaState", "build_devices_fdt",
              "parse_devices_fdt", "encode_dma_state", "decode_dma_state",
              "describe_devices_fdt"),
}

_HOME = {name: module for table in (HARDWARE, SHARED, DRIVERS)
         for module, names in table.items() for name in names}

__all__ = sorted(_HOME)


def __getattr__(name: str):
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # the next lookup does not come here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

"""devices/__init__: the pinned public names, loaded lazily, and the two halves kept apart
(the machine process must load the hardware half only, and nothing of LUO's kernel)."""

import json
import subprocess
import sys
from importlib import import_module
from pathlib import Path

import pytest

import devices

REPO = Path(__file__).resolve().parents[2]

#: What the machine process must never load: the LUO core, the file system, FUSE, trio,
#: and (to stay small) KHO, the FDT library and construct.
NOT_IN_THE_MACHINE = ("luofs.core", "luofs.fs", "luofs.uapi", "luofs.kernel", "pyfuse3", "trio",
                      "kho", "fdt", "construct")


def test_public_api_is_pinned():
    assert sorted(devices.__all__) == sorted([
        "DEFAULT_SPEC", "DeviceConfig", "Topology", "parse_spec",
        "DeviceHost", "DmaEngine", "RamView", "IommuFault", "translate",
        "DeviceDrivers", "publish", "incoming_images", "DmaDriver",
        "BridgeDriver", "PciBus", "IoPageTable",
        "Bus", "Device", "DeviceTree", "Driver", "LiveupdateFlags", "LiveupdateOps",
        "collect_for_update", "missing_callbacks", "parse_bool", "set_requested",
        "DevLiveupdate", "Attribute", "Link", "liveupdate_attributes", "sysfs_tree",
        "DEVICES_SUBTREE", "DeviceImage", "DmaState", "build_devices_fdt", "parse_devices_fdt",
        "encode_dma_state", "decode_dma_state", "describe_devices_fdt", "RECORD_SIZE", "Record",
        "pack_records", "unpack_records", "DeviceClient", "LoopbackTransport", "SocketTransport",
        "TransportError", "serve_connection", "start_server", "DeviceError",
    ])
    assert all(hasattr(devices, name) for name in devices.__all__)
    assert set(devices.__all__) <= set(dir(devices))


def test_a_name_that_is_not_public_is_an_attribute_error():
    with pytest.raises(AttributeError, match="module 'devices' has no attribute 'Nope'"):
        devices.Nope  # noqa: B018


def test_each_name_comes_from_the_module_its_table_names():
    for table in (devices.HARDWARE, devices.SHARED, devices.DRIVERS):
        for module, names in table.items():
            for name in names:
                assert getattr(devices, name) is getattr(import_module(f"devices.{module}"), name)


def _loaded_after(code: str, packages=NOT_IN_THE_MACHINE + ("devices.",)) -> list[str]:
    """Run ``code`` in a fresh interpreter; which of ``packages`` (or their submodules) it
    loaded. A name ending in a dot stands for the submodules only."""
    probe = (f"{code}\nimport json, sys\n"
             f"print(json.dumps(sorted(m for m in sys.modules for p in {packages!r}"
             f" if m == p or m.startswith(p if p.endswith('.') else p + '.'))))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, check=True,
                            capture_output=True, text=True)
    return json.loads(result.stdout)


def test_the_hardware_half_loads_no_driver_module():
    hardware = [f"devices.{m}" for m in (*devices.HARDWARE, *devices.SHARED)]
    loaded = _loaded_after("import " + ", ".join(hardware))
    drivers = {f"devices.{m}" for m in devices.DRIVERS}
    assert not drivers & set(loaded)
    assert not [m for m in loaded if not m.startswith("devices")]


def test_the_machine_process_runs_its_devices_without_the_kernel():
    """What the machine does with devices — import its module, build the hardware from a
    SPEC, serve a kernel's request over the device socket — loads no kernel module."""
    code = """
import os, socket
import luofs.machine
from devices.host import DeviceHost
from devices.ram import RamView
from devices.spec import DEFAULT_SPEC, parse_spec
from devices.transport import start_server
from luofs import wire
ram = os.memfd_create("ram")
os.ftruncate(ram, 16 << 20)
host = DeviceHost(RamView(ram), parse_spec(DEFAULT_SPEC))
ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
server = start_server(host, theirs)
wire.send(ours, {"op": "device-list"})
reply, _ = wire.recv(ours)
assert reply["ok"] and reply["devices"], reply
ours.close()
server.join(10)
host.close()
"""
    loaded = _loaded_after(code, NOT_IN_THE_MACHINE)
    assert loaded == []


def test_importing_the_package_loads_nothing_else():
    assert _loaded_after("import devices") == []

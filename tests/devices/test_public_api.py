import subprocess
import sys
from pathlib import Path

import devices

REPO = Path(__file__).resolve().parents[2]


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


def test_the_machine_can_import_devices_without_fuse_or_trio():
    code = ("import sys; import devices, devices.soak, devices.testing;"
            "print(' '.join(sorted({'pyfuse3', 'trio'} & set(sys.modules))))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True,
                            capture_output=True, text=True)
    assert result.stdout.strip() == ""

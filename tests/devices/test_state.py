"""The hand-over format: device states and the 'dev-liveupdate' KHO subtree."""

import shutil
import struct
import subprocess

import pytest
from hypothesis import given, strategies as st

from devices.state import (BRIDGE_STATE_SIZE, DMA_STATE_SIZE, BridgeState, DeviceImage,
                           DmaDriverState, DmaState, PciBridgeState, build_devices_fdt,
                           describe_devices_fdt,
                           decode_bridge_state, decode_dma_state, encode_bridge_state,
                           encode_dma_state, parse_devices_fdt)
from kho.errors import KhoFormatError

STATE = DmaState(device_id=2, epoch=4, ring_phys=0x1000, ring_iova=0x1000_0000,
                 ring_entries=4096, irq_vector=32, irq_flags=1, pt_pages=2, pt_phys=0x21000,
                 tail=2023, head=2100, next_seq=2023, records_received=2023, irq_consumed=91)


def test_layout():
    assert DMA_STATE_SIZE == 104 and BRIDGE_STATE_SIZE == 8
    data = encode_dma_state(STATE)
    assert data[:8] == struct.pack("<II", 2, 4)
    assert struct.unpack_from("<QQQ", data, 48) == (2023, 2100, 2023)  # tail, head, next_seq


def test_round_trips():
    assert decode_dma_state(encode_dma_state(STATE)) == STATE
    bridge = BridgeState(secondary_bus=3, enabled=True)
    assert decode_bridge_state(encode_bridge_state(bridge)) == bridge


@given(st.binary(min_size=104, max_size=104))
def test_construct_round_trips_byte_exact(raw):
    assert DmaDriverState.build(DmaDriverState.parse(raw)) == raw


@given(st.binary(min_size=8, max_size=8))
def test_bridge_construct_round_trips_byte_exact(raw):
    assert PciBridgeState.build(PciBridgeState.parse(raw)) == raw


def patched(offset, fmt, value):
    data = bytearray(encode_dma_state(STATE))
    struct.pack_into(fmt, data, offset, value)
    return bytes(data)


@pytest.mark.parametrize("data, message", [
    (encode_dma_state(STATE)[:-1], "103 bytes, expected 104"),
    (encode_dma_state(STATE) + b"\0", "105 bytes, expected 104"),
    (patched(56, "<Q", 2022), "head 2022 is not within a ring ahead of tail 2023"),
    (patched(56, "<Q", 2023 + 4097), "head 6120 is not within"),
    (patched(24, "<I", 100), "ring_entries 100 is not a positive multiple of 128"),
    (patched(8, "<Q", 0x1001), "ring_phys 0x1001 is not page-aligned"),
    (patched(8, "<Q", 0), "need addresses"),
    (patched(36, "<I", 1), "pt_pages 1"),
    (patched(32, "<I", 6), "unknown irq_flags bits 0x6"),
])
def test_tampered_states_are_rejected(data, message):
    with pytest.raises(KhoFormatError, match=message):
        decode_dma_state(data)


@pytest.mark.parametrize("data, message", [
    (b"\1\0\0\0\2\0\0\0", "unknown flag bits 0x2"),
    (b"\0\1\0\0\1\0\0\0", "secondary bus 256"),
    (b"\1\0\0\0", "4 bytes, expected 8"),
])
def test_tampered_bridge_states_are_rejected(data, message):
    with pytest.raises(KhoFormatError, match=message):
        decode_bridge_state(data)


def test_states_validate_when_built():
    with pytest.raises(ValueError, match="does not fit"):
        DmaState(**{**vars(STATE), "tail": -1})
    with pytest.raises(ValueError, match="page-aligned"):
        DmaState(**{**vars(STATE), "pt_phys": 5})


IMAGES = [
    DeviceImage("dma0", "pci0000:00/0000:00:01.0/0000:01:00.0", "luofs,dma-engine-v1",
                encode_dma_state(STATE)),
    DeviceImage("bridge0", "pci0000:00/0000:00:01.0", "luofs,pci-bridge-v1",
                encode_bridge_state(BridgeState(1, True))),
]


def test_subtree_round_trips():
    assert parse_devices_fdt(build_devices_fdt(IMAGES)) == IMAGES
    assert parse_devices_fdt(build_devices_fdt([])) == []


def test_subtree_described_for_people():
    dma0, bridge0 = describe_devices_fdt(build_devices_fdt(IMAGES + [
        DeviceImage("dma9", "p/q", "luofs,dma-engine-v1", b"short")]))[:2]
    assert dma0["state"]["ring_phys"] == "0x1000" and dma0["state"]["tail"] == 2023
    assert bridge0["state"] == {"secondary_bus": 1, "enabled": True}
    broken = describe_devices_fdt(build_devices_fdt([
        DeviceImage("dma9", "p/q", "luofs,dma-engine-v1", b"short")]))[0]
    assert "5 bytes, expected 104" in broken["state"]["error"]


def test_subtree_rejects_duplicates_and_bad_names():
    with pytest.raises(ValueError, match="twice"):
        build_devices_fdt([IMAGES[0], IMAGES[0]])
    with pytest.raises(ValueError, match="not a valid FDT node name"):
        build_devices_fdt([DeviceImage("0000:01:00.0", "a", "c", b"")])


def test_subtree_tamper():
    blob = bytearray(build_devices_fdt(IMAGES))
    blob[0] ^= 0xFF
    with pytest.raises(KhoFormatError, match="bad FDT magic"):
        parse_devices_fdt(bytes(blob))
    other = build_devices_fdt([DeviceImage("x", "/abs", "c", b"")])
    with pytest.raises(KhoFormatError, match="is not a device path"):
        parse_devices_fdt(other)


def test_subtree_needs_its_compatible():
    from kho.fdt_blob import new_tree, to_blob

    with pytest.raises(KhoFormatError, match="expected 'luofs,dev-liveupdate-v1'"):
        parse_devices_fdt(to_blob(new_tree("something-else")))


@pytest.mark.skipif(shutil.which("dtc") is None, reason="dtc is not installed")
def test_dtc_decodes_the_subtree(tmp_path):
    path = tmp_path / "devices.dtb"
    path.write_bytes(build_devices_fdt(IMAGES))
    result = subprocess.run(["dtc", "-I", "dtb", "-O", "dts", str(path)], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr, result.stderr
    assert 'compatible = "luofs,dev-liveupdate-v1";' in result.stdout
    assert 'path = "pci0000:00/0000:00:01.0";' in result.stdout
    assert "dma0 {" in result.stdout and "bridge0 {" in result.stdout

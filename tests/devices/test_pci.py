"""devices/pci.py: the bridge driver re-attaches without a reset, and refuses a bridge that
is not the one the hand-over describes."""

import logging

from devices.state import BridgeState, DeviceImage, encode_bridge_state

SPEC = "bridge0;dma0@bridge0:rate=0"
BRIDGE = "pci0000:00/0000:00:01.0"
DMA0 = BRIDGE + "/0000:01:00.0"


def test_a_preserved_bridge_is_reclaimed_without_a_reset(machine_factory):
    machine = machine_factory(SPEC, irq_thread=False)
    machine.boot().request("dma0")
    epoch = machine.host.device("bridge0").epoch
    kernel = machine.kexec()
    assert kernel.report["reclaimed"] == [BRIDGE, DMA0]
    assert machine.host.device("bridge0").epoch == epoch


def test_a_bridge_on_another_bus_is_probed_fresh(machine_factory, caplog):
    def other_bus(images):
        return [DeviceImage(i.label, i.path, i.compatible,
                            encode_bridge_state(BridgeState(5, enabled=True)))
                if i.label == "bridge0" else i for i in images]

    machine = machine_factory(SPEC, irq_thread=False)
    machine.boot().request("dma0")
    with caplog.at_level(logging.WARNING, logger="devices.drivers"):
        kernel = machine.kexec(edit_images=other_bus)
    assert kernel.report["fallback"] == [BRIDGE, DMA0]  # its reset reset dma0 too
    assert (f"{BRIDGE}: cannot re-attach ({BRIDGE}: hand-over says secondary bus 5, the "
            f"bridge has 1); probing it fresh") in caplog.text


def test_a_bridge_reset_in_the_blackout_is_probed_fresh(machine_factory, caplog):
    machine = machine_factory(SPEC, irq_thread=False)
    machine.boot().request("dma0")
    with caplog.at_level(logging.WARNING, logger="devices.drivers"):
        kernel = machine.kexec(blackout=lambda: machine.host.handle(
            {"op": "device-reset", "device": BRIDGE}))
    assert kernel.report["fallback"] == [BRIDGE, DMA0]
    assert (f"{BRIDGE}: cannot re-attach (ENODEV: {BRIDGE} was reset since the hand-over); "
            f"probing it fresh") in caplog.text
    assert machine.host.device("bridge0").enabled

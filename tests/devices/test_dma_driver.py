"""devices/dma_driver.py: what the DMA driver refuses — a probe without memory for its ring,
and re-attaching to a device that is no longer what the hand-over describes."""

import errno
import logging

import pytest

from devices.errors import DeviceError
from devices.layer import LayerState

MiB = 1 << 20
DMA0 = "pci0000:00/0000:00:01.0"


def test_a_ring_that_does_not_fit_in_ram_leaves_the_device_unbound(machine_factory, caplog):
    # Room for the ring (8192 pages) but not for its I/O page tables (17): the ring is freed.
    machine = machine_factory("dma0:rate=0,ring=1048576", memory=32 * MiB + 8 * 4096,
                              irq_thread=False)
    with caplog.at_level(logging.ERROR, logger="devices.drivers"):
        kernel = machine.boot()
    assert kernel.report["unbound"] == [DMA0] and kernel.device("dma0").driver is None
    assert f"{DMA0}: probe failed: ENOMEM: {DMA0}: no memory for the ring" in caplog.text
    with machine.kernel_memory() as fresh:  # nothing stays allocated
        assert kernel.memory.free_page_count == fresh.free_page_count


@pytest.mark.parametrize("register, value, why", [
    ("ring_iova", 1 << 20, f"ENODEV: {DMA0} is programmed differently from the hand-over state"),
    ("head", 1_000_000, f"EIO: {DMA0}: head 1000000 does not fit the hand-over (tail 0, head "
                        f"then 0)"),
])
def test_a_device_changed_in_the_blackout_is_probed_fresh(machine_factory, caplog, register,
                                                          value, why):
    machine = machine_factory("dma0:rate=0", irq_thread=False)
    machine.boot().request("dma0")
    engine = machine.host.engine("dma0")
    with caplog.at_level(logging.WARNING, logger="devices.drivers"):
        kernel = machine.kexec(blackout=lambda: engine.bar.write(register, value))
    assert kernel.report["fallback"] == [DMA0]
    assert f"{DMA0}: cannot re-attach ({why}); probing it fresh" in caplog.text
    assert engine.running and engine.bar.read(register) != value  # reset and programmed anew


def test_a_ring_that_cannot_be_preserved_refuses_the_update(machine_factory):
    machine = machine_factory("dma0:rate=0", irq_thread=False)
    kernel = machine.boot()
    kernel.request("dma0")
    kernel.handover.preserved.freeze()  # KHO finalized: nothing more can be preserved
    with pytest.raises(DeviceError) as e:
        kernel.drivers.freeze()
    assert e.value.errno == errno.EBUSY
    assert e.value.reason.startswith(f"{DMA0}: cannot preserve the ring: [Errno 16] ")
    assert not kernel.device("dma0").lu.preserved
    assert kernel.drivers.layer.state is LayerState.IDLE

"""devices/host.py: the machine's answers to a kernel's requests, and what it does when a
kernel goes away."""

import logging

DMA0 = "pci0000:00/0000:00:01.0"


def test_refused_requests_are_error_replies(machine_factory):
    machine = machine_factory("dma0:rate=0", irq_thread=False)
    reply, fds = machine.host.handle({"op": "device-start", "device": DMA0})
    assert (reply, fds) == ({"ok": False, "errno": 22,
                             "error": "dma0: ring_entries 0 is not a multiple of 128 up to 2^20"},
                            [])
    reply, _ = machine.host.handle({"op": "device-info", "device": "pci0000:00/nope"})
    assert reply == {"ok": False, "errno": 19, "error": "no device 'pci0000:00/nope'"}
    reply, _ = machine.host.handle({"op": "device-info"})
    assert reply == {"ok": False, "errno": 19, "error": "no device None"}
    reply, _ = machine.host.handle({"op": "device-frobnicate", "device": DMA0})
    assert reply == {"ok": False, "errno": 22, "error": "unknown device op 'device-frobnicate'"}


def test_a_device_the_old_kernel_left_running_is_reset_at_the_kexec(machine_factory, caplog):
    machine = machine_factory("dma0:rate=0", irq_thread=False)
    kernel = machine.boot()  # nothing requested, and no shutdown: dma0 still runs
    engine = machine.host.engine("dma0")
    epoch = engine.epoch
    with caplog.at_level(logging.WARNING, logger="devices.host"):
        assert machine.host.kexec([]) == {"reset": [DMA0]}
    assert f"{DMA0} was not shut down by the old kernel; resetting it" in caplog.text
    assert engine.epoch == epoch + 1 and not engine.running
    kernel.drivers.stop_service()


def test_preserved_devices_only_latch_at_the_kexec(machine_factory):
    machine = machine_factory("dma0:rate=0", irq_thread=False)
    machine.boot()
    engine = machine.host.engine("dma0")
    assert machine.host.kexec([DMA0]) == {"reset": []}
    assert engine.running and not engine.irq_attached


def test_a_dead_kernel_leaves_interrupts_latching(machine_factory):
    machine = machine_factory("dma0:rate=0", irq_thread=False)
    machine.boot()
    engine = machine.host.engine("dma0")
    machine.host.kernel_gone()
    engine.produce(16)
    assert not engine.irq_attached and engine.counters["irq_pending"] == 1

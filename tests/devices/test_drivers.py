"""devices/drivers.py: live updates with devices running — preserved ones go on untouched,
the others restart; refusals, faults and damaged hand-overs."""

import errno
import logging

import pytest

from devices.errors import DeviceError
from devices.state import DeviceImage, encode_dma_state
from devices.testing import SimulatedKernel, wait_until
from kho import PreservedMemory

SPEC = "bridge0;dma0@bridge0:rate=0,ring=256;dma1@bridge0:rate=0,ring=256"


def ranges_of(channel):
    return [(channel.ring_phys, channel.entries * 32), (channel.pt.phys, channel.pt.nbytes)]


def overlaps(a, b):
    return any(p < q + m and q < p + n for p, n in a for q, m in b)


def test_a_preserved_device_writes_on_through_the_kexec(machine_factory):
    machine = machine_factory(SPEC, irq_thread=False)
    a = machine.boot()
    a.request("dma0")
    dma0 = machine.host.engine("dma0")
    dma0.produce(100)
    a.drivers.service_all()
    dma0.produce(50)  # raised an interrupt the old driver never takes
    ring_before = ranges_of(a.device("dma0").driver_data)
    epoch, resets = dma0.epoch, dma0.counters["resets"]
    consumed_by_a = a.device("dma0").driver_data.counters["irq_consumed"]

    def blackout():
        assert not dma0.irq_attached
        assert dma0.produce(30) == 30      # DMA goes on, interrupts latch
        assert dma0.produce(1000) == 176   # until the ring is full: 256 unconsumed
        assert dma0.produce(10) == 0       # then it waits, overwriting nothing
        assert dma0.counters["irq_pending"] == 3  # the unread one + two raised now

    b = machine.kexec(blackout=blackout)
    dev = b.device("dma0")
    assert b.report["reclaimed"] == [b.device("bridge0").path, dev.path]
    assert (dev.lu.requested, dev.lu.preserved, dev.lu.reclaimed) == (True, True, True)
    assert dma0.epoch == epoch and dma0.counters["resets"] == resets  # never reset
    assert ranges_of(dev.driver_data) == ring_before  # the same ring and tables
    # every record exactly once, from the first to the last
    assert machine.ledger.epochs("dma0") == {epoch: (0, 356)}
    assert machine.ledger.received["dma0"] == 356
    assert machine.ledger.gaps["dma0"] == machine.ledger.duplicates["dma0"] == 0
    # and every interrupt: the latched ones came with the re-attach
    assert dma0.counters["irq_pending"] == 0
    consumed_by_b = dev.driver_data.counters["irq_consumed"] - consumed_by_a
    assert consumed_by_b == 3
    assert consumed_by_a + consumed_by_b == dma0.counters["irq_raised"]
    # the next kernel's own allocations stay clear of the preserved pages
    assert not overlaps(ranges_of(b.device("dma1").driver_data), ring_before)
    assert dma0.produce(20) == 20
    b.drivers.service_all()
    assert machine.ledger.epochs("dma0") == {epoch: (0, 376)}


def test_a_device_not_requested_is_reset_and_starts_over(machine_factory):
    machine = machine_factory(SPEC, irq_thread=False)
    a = machine.boot()
    a.request("dma0")
    dma1 = machine.host.engine("dma1")
    dma1.produce(60)
    a.drivers.service_all()
    dma1.produce(40)  # in flight at the kexec: lost, as on real hardware
    old_epoch = dma1.epoch
    written_in_blackout = []
    b = machine.kexec(blackout=lambda: written_in_blackout.append(dma1.produce(10)))
    assert written_in_blackout == [0]  # shut down: no DMA while no kernel runs
    assert b.device("dma1").path in b.report["probed"]
    assert dma1.epoch > old_epoch and dma1.counters["irq_pending"] == 0
    dma1.produce(5)
    b.drivers.service_all()
    epochs = machine.ledger.epochs("dma1")
    assert epochs[old_epoch] == (0, 60)   # 40 records never reached a driver
    assert epochs[dma1.epoch] == (0, 5)   # sequence restarts in the new epoch
    assert not b.device("dma1").lu.preserved


def test_nothing_requested_means_everything_restarts(machine_factory):
    machine = machine_factory(SPEC, irq_thread=False)
    a = machine.boot()
    assert a.live_update()[2] == []
    a.close()
    machine.kernel = None
    assert all(not e.running for e in (machine.host.engine("dma0"), machine.host.engine("dma1")))
    assert not machine.host.device("bridge0").enabled


def test_paced_devices_across_a_blackout_longer_than_the_ring(machine_factory):
    """Real threads: the blackout lasts until the ring (256 slots, 12.8 ms at 20000/s) is
    full; the device stalls and resumes, and still nothing is lost or doubled."""
    machine = machine_factory("bridge0;dma0@bridge0:rate=20000,ring=256;dma1@bridge0:rate=2000")
    a = machine.boot()
    a.request("dma0")
    wait_until(lambda: machine.ledger.received["dma0"] >= 500)
    dma0 = machine.host.engine("dma0")
    b = machine.kexec(blackout=lambda: wait_until(lambda: dma0.counters["ring_full"] > 0))
    received = machine.ledger.received["dma0"]
    wait_until(lambda: machine.ledger.received["dma0"] >= received + 500)
    dma0.stop()
    b.drivers.stop_service()
    b.drivers.service_all()
    assert machine.ledger.received["dma0"] == dma0.counters["records_written"]
    assert machine.ledger.epochs("dma0") == {dma0.epoch: (0, dma0.counters["records_written"])}
    assert machine.ledger.gaps["dma0"] == machine.ledger.duplicates["dma0"] == 0
    counters = b.device("dma0").driver_data.counters
    assert counters["irq_consumed"] == dma0.counters["irq_raised"]
    assert counters["records_received"] == dma0.counters["records_written"]  # carried in KHO
    assert dma0.counters["records_dropped"] == 0


def test_many_kexecs_in_a_row(machine_factory):
    machine = machine_factory(SPEC, irq_thread=False)
    kernel = machine.boot()
    kernel.request("dma0")
    dma0 = machine.host.engine("dma0")
    for n in range(6):
        dma0.produce(40)
        kernel.drivers.service_all()
        dma0.produce(n * 10)
        kernel = machine.kexec(blackout=lambda: dma0.produce(25))
        assert kernel.device("dma0").lu.reclaimed
    kernel.drivers.service_all()
    written = dma0.counters["records_written"]
    assert machine.ledger.epochs("dma0") == {dma0.epoch: (0, written)}
    assert kernel.device("dma0").driver_data.counters["irq_consumed"] == \
        dma0.counters["irq_raised"]


@pytest.mark.parametrize("phase", ["prepare", "reboot"])
def test_a_refused_live_update_leaves_the_kernel_running(machine_factory, phase):
    machine = machine_factory(SPEC, irq_thread=False)
    a = machine.boot()
    a.request("dma0")
    a.drivers.layer.fail_at(a.device("dma0").path, phase, errno.EBUSY, "bus")
    with pytest.raises(DeviceError) as e:
        a.live_update()
    assert e.value.errno == errno.EBUSY
    assert not any(d.lu.preserved for d in a.drivers.tree)
    assert len(a.handover.preserved) == 0  # the ring pages were unpreserved again
    dma0 = machine.host.engine("dma0")
    assert dma0.irq_attached and dma0.running
    dma0.produce(30)
    a.drivers.service_all()
    assert machine.ledger.received["dma0"] == 30
    assert a.device("dma0").driver_data.counters["irq_consumed"] == 1
    a.drivers.layer.clear_faults()
    b = machine.kexec()  # and the next attempt works
    assert b.device("dma0").lu.reclaimed


def test_a_fault_from_the_spec(machine_factory):
    machine = machine_factory("dma0:rate=0,fail=reboot:ENOMEM", irq_thread=False)
    a = machine.boot()
    a.request("dma0")
    with pytest.raises(DeviceError) as e:
        a.live_update()
    assert e.value.errno == errno.ENOMEM


def test_a_device_reset_in_the_blackout_is_probed_fresh(machine_factory, caplog):
    machine = machine_factory(SPEC, irq_thread=False)
    a = machine.boot()
    a.request("dma0")
    dma0 = machine.host.engine("dma0")
    with caplog.at_level(logging.WARNING):
        b = machine.kexec(blackout=dma0.reset)
    dev = b.device("dma0")
    assert b.report["fallback"] == [dev.path]
    assert "was reset since the hand-over" in caplog.text
    assert dev.lu.preserved and not dev.lu.reclaimed and dev.driver is not None
    assert dma0.running  # probed fresh: it works again
    with caplog.at_level(logging.WARNING, logger="devices.layer"):
        assert b.drivers.finish() == [dev.path]
    assert "was preserved but no driver reclaimed it" in caplog.text


def truncate_dma0(images):
    return [DeviceImage(i.label, i.path, i.compatible, i.state[:-1]) if i.label == "dma0"
            else i for i in images]


def test_a_damaged_hand_over_is_probed_fresh(machine_factory):
    machine = machine_factory(SPEC, irq_thread=False)
    machine.boot().request("dma0")
    b = machine.kexec(edit_images=truncate_dma0)
    assert b.report["fallback"] == [b.device("dma0").path]
    assert b.report["reclaimed"] == [b.device("bridge0").path]


def test_state_naming_unpreserved_pages_is_not_trusted(machine_factory):
    machine = machine_factory("dma0:rate=0", irq_thread=False)
    kernel = machine.boot()
    dev = kernel.device("dma0")
    state = encode_dma_state(dev.driver.state_of(dev.driver_data, 0))
    image = DeviceImage("dma0", dev.path, dev.driver.compatible, state)
    other = machine_factory("dma0:rate=0", irq_thread=False)
    fresh = SimulatedKernel(other, 1, other.kernel_memory(), irq_thread=False)
    other.kernel = fresh
    report = fresh.drivers.boot([image], PreservedMemory())  # nothing was preserved
    assert report["fallback"] == [dev.path]


def test_mainline_freeze_finishes_the_previous_update_first(machine_factory):
    machine = machine_factory(SPEC, irq_thread=False)
    kernel = machine.boot()
    kernel.request("dma0")
    kernel = machine.kexec()
    assert kernel.drivers.layer.pending_finish
    kernel = machine.kexec()  # no FINISH event in between (mainline): still works
    assert kernel.device("dma0").lu.reclaimed
    assert kernel.drivers.bus.calls["finish"] == 0
    kernel.drivers.finish()
    assert kernel.drivers.bus.calls["finish"] == 2  # bridge0 and dma0


def test_a_damaged_devices_subtree_means_everything_starts_fresh(machine_factory, caplog):
    from devices.drivers import incoming_images

    class Incoming:
        subtrees = {"dev-liveupdate": b"\xd0\x0d\xfe\xed" + bytes(60)}

    with caplog.at_level(logging.ERROR):
        assert incoming_images(Incoming()) == []
    assert "the devices hand-over is unusable" in caplog.text
    assert incoming_images(None) == []


@pytest.mark.parametrize("spec", ["dma0:rate=0,lu=0", "bridge0:lu=0;dma0@bridge0:rate=0"])
def test_devices_without_liveupdate_support_cannot_be_requested(machine_factory, spec):
    machine = machine_factory(spec, irq_thread=False)
    kernel = machine.boot()
    with pytest.raises(DeviceError) as e:
        kernel.request("dma0")
    assert e.value.errno == 22 and "has no liveupdate callbacks" in e.value.reason

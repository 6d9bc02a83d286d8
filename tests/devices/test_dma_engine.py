"""devices/dma_engine.py, with its driver in one kernel: order, back-pressure, interrupts,
bridges upstream."""

import os

from devices.registers import STATUS_BLOCKED, STATUS_FULL, STATUS_RUNNING
from devices.ring import RECORD_SIZE, unpack_records
from devices.testing import wait_until


def ring_contents(kernel, label):
    channel = kernel.device(label).driver_data
    data = kernel.memory.read(channel.ring_phys, channel.entries * RECORD_SIZE)
    return [r.seq for r in unpack_records(data)]


def test_records_arrive_in_order_without_gaps(machine_factory):
    machine = machine_factory("dma0:rate=0,ring=256", irq_thread=False)
    kernel = machine.boot()
    engine = machine.host.engine("dma0")
    for batch in (1, 50, 200, 255, 7):  # wraps the ring several times
        assert engine.produce(batch) == batch
        kernel.drivers.service_all()
    assert machine.ledger.received["dma0"] == 513
    assert machine.ledger.epochs("dma0") == {engine.epoch: (0, 513)}
    assert machine.ledger.gaps["dma0"] == machine.ledger.duplicates["dma0"] == 0
    status = kernel.drivers.status()[-1]
    assert status["records_received"] == 513 and status["bad_records"] == 0
    assert status["irq_consumed"] == engine.counters["irq_raised"] == 5


def test_a_full_ring_stalls_and_nothing_is_overwritten(machine_factory):
    machine = machine_factory("dma0:rate=0,ring=128", irq_thread=False)
    kernel = machine.boot()
    engine = machine.host.engine("dma0")
    assert engine.produce(100) == 100
    assert engine.produce(100) == 28  # only the free slots
    assert engine.bar.read("status") == STATUS_RUNNING | STATUS_FULL
    assert engine.produce(10) == 0
    assert engine.counters["ring_full"] == 2 and engine.counters["records_dropped"] == 0
    assert ring_contents(kernel, "dma0") == list(range(128))  # the first 128, untouched
    kernel.drivers.service_all()
    assert engine.produce(50) == 50  # the stalled device resumes where it was
    assert ring_contents(kernel, "dma0")[:50] == list(range(128, 178))
    kernel.drivers.service_all()
    assert machine.ledger.epochs("dma0") == {engine.epoch: (0, 178)}
    assert machine.ledger.gaps["dma0"] == 0


def test_drop_mode_counts_what_it_could_not_write(machine_factory):
    machine = machine_factory("dma0:rate=0,ring=128,full=drop", irq_thread=False)
    kernel = machine.boot()
    engine = machine.host.engine("dma0")
    assert engine.produce(200) == 200  # 128 written, 72 dropped
    assert engine.counters["records_written"] == 128
    assert engine.counters["records_dropped"] == 72
    kernel.drivers.service_all()
    engine.produce(10)
    kernel.drivers.service_all()
    status = kernel.drivers.status()[-1]
    assert status["seq_gaps"] == engine.counters["records_dropped"] == 72
    assert status["records_received"] == 138 and status["next_seq"] == 210


def test_interrupts_reach_the_drivers_eventfd(machine_factory):
    machine = machine_factory("dma0:rate=0", irq_thread=False)
    kernel = machine.boot()
    engine = machine.host.engine("dma0")
    channel = kernel.device("dma0").driver_data
    for _ in range(3):
        engine.produce(5)
    assert os.eventfd_read(channel.irq_fd) == 3
    assert engine.counters["irq_delivered"] == 3 and engine.counters["irq_pending"] == 0


def test_a_paced_device_and_the_service_thread(machine_factory):
    machine = machine_factory("dma0:rate=20000,ring=1024")
    kernel = machine.boot()
    wait_until(lambda: machine.ledger.received["dma0"] >= 2000)
    engine = machine.host.engine("dma0")
    machine.host.handle({"op": "device-stop", "device": engine.config.path})
    kernel.drivers.stop_service()
    kernel.drivers.service_all()
    assert machine.ledger.received["dma0"] == engine.counters["records_written"]
    assert machine.ledger.gaps["dma0"] == 0
    channel = kernel.device("dma0").driver_data
    assert channel.counters["irq_consumed"] == engine.counters["irq_raised"]


def test_a_disabled_bridge_blocks_the_dma_behind_it(machine_factory):
    machine = machine_factory("bridge0;dma0@bridge0:rate=0", irq_thread=False)
    kernel = machine.boot()
    engine = machine.host.engine("dma0")
    bridge = kernel.device("bridge0").path
    machine.host.handle({"op": "device-stop", "device": bridge})
    assert engine.produce(10) == 0
    assert engine.counters["blocked"] == 1
    assert engine.bar.read("status") == STATUS_RUNNING | STATUS_BLOCKED
    machine.host.handle({"op": "device-start", "device": bridge})
    assert engine.produce(10) == 10


def test_a_bridge_reset_resets_what_is_behind_it(machine_factory):
    machine = machine_factory("bridge0;dma0@bridge0:rate=0", irq_thread=False)
    machine.boot()
    engine = machine.host.engine("dma0")
    epoch = engine.epoch
    reply, _ = machine.host.handle({"op": "device-reset", "device": "pci0000:00/0000:00:01.0"})
    assert reply["ok"] and engine.epoch == epoch + 1 and not engine.running

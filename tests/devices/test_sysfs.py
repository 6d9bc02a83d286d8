"""sys/devices/…/liveupdate and sys/bus/pci/devices, as data for the FUSE layer."""

import pytest

from devices.errors import DeviceError
from devices.sysfs import Link, resolve, sysfs_tree


@pytest.fixture
def kernel(machine_factory):
    machine = machine_factory("bridge0;dma0@bridge0:rate=0;dma1@bridge0:rate=0,lu=0",
                              irq_thread=False)
    return machine.boot()


DMA0 = "devices/pci0000:00/0000:00:01.0/0000:01:00.0/liveupdate"


def test_layout(kernel):
    tree = sysfs_tree(kernel.drivers.layer)
    assert set(tree) == {"devices", "bus"}
    assert set(resolve(tree, "devices/pci0000:00")) == {"liveupdate", "0000:00:01.0"}
    attrs = resolve(tree, DMA0)
    assert {name: oct(a.mode) for name, a in attrs.items()} == {
        "requested": "0o644", "preserved": "0o444", "reclaimed": "0o444"}
    assert attrs["preserved"].store is None and attrs["reclaimed"].store is None
    links = resolve(tree, "bus/pci/devices")
    assert links == {
        "0000:00:01.0": Link("../../../devices/pci0000:00/0000:00:01.0"),
        "0000:01:00.0": Link("../../../devices/pci0000:00/0000:00:01.0/0000:01:00.0"),
        "0000:01:01.0": Link("../../../devices/pci0000:00/0000:00:01.0/0000:01:01.0"),
    }


def test_reading_and_writing_the_flags(kernel):
    tree = sysfs_tree(kernel.drivers.layer)
    requested = resolve(tree, DMA0 + "/requested")
    assert requested.render() == b"0\n"
    requested.store(b"1\n")
    assert requested.render() == b"1\n" and kernel.device("dma0").lu.requested
    with pytest.raises(DeviceError) as e:
        requested.store(b"maybe\n")
    assert e.value.errno == 22
    with pytest.raises(DeviceError) as e:
        resolve(tree, DMA0.replace("01:00.0", "01:01.0") + "/requested").store(b"1")
    assert e.value.errno == 22  # dma1's driver has no liveupdate callbacks
    kernel.drivers.prepare()
    assert resolve(tree, DMA0 + "/preserved").render() == b"1\n"
    assert resolve(tree, "devices/pci0000:00/0000:00:01.0/liveupdate/preserved").render() == \
        b"1\n"


def test_writes_outside_normal_are_einval(machine_factory):
    state = {"now": "normal"}
    machine = machine_factory("dma0:rate=0", irq_thread=False)
    kernel = machine.boot(luo_state=lambda: state["now"])
    requested = resolve(sysfs_tree(kernel.drivers.layer),
                        "devices/pci0000:00/0000:00:01.0/liveupdate/requested")
    state["now"] = "updated"
    with pytest.raises(DeviceError) as e:
        requested.store(b"1\n")
    assert e.value.errno == 22


def test_reclaimed_reads_1_after_a_kexec(machine_factory):
    machine = machine_factory("dma0:rate=0", irq_thread=False)
    machine.boot().request("dma0")
    kernel = machine.kexec()
    tree = sysfs_tree(kernel.drivers.layer)
    base = "devices/pci0000:00/0000:00:01.0/liveupdate/"
    assert [resolve(tree, base + f).render() for f in ("requested", "preserved", "reclaimed")] \
        == [b"1\n"] * 3
    kernel.drivers.finish()
    assert [resolve(tree, base + f).render() for f in ("requested", "preserved", "reclaimed")] \
        == [b"1\n", b"0\n", b"0\n"]

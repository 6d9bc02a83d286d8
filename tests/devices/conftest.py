"""Fixtures for the device tests: a depth-3 tree with recording callbacks, simulated machines."""

import pytest

from devices.model import Bus, Device, DeviceTree, Driver, LiveupdateOps
from devices.testing import SimulatedMachine

MiB = 1 << 20


class Recorder:
    """Callbacks that log (phase, target, path) in one list, in call order."""

    def __init__(self):
        self.calls = []

    def ops(self, target: str) -> LiveupdateOps:
        def make(phase):
            return lambda dev: self.calls.append((phase, target, dev.name))
        return LiveupdateOps(*(make(p) for p in ("prepare", "reboot", "finish", "cancel")))


@pytest.fixture
def recorder():
    return Recorder()


@pytest.fixture
def tree(recorder):
    """::

        root (no driver, no bus)                  depth 0
        ├─ A  bridge, pci                          depth 1
        │  ├─ B  bridge, pci                       depth 2
        │  │  ├─ C  dev, pci                       depth 3
        │  │  └─ D  dev, pci                       depth 3
        │  └─ E  dev, pci                          depth 2
        ├─ F  dev whose driver has no callbacks    depth 1
        └─ G  bridge on a bus with no callbacks    depth 1
           └─ H  dev, pci                          depth 2
    """
    bus = Bus("pci", recorder.ops("bus"))
    plain_bus = Bus("isa")
    driver = Driver("drv", recorder.ops("driver"))
    legacy = Driver("legacy")
    t = DeviceTree()
    root = t.add(Device("root"))
    a = t.add(Device("A", root, bus, driver))
    b = t.add(Device("B", a, bus, driver))
    t.add(Device("C", b, bus, driver))
    t.add(Device("D", b, bus, driver))
    t.add(Device("E", a, bus, driver))
    t.add(Device("F", root, bus, legacy))
    g = t.add(Device("G", root, plain_bus, driver))
    t.add(Device("H", g, bus, driver))
    return t


@pytest.fixture
def path(tree):
    """name → path of a device of ``tree``."""
    return lambda name: next(d.path for d in tree if d.name == name)


@pytest.fixture
def machine_factory():
    """SimulatedMachine(spec, …), closed at the end of the test."""
    machines = []

    def make(spec, **options):
        options.setdefault("memory", 16 * MiB)
        m = SimulatedMachine(spec, **options)
        machines.append(m)
        return m

    yield make
    for m in machines:
        m.close()

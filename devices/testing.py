"""Test tools: a machine and its kernels in one process, and a ledger of every record.

:class:`SimulatedMachine` holds what the machine process holds — the RAM memfd and a
:class:`~devices.host.DeviceHost` — and :class:`SimulatedKernel` what a kernel process
holds: its own allocator view of the same RAM (``PhysicalMemory.adopt`` of a dup,
exactly as a new kernel process gets), a real KHO :class:`~kho.Handover`, and
:class:`~devices.drivers.DeviceDrivers` talking to the host through a loopback
transport. A live update between them goes through real KHO: the old kernel
preserves pages, adds the devices subtree and finalizes; the new one loads the
hand-over (which reserves every preserved page) and re-attaches.

Both halves in one process, for tests and benchmarks. Unhappy paths: a refused
live update raises DeviceError and the old kernel runs on (its KHO hand-over is not
finalized); :func:`wait_until` raises AssertionError on timeout.
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict

from kho import Handover, IncomingHandover, PhysicalMemory

from .drivers import DeviceDrivers, incoming_images, publish
from .host import DeviceHost
from .ram import RamView
from .transport import LoopbackTransport

MiB = 1 << 20


class RecordLedger:
    """Every record any driver consumed, per device and epoch: gaps, duplicates, totals.

    Pass :meth:`record` as ``on_records`` to each kernel's DeviceDrivers; one ledger
    follows a device across kernels.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self.expected: dict[tuple[str, int], int] = {}
        self.first: dict[tuple[str, int], int] = {}
        self.received: dict[str, int] = defaultdict(int)
        self.gaps: dict[str, int] = defaultdict(int)
        self.duplicates: dict[str, int] = defaultdict(int)

    def record(self, dev, seqs) -> None:
        if not seqs:
            return
        key = (dev.label, dev.driver_data.epoch)
        with self._lock:
            expected = self.expected.get(key)
            if expected is None:
                self.first[key] = expected = seqs[0]
            for seq in seqs:
                if seq < expected:
                    self.duplicates[dev.label] += 1
                    continue
                self.gaps[dev.label] += seq - expected
                expected = seq + 1
                self.received[dev.label] += 1
            self.expected[key] = expected

    def epochs(self, label: str) -> dict[int, tuple[int, int]]:
        """epoch → (first seq seen, next seq expected)."""
        with self._lock:
            return {epoch: (self.first[(lab, epoch)], nxt)
                    for (lab, epoch), nxt in self.expected.items() if lab == label}


class SimulatedKernel:
    def __init__(self, machine: "SimulatedMachine", number: int, memory: PhysicalMemory, *,
                 luo_state=lambda: "normal", irq_thread: bool = True):
        self.machine = machine
        self.number = number
        self.memory = memory
        self.handover = Handover(memory)
        self.drivers = DeviceDrivers(LoopbackTransport(machine.host), memory,
                                     self.handover.preserved, luo_state=luo_state,
                                     on_records=machine.ledger.record, trace=machine.trace,
                                     irq_thread=irq_thread)
        self.report: dict = {}
        self.incoming: IncomingHandover | None = None

    def device(self, label: str):
        dev = self.drivers.tree.by_label(label)
        if dev is None:
            raise KeyError(label)
        return dev

    def request(self, *labels: str, value: bool = True) -> None:
        for label in labels:
            self.drivers.layer.set_requested(self.device(label), value)

    def live_update(self) -> tuple[int, int, list[str]]:
        """The old kernel's half: freeze devices, finalize KHO, shut the rest down.

        Returns (root_phys, root_size, preserved paths); on a refused freeze the
        DeviceError propagates and this kernel runs on.
        """
        blob = self.drivers.freeze()
        try:
            publish(self.handover, blob)
            root_phys, root_size = self.handover.finalize()
        except BaseException:
            self.drivers.cancel()
            raise
        return root_phys, root_size, self.drivers.shutdown()

    def close(self) -> None:
        self.drivers.close()
        self.memory.close()


class SimulatedMachine:
    def __init__(self, spec: str, *, memory: int = 64 * MiB, tick: float | None = None,
                 irq_thread: bool = True, trace=None):
        self.ram = PhysicalMemory(memory)  # owns the memfd; its allocator is never used
        self.host = DeviceHost(RamView(os.dup(self.ram.fd)), spec, tick=tick)
        self.ledger = RecordLedger()
        self.trace = trace
        self.irq_thread = irq_thread
        self.kernel: SimulatedKernel | None = None
        self.kexecs = 0
        self.last_blackout_s = 0.0

    def kernel_memory(self) -> PhysicalMemory:
        """A new kernel's view of the RAM: its own allocator over the same memfd."""
        return PhysicalMemory.adopt(os.dup(self.ram.fd))

    def boot(self, **kernel_options) -> SimulatedKernel:
        """Kernel #0 on a cold machine: every device is probed fresh."""
        self.host.reset_all()
        kernel = SimulatedKernel(self, 0, self.kernel_memory(), irq_thread=self.irq_thread,
                                 **kernel_options)
        kernel.report = kernel.drivers.boot()
        self.kernel = kernel
        return kernel

    def kexec(self, blackout=None, edit_images=None, **kernel_options) -> SimulatedKernel:
        """A live update: the old kernel hands over, ``blackout()`` runs while no kernel
        does (devices keep going), then the next kernel boots from the hand-over.

        ``edit_images(images) -> images`` may change the decoded device states on the
        way, to test what a new kernel does with a damaged hand-over.
        """
        old = self.kernel
        started = time.perf_counter()
        root_phys, root_size, preserved = old.live_update()
        self.host.kexec(preserved)
        old.close()
        self.kernel = None
        if blackout is not None:
            blackout()
        memory = self.kernel_memory()
        incoming = IncomingHandover.load(memory, root_phys, root_size)
        images = incoming_images(incoming)
        if edit_images is not None:
            images = edit_images(images)
        kernel = SimulatedKernel(self, old.number + 1, memory, irq_thread=self.irq_thread,
                                 **kernel_options)
        kernel.incoming = incoming
        kernel.report = kernel.drivers.boot(images, incoming.preserved)
        incoming.release()
        self.kernel = kernel
        self.kexecs += 1
        self.last_blackout_s = time.perf_counter() - started
        return kernel

    def close(self) -> None:
        if self.kernel is not None:
            self.kernel.close()
            self.kernel = None
        self.host.close()
        self.host.ram.close()
        self.ram.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def wait_until(condition, timeout: float = 10.0, interval: float = 0.002) -> None:
    """Poll ``condition()`` until true; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)

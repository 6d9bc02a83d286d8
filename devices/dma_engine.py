"""The DMA engine: an emulated device in the machine process that writes records into a
ring in RAM, through the IOMMU, and raises interrupts.

It lives as long as the machine, so it keeps working while no kernel runs. While a
driver has interrupts routed (an eventfd), each batch of records raises one
interrupt on it; while none is routed, interrupts are *latched*: counted as
pending and delivered, all at once, to the next eventfd attached. It never
overwrites a record the driver has not consumed: with a full ring it stalls
(``full=stall``) or counts the records it could not write as dropped and skips
their sequence numbers (``full=drop``).

Pacing: a thread wakes every ``tick`` seconds (by default about every 16 records,
between 1 and 20 ms) and writes what the configured rate says is due (at most
50 ms worth at once, so a stalled or descheduled device does not make up for
lost time forever). ``rate=0`` means no thread: records are
written only by :meth:`DmaEngine.produce`, for deterministic tests.

Counters keep one invariant: ``irq_raised == irq_delivered + irq_pending +
irq_discarded`` — an interrupt is in an eventfd (delivered), latched, or thrown
away by a reset (a reset device forgets its latched interrupts, as hardware
does); never lost otherwise. Detaching reads back what the eventfd still holds
(the driver never saw it) into pending.

Half: hardware (the machine process).

Unhappy paths: :meth:`DmaEngine.start` refuses bad registers with ValueError (the
host answers EINVAL); an IOMMU fault, or a driver moving ``tail`` outside the ring,
stops the engine (``STATUS_FAULT``, ``fault_iova`` for the IOMMU, counted and logged)
until a reset; a full ring stalls or drops, as configured, and never overwrites.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable

from .iommu import IommuFault, translate
from .ram import PAGE_SIZE
from .registers import (DMA_ENGINE_ID, STATUS_BLOCKED, STATUS_FAULT, STATUS_FULL, STATUS_RUNNING,
                        Bar)
from .ring import RECORD_SIZE, RECORDS_PER_PAGE, pack_records
from .spec import DeviceConfig

log = logging.getLogger("devices.dma")

MAX_BURST_S = 0.05
COUNTERS = ("records_written", "records_dropped", "ring_full", "blocked", "irq_raised",
            "irq_delivered", "irq_pending", "irq_latched", "irq_discarded", "iommu_faults",
            "errors", "resets")


class DmaEngine:
    def __init__(self, config: DeviceConfig, ram, device_id: int,
                 upstream_ok: Callable[[], bool] = lambda: True, tick: float | None = None,
                 clock: Callable[[], int] = time.monotonic_ns):
        self.config = config
        self.ram = ram
        self.device_id = device_id
        self.upstream_ok = upstream_ok
        if tick is None:
            tick = max(0.001, min(0.02, 16 / config.rate)) if config.rate else 0.02
        self.tick = tick
        self.clock = clock
        self.lock = threading.Lock()
        self.bar = Bar.create(config.label)
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.epoch = 0
        self.fault: str | None = None
        self._irq_fd: int | None = None
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        with self.lock:
            self._reset_locked()
        self.counters["resets"] = 0

    # -- state -----------------------------------------------------------------------

    @property
    def label(self) -> str:
        return self.config.label

    @property
    def running(self) -> bool:
        return self.enabled

    def _reset_locked(self) -> None:
        """Forget everything: configuration, ring position, latched interrupts, routing."""
        self.enabled = False
        self.head = 0
        self.next_seq = 0
        self.ring_iova = self.entries = self.iommu_root = 0
        self.fault = None
        self.epoch += 1
        self.counters["resets"] += 1
        self._drop_irq_locked()
        self.counters["irq_discarded"] += self.counters["irq_pending"]
        self.counters["irq_pending"] = 0
        self.bar.clear()
        self.bar.write("id", DMA_ENGINE_ID)
        self.bar.write("epoch", self.epoch)

    def reset(self) -> None:
        with self.lock:
            self._reset_locked()

    def start(self) -> None:
        """Latch the configuration the driver wrote and start DMA; ValueError if it is bad."""
        with self.lock:
            if self.fault is not None:
                raise ValueError(f"{self.label} is faulted ({self.fault}); reset it first")
            regs = self.bar.snapshot()
            entries, iova, root = regs["ring_entries"], regs["ring_iova"], regs["iommu_root"]
            if not entries or entries % RECORDS_PER_PAGE or entries > 1 << 20:
                raise ValueError(f"ring_entries {entries} is not a multiple of "
                                 f"{RECORDS_PER_PAGE} up to 2^20")
            if iova % PAGE_SIZE or root == 0 or root % PAGE_SIZE:
                raise ValueError(f"ring_iova {iova:#x} and iommu_root {root:#x} must be "
                                 f"page-aligned, the root non-zero")
            tail = regs["tail"]
            if not self.head - entries <= tail <= self.head:
                raise ValueError(f"tail {tail} is not within the ring (head {self.head})")
            self.entries, self.ring_iova, self.iommu_root = entries, iova, root
            self.enabled = True
            self._status_locked(STATUS_RUNNING)

    def stop(self) -> None:
        """Pause DMA, keeping configuration and position (``start`` resumes)."""
        with self.lock:
            self.enabled = False
            self._status_locked(0)

    def _status_locked(self, status: int) -> None:
        self.bar.write("status", status)

    # -- interrupts ------------------------------------------------------------------

    def attach_irq(self) -> tuple[int, int]:
        """Route interrupts to a new eventfd; returns (fd, pending delivered into it).

        The machine keeps the fd (the driver gets a copy over SCM_RIGHTS); a
        previous routing is detached first.
        """
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        with self.lock:
            self._drop_irq_locked()
            self._irq_fd = fd
            pending = self.counters["irq_pending"]
            if pending:
                os.eventfd_write(fd, pending)
                self.counters["irq_delivered"] += pending
                self.counters["irq_pending"] = 0
        return fd, pending

    def detach_irq(self) -> int:
        """Stop routing; what the eventfd still holds is latched again. Returns it."""
        with self.lock:
            return self._drop_irq_locked()

    @property
    def irq_attached(self) -> bool:
        return self._irq_fd is not None

    def _drop_irq_locked(self) -> int:
        fd, self._irq_fd = self._irq_fd, None
        if fd is None:
            return 0
        try:
            unread = os.eventfd_read(fd)
        except BlockingIOError:
            unread = 0
        os.close(fd)
        self.counters["irq_delivered"] -= unread
        self.counters["irq_pending"] += unread
        return unread

    def _raise_irq_locked(self) -> None:
        self.counters["irq_raised"] += 1
        if self._irq_fd is not None:
            os.eventfd_write(self._irq_fd, 1)
            self.counters["irq_delivered"] += 1
        else:
            self.counters["irq_pending"] += 1
            self.counters["irq_latched"] += 1

    # -- DMA -------------------------------------------------------------------------

    def produce(self, n: int) -> int:
        """Make ``n`` records now (fewer if the ring is full); returns how many were
        used up: written, plus dropped in ``full=drop`` mode."""
        with self.lock:
            return self._produce_locked(n)

    def _produce_locked(self, n: int) -> int:
        if not self.enabled or n <= 0:
            return 0
        if not self.upstream_ok():
            self.counters["blocked"] += 1
            self._status_locked(STATUS_RUNNING | STATUS_BLOCKED)
            return 0
        tail = self.bar.read("tail")
        if not self.head - self.entries <= tail <= self.head:
            self._fault_locked(f"tail {tail} outside the ring (head {self.head})", None)
            return 0
        space = self.entries - (self.head - tail)
        count = min(n, space)
        used = n if self.config.full == "drop" else count
        if count < n:
            self.counters["ring_full"] += 1
            if self.config.full == "drop":
                self.counters["records_dropped"] += n - count
        if count == 0:
            self.next_seq += used
            self.bar.write("next_seq", self.next_seq)
            self._status_locked(STATUS_RUNNING | STATUS_FULL)
            return used
        try:
            pieces = self._translate_locked(count)
        except IommuFault as fault:
            self._fault_locked(fault.reason, fault.iova)
            return 0
        data = pack_records(self.next_seq, count, self.clock(), self.device_id, self.epoch)
        offset = 0
        for phys, nrec in pieces:
            self.ram.write(phys, data[offset:offset + nrec * RECORD_SIZE])
            offset += nrec * RECORD_SIZE
        self.head += count
        self.next_seq += used
        self.counters["records_written"] += count
        self.bar.write("next_seq", self.next_seq)
        self.bar.write("head", self.head)  # after the records: a reader of head sees them
        self._status_locked(STATUS_RUNNING | (STATUS_FULL if count == space else 0))
        self._raise_irq_locked()
        return used

    def _translate_locked(self, count: int) -> list[tuple[int, int]]:
        """(phys, records) pieces for the next ``count`` slots: split at the ring's end
        and at page boundaries, each page translated through the IOMMU."""
        pieces = []
        slot = self.head % self.entries
        while count:
            in_page = RECORDS_PER_PAGE - slot % RECORDS_PER_PAGE
            nrec = min(count, in_page, self.entries - slot)
            phys = translate(self.ram, self.iommu_root, self.ring_iova + slot * RECORD_SIZE)
            pieces.append((phys, nrec))
            count -= nrec
            slot = (slot + nrec) % self.entries
        return pieces

    def _fault_locked(self, reason: str, iova: int | None) -> None:
        """Stop DMA for good (until reset): an IOMMU fault (``iova``) or a driver error."""
        self.fault = reason
        self.enabled = False
        if iova is None:
            self.counters["errors"] += 1
        else:
            self.counters["iommu_faults"] += 1
            self.bar.write("fault_iova", iova)
        self._status_locked(STATUS_FAULT)
        log.warning("%s stopped: %s", self.label, reason if iova is None else
                    f"IOMMU fault at IOVA {iova:#x}: {reason}")

    # -- pacing ----------------------------------------------------------------------

    def start_clock(self) -> None:
        """Start the pacing thread (nothing to do for ``rate=0``)."""
        if self.config.rate and self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"dma-{self.label}",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        rate = self.config.rate
        cap = max(1.0, rate * MAX_BURST_S)
        credit = 0.0
        last = time.monotonic()
        while not self._closing.wait(self.tick):
            now = time.monotonic()
            credit = min(credit + rate * (now - last), cap)
            last = now
            due = int(credit)
            if not due:
                continue
            with self.lock:
                if not self.enabled:
                    credit = 0.0
                    continue
                credit -= self._produce_locked(due)

    def info(self) -> dict:
        with self.lock:
            regs = self.bar.snapshot()
            return {"label": self.label, "kind": "dma", "path": self.config.path,
                    "epoch": self.epoch, "running": self.enabled, "fault": self.fault,
                    "irq_attached": self._irq_fd is not None, "head": self.head,
                    "tail": regs["tail"], "next_seq": self.next_seq, "ring": self.entries,
                    "rate": self.config.rate, "full": self.config.full, **self.counters}

    def close(self) -> None:
        self._closing.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self.lock:
            self.enabled = False
            self._drop_irq_locked()
        self.bar.close()

"""The kernel's driver for the DMA engine (``luofs-dma``).

Fresh probe: reset the device, take its registers and an interrupt (eventfd) from the
machine, allocate the ring and the I/O page tables from this kernel's RAM, map the
ring, program the registers, start. Interrupt service: read the eventfd, consume
records ``tail..head`` from the ring, check each (CRC, epoch, sequence), move the
tail doorbell.

Live update, as ``dev_liveupdate`` callbacks:

* ``prepare``: preserve the ring and page-table pages in KHO;
* ``reboot``: detach the interrupt (the device latches from now on) and capture
  :class:`~devices.state.DmaState` — ring and tables' addresses, tail, the next
  expected seq, the interrupt vector, lifetime counters;
* ``cancel``: re-attach the interrupt if it was detached, unpreserve the pages;
* ``finish``: nothing to release — ring and tables stay in use.

In the next kernel :meth:`DmaDriver.reattach` takes the state instead of probing:
no reset, the same ring and tables (already reserved, since they are preserved),
the latched interrupts delivered into the new eventfd; the ring is drained at once.

Half: drivers (the kernel process).

Unhappy paths: a probe fails with DeviceError — ENODEV if the registers are not a
DMA engine's, ENOMEM if this kernel's RAM has no room for the ring or its I/O page
tables (nothing stays allocated), the machine's errno if a request fails; a re-attach fails with
KhoFormatError if the state cannot be trusted (outside RAM, not preserved) or
DeviceError (ENODEV: reset or reprogrammed since; EIO: ``head`` does not fit), and
the caller probes fresh; ``prepare`` fails with the errno of the preserve (pages
already preserved are unpreserved); a ``head`` outside the ring is counted as an
error and nothing is consumed; a record with a bad CRC, epoch or device id is
counted (``bad_records``) and skipped.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field

from kho.errors import KhoFormatError
from kho.memory import PAGE_SIZE, OutOfPhysicalMemory, PhysicalAddressError
from luofs.unwind import do_all

from .errors import EIO, ENODEV, ENOMEM, DeviceError
from .iommu import IoPageTable
from .model import Device, Driver, LiveupdateOps
from .registers import DMA_ENGINE_ID, STATUS_FAULT, Bar
from .ring import RECORD_SIZE, ring_pages, unpack_records
from .spec import DeviceConfig
from .state import (DMA_COMPATIBLE, IRQ_ENABLED, DmaState, decode_dma_state, encode_dma_state)
from .transport import DeviceClient

log = logging.getLogger("devices.dma_driver")

#: Every device has its own IOMMU domain, so all rings can sit at the same IOVA.
RING_IOVA = 0x1000_0000
IRQ_VECTOR_BASE = 32
LIFETIME = ("records_received", "irq_consumed", "seq_gaps", "bad_records")


@dataclass(eq=False)
class DmaChannel:
    """Per-device driver data (``dev->driver_data``)."""

    config: DeviceConfig
    bar: Bar
    irq_fd: int | None
    ring_phys: int
    ring_iova: int
    entries: int
    pt: IoPageTable
    irq_vector: int
    device_id: int
    epoch: int
    tail: int = 0
    next_seq: int = 0
    phase: str = "running"          # running → prepared → frozen (→ released)
    saved: bytes | None = None      # the state captured at reboot
    reclaimed: bool = False
    latched_at_attach: int = 0      # interrupts latched in the blackout, delivered at attach
    counters: dict = field(default_factory=lambda: dict.fromkeys(
        LIFETIME + ("duplicates", "drains", "errors"), 0))
    at_boot: dict = field(default_factory=dict)  # lifetime counters when this kernel took over
    max_delay_ns: int = 0
    lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def ring_bytes(self) -> int:
        return self.entries * RECORD_SIZE

    def close_fds(self) -> None:
        if self.irq_fd is not None:
            os.close(self.irq_fd)
            self.irq_fd = None
        self.bar.close()


class DmaDriver(Driver):
    compatible = DMA_COMPATIBLE

    def __init__(self, client: DeviceClient, memory, preserved, *, liveupdate: bool = True,
                 on_records=None, clock=time.monotonic_ns):
        ops = LiveupdateOps(self._prepare, self._reboot, self._finish, self._cancel)
        super().__init__("luofs-dma", ops if liveupdate else None)
        self.client = client
        self.memory = memory
        self.preserved = preserved
        self.on_records = on_records  # on_records(device, seqs) after every drain
        self.clock = clock

    # -- binding ---------------------------------------------------------------------

    def probe(self, dev: Device, config: DeviceConfig) -> None:
        """Fresh start: whatever the device was doing is lost (reset)."""
        path = dev.path
        self.client.simple("device-reset", path)
        reply, fds = self.client.call("device-attach", path)
        bar, irq_fd = Bar(fds[0]), fds[1]
        allocated = []
        try:
            if bar.read("id") != DMA_ENGINE_ID:
                raise DeviceError(ENODEV, f"{path} is not a luofs DMA engine")
            pages = ring_pages(config.ring)
            ring_phys = self.memory.alloc_pages(pages)
            allocated.append((ring_phys, pages))
            self.memory.write(ring_phys, bytes(pages * PAGE_SIZE))
            pt = IoPageTable.create(self.memory, RING_IOVA, pages)
            allocated.append((pt.phys, pt.pages))
            pt.map(RING_IOVA, ring_phys, pages)
            bar.write("ring_iova", RING_IOVA)
            bar.write("ring_entries", config.ring)
            bar.write("iommu_root", pt.root)
            bar.write("tail", 0)
            self.client.simple("device-start", path)
        except BaseException as e:
            for phys, n in reversed(allocated):
                self.memory.free_pages(phys, n)
            bar.close()
            os.close(irq_fd)
            if isinstance(e, OutOfPhysicalMemory):
                raise DeviceError(ENOMEM, f"{path}: no memory for the ring: {e}") from None
            raise
        dev.driver_data = DmaChannel(
            config, bar, irq_fd, ring_phys=ring_phys, ring_iova=RING_IOVA, entries=config.ring,
            pt=pt, irq_vector=IRQ_VECTOR_BASE + _device_number(config),
            device_id=reply["device_id"], epoch=reply["epoch"],
            at_boot=dict.fromkeys(LIFETIME, 0))

    def reattach(self, dev: Device, config: DeviceConfig, data: bytes, incoming_preserved=None,
                 ) -> None:
        """Take over from the previous kernel's state: no reset, nothing lost.

        KhoFormatError if the state cannot be trusted; DeviceError(ENODEV) if the device
        no longer is what the state describes (it was reset meanwhile).
        """
        path = dev.path
        state = decode_dma_state(data)
        ranges = ((state.ring_phys, state.ring_bytes, "ring"),
                  (state.pt_phys, state.pt_pages * PAGE_SIZE, "I/O page tables"))
        for phys, nbytes, what in ranges:
            if not self.memory.contains(phys, nbytes):
                raise KhoFormatError(f"{path}: {what} at {phys:#x} lies outside RAM")
            if incoming_preserved is not None and not incoming_preserved.covers(phys, nbytes):
                raise KhoFormatError(f"{path}: {what} at {phys:#x} (+{nbytes:#x}) was not "
                                     f"preserved")
        if state.ring_entries != config.ring:
            log.warning("%s: ring has %d entries, not the configured %d; keeping the "
                        "preserved ring", path, state.ring_entries, config.ring)
        reply, fds = self.client.call("device-attach", path)
        bar, irq_fd = Bar(fds[0]), fds[1]
        try:
            regs = bar.snapshot()
            if reply["epoch"] != state.epoch or reply["device_id"] != state.device_id:
                raise DeviceError(ENODEV, f"{path} was reset since the hand-over (epoch "
                                          f"{state.epoch} → {reply['epoch']})")
            programmed = (regs["ring_iova"], regs["ring_entries"], regs["iommu_root"])
            if programmed != (state.ring_iova, state.ring_entries, state.pt_phys):
                raise DeviceError(ENODEV, f"{path} is programmed differently from the "
                                          f"hand-over state")
            head = bar.read("head")
            if not state.head <= head <= state.tail + state.ring_entries:
                raise DeviceError(EIO, f"{path}: head {head} does not fit the hand-over "
                                       f"(tail {state.tail}, head then {state.head})")
            for phys, nbytes, _ in ranges:
                self.memory.reserve(phys, nbytes)  # already reserved by KHO; idempotent
            bar.write("tail", state.tail)
        except BaseException:
            bar.close()
            os.close(irq_fd)
            self._detach_quietly(path)
            raise
        pt = IoPageTable(self.memory, state.pt_phys, state.pt_pages, state.ring_iova)
        channel = DmaChannel(
            config, bar, irq_fd, ring_phys=state.ring_phys, ring_iova=state.ring_iova,
            entries=state.ring_entries, pt=pt, irq_vector=state.irq_vector,
            device_id=state.device_id, epoch=state.epoch, tail=state.tail,
            next_seq=state.next_seq, reclaimed=True)
        for name in LIFETIME:
            channel.counters[name] = getattr(state, name)
        channel.at_boot = {name: getattr(state, name) for name in LIFETIME}
        dev.driver_data = channel
        channel.latched_at_attach = reply.get("pending", 0)
        if reply.get("pending"):
            log.info("%s: %d interrupt(s) latched during the blackout", path, reply["pending"])

    def _detach_quietly(self, path: str) -> None:
        try:
            self.client.simple("device-detach", path)
        except DeviceError as e:
            log.warning("%s: detach failed: %s", path, e)

    def shutdown(self, dev: Device) -> None:
        """``device_shutdown()`` at the kexec: stop DMA (reset) so the device does not write
        into memory the next kernel will reuse."""
        channel: DmaChannel | None = dev.driver_data
        self.client.simple("device-reset", dev.path)
        if channel is not None:
            channel.close_fds()
            channel.phase = "released"

    def remove(self, dev: Device) -> None:
        """Unbind for good: stop the device and free its ring and tables."""
        channel: DmaChannel | None = dev.driver_data
        self.shutdown(dev)
        if channel is not None:
            self.memory.free_pages(channel.ring_phys, ring_pages(channel.entries))
            channel.pt.free()
            dev.driver_data = None

    def release(self, dev: Device) -> None:
        """The kernel goes away and the device stays with the machine: close our fds only."""
        channel: DmaChannel | None = dev.driver_data
        if channel is not None:
            channel.close_fds()

    # -- interrupts and the ring ------------------------------------------------------

    def irq_fd(self, dev: Device) -> int | None:
        channel: DmaChannel | None = dev.driver_data
        return None if channel is None else channel.irq_fd

    def service(self, dev: Device) -> int:
        """The interrupt handler: take the interrupts, then drain; returns records consumed."""
        channel: DmaChannel = dev.driver_data
        with channel.lock:
            if channel.irq_fd is not None:
                try:
                    channel.counters["irq_consumed"] += os.eventfd_read(channel.irq_fd)
                except BlockingIOError:
                    pass
            return self.drain(dev)

    def drain(self, dev: Device) -> int:
        """Consume every record the device has written since the last drain."""
        channel: DmaChannel = dev.driver_data
        with channel.lock:
            if channel.bar.fd < 0:
                return 0
            head = channel.bar.read("head")
            count = head - channel.tail
            if count == 0:
                return 0
            if not 0 < count <= channel.entries:
                channel.counters["errors"] += 1
                log.error("%s: head %d is not within a ring ahead of tail %d", dev.path, head,
                          channel.tail)
                return 0
            data = self._read_ring(channel, channel.tail, count)
            seqs = []
            counters = channel.counters
            expected = channel.next_seq
            now = self.clock()
            for record in unpack_records(data):
                if (record.epoch != channel.epoch or record.device_id != channel.device_id
                        or not record.valid):
                    counters["bad_records"] += 1
                    continue
                if record.seq < expected:
                    counters["duplicates"] += 1
                    continue
                counters["seq_gaps"] += record.seq - expected
                expected = record.seq + 1
                seqs.append(record.seq)
                channel.max_delay_ns = max(channel.max_delay_ns, now - record.timestamp_ns)
            channel.next_seq = expected
            counters["records_received"] += len(seqs)
            counters["drains"] += 1
            channel.tail = head
            channel.bar.write("tail", head)
        if self.on_records is not None:
            self.on_records(dev, seqs)
        return len(seqs)

    def _read_ring(self, channel: DmaChannel, start: int, count: int) -> bytes:
        slot = start % channel.entries
        first = min(count, channel.entries - slot)
        data = self.memory.read(channel.ring_phys + slot * RECORD_SIZE, first * RECORD_SIZE)
        if count > first:
            data += self.memory.read(channel.ring_phys, (count - first) * RECORD_SIZE)
        return data

    # -- dev_liveupdate callbacks ----------------------------------------------------

    def _ranges(self, channel: DmaChannel):
        return ((channel.ring_phys, channel.ring_bytes), (channel.pt.phys, channel.pt.nbytes))

    def _prepare(self, dev: Device) -> None:
        channel: DmaChannel = dev.driver_data
        if channel is None or channel.phase != "running":
            raise DeviceError(ENODEV, f"{dev.path} is not running under this driver")
        try:
            do_all(self._ranges(channel), lambda r: self.preserved.preserve(*r),
                   lambda r, _: self.preserved.unpreserve(*r))
        except (OSError, PhysicalAddressError) as e:
            raise DeviceError(getattr(e, "errno", None) or EIO,
                              f"{dev.path}: cannot preserve the ring: {e}") from None
        channel.phase = "prepared"

    def _reboot(self, dev: Device) -> None:
        channel: DmaChannel = dev.driver_data
        with channel.lock:
            self.client.simple("device-detach", dev.path)
            if channel.irq_fd is not None:
                os.close(channel.irq_fd)
                channel.irq_fd = None
            channel.saved = encode_dma_state(self.state_of(channel, channel.bar.read("head")))
            channel.phase = "frozen"

    def state_of(self, channel: DmaChannel, head: int) -> DmaState:
        return DmaState(
            device_id=channel.device_id, epoch=channel.epoch, ring_phys=channel.ring_phys,
            ring_iova=channel.ring_iova,
            ring_entries=channel.entries, irq_vector=channel.irq_vector, irq_flags=IRQ_ENABLED,
            pt_pages=channel.pt.pages, pt_phys=channel.pt.phys, tail=channel.tail,
            head=head, next_seq=channel.next_seq,
            **{name: channel.counters[name] for name in LIFETIME})

    def _cancel(self, dev: Device) -> None:
        channel: DmaChannel = dev.driver_data
        if channel.phase == "frozen":
            reply, fds = self.client.call("device-attach", dev.path)
            channel.bar.close()
            channel.bar, channel.irq_fd = Bar(fds[0]), fds[1]
            channel.saved = None
        if channel.phase in ("prepared", "frozen"):
            for phys, nbytes in self._ranges(channel):
                self.preserved.unpreserve(phys, nbytes)
        channel.phase = "running"

    def _finish(self, dev: Device) -> None:
        pass  # the ring and tables stay in use; nothing was borrowed

    def kho_state(self, dev: Device) -> bytes | None:
        channel: DmaChannel | None = dev.driver_data
        return None if channel is None else channel.saved

    # -- status ----------------------------------------------------------------------

    def info(self, dev: Device) -> dict:
        channel: DmaChannel | None = dev.driver_data
        if channel is None:
            return {}
        with channel.lock:
            counters = dict(channel.counters)
            status = channel.bar.read("status") if channel.bar.fd >= 0 else 0
        return {
            **counters,
            **{f"{name}_this_kernel": counters[name] - channel.at_boot.get(name, 0)
               for name in LIFETIME},
            "tail": channel.tail, "next_seq": channel.next_seq, "epoch": channel.epoch,
            "ring": channel.entries, "ring_phys": hex(channel.ring_phys),
            "iommu_root": hex(channel.pt.root), "irq_vector": channel.irq_vector,
            "phase": channel.phase, "device_faulted": bool(status & STATUS_FAULT),
            "max_delay_ms": round(channel.max_delay_ns / 1e6, 3),
        }


def _device_number(config: DeviceConfig) -> int:
    """The device's slot on its bus, for a stable interrupt vector."""
    return int(config.name.split(":")[2].split(".")[0], 16)

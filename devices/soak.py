"""A live-update soak: N kexecs in a row with DMA running, every record and interrupt
accounted for. A function (not a test) so benchmarks can call it with big numbers and
tests with small ones::

    from devices.soak import soak
    report = soak(kexecs=100)
    assert report.lost == 0 and report.irq_lost == 0

Each round: the kernel services its devices for ``steady_s``; then a live update, in
which ``blackout_s`` more seconds pass with no kernel at all (the start of the next
kernel process, which this in-process emulation does not pay). Throughput is the
device's write rate, measured over the steady windows and over the blackouts
(freeze to re-attach): equal rates mean DMA went on undisturbed while no kernel ran.
Devices not requested are reset at each kexec; what they had written and no driver
had read yet is reported as ``unpreserved_lost`` — lost by design, as on hardware.

A test tool that runs both halves in one process (:mod:`devices.testing`). Unhappy
paths: none of its own; a refused live update raises DeviceError from the round
that failed.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from .dma_engine import DmaEngine
from .testing import SimulatedMachine

SOAK_SPEC = "bridge0;dma0@bridge0:rate=20000,ring=4096;dma1@bridge0:rate=5000,ring=1024"


@dataclass
class SoakReport:
    kexecs: int
    records_written: int        # by the preserved devices
    records_received: int       # by their drivers, over all kernels
    lost: int                   # written and never received
    duplicated: int
    seq_gaps: int
    irq_raised: int
    irq_consumed: int
    irq_lost: int
    steady_rate: float          # records/s written while a kernel ran
    blackout_rate: float        # records/s written from freeze to re-attach
    blackout_ms_mean: float
    blackout_ms_max: float
    ring_full_events: int
    reclaim_failures: int       # preserved devices a new kernel could not re-attach
    unpreserved_written: int
    unpreserved_lost: int       # lost by design: reset at the kexec

    def as_dict(self) -> dict:
        return asdict(self)


def soak(kexecs: int = 100, *, spec: str = SOAK_SPEC, preserve=("dma0",),
         steady_s: float = 0.02, blackout_s: float = 0.005, memory: int = 64 << 20,
         progress=None) -> SoakReport:
    """Run ``kexecs`` live updates; ``progress(i, machine)`` after each, if given."""
    with SimulatedMachine(spec, memory=memory) as machine:
        kernel = machine.boot()
        kernel.request(*preserve)
        engines = {label: machine.host.engine(label) for label in preserve}
        others = [e for e in machine.host.devices.values()
                  if isinstance(e, DmaEngine) and e.label not in preserve]
        steady_time = blackout_time = 0.0
        steady_written = blackout_written = 0
        blackouts = []
        reclaim_failures = 0

        def written() -> int:
            return sum(e.counters["records_written"] for e in engines.values())

        def pause() -> None:
            time.sleep(blackout_s)

        for i in range(kexecs):
            w0, t0 = written(), time.perf_counter()
            time.sleep(steady_s)
            w1, t1 = written(), time.perf_counter()
            steady_written += w1 - w0
            steady_time += t1 - t0
            kernel = machine.kexec(blackout=pause)
            w2, t2 = written(), time.perf_counter()
            blackout_written += w2 - w1
            blackout_time += t2 - t1
            blackouts.append(machine.last_blackout_s)
            reclaim_failures += len(kernel.report["fallback"])
            if progress is not None:
                progress(i, machine)
        for engine in engines.values():
            engine.stop()
        kernel.drivers.stop_service()
        kernel.drivers.service_all()
        ledger = machine.ledger
        total_written = written()
        received = sum(ledger.received[label] for label in preserve)
        irq_raised = sum(e.counters["irq_raised"] for e in engines.values())
        irq_consumed = sum(kernel.device(label).driver_data.counters["irq_consumed"]
                           for label in preserve)
        irq_accounted = sum(e.counters["irq_pending"] + e.counters["irq_discarded"]
                            for e in engines.values())
        unpreserved_written = sum(e.counters["records_written"] for e in others)
        unpreserved_received = sum(ledger.received[e.label] for e in others)
        return SoakReport(
            kexecs=kexecs, records_written=total_written, records_received=received,
            lost=total_written - received,
            duplicated=sum(ledger.duplicates[label] for label in preserve),
            seq_gaps=sum(ledger.gaps[label] for label in preserve),
            irq_raised=irq_raised, irq_consumed=irq_consumed,
            irq_lost=irq_raised - irq_consumed - irq_accounted,
            steady_rate=steady_written / steady_time if steady_time else 0.0,
            blackout_rate=blackout_written / blackout_time if blackout_time else 0.0,
            blackout_ms_mean=1000 * sum(blackouts) / len(blackouts) if blackouts else 0.0,
            blackout_ms_max=1000 * max(blackouts, default=0.0),
            ring_full_events=sum(e.counters["ring_full"] for e in engines.values()),
            reclaim_failures=reclaim_failures,
            unpreserved_written=unpreserved_written,
            unpreserved_lost=unpreserved_written - unpreserved_received)

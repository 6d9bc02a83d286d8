"""Devices through many live updates (issue 6): records and interrupts lost over 100
consecutive kexecs with a DMA engine writing ≥ 10,000 records/s (target 0), and its
throughput during the blackouts beside its steady throughput. Real path: `luofs kexec`."""

from __future__ import annotations

import sys
import time

from luofs.client import kexec, status
from luofs.testing import booted

from .common import Row, summarize

RATE = 20_000
DMA0 = "pci0000:00/0000:00:01.0/0000:01:00.0"


def _dma(instance) -> tuple[dict, dict]:
    info = status(instance.root)
    machine = next(d for d in info["machine"]["devices"] if d["path"] == DMA0)
    kernel = next(d for d in info["kernel"]["devices"] if d["path"] == DMA0)
    return machine, kernel


def soak(progress, kexecs: int = 100) -> list[Row]:
    spec = f"bridge0;dma0@bridge0:rate={RATE},ring=8192"
    blackout_rates, steady_rates = [], []
    with booted(["--devices", spec]) as instance:
        with open(instance.path("sys/devices", DMA0, "liveupdate/requested"), "w") as f:
            f.write("1")
        for i in range(kexecs):
            m0, t0 = _dma(instance)[0]["records_written"], time.perf_counter()
            time.sleep(0.05)
            m1, t1 = _dma(instance)[0]["records_written"], time.perf_counter()
            steady_rates.append((m1 - m0) / (t1 - t0))
            reply = kexec(instance.root, timeout=120)
            blackout_rates.append(reply["blackout_records"]["dma0"] / (reply["blackout_ms"] / 1000))
            if (i + 1) % 25 == 0:
                print(f"  … {i + 1} live updates", flush=True, file=sys.stderr)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # let the last kernel catch up with the ring
            machine, kernel = _dma(instance)
            if machine["records_written"] - kernel["records_received"] < 64:
                break
            time.sleep(0.02)
        machine, kernel = _dma(instance)
    lost = kernel["seq_gaps"] + kernel["bad_records"]
    irq_lost = machine["irq_raised"] - machine["irq_delivered"] - machine["irq_pending"]
    rows = [
        Row(f"device records lost over {kexecs} kexecs ({RATE}/s)", "records", lost, lost,
            lost, 1, target="0"),
        Row(f"device records duplicated over {kexecs} kexecs", "records",
            kernel["duplicates"], kernel["duplicates"], kernel["duplicates"], 1, target="0"),
        Row(f"device interrupts lost over {kexecs} kexecs", "irqs", irq_lost, irq_lost,
            irq_lost, 1, target="0"),
        summarize("device throughput, steady", steady_rates, unit="rec/s"),
        summarize("device throughput during the blackouts", blackout_rates,
                  reference=None, unit="rec/s"),
    ]
    steady = rows[-2].median
    rows[-1].ratio = round(rows[-1].median / steady, 2) if steady else None
    for row in rows:
        progress(row)
    print(f"  ({machine['records_written']} records written, "
          f"{kernel['records_received']} received)", file=sys.stderr)
    return rows

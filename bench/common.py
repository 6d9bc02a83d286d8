"""Shared shapes for benchmark figures: medians with min and max, ratios, and
measurement in interleaved blocks."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable


@dataclass
class Row:
    name: str
    unit: str
    median: float
    min: float
    max: float
    n: int
    ratio: float | None = None  # median / the row's reference median, same run
    target: str = ""
    requests: str = ""  # FUSE requests per call, as counted (bench/fuse_requests.py)

    def as_dict(self) -> dict:
        return asdict(self)


def summarize(name: str, samples: list[float], reference: float | None = None, unit="µs",
              target="") -> Row:
    med = statistics.median(samples)
    return Row(name, unit, round(med, 1), round(min(samples), 1), round(max(samples), 1),
               len(samples), round(med / reference, 2) if reference else None, target)


def table(rows: list[Row]) -> str:
    head = f"{'figure':52} {'median':>10} {'min':>10} {'max':>10} {'n':>6} {'ratio':>6}  target"
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else ""
        requests = f"  [FUSE requests {r.requests}]" if r.requests else ""
        lines.append(f"{r.name:52} {r.median:>8} {r.unit:2}{r.min:>9}{r.max:>11}"
                     f" {r.n:>6} {ratio:>6}  {r.target}{requests}")
    return "\n".join(lines)


Rounds = list[list[float]]  # samples of one case, per round


def interleaved_blocks(cases: dict[str, Callable[[], object]], rounds: int, block: int,
                       prepare: dict[str, Callable[[int], object]] | None = None
                       ) -> dict[str, Rounds]:
    """Each round runs `block` timed calls of every case in turn (µs per call);
    `prepare[case](block)`, if given, runs untimed before each block of that case.

    Blocks, never one call of each case alternating: work a server does after it has
    replied lands on whatever call comes next, and in a block that is a call of the
    same case. Many rounds spread the machine's moods (on 2 shared cores a process
    may run on one core or across two) over every case alike."""
    clock = time.perf_counter_ns
    samples: dict[str, Rounds] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            if prepare and name in prepare:
                prepare[name](block)
            times = []
            for _ in range(block):
                t0 = clock()
                fn()
                times.append((clock() - t0) / 1000.0)
            samples[name].append(times)
    return samples


def summarize_rounds(name: str, rounds: Rounds, reference: Rounds | None = None, unit="µs",
                     target="", requests="") -> Row:
    """A row over every sample; its ratio is the median over rounds of this case's
    median against the reference's median in the same round."""
    row = summarize(name, [x for r in rounds for x in r], unit=unit, target=target)
    if reference is not None:
        row.ratio = round(statistics.median(
            statistics.median(mine) / statistics.median(ref)
            for mine, ref in zip(rounds, reference, strict=True)), 2)
    row.requests = requests
    return row

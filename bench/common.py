"""Shared shapes for benchmark figures: medians with min and max, and ratios."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass


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
        lines.append(f"{r.name:52} {r.median:>8} {r.unit:2}{r.min:>9}{r.max:>11}"
                     f" {r.n:>6} {ratio:>6}  {r.target}")
    return "\n".join(lines)

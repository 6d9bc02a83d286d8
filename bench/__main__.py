"""`make bench`: every performance figure of luofs in one table, plus JSON.

Never part of `make test`. The machine is shared and noisy: figures are medians
with min and max, and ratios are taken against a reference measured in the same run.
"""

from __future__ import annotations

import datetime
import json
import os
import platform

from luofs.testing import booted

from . import ioctl_roundtrip
from .common import table

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def machine() -> str:
    return f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus, {platform.release()}"


def main() -> int:
    rows = []
    with booted() as instance:
        rows += ioctl_roundtrip.run(instance)
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"luofs bench — {when} — {machine()}")
    print(table(rows))
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "latest.json"), "w") as f:
        json.dump({"date": when, "machine": machine(), "rows": [r.as_dict() for r in rows]},
                  f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

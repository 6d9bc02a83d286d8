"""`make bench`: every performance figure of luofs in one table, plus JSON.

Never part of `make test`. The machine is shared and noisy: figures are medians
with min and max, and ratios are taken against a reference measured in the same run.
Progress goes to stderr as each figure is measured.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys

from luofs.testing import booted

from . import (device_soak, ioctl_roundtrip, kexec_blackout, plot, shim, startup, supervisor,
               vm_linux, vm_pause)
from .common import table

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def machine() -> str:
    return f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus, {platform.release()}"


def progress(row) -> None:
    print(f"  {row.name}: {row.median} {row.unit}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    args = p.parse_args(argv)
    rows = []
    print("ioctl round trips …", file=sys.stderr, flush=True)
    with booted() as instance:
        rows += ioctl_roundtrip.run(instance, rounds=5 if args.quick else ioctl_roundtrip.ROUNDS)
        rows += shim.run(instance, rows[0].median)
        rows += supervisor.run(instance)
    for row in rows:
        progress(row)
    print("start-up of `luofs kexec` / `luofs status` and of the machine process …",
          file=sys.stderr, flush=True)
    with booted() as instance:
        rows += startup.run(instance, progress, quick=args.quick)
    print("kexec blackout against preserved bytes …", file=sys.stderr, flush=True)
    parts: dict = {}
    rows += kexec_blackout.blackout_by_size(progress, rounds=5 if args.quick else 15,
                                            parts=parts)
    print("what recording each update's trace costs the blackout …", file=sys.stderr,
          flush=True)
    rows += kexec_blackout.recording_cost(progress, rounds=5 if args.quick else 15)
    print("many sessions (each 10,000 × 10 sample takes a minute or two to set up) …",
          file=sys.stderr, flush=True)
    rows += kexec_blackout.many_sessions(progress, 10_000, 1, samples=1 if args.quick else 3)
    rows += kexec_blackout.many_sessions(progress, 10_000, 10, samples=1 if args.quick else 3)
    print("devices through 100 live updates …", file=sys.stderr, flush=True)
    rows += device_soak.soak(progress, kexecs=20 if args.quick else 100)
    print("a QEMU VM's pause through live updates, 256 MiB to 4 GiB (in a memory cgroup) …",
          file=sys.stderr, flush=True)
    try:
        rows += vm_pause.run(progress, rounds=3 if args.quick else 5,
                             naive_rounds=2 if args.quick else 3)
    except (vm_pause.qemu.QemuMissing, vm_pause.memcg.CgroupUnavailable) as e:
        print(f"  skipped: {e}", file=sys.stderr, flush=True)
    print("the Linux test guest: its boot, its pause beside the bare-metal guest's …",
          file=sys.stderr, flush=True)
    try:
        rows += vm_linux.run(progress, rounds=3 if args.quick else 5)
    except (vm_linux.qemu.QemuMissing, FileNotFoundError) as e:
        print(f"  skipped: {e}", file=sys.stderr, flush=True)
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"luofs bench — {when} — {machine()}")
    print(table(rows))
    os.makedirs(RESULTS, exist_ok=True)
    out = os.path.join(RESULTS, "latest.json")
    with open(out, "w") as f:
        json.dump({"date": when, "machine": machine(), "rows": [r.as_dict() for r in rows]},
                  f, indent=2)
    print(f"written: {out}", file=sys.stderr)
    png = os.path.join(RESULTS, "blackout.png")
    if plot.blackout_png(rows, png, parts):
        print(f"written: {png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

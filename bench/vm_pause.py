"""The guest-visible pause of a luofs VM through a live update (issue 15), by RAM size.

Preserved RAM: `luofs kexec` with a VM whose RAM is a preserved memfd; the pause is
from the old VMM's `stop` to the new QEMU's `cont` (CLOCK_MONOTONIC, both processes),
with its parts as the VMMs measured them. Naive: the same VM migrated by QEMU alone,
RAM and all, through a file (a memfd: tmpfs, the fastest file there is), old QEMU
killed once saved, as a kexec would end it; no kexec in between, which flatters it.
Everything big runs inside a memory cgroup. Accelerator (KVM or TCG) in every name.
"""

from __future__ import annotations

import os
import tempfile
import time

from luofs import vm
from luofs.testing import booted
from luofs.vm import accel, guest, qemu

from . import memcg
from .common import Row, summarize

MiB, GiB = 1 << 20, 1 << 30
SIZES = (256 * MiB, GiB, 4 * GiB)
CGROUP_LIMIT = 9 * GiB  # 4 GiB guest + a 3 GiB file + the next QEMU loading 3 GiB (naive)
PARTS = ("stop_and_save", "preserve_state", "update_until_go", "retrieve", "qemu_start",
         "load", "cont")


def _label(size: int) -> str:
    return f"{size >> 30} GiB" if size >= GiB else f"{size >> 20} MiB"


def _wait_ticks(log_path: str, at_least: int, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while guest.SerialLog.read(log_path).last_tick < at_least:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the guest did not reach tick {at_least} ({log_path})")
        time.sleep(0.05)


def preserved(size: int, rounds: int) -> tuple[list[float], dict[str, list[float]], list[float]]:
    """Pauses, their parts, and the machine's blackouts, over `rounds` updates."""
    pauses, parts, blackouts = [], {p: [] for p in PARTS}, []
    with booted(["--memory", str(size + 256 * MiB)]) as inst:  # the RAM is pinned in it
        info = vm.start(inst.root, size)
        try:
            _wait_ticks(info["serial_log"], 20)
            for _ in range(rounds):
                time.sleep(1.0)  # the standby kernel and the next VMM have loaded
                inst.kexec()
                update = vm.status(inst.root)["last_update"]
                pauses.append(update["pause_ms"])
                for name in PARTS:
                    parts[name].append(update["parts_ms"][name])
                blackouts.append(inst.status()["machine"]["last_blackout_ms"])
            assert vm.check(inst.root)["errors"] == 0
        finally:
            vm.stop(inst.root)
    return pauses, parts, blackouts


def naive(size: int, rounds: int, accel_name: str) -> list[float]:
    pauses = []
    with tempfile.TemporaryDirectory(prefix="luofs-naive-") as tmp:
        machine = qemu.Machine("naive", size, accel_name, tmp)
        ram = os.memfd_create("naive-ram")
        os.ftruncate(ram, size)
        proc, mon = qemu.start(machine, ram, ignore_shared=False)
        try:
            _wait_ticks(machine.serial_log, 20)
            for _ in range(rounds):
                state = os.memfd_create("naive-state")
                t0 = time.monotonic()
                mon.execute("stop")
                mon.execute("getfd", fds=[state], fdname="s")
                mon.migrate("migrate", 600, uri="fd:s")
                os.close(ram)  # the old QEMU's RAM goes with it, as at a kexec
                proc.kill()
                ram = os.memfd_create("naive-ram")
                os.ftruncate(ram, size)
                os.lseek(state, 0, os.SEEK_SET)
                new, mon2 = qemu.start(machine, ram, incoming_fd=state, ignore_shared=False)
                mon2.wait_migration("migrate-incoming", 600)
                mon2.execute("cont")
                pauses.append((time.monotonic() - t0) * 1000)
                os.close(state)
                proc.wait()
                proc, mon = new, mon2
                time.sleep(0.5)
        finally:
            qemu.stop(proc)
            os.close(ram)
    return pauses


def run(progress, rounds: int = 5, naive_rounds: int = 3) -> list[Row]:
    accel_name = accel.choose(qemu.binary()).upper()
    rows, reference = [], None
    with memcg.limited(CGROUP_LIMIT):
        for size in SIZES:
            label = f"{_label(size)} {accel_name}"
            pauses, parts, blackouts = preserved(size, rounds)
            row = summarize(f"vm pause {label}, preserved RAM", pauses, reference, unit="ms",
                            target="median ≤ 60 ms; 4 GiB ≤ 1.2× 256 MiB")
            reference = reference or row.median
            rows.append(row)
            progress(row)
            for name in PARTS:
                rows.append(summarize(f"  part: {name.replace('_', ' ')}", parts[name], unit="ms"))
            rows.append(summarize("  (of which the luofs blackout)", blackouts, unit="ms"))
            slow = summarize(f"vm pause {label}, naive (RAM through a file)",
                             naive(size, naive_rounds, accel_name.lower()), row.median, unit="ms")
            rows.append(slow)
            progress(slow)
    return rows


if __name__ == "__main__":
    import sys

    from .common import table

    quick = "--quick" in sys.argv
    print(table(run(lambda r: print(f"  {r.name}: {r.median} ms", file=sys.stderr, flush=True),
                    rounds=3 if quick else 5, naive_rounds=2 if quick else 3)))

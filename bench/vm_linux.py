"""The Linux test guest of luofs vm (native/linux-guest): how long it takes to boot, and
its guest-visible pause through a live update beside the bare-metal test guest's.

Each round boots the Linux guest afresh (from `luofs vm start` to /init's boot banner,
and to its first tick, the pattern written) and updates its machine once; then updates
a second machine that runs the bare-metal guest at the same RAM size, the Linux guest
still running: the rounds interleave the two, so their ratio is taken in the same
conditions.
Accelerator (KVM or TCG) in every name.
"""

from __future__ import annotations

import time

from luofs import vm
from luofs.testing import booted
from luofs.vm import accel, guest, linux_guest, qemu

from .common import Row, summarize

SETTLE = 1.0  # the standby kernel and the next VMM have loaded


def _wait(predicate, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} within {timeout:.0f} s")
        time.sleep(0.01)


def _registered(root: str, name: str) -> None:
    """Its VMM has a successor, so it has registered: the next update (or stop) finds it."""
    _wait(lambda: vm.status(root, name)["successor_pid"], f"VM {name} did not register")


def _update(inst, name: str) -> dict:
    _registered(inst.root, name)
    time.sleep(SETTLE)
    inst.kexec()
    update = vm.status(inst.root, name)["last_update"]
    _registered(inst.root, name)
    return update


def run(progress, rounds: int = 5) -> list[Row]:
    """Raises FileNotFoundError when the Linux guest is not built, QemuMissing."""
    kernel, initrd = linux_guest.images()
    name = f"{linux_guest.RAM >> 20} MiB {accel.choose(qemu.binary()).upper()}"
    banners, ticks, linux, bare = [], [], [], []
    with booted() as linux_inst, booted() as bare_inst:
        bare_log = vm.start(bare_inst.root, linux_guest.RAM)["serial_log"]
        try:
            _wait(lambda: guest.SerialLog.read(bare_log).last_tick >= 20, "the bare-metal guest")
            for _ in range(rounds):
                t0 = time.monotonic()
                log = vm.start(linux_inst.root, linux_guest.RAM, "linux", linux_guest.QEMU_ARGS,
                               kernel=kernel, initrd=initrd,
                               append=linux_guest.APPEND)["serial_log"]
                try:
                    _wait(lambda: linux_guest.SerialLog.read(log).boots, "no boot banner")
                    banners.append(time.monotonic() - t0)
                    _wait(lambda: linux_guest.SerialLog.read(log).ticks, "no tick")
                    ticks.append(time.monotonic() - t0)
                    linux.append(_update(linux_inst, "linux"))
                    bare.append(_update(bare_inst, "vm0"))  # (while the Linux guest runs too)
                    found = linux_guest.problems(linux_guest.SerialLog.read(log))
                    if found:
                        raise RuntimeError(f"the Linux guest did not live through: {found}")
                finally:
                    vm.stop(linux_inst.root, "linux")
        finally:
            vm.stop(bare_inst.root)
    reference = summarize(f"vm pause {name}, bare-metal guest", [u["pause_ms"] for u in bare],
                          unit="ms")
    rows = [summarize(f"linux guest boot {name}: banner", banners, unit="s"),
            summarize(f"linux guest boot {name}: first tick", ticks, unit="s"),
            reference,
            summarize(f"vm pause {name}, Linux guest", [u["pause_ms"] for u in linux],
                      reference.median, unit="ms")]
    for part in ("qemu_start", "update_until_go"):
        base = summarize(f"  part: {part.replace('_', ' ')}, bare-metal",
                         [u["parts_ms"][part] for u in bare], unit="ms")
        rows += [base, summarize(f"  part: {part.replace('_', ' ')}, Linux",
                                 [u["parts_ms"][part] for u in linux], base.median, unit="ms")]
    for row in rows:
        progress(row)
    return rows


if __name__ == "__main__":
    import sys

    from .common import table

    print(table(run(lambda r: print(f"  {r.name}: {r.median} {r.unit}", file=sys.stderr,
                                    flush=True), rounds=3 if "--quick" in sys.argv else 5)))

"""The Linux test guest (native/linux-guest), seen from the host.

Debian's cloud kernel with a busybox initramfs whose /init prints a boot banner, writes
a pattern over a chunk of its RAM (a tmpfs file) and then, every ~100 ms, a tick, its
uptime and an md5 check of the pattern (see native/linux-guest/init). The host reads
those lines (SerialLog, problems) and finds the pattern's pages in the guest RAM memfd
(pattern_blocks). `make linux-guest` builds it into native/build/linux-guest; where it
could not, `unavailable` there says why, and images() raises with that reason.
"""

from __future__ import annotations

import os
import re

from ..native import CHECKOUT_DIR
from .guest import Printed

DIR_ENV = "LUOFS_LINUX_GUEST"
RAM = 128 << 20  # the cloud kernel does not get through its start-up in 64 MiB
# quiet: no kernel messages on the serial port, so the first line is /init's (the
# kernel's own start takes ~1.5 s under TCG). panic=-1 with QEMU's -no-reboot: a
# panicking guest ends its QEMU instead of booting again.
APPEND = "console=ttyS0 quiet loglevel=1 acpi=off panic=-1"
QEMU_ARGS = ("-no-reboot",)
PAGE = 4096

_BOOT = re.compile(r"^luofs-linux boot kernel=(\S+) uptime=([\d.]+)", re.M)
_PATTERN = re.compile(r"^luofs-linux pattern seed=([0-9a-f]{8}) blocks=(\d+) md5=([0-9a-f]{32})",
                      re.M)
_TICK = re.compile(r"^luofs-linux tick=(\d+) uptime=([\d.]+) pattern=(\w+)", re.M)


def images() -> tuple[str, str]:
    """(kernel, initramfs): from $LUOFS_LINUX_GUEST, else this checkout's build."""
    directory = os.environ.get(DIR_ENV) or os.path.join(CHECKOUT_DIR, "linux-guest")
    kernel, initrd = (os.path.join(directory, n) for n in ("vmlinuz", "initramfs.gz"))
    if not (os.path.isfile(kernel) and os.path.isfile(initrd)):
        try:
            with open(os.path.join(directory, "unavailable")) as f:
                why = f.read().strip()
        except FileNotFoundError:
            why = "run `make linux-guest`"
        raise FileNotFoundError(f"the Linux test guest is not built in {directory}: {why}")
    return kernel, initrd


def block(seed: str, number: int) -> bytes:
    """Block `number` of the pattern, as /init's awk writes it."""
    line = f"luofs-linux pattern seed={seed} block={number:06d}\n".encode()
    return (line * (PAGE // len(line) + 1))[:PAGE]


class SerialLog(Printed):
    """What /init printed: boots (kernel, uptime), patterns (seed, blocks, md5), ticks
    (number, uptime, pattern check)."""

    def __init__(self, text: str):
        self.boots = [(k, float(u)) for k, u in _BOOT.findall(text)]
        self.patterns = [(s, int(b), m) for s, b, m in _PATTERN.findall(text)]
        self.ticks = [(int(n), float(u), check) for n, u, check in _TICK.findall(text)]


def problems(log: SerialLog) -> list[str]:
    """What contradicts one uninterrupted life of the guest: more than one boot, a tick
    missing or repeated, uptime that went back, a pattern check that failed."""
    found = [] if len(log.boots) == 1 else [f"{len(log.boots)} boot banners"]
    previous = (0, 0.0)
    for number, uptime, check in log.ticks:
        if number != previous[0] + 1:
            found.append(f"tick {number} after tick {previous[0]}")
        if uptime <= previous[1]:
            found.append(f"uptime {uptime} at tick {number} after {previous[1]}")
        if check != "ok":
            found.append(f"pattern {check} at tick {number}")
        previous = (number, uptime)
    return found


def pattern_blocks(ram_fd: int, seed: str, chunk: int = 16 << 20) -> set[int]:
    """Scan a guest RAM file for the pattern's pages: the numbers of the blocks found
    intact. (Pages that start like a block and differ are not errors: stale pages of
    the guest's awk, freed and partly reused, look so.)"""
    prefix = f"luofs-linux pattern seed={seed} block=".encode()
    intact = set()
    size = os.fstat(ram_fd).st_size
    for base in range(0, size, chunk):
        data = os.pread(ram_fd, chunk, base)
        at = data.find(prefix)
        while at >= 0:
            digits = data[at + len(prefix):at + len(prefix) + 6]
            if at % PAGE == 0 and digits.isdigit() and data[at:at + PAGE] == block(seed,
                                                                                 int(digits)):
                intact.add(int(digits))
            at = data.find(prefix, (at // PAGE + 1) * PAGE)  # (blocks start pages)
    return intact

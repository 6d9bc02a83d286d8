"""The bare-metal test guest (native/guest), seen from the host.

What it prints on its serial port, and the RAM pattern it writes, so that a host can
check a guest's RAM through its memfd without asking the guest: word at guest
physical address A is `seed ^ (A * PATTERN_MUL) mod 2^32`, from PATTERN_BASE to the
end of low memory; the tick count and the seed sit in two heartbeat words.
"""

from __future__ import annotations

import os
import re

BOOT_MARK = b"luofs-guest boot"
PATTERN_BASE = 0x400000
PATTERN_MUL = 0x9E3779B1
HEARTBEAT = 0x200000  # u32 ticks, u32 seed

_BOOT = re.compile(r"luofs-guest boot seed=([0-9a-f]{8}) pattern=([0-9a-f]{8})-([0-9a-f]{8})")
_TICK = re.compile(r"tick=(\d+) seed=([0-9a-f]{8})")
_CHECK = re.compile(r"check=(\d+) errors=(\d+) words=(\d+) first_bad=([0-9a-f]{8})")


def image() -> str:
    """$LUOFS_GUEST, else the package's, else the checkout's (luofs/native.py)."""
    from .. import native

    path = native.path(native.GUEST)
    if not os.path.exists(path):
        raise FileNotFoundError(f"the guest {native.missing(native.GUEST)}")
    return path


def pattern(seed: int, addr: int) -> int:
    return (seed ^ (addr * PATTERN_MUL)) & 0xFFFFFFFF


class Printed:
    """A guest's serial log, parsed by a subclass into `ticks`: (number, ...) in order."""

    ticks: list[tuple]

    @classmethod
    def read(cls, path: str):
        with open(path, errors="replace") as f:
            return cls(f.read())

    @property
    def last_tick(self) -> int:
        return self.ticks[-1][0] if self.ticks else 0


class SerialLog(Printed):
    """What the guest printed, parsed: boots, ticks and checks, in order."""

    def __init__(self, text: str):
        self.boots = [(int(s, 16), int(lo, 16), int(hi, 16)) for s, lo, hi in _BOOT.findall(text)]
        self.ticks = [(int(t), int(s, 16)) for t, s in _TICK.findall(text)]
        self.checks = [dict(number=int(n), errors=int(e), words=int(w), first_bad=int(b, 16))
                       for n, e, w, b in _CHECK.findall(text)]
        self.faulted = "\nfault\n" in f"\n{text}"

"""Named fault points, so every failure and rollback path can be driven from tests.

`luofs boot --fault POINT[:ERRNO]` (repeatable) or LUOFS_FAULT="POINT[:ERRNO],…" arm
points in every kernel of an instance. Code calls `faults.check("memfd.freeze")`
where the real kernel's callback could fail; an armed point raises LuoError there.
"""

from __future__ import annotations

import errno as _errno
import os
import signal

from .errors import LuoError

# Every point the code checks, with what failing there emulates.
POINTS = {
    "memfd.preserve": "the memfd handler's preserve() (PRESERVE_FD fails)",
    "memfd.freeze": "the memfd handler's freeze() (the live update is refused)",
    "kho.finalize": "KHO finalize at the end of the freeze (the live update is refused)",
    "handover.corrupt": "the hand-over is damaged in transit (the next kernel panics)",
    "state.lock": "the wait for the state lock is interrupted (arm with EAGAIN; RFC profiles)",
    "subsystem.NAME.prepare": "subsystem NAME's prepare callback (e.g. subsystem.mm.prepare)",
    "subsystem.NAME.freeze": "subsystem NAME's freeze callback",
    "keeper.die": "the old kernel's first file keeper is SIGKILLed between the freeze and "
                  "the next kernel's boot (its parked files are lost in the blackout)",
    # crash.*: the kernel process is SIGKILLed there, once per instance.
    "crash.preserve": "the kernel dies inside PRESERVE_FD",
    "crash.freeze": "the kernel dies while freezing files for a live update",
    "crash.handed-over": "the old kernel dies after handing over, before unmounting",
    "crash.reload": "the next kernel dies while reloading the hand-over",
}


def parse(spec: str) -> dict[str, int]:
    """'memfd.freeze:EIO,kho.finalize' → {point: errno}; ValueError names what is wrong."""
    armed = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        point, _, code = item.partition(":")
        if not any(point == p or point.startswith(p.split(".")[0] + ".") for p in POINTS):
            raise ValueError(f"unknown fault point {point!r}; known: {', '.join(POINTS)}")
        if not code:
            value = _errno.EIO
        elif code.isdigit():
            value = int(code)
        elif hasattr(_errno, code.upper()):
            value = getattr(_errno, code.upper())
        else:
            raise ValueError(f"fault {point!r}: {code!r} is not an errno name or number")
        armed[point] = value
    return armed


class Faults:
    def __init__(self, armed: dict[str, int] | None = None):
        self.armed = dict(armed or {})
        self.on_crash = None  # called with the point just before a crash.* kills us

    @classmethod
    def from_env(cls, extra: str = "") -> "Faults":
        return cls(parse(",".join(filter(None, [os.environ.get("LUOFS_FAULT", ""), extra]))))

    def check(self, point: str) -> None:
        code = self.armed.get(point)
        if code is None:
            return
        if point.startswith("crash."):
            if self.on_crash is not None:
                self.on_crash(point)
            os.kill(os.getpid(), signal.SIGKILL)
        raise LuoError(code, f"fault injected at {point}")

    def __contains__(self, point: str) -> bool:
        return point in self.armed


NONE = Faults()

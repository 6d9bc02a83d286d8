"""How many FUSE requests a call really sends to one mount, counted by the kernel itself.

The fuse:fuse_request_send tracepoint fires once per request a FUSE connection queues
(sync ones and background ones such as RELEASE). A private tracefs instance with a
filter on the connection (the mount's st_dev) counts only our mount's requests, so
other FUSE mounts on a shared machine do not disturb it, and the system's global trace
buffer is left alone. Needs root and tracefs; without them the count is None.
"""

from __future__ import annotations

import collections
import os
import time
from typing import Callable

TRACEFS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
EVENT = "events/fuse/fuse_request_send"


def _tracefs() -> str | None:
    for path in TRACEFS:
        if os.path.isdir(os.path.join(path, "instances")) and os.path.isdir(
                os.path.join(path, EVENT)):
            return path
    return None


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def per_call(mount: str, fn: Callable[[], object], calls: int = 20,
             settle: float = 0.2) -> dict[str, float] | None:
    """FUSE requests per call of `fn` on the mount at `mount`, by opcode ("GETXATTR": 1.0);
    None if the tracepoint cannot be used here. `settle`: how long to wait after the last
    call for background requests (a close's RELEASE) to be queued."""
    tracefs = _tracefs()
    if tracefs is None:
        return None
    connection = os.stat(mount).st_dev
    instance = os.path.join(tracefs, "instances", f"luofs-bench-{os.getpid()}")
    try:
        os.mkdir(instance)
    except OSError:
        return None
    try:
        event = os.path.join(instance, EVENT)
        _write(os.path.join(event, "filter"), f"connection == {connection}")
        _write(os.path.join(event, "enable"), "1")
        try:
            for _ in range(calls):
                fn()
            time.sleep(settle)
        finally:
            _write(os.path.join(event, "enable"), "0")
        with open(os.path.join(instance, "trace")) as f:
            # "... opcode 22 (FUSE_GETXATTR) len 72"
            ops = collections.Counter(line.split("(FUSE_", 1)[1].split(")", 1)[0]
                                      for line in f if "(FUSE_" in line)
    except OSError:
        return None
    finally:
        os.rmdir(instance)
    return {op: count / calls for op, count in sorted(ops.items(), key=lambda kv: -kv[1])}


def describe(counts: dict[str, float] | None) -> str:
    """'4: GETATTR LOOKUP CREATE RELEASE' (rounded per call; rarer requests omitted)."""
    if counts is None:
        return "?"
    whole = [op for op, n in counts.items() for _ in range(round(n))]
    return f"{len(whole)}: {' '.join(whole)}"


def total(counts: dict[str, float] | None) -> int | None:
    return None if counts is None else sum(round(n) for n in counts.values())

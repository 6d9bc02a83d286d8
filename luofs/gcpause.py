"""The cyclic garbage collector, held off while a live update is in flight.

A kernel holding 100,000 preserved files holds millions of Python objects, and the
blackout allocates a few more per file: each collection the allocations trigger
would walk every one of them (measured: 60% of a 10,000 × 10 blackout). Nothing in
that path creates cycles that must be freed before it ends, so collection waits.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager


@contextmanager
def gc_paused():
    """What the block built is moved out of the collector's sight (gc.freeze) before it
    runs again: a kernel's preserved state lives as long as the kernel, and the first
    collection after a hand-over would otherwise walk all of it, still in the blackout."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()

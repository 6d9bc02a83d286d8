"""The messages between a kernel and its file keepers (luofs/keeper.py), registered with
luofs.protocol's one encoder and decoder; a keeper imports only these.
"""

from .protocol import FILES, Message

__all__ = ["Park", "Parked", "Fetch", "Fetched", "Drop", "Records", "RecordsReply"]


# ---- kernel -> keeper -------------------------------------------------------------------------

class Park(Message, tag="park", groups=(FILES,)):
    """Keep the files sent along; answered by Parked with their slots."""


class Parked(Message, tag="parked"):
    slots: tuple[int, ...]


class Fetch(Message, tag="fetch"):
    slots: tuple[int, ...]


class Fetched(Message, tag="fetched", groups=(FILES,)):
    pass


class Drop(Message, tag="drop"):
    slots: tuple[int, ...]


class Records(Message, tag="records"):
    """Position, size and seals of the files in `runs` of (first slot, count), each
    record followed by `pad`."""

    runs: tuple[tuple[int, int], ...]
    pad: bytes = b""


class RecordsReply(Message, tag="records-reply"):
    """`started`/`ended`: when the keeper read them (CLOCK_MONOTONIC ns), for the trace."""

    records: bytes
    started: int = 0
    ended: int = 0

"""Sessions and the files preserved in them (spec/uapi.md §6–§13)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from .handler import FileHandler


class Direction(enum.Enum):
    OUTGOING = "outgoing"  # created in this boot; carried by the next reboot
    INCOMING = "incoming"  # handed over by the previous kernel


@dataclass(eq=False, slots=True)
class PreservedFile:
    token: int
    handler: FileHandler
    data: int  # the handler's u64 serialized-data handle
    file: Any = None  # outgoing: LUO's own reference; incoming: the retrieved file
    retrieve_errno: int | None = None  # a failed retrieve is sticky (§10)
    identity: Any = None  # key in the global double-preservation table, while registered
    # The handler's own runtime state for this file, as the kernel's file op args carry
    # private_data: for an incoming file, what the previous kernel handed over for it.
    private: Any = None
    compatible: str = field(init=False, repr=False)  # the handler's, never changing

    @property
    def retrieved(self) -> bool:
        return self.file is not None

    def __post_init__(self):
        # With it a PreservedFile is a CarriedFile too: a reboot of 10^5 files carries
        # them as they are, without a copy each. (A plain attribute: the image writer
        # reads it for every file, and a property costs a call each time.)
        self.compatible = self.handler.compatible


@dataclass(eq=False)
class Session:
    name: bytes
    direction: Direction
    files: dict[int, PreservedFile] = field(default_factory=dict)  # token → file, in order
    retrieved: bool = False  # incoming only: RETRIEVE_SESSION handed it out
    open: bool = False  # a session fd refers to it

    @property
    def outgoing(self) -> bool:
        return self.direction is Direction.OUTGOING

    def __repr__(self) -> str:
        return f"<Session {self.name!r} {self.direction.value} files={len(self.files)}>"

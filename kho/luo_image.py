"""LUO's KHO subtree: mainline 6.19 layout (kho.md §3) plus subsystem handles.

The subtree is a small FDT that points into preserved blocks::

    / { compatible = "luo-v1"; liveupdate-number = <u64>;
        luo-session { compatible = "luo-session-v2"; luo-session-header = <u64 phys>; };
        luo-flb     { compatible = "luo-flb-v1";     luo-flb-header     = <u64 phys>; };
        luo-subsystems { compatible = "luo-subsystems-v1"; <name> = <u64>; ... }; };

``luo-subsystems`` is the emulator's home for RFC v2 subsystem handles
(rfc.md §5); it is only written when there are subsystems, so a mainline
image is exactly the kernel's layout.  Unlike the kernel's fixed 16-page
session block, blocks are sized to their content, so there is no cap.  All
file records of all sessions share one block, in session order; each
session points at its slice.

Order carries meaning: sessions stay in creation order and files in
preservation order, because the next kernel's behaviour follows it (FINISH,
for one, walks a session's files in reverse preservation order).

This module holds the names and the image's Python form (:class:`LuoImage`);
:mod:`kho.luo_write` lays an image out in preserved memory and publishes it,
:mod:`kho.luo_read` reads one back and validates it.
"""

from dataclasses import dataclass, field

LUO_SUBTREE = "LUO"
LUO_COMPATIBLE = "luo-v1"
NUMBER_PROP = "liveupdate-number"
SESSION_NODE = "luo-session"
SESSION_COMPATIBLE = "luo-session-v2"
SESSION_HEADER_PROP = "luo-session-header"
FLB_NODE = "luo-flb"
FLB_COMPATIBLE = "luo-flb-v1"
FLB_HEADER_PROP = "luo-flb-header"
SUBSYSTEMS_NODE = "luo-subsystems"
SUBSYSTEMS_COMPATIBLE = "luo-subsystems-v1"
WHAT = "LUO"  # how messages name the subtree


# The records are plain (not frozen, not self-validating) dataclasses on
# purpose: the next kernel creates 100,000 of them per handover, and frozen
# or validating __init__s triple that cost.  write_luo validates instead.

@dataclass(slots=True)
class FileImage:
    """One preserved file: its handler's compatible, the handler's u64, the user's token."""

    compatible: str
    data: int
    token: int


@dataclass(slots=True)
class SessionImage:
    """A session's name (up to 63 bytes, no NUL) and its files in preservation order."""

    name: bytes
    files: list[FileImage] = field(default_factory=list)


@dataclass(slots=True)
class FlbImage:
    """A file-lifecycle-bound object: compatible name, u64 data, count of files using it."""

    name: str
    data: int
    count: int


@dataclass(slots=True)
class LuoImage:
    """Everything LUO hands to the next kernel."""

    liveupdate_number: int
    sessions: list[SessionImage] = field(default_factory=list)
    flbs: list[FlbImage] = field(default_factory=list)
    subsystems: dict[str, int] = field(default_factory=dict)


def show_name(name: bytes) -> str:
    """A session name for messages."""
    return repr(name.decode("utf-8", "backslashreplace"))

"""The typed messages between the luofs processes (CLI, machine, kernels, keepers).

Every message is a frozen value with one encoder and one decoder; file descriptors ride
beside a message in named groups, never as one list split by a count.

This file starts with the one message both halves of a live update agree on, the
hand-over; the rest of the protocol joins it here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

# Names of the fd groups that travel with a HandOver.
FILES = "files"  # preserved files held directly, in LUO image order (parked ones left out)
KEEPERS = "keepers"  # the sockets of the keeper processes holding parked files

FdGroups = dict  # group name -> list[int]; the receiver owns (and must close) every fd


class ParkedRun(NamedTuple):
    """Consecutive preserved files parked in one keeper: image positions first..first+count
    are that keeper's slots slot..slot+count."""

    first: int
    keeper: int
    slot: int
    count: int


@dataclass(frozen=True)
class HandOver:
    """What a freezing kernel gives the machine, and the machine the next kernel.

    `liveupdate_number` is the freezing kernel's; the next kernel's is one more, always.
    `root_phys`/`root_size` locate KHO's root tree in emulated RAM; `sessions`/`files`
    count what LUO's image carries (0 for an RFC kexec that was not prepared).
    """

    root_phys: int
    root_size: int
    liveupdate_number: int
    sessions: int = 0
    files: int = 0
    parked: tuple[ParkedRun, ...] = ()
    devices: tuple[str, ...] = ()  # sysfs paths of the preserved devices
    keeper_pids: tuple[int | None, ...] = ()  # for `luofs status`, beside the KEEPERS fds
    dropped: int = 0  # incoming sessions nobody retrieved, which end here

    @property
    def next_number(self) -> int:
        return self.liveupdate_number + 1

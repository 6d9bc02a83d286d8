"""The ioctl command tables and the common dispatch rules of spec/uapi.md §4.

Each table maps `_IOC_NR` to a Command (what the command is: number, struct, who may
issue it). `check()` applies the kernel's rules in the kernel's order and returns the
parsed argument struct, so that the handler sees only well-formed input and every
rejection carries the kernel's errno. Which function runs a command is the device's
ops table (`ops_table`), next to the functions: `Luo` for these tables, `RfcV2Device`
for RFC v2's; both dispatch the same way: check, then `ops[command.name](...)`.

Unhappy paths: `check()` raises LuoError with the errno of the first rule broken
(EINVAL, EFAULT, ENOTTY, E2BIG; see the function). A table out of order (a command
not at its nr) or an ops table that misses or invents a command fails at import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from construct import Struct

from ..uapi import errnos, ioctl, structs
from .errors import LuoError
from .session import Direction


@dataclass(frozen=True)
class Command:
    name: str
    cmd: int  # the exact request number; any other encoding of `nr` is ENOTTY
    struct: Struct
    direction: Direction | None = None  # sessions it applies to; None = both
    fd_out_offset: int | None = None  # where the kernel writes a new fd's number
    # Its reply is a function of the request bytes and of what never changes about the
    # file (a session's name and direction): the front end may answer it again unasked.
    pure: bool = False

    @property
    def nr(self) -> int:
        return ioctl.ioc_nr(self.cmd)

    def __post_init__(self):
        # Looked up on every ioctl: derive once.
        object.__setattr__(self, "size", structs.struct_size(self.struct))
        object.__setattr__(self, "codec", structs.codec(self.struct))


@dataclass(frozen=True)
class CommandTable:
    """Commands of one file kind, numbered contiguously from `base`."""

    kind: str  # "device" or "session", for messages
    base: int
    commands: tuple[Command, ...]

    def __post_init__(self):
        for i, c in enumerate(self.commands):
            assert c.nr == self.base + i, f"{c.name} is not at nr {self.base + i:#x}"
        # The commands by their exact number: a request that finds its command here
        # passes rules 1 and 3 (its nr exists, its encoding is the command's).
        object.__setattr__(self, "exact", {c.cmd: c for c in self.commands})

    def by_nr(self, nr: int) -> Command | None:
        i = nr - self.base
        return self.commands[i] if 0 <= i < len(self.commands) else None


MAINLINE_DEVICE = CommandTable(
    "device",
    0x00,
    (
        Command("CREATE_SESSION", ioctl.LIVEUPDATE_IOCTL_CREATE_SESSION, structs.CreateSession,
                fd_out_offset=4),
        Command("RETRIEVE_SESSION", ioctl.LIVEUPDATE_IOCTL_RETRIEVE_SESSION,
                structs.RetrieveSession, fd_out_offset=4),
    ),
)

MAINLINE_SESSION = CommandTable(
    "session",
    0x40,
    (
        Command("PRESERVE_FD", ioctl.LIVEUPDATE_SESSION_PRESERVE_FD, structs.PreserveFd,
                direction=Direction.OUTGOING),
        Command("RETRIEVE_FD", ioctl.LIVEUPDATE_SESSION_RETRIEVE_FD, structs.RetrieveFd,
                direction=Direction.INCOMING, fd_out_offset=4),
        Command("FINISH", ioctl.LIVEUPDATE_SESSION_FINISH, structs.Finish,
                direction=Direction.INCOMING),
        Command("GET_NAME", ioctl.LIVEUPDATE_SESSION_GET_NAME, structs.GetName, pure=True),
    ),
)


def ops_table(commands: Iterable, **ops: Callable | None) -> dict[str, Callable | None]:
    """A device's ops table, as the kernel's ioctl op arrays: command name -> the function
    that runs it (None: the checks refuse the command before any op). Complete by
    construction: a command left out, or an op for no command, is a ValueError when the
    device's module is imported."""
    names = [command.name for command in commands]
    missing, extra = sorted(set(names) - set(ops)), sorted(set(ops) - set(names))
    if missing or extra:
        raise ValueError(f"ops table: no op for {missing}, no command for {extra}")
    return ops


class Request:
    """One ioctl as the kernel sees it: the number and what copy_from_user found.

    A plain slotted class: one is built per ioctl, on the hot path.
    """

    __slots__ = ("cmd", "arg", "arg_fault", "copy_fault", "tail_nonzero", "size")

    def __init__(self, cmd: int, arg: bytes, arg_fault: bool = False, copy_fault: bool = False,
                 tail_nonzero: bool = False):
        self.cmd = cmd
        self.arg = arg  # the first bytes of the caller's struct, `size` first
        self.arg_fault = arg_fault  # the u32 size could not be read
        self.copy_fault = copy_fault  # the struct could not be read in full
        self.tail_nonzero = tail_nonzero  # a nonzero byte lies past `arg`
        self.size = int.from_bytes(arg[:4], "little")


def check(table: CommandTable, req: Request, direction: Direction | None = None):
    """Rules 1–6 of §4 in order; returns (command, parsed struct)."""
    command = table.exact.get(req.cmd)
    if command is None:  # rule 1 or 3 breaks (rule 2 may come first)
        nr = ioctl.ioc_nr(req.cmd)
        command = table.by_nr(nr)
        if command is None:
            raise LuoError(errnos.EINVAL, f"nr {nr:#x} is not a {table.kind} ioctl")
    if req.arg_fault:
        raise LuoError(errnos.EFAULT, f"{command.name}: the argument pointer is not readable")
    if req.cmd != command.cmd:
        raise LuoError(errnos.ENOTTY,
                       f"{command.name}: request {req.cmd:#x} is not the encoding {command.cmd:#x}")
    if (direction is not None and command.direction is not None
            and command.direction is not direction):
        raise LuoError(errnos.EINVAL,
                       f"{command.name} is only for {command.direction.value} sessions")
    size = req.size
    if size < command.size:
        raise LuoError(errnos.EINVAL,
                       f"{command.name}: size {size} is below the struct size {command.size}")
    # copy_struct_from_user checks the tail is zeroed before it copies the struct.
    if size > command.size and (req.tail_nonzero or any(req.arg[command.size:])):
        raise LuoError(errnos.E2BIG,
                       f"{command.name}: nonzero bytes past the {command.size}-byte struct")
    if req.copy_fault:
        raise LuoError(errnos.EFAULT, f"{command.name}: the argument struct is not readable")
    return command, command.codec.parse(req.arg[: command.size])

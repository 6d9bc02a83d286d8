"""RFC v2 (May 2025) /dev/liveupdate rules: the checks before a command acts, the
kernel-token file table, and the device that ties them to the state machine.

The ABI (numbers, structs, state values) is in luofs/uapi/rfc_v2.py; its module
docstring has the errno order of every command.

Happy path: FD_PRESERVE registers files (tokens from 0); EVENT_PREPARE preserves
them through their handlers, EVENT_FREEZE (or the reboot) freezes them, and
`RfcV2Files.carried()` lists them for the hand-over; the next kernel starts
UPDATED, FD_RESTORE hands each file back once, EVENT_FINISH finishes them all. An
ioctl is checked by `rfc_v2_check`, then run by the ops table `_OPS`.

Unhappy paths: refusals are LuoErrors with the errnos of the ABI table (ENOTTY,
EFAULT, EINVAL, EBUSY, ENOENT, EOPNOTSUPP for SELFTESTS). A preserve that fails
during PREPARE unpreserves the files prepared before it, in reverse; a failed
freeze is undone by the state machine's cancel. Cancel and finish run for every
file even if one fails, then raise the first failure. An incoming file with no
handler, or a token handed over twice, is EIO at boot (the RFC kernel panics).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Callable, Iterable

from construct import Struct

from ..uapi import errnos, structs
from ..uapi.ioctl import ioc_nr, ioc_type
from ..uapi.rfc_v2 import (LIVEUPDATE_IOCTL_EVENT_CANCEL, LIVEUPDATE_IOCTL_EVENT_FINISH,
                           LIVEUPDATE_IOCTL_EVENT_FREEZE, LIVEUPDATE_IOCTL_EVENT_PREPARE,
                           LIVEUPDATE_IOCTL_FD_PRESERVE, LIVEUPDATE_IOCTL_FD_RESTORE,
                           LIVEUPDATE_IOCTL_FD_UNPRESERVE, LIVEUPDATE_IOCTL_GET_STATE,
                           LIVEUPDATE_IOCTL_SELFTESTS, LiveupdateFd, LiveupdateState, Selftest,
                           StateArg, Token, ioc_size)
from ..unwind import do_all
from .dispatch import ops_table
from .errors import LuoError
from .handler import freeze_all
from .luo import CarriedFile
from .state import Event, State, GlobalState

if TYPE_CHECKING:
    from .caller import Caller
    from .handler import FileHandler, HandlerRegistry


def state_value(state: State) -> LiveupdateState:
    return LiveupdateState[state.name]


def state_reply(state: State) -> bytes:
    """GET_STATE's 4 bytes for a core state."""
    return structs.codec(StateArg).build({"state": state_value(state)})


# ---- dispatch (pure) ---------------------------------------------------------------------


@dataclass(frozen=True)
class V2Command:
    name: str
    cmd: int  # the only accepted encoding
    struct: Struct | None  # the argument, None for _IO
    reads_arg: bool  # the kernel copies the argument in before acting
    fd_out_offset: int | None = None  # where a new fd's number goes in the reply

    def __post_init__(self):
        size = 0 if self.struct is None else structs.struct_size(self.struct)
        if size != ioc_size(self.cmd):
            raise ValueError(
                f"{self.name}: struct is {size} bytes, number encodes {ioc_size(self.cmd)}")
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "codec",
                           None if self.struct is None else structs.codec(self.struct))

    @property
    def nr(self) -> int:
        return ioc_nr(self.cmd)


COMMANDS: tuple[V2Command, ...] = (
    V2Command("FD_PRESERVE", LIVEUPDATE_IOCTL_FD_PRESERVE, LiveupdateFd, True),
    V2Command("FD_UNPRESERVE", LIVEUPDATE_IOCTL_FD_UNPRESERVE, Token, True),
    V2Command("FD_RESTORE", LIVEUPDATE_IOCTL_FD_RESTORE, LiveupdateFd, True, fd_out_offset=0),
    V2Command("GET_STATE", LIVEUPDATE_IOCTL_GET_STATE, StateArg, False),
    V2Command("EVENT_PREPARE", LIVEUPDATE_IOCTL_EVENT_PREPARE, None, False),
    V2Command("EVENT_FREEZE", LIVEUPDATE_IOCTL_EVENT_FREEZE, None, False),
    V2Command("EVENT_CANCEL", LIVEUPDATE_IOCTL_EVENT_CANCEL, None, False),
    V2Command("EVENT_FINISH", LIVEUPDATE_IOCTL_EVENT_FINISH, None, False),
    V2Command("SELFTESTS", LIVEUPDATE_IOCTL_SELFTESTS, Selftest, False),
)
BY_CMD = {c.cmd: c for c in COMMANDS}
EVENTS = {
    LIVEUPDATE_IOCTL_EVENT_PREPARE: Event.PREPARE,
    LIVEUPDATE_IOCTL_EVENT_FREEZE: Event.FREEZE,
    LIVEUPDATE_IOCTL_EVENT_CANCEL: Event.CANCEL,
    LIVEUPDATE_IOCTL_EVENT_FINISH: Event.FINISH,
}


def rfc_v2_check(cmd: int, arg: bytes | None = b"") -> tuple[V2Command, SimpleNamespace | None]:
    """The checks before a command acts, in the kernel's order: (command, parsed arg).

    `arg` is what could be read at the argument pointer (None: nothing). Bytes past
    the encoded size are never looked at. Commands that read nothing parse to None.
    """
    command = BY_CMD.get(cmd)  # another type byte, nr or encoding: the kernel's ENOTTY either way
    if command is None:
        raise LuoError(errnos.ENOTTY, f"request {cmd:#x} (type {ioc_type(cmd):#x}, nr "
                                      f"{ioc_nr(cmd):#x}) is not an RFC v2 command")
    if command.cmd == LIVEUPDATE_IOCTL_SELFTESTS:
        raise LuoError(errnos.EOPNOTSUPP, "SELFTESTS needs CONFIG_LIVEUPDATE_SELFTESTS")
    if not command.reads_arg:
        return command, None
    if arg is None or len(arg) < command.size:
        raise LuoError(errnos.EFAULT,
                       f"{command.name}: the {command.size}-byte argument is not readable")
    parsed = command.codec.parse(bytes(arg[:command.size]))
    if getattr(parsed, "flags", 0) != 0:
        raise LuoError(errnos.EINVAL, f"{command.name}: flags {parsed.flags:#x} must be 0")
    return command, parsed


def check_open(flags: int, *, privileged: bool) -> None:
    """open("/dev/liveupdate"): CAP_SYS_ADMIN (EACCES), then no O_EXCL (EINVAL)."""
    if not privileged:
        raise LuoError(errnos.EACCES, "/dev/liveupdate needs CAP_SYS_ADMIN")
    if flags & os.O_EXCL:
        raise LuoError(errnos.EINVAL, "/dev/liveupdate cannot be opened with O_EXCL")


# ---- the file table -----------------------------------------------------------------------


@dataclass(eq=False)
class V2File:
    """One preserved file (`struct luo_file`)."""

    token: int
    handler: FileHandler
    file: Any = None  # outgoing: LUO's reference; incoming: set by FD_RESTORE
    data: int = 0  # the handler's u64
    prepared: bool = False  # outgoing: preserve() ran (PREPARE)
    frozen: bool = False  # outgoing: freeze() ran
    reclaimed: bool = False  # incoming: FD_RESTORE was tried (set before retrieve, as the RFC does)
    private: Any = None  # the handler's runtime state (PreservedFile.private)


_PRESERVE_STATES = frozenset({State.NORMAL, State.UPDATED})
_RESTORE_STATES = frozenset({State.UPDATED})


class RfcV2Files:
    """The RFC v2 file table; also the state machine's "files" participant (before subsystems)."""

    name = "files"

    def __init__(self, handlers: HandlerRegistry, state: Callable[[], State], *,
                 incoming: Iterable[tuple[int, str, int, Any]] = ()):
        """`incoming`: (token, compatible, data, private) of each file the previous kernel
        handed over, in its order (`private`: what was handed over for it). An unknown compatible or a repeated token raises
        LuoError(EIO); the RFC kernel panics on both, so the boot path should too."""
        self._handlers = handlers
        self._state = state
        self._next_token = 0
        self.outgoing: dict[int, V2File] = {}
        self.incoming: dict[int, V2File] = {}
        for token, compatible, data, private in incoming:
            handler = handlers.by_compatible(compatible)
            if handler is None:
                raise LuoError(errnos.EIO, f"token {token:#x}: no handler for {compatible!r}")
            if token in self.incoming:
                raise LuoError(errnos.EIO, f"token {token:#x} is handed over twice")
            self.incoming[token] = V2File(token, handler, data=data, private=private)

    def _require(self, allowed: frozenset[State], what: str) -> None:
        state = self._state()
        if state not in allowed:
            raise LuoError(errnos.EBUSY, f"{what} is not allowed in state {state}")

    # ---- the ioctls ---------------------------------------------------------------------

    def preserve(self, caller: Caller, fd: int) -> int:
        """FD_PRESERVE: returns the new token. LUO keeps its own reference to the file."""
        file = caller.take_file(fd)
        try:
            self._require(_PRESERVE_STATES, "FD_PRESERVE")
            handler = self._handlers.find_for(file)
            if handler is None:
                raise LuoError(errnos.ENOENT, f"no file handler accepts fd {fd}")
        except BaseException:
            file.close()
            raise
        token = self._next_token
        self._next_token += 1
        self.outgoing[token] = V2File(token, handler, file)
        return token

    def unpreserve(self, token: int) -> None:
        """FD_UNPRESERVE: forget an outgoing file (never prepared in NORMAL/UPDATED)."""
        self._require(_PRESERVE_STATES, "FD_UNPRESERVE")
        entry = self.outgoing.pop(token, None)
        if entry is None:
            raise LuoError(errnos.ENOENT, f"no preserved file has token {token:#x}")
        entry.file.close()

    def restore(self, caller: Caller, token: int) -> Any:
        """FD_RESTORE: the handed-over file for `token`, once; the caller installs an fd."""
        caller.reserve_fd()
        self._require(_RESTORE_STATES, "FD_RESTORE")
        entry = self.incoming.get(token)
        if entry is None:
            raise LuoError(errnos.ENOENT, f"no handed-over file has token {token:#x}")
        if entry.reclaimed:
            raise LuoError(errnos.EINVAL, f"token {token:#x} was restored before")
        entry.reclaimed = True
        entry.file = entry.handler.retrieve(entry.data, entry.private)
        return entry.file

    # ---- the participant ----------------------------------------------------------------

    def prepare(self) -> None:
        # The state machine cancels only participants that prepared in full: the
        # files prepared before a failing one are unprepared here.
        do_all(list(self.outgoing.values()), self._prepare_one,
               lambda entry, _result: self._unprepare(entry))

    @staticmethod
    def _prepare_one(entry: V2File) -> None:
        entry.data = entry.handler.preserve(entry.file)
        entry.prepared = True

    def freeze(self) -> None:
        entries = list(self.outgoing.values())
        freeze_all(entries)  # on failure the state machine's cancel unpreserves everything
        for entry in entries:
            entry.frozen = True

    def cancel(self) -> None:
        self._each(reversed(list(self.outgoing.values())), self._unprepare)

    def finish(self) -> None:
        entries, self.incoming = list(self.incoming.values()), {}

        def finish_one(entry: V2File) -> None:
            try:
                entry.handler.finish(entry.file, entry.data, entry.file is not None,
                                     entry.private)
            finally:
                if entry.file is not None:
                    entry.file.close()  # LUO's reference; the restored fd stays valid
                    entry.file = None

        self._each(entries, finish_one)

    def _unprepare(self, entry: V2File) -> None:
        if entry.frozen:
            entry.frozen = False
            entry.handler.unfreeze(entry.file, entry.data)
        if entry.prepared:
            entry.prepared = False
            entry.handler.unpreserve(entry.file, entry.data)
        entry.data = 0

    @staticmethod
    def _each(entries: Iterable[V2File], op: Callable[[V2File], None]) -> None:
        """Run `op` on every entry even if some fail; then raise the first failure."""
        first: BaseException | None = None
        for entry in entries:
            try:
                op(entry)
            except Exception as e:
                first = first or e
        if first is not None:
            raise first

    def carried(self) -> list:
        """After FREEZE: the outgoing files for the hand-over, in token order."""
        return [CarriedFile(e.token, e.handler.compatible, e.data, e.file)
                for e in self.outgoing.values()]


# ---- the device ---------------------------------------------------------------------------


@dataclass
class V2Outcome:
    """What an ioctl produced: reply bytes and maybe a file to install as a new fd.

    Shaped like luofs.core.luo.Outcome, so the FUSE layer can treat both alike.
    """

    command: V2Command
    copy_back: bytes = b""
    file: Any = None
    session: None = None  # RFC v2 has no sessions


class RfcV2Device:
    """/dev/liveupdate under the RFC v2 ABI: dispatch, file table and state machine together."""

    def __init__(self, state: GlobalState, files: RfcV2Files):
        self.state = state
        self.files = files

    @staticmethod
    def open(flags: int, *, privileged: bool) -> None:
        check_open(flags, privileged=privileged)

    def ioctl(self, cmd: int, arg: bytes | None, caller: Caller) -> V2Outcome:
        command, parsed = rfc_v2_check(cmd, arg)
        out = V2Outcome(command)
        _OPS[command.name](self, parsed, caller, out)
        return out

    # ---- the ops (rfc_v2_check ran: `parsed` is the argument, None if none is read) ----

    def _fd_preserve(self, parsed, caller: Caller, out: V2Outcome) -> None:
        parsed.token = self.files.preserve(caller, parsed.fd)
        out.copy_back = out.command.codec.build(parsed)

    def _fd_unpreserve(self, parsed, caller: Caller, out: V2Outcome) -> None:
        self.files.unpreserve(parsed.token)

    def _fd_restore(self, parsed, caller: Caller, out: V2Outcome) -> None:
        out.file = self.files.restore(caller, parsed.token)
        out.copy_back = out.command.codec.build(parsed)  # the fd goes at fd_out_offset

    def _get_state(self, parsed, caller: Caller, out: V2Outcome) -> None:
        out.copy_back = state_reply(self.state.state)

    def _event(self, parsed, caller: Caller, out: V2Outcome) -> None:
        self.state.handle(EVENTS[out.command.cmd])


# The ops table, as the kernel's: which method runs each command of COMMANDS.
_OPS = ops_table(COMMANDS, FD_PRESERVE=RfcV2Device._fd_preserve,
                 FD_UNPRESERVE=RfcV2Device._fd_unpreserve, FD_RESTORE=RfcV2Device._fd_restore,
                 GET_STATE=RfcV2Device._get_state, EVENT_PREPARE=RfcV2Device._event,
                 EVENT_FREEZE=RfcV2Device._event, EVENT_CANCEL=RfcV2Device._event,
                 EVENT_FINISH=RfcV2Device._event,
                 SELFTESTS=None)  # never runs: rfc_v2_check refuses it (EOPNOTSUPP)


__all__ = [
    "state_value", "state_reply", "V2Command", "COMMANDS", "BY_CMD", "EVENTS",
    "rfc_v2_check", "check_open", "V2File", "RfcV2Files", "V2Outcome", "RfcV2Device",
]

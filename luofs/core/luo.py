"""The LUO core: the device, sessions, preserved files and the reboot path, with no I/O.

Every rule of spec/uapi.md (G2, mainline) lives here. The FUSE layer turns
requests into calls on `Luo` and results back into bytes; it decides nothing.

Happy path: the first open of the device rebuilds the incoming sessions (if the
previous kernel handed any over); CREATE_SESSION, PRESERVE_FD…; `reboot()` freezes
every open outgoing session's files and returns them as `CarriedSession`s for the
hand-over; the next kernel's user space runs RETRIEVE_SESSION, RETRIEVE_FD, FINISH.
An ioctl is checked against its command table (`dispatch.check`), then run by the
ops table at the end of this file (`_DEVICE_OPS`, `_SESSION_OPS`).

Unhappy paths: every refusal is a LuoError carrying the kernel's errno, in the
kernel's order (dispatch's rules first, then the op's). Incoming sessions that
cannot be rebuilt fail that open and every later one with EIO. A freeze that fails
thaws what it froze, in reverse, and refuses the reboot; `cancel_reboot()` thaws a
reboot whose hand-over failed later. After a successful reboot every call raises
`Rebooting` (the kernel would block it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterable, NamedTuple

from ..uapi import errnos
from .caller import Caller
from .dispatch import MAINLINE_DEVICE, MAINLINE_SESSION, Command, Request, check, ops_table
from .errors import LuoError
from .faults import NONE, Faults
from .handler import HandlerRegistry, freeze_all
from .session import Direction, PreservedFile, Session
from .state import GlobalState


class Rebooting(Exception):
    """Raised for any session operation after a successful reboot serialization.

    The kernel blocks such calls forever (§14 step 5); the FUSE layer parks them
    until the connection goes away, so they end with an error, never a hang.
    """


@dataclass(slots=True)
class Outcome:
    """What an ioctl produced: bytes to copy back and, maybe, a new object to hand out."""

    copy_back: bytes
    command: Command
    session: Session | None = None  # a session to open an fd for
    file: Any = None  # a file to install as a new fd


class CarriedFile(NamedTuple):
    """A file the reboot carries. A plain tuple: a reboot builds one per preserved file,
    100,000 of them at a time; it also has the attributes of kho's FileImage."""

    token: int
    compatible: str
    data: int
    file: Any


class CarriedSession(NamedTuple):
    name: bytes
    files: tuple  # of CarriedFile, or of anything with its attributes (a PreservedFile)


def session_name(raw: bytes) -> bytes:
    """G2 name rule (§6): 1..63 bytes before the first NUL; the rest is ignored."""
    end = raw.find(b"\0")
    if end < 0:
        raise LuoError(errnos.EINVAL, "session name is not NUL-terminated within 64 bytes")
    if end == 0:
        raise LuoError(errnos.EINVAL, "session name is empty")
    return raw[:end]


class Luo:
    def __init__(
        self,
        handlers: HandlerRegistry,
        *,
        liveupdate_number: int = 0,
        load_incoming: Callable[[], Iterable[Session]] | None = None,
        updated: bool = False,
        faults: Faults = NONE,
    ):
        """`updated`: the previous kernel handed sessions over (the state starts UPDATED)."""
        self.handlers = handlers
        self.liveupdate_number = liveupdate_number
        self.sessions: list[Session] = []  # live sessions, creation order
        self._load_incoming = load_incoming
        self._incoming_error: LuoError | None = None
        self._incoming_loaded = load_incoming is None
        self._device_open = False
        self._identities: dict[Hashable, PreservedFile] = {}
        self.rebooting = False
        self._frozen: list[PreservedFile] = []
        self._carried: list[Session] = []
        # Mainline has no global state of its own; this one is driven implicitly: a
        # reboot is PREPARE + FREEZE, and UPDATED ends when incoming sessions settle.
        self.state = GlobalState("mainline", [_FilesParticipant(self)], updated=updated,
                                  faults=faults)

    # ---- /dev/liveupdate (§5) -------------------------------------------------------

    def open_device(self) -> None:
        if self._device_open:
            raise LuoError(errnos.EBUSY, "/dev/liveupdate is already open")
        self._ensure_incoming()
        self._device_open = True

    def close_device(self) -> None:
        self._device_open = False

    @property
    def incoming_loaded(self) -> bool:
        """Whether the previous kernel's sessions were deserialized (first open)."""
        return self._incoming_loaded

    @property
    def device_open(self) -> bool:
        return self._device_open

    def _ensure_incoming(self) -> None:
        """First open per boot rebuilds incoming sessions; a failure is final (EIO)."""
        if self._incoming_error is not None:
            raise self._incoming_error
        if self._incoming_loaded:
            return
        try:
            incoming = list(self._load_incoming())
        except LuoError as e:
            self._incoming_error = LuoError(errnos.EIO, f"incoming sessions are corrupt: {e}")
            raise self._incoming_error from None
        self._incoming_loaded = True
        self.sessions[:0] = incoming

    # ---- dispatch ---------------------------------------------------------------------

    def device_ioctl(self, req: Request, caller: Caller) -> Outcome:
        if self.rebooting:
            raise Rebooting()
        command, arg = check(MAINLINE_DEVICE, req)
        out = Outcome(b"", command)
        _DEVICE_OPS[command.name](self, arg, caller, out)
        out.copy_back = command.codec.build(arg)  # inputs echoed back, outputs filled in
        return out

    def session_ioctl(self, session: Session, req: Request, caller: Caller) -> Outcome:
        if self.rebooting:  # as _check_running(), on the path every ioctl takes
            raise Rebooting()
        command, arg = check(MAINLINE_SESSION, req, session.direction)
        out = Outcome(b"", command)
        _SESSION_OPS[command.name](self, session, arg, caller, out)
        out.copy_back = command.codec.build(arg)
        return out

    def _check_running(self) -> None:
        if self.rebooting:
            raise Rebooting()

    # ---- device ioctls (§6, §7) ----------------------------------------------------------

    def _create_session(self, arg, caller: Caller, out: Outcome) -> None:
        caller.reserve_fd()
        name = session_name(arg.name)
        if any(s.outgoing and s.name == name for s in self.sessions):
            raise LuoError(errnos.EEXIST, f"an outgoing session {name!r} exists")
        session = Session(name, Direction.OUTGOING, open=True)
        self.sessions.append(session)
        out.session = session

    def _retrieve_session(self, arg, caller: Caller, out: Outcome) -> None:
        caller.reserve_fd()
        end = arg.name.find(b"\0")
        name = arg.name if end < 0 else arg.name[:end]
        session = next((s for s in self.sessions if not s.outgoing and s.name == name), None)
        if session is None:
            raise LuoError(errnos.ENOENT, f"no incoming session {name!r}")
        if session.retrieved:
            raise LuoError(errnos.EINVAL, f"incoming session {name!r} is already retrieved")
        session.retrieved = session.open = True
        out.session = session

    # ---- session ioctls (§9–§12) -------------------------------------------------------

    def _preserve_fd(self, session: Session, arg, caller: Caller, out: Outcome) -> None:
        if arg.token in session.files:
            raise LuoError(errnos.EEXIST, f"token {arg.token:#x} is used in this session")
        file = caller.take_file(arg.fd)
        try:
            handler = self.handlers.find_for(file)
            if handler is None:
                raise LuoError(errnos.ENOENT, f"no file handler accepts fd {arg.fd}")
            identity = (handler.compatible, handler.get_id(file))
            if identity in self._identities:
                raise LuoError(errnos.EBUSY, f"fd {arg.fd} refers to a file already preserved")
            data = handler.preserve(file)
        except BaseException:
            file.close()
            raise
        pf = PreservedFile(arg.token, handler, data, file, identity=identity)
        self._identities[identity] = pf
        session.files[arg.token] = pf

    def _retrieve_fd(self, session: Session, arg, caller: Caller, out: Outcome) -> None:
        caller.reserve_fd()
        pf = session.files.get(arg.token)
        if pf is None:
            raise LuoError(errnos.ENOENT, f"no token {arg.token:#x} in this session")
        if pf.retrieve_errno is not None:
            raise LuoError(pf.retrieve_errno, f"token {arg.token:#x} failed to retrieve before")
        if pf.file is None:
            try:
                pf.file = pf.handler.retrieve(pf.data, pf.private)
            except LuoError as e:
                pf.retrieve_errno = e.errno
                raise
            identity = (pf.handler.compatible, pf.handler.get_id(pf.file))
            if identity not in self._identities:
                pf.identity = identity
                self._identities[identity] = pf
        out.file = pf.file

    def _finish(self, session: Session, arg, caller: Caller, out: Outcome) -> None:
        self._finish_session(session)
        self._maybe_settled()

    def _get_name(self, session: Session, arg, caller: Caller, out: Outcome) -> None:
        if arg.reserved != 0:
            raise LuoError(errnos.EINVAL, "GET_NAME: reserved is not 0")
        head = session.name + b"\0"
        arg.name = head + arg.name[len(head):]  # past the NUL the caller's bytes stay

    def _finish_session(self, session: Session) -> None:
        files = list(session.files.values())
        for pf in files:
            if not pf.handler.can_finish(pf.file, pf.data):
                raise LuoError(errnos.EBUSY, f"token {pf.token:#x} cannot finish yet")
        for pf in reversed(files):
            pf.handler.finish(pf.file, pf.data, pf.retrieved, pf.private)
            self._drop(pf)
        session.files.clear()

    def _drop(self, pf: PreservedFile) -> None:
        if pf.identity is not None and self._identities.get(pf.identity) is pf:
            del self._identities[pf.identity]
        if pf.file is not None:
            pf.file.close()
            pf.file = None

    # ---- closing a session fd (§13) ----------------------------------------------------

    def close_session(self, session: Session) -> None:
        self._check_running()
        session.open = False
        if session.outgoing:
            for pf in reversed(list(session.files.values())):
                pf.handler.unpreserve(pf.file, pf.data)
                self._drop(pf)
            session.files.clear()
            self.sessions.remove(session)
            return
        try:
            self._finish_session(session)
        except LuoError:
            return  # stays retrieved with no fd until the next reboot; close still succeeds
        self.sessions.remove(session)
        self._maybe_settled()

    def _maybe_settled(self) -> None:
        """UPDATED ends once every incoming session is finished (or gone)."""
        if self._incoming_loaded and all(s.outgoing or (s.retrieved and not s.files)
                                         for s in self.sessions):
            self.state.incoming_settled()

    # ---- reboot (§14) ---------------------------------------------------------------------

    def reboot(self) -> list[CarriedSession]:
        """Freeze every outgoing session's files in order; all or nothing.

        On success the core is frozen for good (further ioctls raise Rebooting) and the
        caller hands the returned sessions to the next kernel. On failure everything
        frozen so far is unfrozen in reverse and the LuoError propagates.
        """
        self._check_running()
        self._carried = [s for s in self.sessions if s.outgoing and s.open]
        self.state.reboot()  # PREPARE + FREEZE; the files participant freezes
        self.rebooting = True
        # PreservedFile has CarriedFile's attributes; nothing changes them from here on
        # (cancel_reboot() unfreezes, but then nothing is carried).
        return [CarriedSession(s.name, tuple(s.files.values())) for s in self._carried]

    def cancel_reboot(self) -> None:
        """The hand-over after a successful freeze failed: thaw in reverse, run on."""
        self.state.cancel()
        self.rebooting = False

    def _freeze_files(self) -> None:
        files = [pf for session in self._carried for pf in session.files.values()]
        freeze_all(files)
        self._frozen = files

    def _thaw_files(self) -> None:
        for pf in reversed(self._frozen):
            pf.handler.unfreeze(pf.file, pf.data)
        self._frozen = []


# The ops tables of the two file kinds (luofs/core/dispatch.py has their commands).
_DEVICE_OPS = ops_table(MAINLINE_DEVICE.commands, CREATE_SESSION=Luo._create_session,
                        RETRIEVE_SESSION=Luo._retrieve_session)
_SESSION_OPS = ops_table(MAINLINE_SESSION.commands, PRESERVE_FD=Luo._preserve_fd,
                         RETRIEVE_FD=Luo._retrieve_fd, FINISH=Luo._finish,
                         GET_NAME=Luo._get_name)


class _FilesParticipant:
    """The preserved files, as a participant of the (implicit) mainline state machine."""

    name = "files"

    def __init__(self, luo: Luo):
        self._luo = luo

    def prepare(self) -> None:
        pass  # mainline preserves at PRESERVE_FD time

    def freeze(self) -> None:
        self._luo._freeze_files()

    def cancel(self) -> None:
        self._luo._thaw_files()

    def finish(self) -> None:
        pass  # each incoming session finishes on its own

"""Update participants: programs the machine asks before and after a live update.

Mainline Linux tells user space nothing about a coming kexec: whoever triggers it
tells the programs that must get ready (a VMM stops its guests and saves their
state). In luofs the machine is that orchestrator. A participant registers by
listening on a socket in the instance's `participants/` directory, and its
successor — started ahead of time in the next kernel's userspace, as the next
kernel is loaded ahead of time — on one in `participants/next/`. At `kexec` the
machine, with the next kernel loaded and before it asks the kernel to freeze:

    prepare   each participant, in name order; one refusal cancels those already
              prepared and refuses the update (Refused, with the participant's errno)
              (mainline only: under the RFC profiles the kernel's subsystems are the
              participants, and a VMM is the kvm subsystem's, luofs/subsystems/kvm.py)
    cancel    the kernel refused the freeze: every prepared participant resumes
    resume    the next kernel serves and its userspace runs: each successor takes
              over (the old participants ended with the old userspace) and answers
              once it has; under every ABI
    shutdown  the machine powers off: participants end

One typed request (luofs/protocol_participant.py) and one Ok or Error per connection.
Unhappy paths: a socket nobody listens on (its participant died) is removed and
skipped; a participant that does not answer in time, or answers what is not a reply,
refuses; a failed cancel or resume is logged and reported, the update itself has
happened; a participant that gets a request it cannot decode answers Error. Machine
side: prepare(), Update, shutdown(); participant side: Listener, whose handler gets
the request's name and answers {"ok": bool, "errno": int, "error": str}; the update
a Prepare announces (its trace: luofs/trace.py) is the Listener's `update`.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import socket
import threading

from . import protocol, trace, wire
from .protocol import Error, Ok
from .protocol_participant import Cancel, PowerOff, Prepare, Resume

log = logging.getLogger("luofs.participants")

DIRECTORY = "participants"
NEXT = "next"  # successors, in the next kernel's userspace
PREPARE_TIMEOUT = 30.0
RESUME_TIMEOUT = 60.0


class Refused(Exception):
    def __init__(self, name: str, code: int, message: str):
        super().__init__(f"update participant {name!r} refused: {message}")
        self.errno = code


def directory(state_dir: str) -> str:
    return os.path.join(state_dir, DIRECTORY)


def ask(path: str, message, timeout: float):
    """Ok or Error, or None if nobody listens there (the socket is removed)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            return None
        if isinstance(message, (Prepare, Resume)):  # its pid in the trace: as we see it
            message = dataclasses.replace(message, pid=wire.peer_credentials(sock)[0])
        protocol.send(sock, message)
        try:
            reply, fds = protocol.recv(sock, protocol.MAX_REQUEST)
        except protocol.ProtocolError as e:
            return Error(f"sent a malformed reply ({e})", errno.EPROTO)
    protocol.close_fds(fds)
    if reply is None:
        return Error("closed the connection")
    if not isinstance(reply, (Ok, Error)):
        return Error(f"answered {reply.TAG}", errno.EPROTO)
    return reply


def socket_path(state_dir: str, name: str, successor: bool = False) -> str:
    return os.path.join(directory(state_dir), *([NEXT] if successor else []), f"{name}.sock")


def _registered(state_dir: str, successors: bool = False) -> list[tuple[str, str]]:
    where = os.path.join(directory(state_dir), *([NEXT] if successors else []))
    try:
        names = sorted(os.listdir(where))
    except FileNotFoundError:
        return []
    return [(n.removesuffix(".sock"), os.path.join(where, n)) for n in names if n.endswith(".sock")]


class Update:
    """The participants prepared for one live update."""

    def __init__(self, prepared: list[tuple[str, str]], state_dir: str | None = None,
                 number: int = 0):
        self.prepared = prepared
        self.state_dir = state_dir
        self.number = number  # the update, for the participants' traces (0: untraced)

    def _tell(self, request, timeout: float, whom=None) -> dict:
        replies = {}
        for name, path in self.prepared if whom is None else whom:
            try:
                with trace.span(f"{_OPS[type(request)]} {name}", "participant"):
                    reply = ask(path, request, timeout) or Error("gone")
            except OSError as e:
                reply = Error(str(e))
            if isinstance(reply, Error):
                log.error("participant %s: %s failed: %s", name, request.TAG, reply.error)
            replies[name] = reply
        return replies

    def cancel(self) -> dict:
        return self._tell(Cancel(), PREPARE_TIMEOUT)

    def resume(self) -> dict:
        """Every successor registered (a successor whose predecessor was not prepared
        finds nothing carried, and says so)."""
        return self._tell(Resume(self.number), RESUME_TIMEOUT, _registered(self.state_dir, True))


class Resuming:
    """Update.resume() on a thread of its own: a successor may need the machine while it
    takes over (an RFC VMM retrieves its VM from the kernel through it), so the machine
    serves on meanwhile. `wake` becomes readable when it is done; `gate` is set once the
    machine has finished the update (its reply to `kexec` waits for it)."""

    def __init__(self, update: Update):
        self.gate = threading.Event()
        self.watched = False  # the machine's selector has it
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)
        if update.state_dir is None or not _registered(update.state_dir, True):
            os.write(self._wake_w, b".")  # nobody to wait for
            return
        threading.Thread(target=self._done, args=(update,), name="resume", daemon=True).start()

    def _done(self, update: Update) -> None:
        try:
            with trace.span("participants resume", "machine"):
                update.resume()
        finally:
            os.write(self._wake_w, b".")

    def fileno(self) -> int:
        return self._wake_r

    def close(self) -> None:
        self.gate.set()
        os.close(self._wake_r)
        os.close(self._wake_w)


def prepare(state_dir: str, number: int = 0) -> Update:
    """Ask every registered participant to prepare for the update to kernel #`number`
    (0: its trace is not recorded); Refused if one cannot."""
    update = Update([], state_dir, number)
    for name, path in _registered(state_dir):
        try:
            with trace.span(f"prepare {name}", "participant"):
                reply = ask(path, Prepare(number), PREPARE_TIMEOUT)
        except OSError as e:  # (a timeout too): it cannot be counted on
            reply = Error(str(e) or "no answer",
                          errno.ETIMEDOUT if isinstance(e, socket.timeout) else errno.EIO)
        if reply is None:
            log.warning("participant %s is gone; its socket is removed", name)
            continue
        if isinstance(reply, Error):
            update.cancel()
            raise Refused(name, reply.errno or errno.EIO, reply.error)
        update.prepared.append((name, path))
    return update


def shutdown(state_dir: str) -> None:
    """The machine powers off: every participant ends, and every successor."""
    Update(_registered(state_dir) + _registered(state_dir, True))._tell(PowerOff(),
                                                                       PREPARE_TIMEOUT)


_OPS = {Prepare: "prepare", Cancel: "cancel", Resume: "resume", PowerOff: "shutdown"}


class Listener:
    """A participant's registration: a listening socket that the machine will find."""

    def __init__(self, state_dir: str, name: str, successor: bool = False):
        self.path = socket_path(state_dir, name, successor)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            os.unlink(self.path)  # a predecessor's, dead or stepping down
        except FileNotFoundError:
            pass
        self.sock.bind(self.path)
        self.sock.listen(4)
        self.update = 0  # the update the last Prepare or Resume named (its trace), 0: none
        self.pid = 0  # our pid as the machine sees it, from the same message (0: unknown)
        self._inode = os.stat(self.path).st_ino

    def fileno(self) -> int:
        return self.sock.fileno()

    def serve_one(self, handle) -> str | None:
        """Accept one request and answer it: handle(name) -> {"ok", "errno", "error"}."""
        conn, _ = self.sock.accept()
        with conn:
            conn.settimeout(RESUME_TIMEOUT)
            try:
                message, fds = protocol.recv(conn, protocol.MAX_REQUEST)
                protocol.close_fds(fds)
                op = _OPS.get(type(message))
                if op is None:
                    raise protocol.ProtocolError(f"not a participant's request: {message!r}")
                if isinstance(message, (Prepare, Resume)):
                    self.update, self.pid = message.update, message.pid
            except protocol.ProtocolError as e:
                log.error("participant request: %s", e)
                self._answer(conn, Error(str(e), errno.EPROTO))
                return None
            try:
                reply = handle(op)
                reply = Ok() if reply.get("ok") else Error(
                    str(reply.get("error") or "refused"), int(reply.get("errno") or 0))
            except Exception as e:  # the machine must get an answer, whatever went wrong
                log.exception("participant request %s", op)
                reply = Error(str(e), getattr(e, "errno", None) or errno.EIO)
            self._answer(conn, reply)
            return op

    @staticmethod
    def _answer(conn: socket.socket, reply) -> None:
        try:
            protocol.send(conn, reply)
        except OSError:
            pass

    def close(self) -> None:
        try:  # only our own: a successor may have taken the name meanwhile
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        self.sock.close()

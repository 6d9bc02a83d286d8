"""Update participants: programs the machine asks before and after a live update.

Mainline Linux tells user space nothing about a coming kexec: whoever triggers it
tells the programs that must get ready (a VMM stops its guests and saves their
state). In luofs the machine is that orchestrator. A participant registers by
listening on a socket in the instance's `participants/` directory; at `kexec` the
machine, with the next kernel loaded and before it asks the kernel to freeze:

    prepare   each participant, in name order; one refusal cancels those already
              prepared and refuses the update (Refused, with the participant's errno)
    cancel    the kernel refused the freeze: every prepared participant resumes
    resume    the next kernel serves: each participant hands over to its successor
              in the new kernel's userspace and answers when that one runs
    shutdown  the machine powers off: participants end

One JSON request and one reply per connection (luofs/wire.py). Unhappy paths: a
socket nobody listens on (its participant died) is removed and skipped; a
participant that does not answer in time refuses; a failed cancel or resume is
logged and reported, the update itself has happened. Machine side: prepare(),
Update, shutdown(); participant side: Listener.
"""

from __future__ import annotations

import errno
import logging
import os
import socket

from . import wire

log = logging.getLogger("luofs.participants")

DIRECTORY = "participants"
PREPARE_TIMEOUT = 30.0
RESUME_TIMEOUT = 60.0


class Refused(Exception):
    def __init__(self, name: str, code: int, message: str):
        super().__init__(f"update participant {name!r} refused: {message}")
        self.errno = code


def directory(state_dir: str) -> str:
    return os.path.join(state_dir, DIRECTORY)


def ask(path: str, message: dict, timeout: float) -> dict | None:
    """The reply, or None if nobody listens there (the socket is removed)."""
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
        wire.send(sock, message)
        reply, fds = wire.recv(sock)
    for fd in fds:
        os.close(fd)
    return reply if reply is not None else {"ok": False, "error": "closed the connection"}


def socket_path(state_dir: str, name: str) -> str:
    return os.path.join(directory(state_dir), f"{name}.sock")


def _registered(state_dir: str) -> list[tuple[str, str]]:
    try:
        names = sorted(os.listdir(directory(state_dir)))
    except FileNotFoundError:
        return []
    return [(n.removesuffix(".sock"), os.path.join(directory(state_dir), n))
            for n in names if n.endswith(".sock")]


class Update:
    """The participants prepared for one live update."""

    def __init__(self, prepared: list[tuple[str, str]]):
        self.prepared = prepared

    def _tell(self, op: str, timeout: float) -> dict[str, dict]:
        replies = {}
        for name, path in self.prepared:
            try:
                reply = ask(path, {"op": op}, timeout)
            except OSError as e:
                reply = {"ok": False, "error": str(e)}
            reply = reply or {"ok": False, "error": "gone"}
            if not reply.get("ok"):
                log.error("participant %s: %s failed: %s", name, op, reply.get("error"))
            replies[name] = reply
        return replies

    def cancel(self) -> dict[str, dict]:
        return self._tell("cancel", PREPARE_TIMEOUT)

    def resume(self) -> dict[str, dict]:
        return self._tell("resume", RESUME_TIMEOUT)


def prepare(state_dir: str) -> Update:
    """Ask every registered participant to prepare; Refused if one cannot."""
    update = Update([])
    for name, path in _registered(state_dir):
        try:
            reply = ask(path, {"op": "prepare"}, PREPARE_TIMEOUT)
        except OSError as e:  # (a timeout too): it cannot be counted on
            reply = {"ok": False, "errno": errno.ETIMEDOUT if isinstance(e, socket.timeout)
                     else errno.EIO, "error": str(e) or "no answer"}
        if reply is None:
            log.warning("participant %s is gone; its socket is removed", name)
            continue
        if not reply.get("ok"):
            update.cancel()
            raise Refused(name, reply.get("errno") or errno.EIO, reply.get("error", "refused"))
        update.prepared.append((name, path))
    return update


def shutdown(state_dir: str) -> None:
    Update(_registered(state_dir))._tell("shutdown", PREPARE_TIMEOUT)


class Listener:
    """A participant's registration: a listening socket that the machine will find."""

    def __init__(self, state_dir: str, name: str):
        os.makedirs(directory(state_dir), exist_ok=True)
        self.path = socket_path(state_dir, name)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            os.unlink(self.path)  # a dead predecessor's; a live one would have removed it
        except FileNotFoundError:
            pass
        self.sock.bind(self.path)
        self.sock.listen(4)

    def fileno(self) -> int:
        return self.sock.fileno()

    def serve_one(self, handle) -> str | None:
        """Accept one request and answer it with handle(op) -> reply dict."""
        conn, _ = self.sock.accept()
        with conn:
            conn.settimeout(RESUME_TIMEOUT)
            message, fds = wire.recv(conn)
            for fd in fds:
                os.close(fd)
            op = (message or {}).get("op")
            if not isinstance(op, str):
                return None
            try:
                reply = handle(op)
            except Exception as e:  # the machine must get an answer, whatever went wrong
                log.exception("participant request %s", op)
                reply = {"ok": False, "errno": getattr(e, "errno", None) or errno.EIO,
                         "error": str(e)}
            try:
                wire.send(conn, reply)
            except OSError:
                pass
            return op

    def close(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self.sock.close()

"""The machine's end of its control socket: who may talk to it, and how long they may take.

The socket is `control` in the instance's state dir (0700, the booting user's; the
socket itself 0600), held with an flock on `machine.lock` for as long as the machine
lives. Only root and the user who booted the instance may talk to it: the peer's
credentials (SO_PEERCRED) are checked at accept. The machine is single-threaded, so
no client may hold it: connections are read without blocking, one request each, within
CLIENT_TIMEOUT of being accepted; replies go out on a thread of their own.

Unhappy paths, each logged and answered with Error where an answer can go: a peer of
another user (EACCES, then closed); a request that is not a message, or longer than
protocol.MAX_REQUEST (the machine serves on); a client that says nothing in time or
never reads its reply (closed); more than MAX_CLIENTS waiting (the newest is closed).
A client that watches a long request (`luofs kexec` on a terminal) gets Progress
messages before its reply; one its socket has no room for is dropped, never waited for.
Fds travel only with the requests whose type declares fd groups (a VMM's Spawn and
kvm requests); any other request's are closed unread, and so are a reply's once sent.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import selectors
import socket
import threading
import time

from . import protocol, trace, wire
from .protocol import Error, Progress
from .wire import peer_credentials

log = logging.getLogger("luofs.machine")

CLIENT_TIMEOUT = 10.0  # from accept to a whole request
REPLY_TIMEOUT = 10.0  # for a client to take its reply
MAX_CLIENTS = 64
CONTROL, LOCK = "control", "machine.lock"


class ProgressRelay:
    """Progress to a client waiting for its reply, at most every `every_ms`: phases the
    machine reaches (throttled here) and what a kernel reports (throttled there)."""

    def __init__(self, conn: socket.socket, every_ms: int):
        self.conn = conn
        self.every_ms = every_ms
        self._throttle = trace.Throttle(every_ms)

    def phase(self, what: str) -> None:
        if self._throttle.due(what):
            self.send(Progress(what))

    def send(self, message: Progress) -> None:
        try:  # the connection is non-blocking while its request is answered
            protocol.send(self.conn, message)
        except OSError:
            pass


class ControlServer:
    def __init__(self, state: str, sel: selectors.BaseSelector):
        self.lock = os.open(os.path.join(state, LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                            0o600)
        try:
            fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.lock)
            raise OSError(errno.EADDRINUSE, f"another luofs machine holds {state}") from None
        self.path = path = os.path.join(state, CONTROL)
        try:
            os.unlink(path)  # left by a machine that died: the lock says none lives
        except FileNotFoundError:
            pass
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        wire.bind_unix(self.listener, path)
        os.chmod(path, 0o600)
        self.listener.listen(16)
        self.listener.setblocking(False)
        self.sel = sel
        self.allowed = {0, os.geteuid()}
        # accepted, request not read yet: (deadline, the refusal it gets or None)
        self.waiting: dict[socket.socket, tuple[float, Error | None]] = {}
        sel.register(self.listener, selectors.EVENT_READ, self)

    def timeout(self, longest: float) -> float:
        """How long the machine may wait for events before a client's deadline passes."""
        if not self.waiting:
            return longest
        first = min(deadline for deadline, _refusal in self.waiting.values())
        return max(0.0, min(longest, first - time.monotonic()))

    def ready(self, sock: socket.socket) -> tuple[socket.socket, object, dict] | None:
        """`sock` can be read: (connection, request, its fd groups) once a whole request
        is in; the caller owns the fds."""
        if sock is self.listener:
            self._accept()
            return None
        self.sel.unregister(sock)
        _deadline, refusal = self.waiting.pop(sock)
        if refusal is not None:  # read what it sent first: closing on it would reset the
            self._drain(sock)    # connection before the peer reads why
            self._answer_now(sock, refusal)
            return None
        try:
            request, fds = protocol.recv(sock, protocol.MAX_REQUEST)
        except protocol.ProtocolError as e:
            log.warning("control socket: rejected a message: %s", e)
            self.reply(sock, Error(f"bad request: {e}"))
            return None
        except OSError:
            sock.close()
            return None
        if request is None:
            sock.close()
            return None
        return sock, request, fds  # (decode let through only the groups its type declares)

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        pid, uid, _gid = peer_credentials(conn)
        if len(self.waiting) >= MAX_CLIENTS:
            log.warning("control socket: %d clients wait already; closing pid %d's",
                        MAX_CLIENTS, pid)
            self._drain(conn)
            self._answer_now(conn, Error("the machine is busy with other clients", errno.EBUSY))
            return
        refusal = None
        if uid not in self.allowed:
            log.warning("control socket: refused pid %d of uid %d (only root and uid %d may "
                        "control this instance)", pid, uid, os.geteuid())
            refusal = Error("permission denied: only root and the user who booted this "
                            "instance may control it", errno.EACCES)
        conn.setblocking(False)
        self.waiting[conn] = (time.monotonic() + CLIENT_TIMEOUT, refusal)
        self.sel.register(conn, selectors.EVENT_READ, self)

    @staticmethod
    def _drain(conn: socket.socket) -> None:
        """Discard what the peer sent (fds included) without waiting for more."""
        conn.setblocking(False)
        try:
            while True:
                data, fds, _flags, _addr = socket.recv_fds(conn, wire.MAX_DATAGRAM, 16)
                for fd in fds:
                    os.close(fd)
                if not data:
                    return
        except OSError:
            return

    @staticmethod
    def _answer_now(conn: socket.socket, reply) -> None:
        with conn:
            conn.setblocking(False)  # a small datagram into an empty buffer, or nothing
            try:
                protocol.send(conn, reply)
            except OSError:
                pass

    def expire(self) -> None:
        """Close the connections whose request did not come in time."""
        now = time.monotonic()
        for conn, (deadline, _refusal) in list(self.waiting.items()):
            if deadline <= now:
                log.warning("control socket: a client said nothing for %.0f s; closed",
                            CLIENT_TIMEOUT)
                self.sel.unregister(conn)
                del self.waiting[conn]
                self._answer_now(conn, Error(f"no request within {CLIENT_TIMEOUT:.0f} s"))

    def reply(self, conn: socket.socket, reply, fds: dict | None = None,
              gate: threading.Event | None = None) -> None:
        """Send `reply` (and its fds, which this closes) and close, on a thread: a client
        that does not read costs the machine nothing (the thread gives up after
        REPLY_TIMEOUT). With `gate`, only once it is set (the request's last step runs
        while the machine serves others)."""
        def send() -> None:
            if gate is not None:
                gate.wait()
            with conn:
                conn.settimeout(REPLY_TIMEOUT)
                try:
                    protocol.send(conn, reply, fds)
                except OSError as e:
                    log.warning("control socket: reply %s not delivered: %s", reply.TAG, e)
                finally:
                    protocol.close_fds(fds or {})

        threading.Thread(target=send, name="control-reply").start()

    def close(self) -> None:
        """From now on `luofs` sees no machine here (the socket file goes with the lock)."""
        for conn in list(self.waiting):
            self.sel.unregister(conn)
            conn.close()
        self.waiting.clear()
        self.sel.unregister(self.listener)
        self.listener.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self.lock)

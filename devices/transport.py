"""How a kernel's drivers reach the machine's :class:`~devices.host.DeviceHost`.

A transport has one method, ``request(message) -> (reply, fds)``; the fds are the
caller's to close. Two are provided:

* :class:`SocketTransport` — the real one: a SOCK_SEQPACKET socket to the machine,
  framed by :mod:`luofs.wire` (JSON + SCM_RIGHTS), served on the machine's side
  by :func:`serve_connection` in a thread of its own, so devices are served even
  while the machine's main thread waits for the kernel (during the freeze).
* :class:`LoopbackTransport` — the same in one process, for tests: replies go
  through JSON and fds are duplicated, as SCM_RIGHTS would.

Shared: the server half runs in the machine, :class:`DeviceClient` in a kernel.

Unhappy paths: a machine that does not answer (socket closed, timeout) is
:class:`TransportError`, which :class:`DeviceClient` reports as DeviceError(EIO);
an error reply becomes DeviceError with the host's errno and reason (its fds
closed); the server ends quietly when the kernel's end closes or a socket error
occurs, and closes any fd a kernel sends it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from typing import TYPE_CHECKING

from luofs import wire

from .errors import EIO, DeviceError
from .spec import DeviceConfig

if TYPE_CHECKING:
    from .host import DeviceHost

log = logging.getLogger("devices.transport")


class TransportError(ConnectionError):
    """The machine did not answer (it went away)."""


class SocketTransport:
    def __init__(self, sock: socket.socket, timeout: float = 30.0):
        self.sock = sock
        self.timeout = timeout
        self._lock = threading.Lock()

    def request(self, message: dict) -> tuple[dict, list[int]]:
        with self._lock:
            self.sock.settimeout(self.timeout)
            try:
                wire.send(self.sock, message)
                reply, fds = wire.recv(self.sock)
            except (OSError, ValueError) as e:
                raise TransportError(f"device request {message.get('op')}: {e}") from e
        if reply is None:
            raise TransportError("the machine closed the device socket")
        return reply, fds

    def close(self) -> None:
        self.sock.close()


class LoopbackTransport:
    def __init__(self, host: "DeviceHost"):
        self.host = host

    def request(self, message: dict) -> tuple[dict, list[int]]:
        reply, fds = self.host.handle(json.loads(json.dumps(message)))
        return json.loads(json.dumps(reply)), [os.dup(fd) for fd in fds]

    def close(self) -> None:
        pass


def serve_connection(host: "DeviceHost", sock: socket.socket) -> None:
    """Answer one kernel's requests until it closes its end (or dies)."""
    try:
        while True:
            try:
                message, fds = wire.recv(sock)
            except (OSError, ValueError) as e:
                log.warning("device socket: %s", e)
                return
            for fd in fds:  # a kernel never sends fds here
                os.close(fd)
            if message is None:
                return
            reply, lent = host.handle(message)
            try:
                wire.send(sock, reply, lent)
            except OSError as e:
                log.warning("device socket: cannot reply: %s", e)
                return
    finally:
        sock.close()


def start_server(host: "DeviceHost", sock: socket.socket) -> threading.Thread:
    """Serve ``sock`` in a daemon thread; it ends when the kernel's end closes."""
    thread = threading.Thread(target=serve_connection, args=(host, sock),
                              name="device-socket", daemon=True)
    thread.start()
    return thread


class DeviceClient:
    """The kernel's side of the requests: failures become :class:`DeviceError` with the errno."""

    def __init__(self, transport):
        self.transport = transport

    def call(self, op: str, device: str | None = None, **extra) -> tuple[dict, list[int]]:
        message = {"op": op, **({"device": device} if device is not None else {}), **extra}
        try:
            reply, fds = self.transport.request(message)
        except TransportError as e:
            raise DeviceError(EIO, str(e)) from None
        if not reply.get("ok"):
            for fd in fds:
                os.close(fd)
            raise DeviceError(reply.get("errno") or EIO,
                              reply.get("error") or f"{op} failed")
        return reply, fds

    def simple(self, op: str, device: str) -> dict:
        """A request that lends no fds."""
        reply, fds = self.call(op, device)
        for fd in fds:
            os.close(fd)
        return reply

    def list(self) -> list[DeviceConfig]:
        reply, _ = self.call("device-list")
        return [DeviceConfig.from_message(d) for d in reply["devices"]]

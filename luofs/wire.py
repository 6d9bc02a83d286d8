"""Framing of the messages between the luofs processes (CLI ⇄ machine ⇄ kernel ⇄ keeper):
one JSON object per datagram on a SOCK_SEQPACKET socket, with file descriptors riding
along as SCM_RIGHTS. This is how preserved files travel to the next kernel without their
contents moving. What the JSON may say is luofs.protocol's business; devices/ frames its
own dict messages here too (`send`/`recv`).

Unhappy paths: a message longer than the reader's limit, or a multi-part header that
promises one, raises ProtocolError before anything more is read; fds of a message that
cannot be read are closed.
"""

from __future__ import annotations

import json
import os
import socket

MAX_DATAGRAM = 32 << 10  # well inside the default socket buffers
MAX_FDS_PER_MESSAGE = 250  # below the kernel's SCM_MAX_FD (253)
MAX_FD_PARTS = 4096  # a million fds: more than any RLIMIT_NOFILE lets one process hold


class ProtocolError(ValueError):
    """A message that is not one: malformed, of an unknown type, ill-typed or too large."""


def _digest(root: str) -> str:
    """32 hex digits naming ROOT (its real path)."""
    try:  # the built-in SHA-256: hashlib would load OpenSSL, ~3 ms of every command's start
        from _sha256 import sha256
    except ImportError:
        from hashlib import sha256
    return sha256(os.path.realpath(root).encode()).hexdigest()[:32]


def control_address(root: str) -> bytes:
    """The machine's abstract socket for ROOT: no file to leave behind, unique per root."""
    return b"\0luofs/" + _digest(root).encode()


def state_dir(root: str) -> str:
    """Where an instance keeps its logs: /run/luofs/<digest> (tmp if /run is not writable)."""
    digest = _digest(root)
    base = os.environ.get("LUOFS_STATE_DIR") or (
        "/run/luofs" if os.access("/run", os.W_OK) else f"/tmp/luofs-{os.getuid()}")
    path = os.path.join(base, digest)
    os.makedirs(path, exist_ok=True)
    return path


def send(sock: socket.socket, message: dict, fds=()) -> None:
    """A dict message (devices/' own protocol); luofs.protocol.send for typed ones."""
    send_bytes(sock, json.dumps(message).encode(), fds)


def send_bytes(sock: socket.socket, data: bytes, fds=()) -> None:
    """A small message goes in one datagram; a large one, or one with many fds, is
    announced by a header datagram saying how many data and fd datagrams follow."""
    fds = list(fds)
    if len(data) <= MAX_DATAGRAM and len(fds) <= MAX_FDS_PER_MESSAGE:
        socket.send_fds(sock, [data], fds)
        return
    parts = [data[i:i + MAX_DATAGRAM] for i in range(0, len(data), MAX_DATAGRAM)]
    fd_parts = [fds[i:i + MAX_FDS_PER_MESSAGE] for i in range(0, len(fds), MAX_FDS_PER_MESSAGE)]
    header = json.dumps({"_parts": len(parts), "_fd_parts": len(fd_parts)}).encode()
    socket.send_fds(sock, [header], [])
    for part in parts:
        sock.sendall(part)
    for chunk in fd_parts:
        socket.send_fds(sock, [b"."], chunk)


def recv(sock: socket.socket) -> tuple[dict | None, list[int]]:
    """(message, fds); (None, []) when the peer has gone."""
    data, fds = recv_bytes(sock)
    if data is None:
        return None, fds
    try:
        return json.loads(data), fds
    except ValueError:
        _close(fds)
        raise


def _multipart(data: bytes, limit: int) -> tuple[int, int] | None:
    """(data parts, fd parts) if `data` is a multi-part header within `limit`, else None."""
    if not data.startswith(b'{"_parts": '):
        return None
    try:
        header = json.loads(data)
        parts, fd_parts = header["_parts"], header["_fd_parts"]
    except (ValueError, KeyError, TypeError):
        raise ProtocolError("malformed multi-part header") from None
    if type(parts) is not int or type(fd_parts) is not int or parts < 0 or fd_parts < 0:
        raise ProtocolError("malformed multi-part header")
    if parts * MAX_DATAGRAM > limit + MAX_DATAGRAM or fd_parts > MAX_FD_PARTS:
        raise ProtocolError(f"message of {parts} parts, more than the {limit} bytes allowed")
    return parts, fd_parts


def recv_bytes(sock: socket.socket, limit: int = 64 << 20) -> tuple[bytes | None, list[int]]:
    """(message bytes, fds); (None, fds) when the peer has gone. ProtocolError (no fd left
    open) if it announces more than `limit` bytes."""
    data, fds, _flags, _addr = socket.recv_fds(sock, MAX_DATAGRAM, MAX_FDS_PER_MESSAGE)
    fds = list(fds)
    if not data:
        return None, fds
    try:
        shape = _multipart(data, limit)
        if shape is not None:
            data = _read_parts(sock, *shape, fds)
    except BaseException:
        _close(fds)
        raise
    if len(data) > limit:
        _close(fds)
        raise ProtocolError(f"message of {len(data)} bytes, more than {limit}")
    return data, fds


def _read_parts(sock: socket.socket, parts: int, fd_parts: int, fds: list[int]) -> bytes:
    timeout = sock.gettimeout()
    if timeout == 0:  # non-blocking: the rest is already on its way, wait for it
        sock.settimeout(None)
    try:
        data = b"".join(sock.recv(MAX_DATAGRAM) for _ in range(parts))
        for _ in range(fd_parts):
            _data, more, _f, _a = socket.recv_fds(sock, 16, MAX_FDS_PER_MESSAGE)
            fds.extend(more)
    finally:
        sock.settimeout(timeout)
    return data


def _close(fds) -> None:
    for fd in fds:
        os.close(fd)


def request(root: str, message: dict, timeout: float | None = 60.0) -> dict:
    """One request to the machine of ROOT; ConnectionRefusedError if none serves it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        sock.settimeout(timeout)
        sock.connect(control_address(root))
        send(sock, message)
        reply, fds = recv(sock)
        for fd in fds:
            os.close(fd)
        if reply is None:
            raise ConnectionError("the luofs machine closed the connection")
        return reply

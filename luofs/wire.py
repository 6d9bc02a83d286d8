"""Messages between the luofs processes (CLI ⇄ machine ⇄ kernel): one JSON object per
datagram on a SOCK_SEQPACKET socket, with file descriptors riding along as SCM_RIGHTS.
This is how preserved files travel to the next kernel without their contents moving.
"""

from __future__ import annotations

import json
import os
import socket

MAX_DATAGRAM = 32 << 10  # well inside the default socket buffers
MAX_FDS_PER_MESSAGE = 250  # below the kernel's SCM_MAX_FD (253)


def control_address(root: str) -> bytes:
    """The machine's abstract socket for ROOT: no file to leave behind, unique per root."""
    import hashlib  # here: file keepers import this module, and OpenSSL costs them memory

    digest = hashlib.sha256(os.path.realpath(root).encode()).hexdigest()[:32]
    return b"\0luofs/" + digest.encode()


def state_dir(root: str) -> str:
    """Where an instance keeps its logs: /run/luofs/<digest> (tmp if /run is not writable)."""
    digest = control_address(root)[7:].decode()
    base = os.environ.get("LUOFS_STATE_DIR") or (
        "/run/luofs" if os.access("/run", os.W_OK) else f"/tmp/luofs-{os.getuid()}")
    path = os.path.join(base, digest)
    os.makedirs(path, exist_ok=True)
    return path


def send(sock: socket.socket, message: dict, fds=()) -> None:
    """A small message goes in one datagram; a large one, or one with many fds, is
    announced by a header datagram saying how many data and fd datagrams follow."""
    data = json.dumps(message).encode()
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
    data, fds, _flags, _addr = socket.recv_fds(sock, MAX_DATAGRAM, MAX_FDS_PER_MESSAGE)
    if not data:
        return None, list(fds)
    message = json.loads(data)
    fds = list(fds)
    if "_parts" in message:
        blocking = sock.getblocking()
        sock.setblocking(True)  # the rest is already on its way
        try:
            data = b"".join(sock.recv(MAX_DATAGRAM) for _ in range(message["_parts"]))
            for _ in range(message["_fd_parts"]):
                _data, more, _f, _a = socket.recv_fds(sock, 16, MAX_FDS_PER_MESSAGE)
                fds.extend(more)
        finally:
            sock.setblocking(blocking)
        message = json.loads(data)
    return message, fds


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

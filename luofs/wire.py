"""Framing of the messages between the luofs processes (CLI ⇄ machine ⇄ kernel ⇄ keeper):
one JSON object per datagram on a SOCK_SEQPACKET socket, with file descriptors riding
along as SCM_RIGHTS. This is how preserved files travel to the next kernel without their
contents moving. What the JSON may say is luofs.protocol's business; devices/ frames its
own dict messages here too (`send`/`recv`). Also here, as the leaf every process may
import: where an instance keeps its state (its control socket, lock and logs), derived
from the root alone.

Unhappy paths: a message longer than the reader's limit, or a multi-part header that
promises one, raises ProtocolError before anything more is read; fds of a message that
cannot be read are closed.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import stat

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


def state_base(uid: int | None = None) -> str:
    """The directory holding every instance's state dir: $LUOFS_STATE_DIR, /run/luofs for
    root (or whoever may write /run), else /tmp/luofs-UID."""
    uid = os.geteuid() if uid is None else uid
    if os.environ.get("LUOFS_STATE_DIR"):
        return os.environ["LUOFS_STATE_DIR"]
    if uid == os.geteuid() and os.access("/run", os.W_OK):
        return "/run/luofs"
    return f"/tmp/luofs-{uid}"


def state_dir(root: str, create: bool = False) -> str:
    """Where the instance serving ROOT keeps its control socket and logs: a 0700 directory
    of the booting user, named by a digest of ROOT and derived here — never taken from a
    peer. Root also finds an instance another user booted (/tmp/luofs-UID of that user).
    `create`: make it (PermissionError if it or its parent is not ours alone)."""
    name = _digest(root)
    own = os.path.join(state_base(), name)
    if create:
        for path, closed in ((os.path.dirname(own), 0o022), (own, 0o077)):
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                st = os.lstat(path)
                if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and st.st_mode & closed:
                    os.chmod(path, stat.S_IMODE(st.st_mode) & ~closed)  # an older luofs's
            check_private_dir(path, os.geteuid(), closed)
        return own
    if os.path.lexists(own) or os.environ.get("LUOFS_STATE_DIR"):
        return own
    # Another user's instance: root's (its machine then refuses us, and says so), or,
    # for root, one a user booted.
    import glob

    others = [os.path.join("/run/luofs", name)] + (
        sorted(glob.glob(f"/tmp/luofs-[0-9]*/{name}")) if os.geteuid() == 0 else [])
    for path in others:
        base = os.path.dirname(path)
        try:
            owner = 0 if base == "/run/luofs" else int(base.rpartition("-")[2])
            check_private_dir(base, owner, 0o022)
        except (OSError, ValueError):
            continue
        if os.path.lexists(path):
            return path
    return own


def check_private_dir(path: str, uid: int, closed: int = 0o077) -> None:
    """PermissionError unless `path` is a directory (not a link) of `uid` whose mode has
    none of the `closed` bits (by default: nobody else may write, read or search it)."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & closed:
        raise PermissionError(errno.EACCES, f"{path} is not a private directory of uid {uid} "
                              f"(mode {st.st_mode & 0o7777:o}, owner {st.st_uid}): refusing "
                              "to keep or trust an instance's state there")


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of a unix socket's peer, as the kernel saw it connect or listen."""
    import struct

    return struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))


def open_log(path: str):
    """`path` opened for appending, readable by its owner only (logs name sessions)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)  # one left by an older luofs may be 0644
    return os.fdopen(fd, "ab")


def control_path(root: str) -> str:
    """The machine's control socket for ROOT (inside its state dir)."""
    return os.path.join(state_dir(root), "control")


def bind_unix(sock: socket.socket, path: str) -> None:
    _by_short_path(path, sock.bind)


def connect_unix(sock: socket.socket, path: str) -> None:
    _by_short_path(path, sock.connect)


def _by_short_path(path: str, act) -> None:
    """act(path), through /proc/self/fd when `path` is longer than a sockaddr_un holds
    ($LUOFS_STATE_DIR or a test's temp dir may be deep)."""
    if len(os.fsencode(path)) < 100:
        return act(path)
    fd = os.open(os.path.dirname(path) or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return act(f"/proc/self/fd/{fd}/{os.path.basename(path)}")
    finally:
        os.close(fd)


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
    # A reader whose limit fits one datagram takes no multi-part message at all: reading
    # the parts would wait for them (the machine reads its clients without waiting).
    most = 0 if limit <= MAX_DATAGRAM else -(-limit // MAX_DATAGRAM)
    if parts > most or fd_parts > MAX_FD_PARTS:
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

"""The client end of a machine's control socket: one typed request, one typed reply.

Used by the `luofs` command and by luofs.client's kexec()/status(); it imports only
the protocol, so a command that talks to the machine starts in milliseconds.

The control socket is derived from the root (luofs.wire.control_path), and the machine
is known by the kernel's word (SO_PEERCRED), never by what it says.

Unhappy paths: nobody serves the root (NoMachine); another user's instance
(PermissionError); a machine stopped with SIGSTOP (MachineStopped, at once, not after
a timeout); one that does not answer in time (MachineTimeout); one that closes the
connection or answers with something that is not a message (MachineGone /
ProtocolError).
"""

from __future__ import annotations

import errno
import os
import socket

from . import protocol, wire


class NoMachine(ConnectionError):
    """No luofs machine serves this root."""


class MachineTimeout(TimeoutError):
    """The machine (`pid`, by the kernel's word) did not answer in time."""

    def __init__(self, message: str, pid: int):
        super().__init__(message)
        self.pid = pid


class MachineStopped(MachineTimeout):
    """The machine's process is stopped (SIGSTOP): it cannot answer until SIGCONT."""


class MachineGone(ConnectionError):
    pass


def request(root: str, msg, timeout: float | None = 60.0, on_progress=None):
    """Send `msg` to the machine serving ROOT and return its reply message."""
    return exchange(root, msg, timeout, on_progress)[0]


def request_fds(root: str, msg, fds: dict, timeout: float | None = 60.0):
    """`msg` with its fd groups; (reply, the reply's fd groups: the caller closes them)."""
    reply, _pid, reply_fds = exchange(root, msg, timeout, fds=fds, keep_fds=True)
    return reply, reply_fds


def exchange(root: str, msg, timeout: float | None = 60.0, on_progress=None,
             fds: dict | None = None, keep_fds: bool = False):
    """(reply, the machine's pid as the kernel reports the socket's peer: never as the
    peer says), and the reply's fds with `keep_fds`. Only a machine of root, of this
    user or of the state dir's owner counts. Progress messages before the reply go to
    `on_progress` (each wait for the next message has the whole `timeout`)."""
    path = wire.control_path(root)
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        sock.settimeout(timeout)
        try:
            wire.connect_unix(sock, path)
        except (ConnectionRefusedError, FileNotFoundError):
            raise NoMachine(errno.ECONNREFUSED, f"no luofs kernel serves {root}") from None
        except PermissionError:
            raise PermissionError(errno.EACCES, "permission denied: only root and the user "
                                  f"who booted the instance serving {root} may control it")
        pid, uid, _gid = wire.peer_credentials(sock)
        if uid not in (0, os.geteuid(), os.stat(os.path.dirname(path)).st_uid):
            raise PermissionError(errno.EACCES, f"{path} is served by uid {uid}: not trusted")
        note = stopped_note(pid)
        if note:
            raise MachineStopped(f"the luofs machine of {root} (pid {pid}) cannot answer{note}",
                                 pid)
        try:
            try:
                protocol.send(sock, msg, fds)
            except BrokenPipeError:
                pass  # it answered and closed at once (a refusal): read that answer
            reply, reply_fds = protocol.recv(sock)
            while isinstance(reply, protocol.Progress):
                protocol.close_fds(reply_fds)
                if on_progress is not None:
                    on_progress(reply)
                reply, reply_fds = protocol.recv(sock)
        except socket.timeout:
            raise MachineTimeout(f"the luofs machine of {root} (pid {pid}) did not answer "
                                 f"within {timeout:.0f} s{stopped_note(pid)}", pid) from None
        except ConnectionResetError:
            reply, reply_fds = None, {}
        if not keep_fds:
            protocol.close_fds(reply_fds)
    if reply is None:
        raise MachineGone("the luofs machine closed the connection")
    return (reply, pid, reply_fds) if keep_fds else (reply, pid)


def process_state(pid: int) -> str:
    """The state letter /proc shows for `pid` ('' if it is gone): R, S, D, T, Z…"""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return ""


def stopped_note(pid: int) -> str:
    """': it is stopped …' when /proc says so: the one reason for silence worth naming."""
    if process_state(pid) in ("T", "t"):
        return f": it is stopped (SIGSTOP; `kill -CONT {pid}` resumes it)"
    return ""

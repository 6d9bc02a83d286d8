"""The client end of a machine's control socket: one typed request, one typed reply.

Used by the `luofs` command and by luofs.client's kexec()/status(); it imports only
the protocol, so a command that talks to the machine starts in milliseconds.

Unhappy paths: nobody serves the root (NoMachine); the machine does not answer in
time (MachineTimeout, saying whether it is stopped); it closes the connection or
answers with something that is not a message (MachineGone / ProtocolError).
"""

from __future__ import annotations

import errno
import socket

from . import protocol, wire


class NoMachine(ConnectionError):
    """No luofs machine serves this root."""


class MachineTimeout(TimeoutError):
    pass


class MachineGone(ConnectionError):
    pass


def request(root: str, msg, timeout: float | None = 60.0):
    """Send `msg` to the machine serving ROOT and return its reply message."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(wire.control_address(root))
        except (ConnectionRefusedError, FileNotFoundError):
            raise NoMachine(errno.ECONNREFUSED, f"no luofs kernel serves {root}") from None
        try:
            protocol.send(sock, msg)
            reply, fds = protocol.recv(sock)
        except socket.timeout:
            raise MachineTimeout(f"the luofs machine of {root} did not answer within "
                                 f"{timeout:.0f} s") from None
        except ConnectionResetError:
            reply, fds = None, {}
        protocol.close_fds(fds)
    if reply is None:
        raise MachineGone("the luofs machine closed the connection")
    return reply


"""A small QMP client: commands, events, and the migration steps luofs vm needs.

QEMU gets one end of a connected socket pair on its command line (`-chardev
socket,fd=N`), so there is no socket path to poll for while it starts: the greeting
arrives as soon as its monitor runs. Unhappy paths: QEMU exits or closes the
socket (QmpError "QEMU closed its monitor"), a command fails (QmpError with
QEMU's class and description), a migration ends "failed" or "cancelled", or
nothing arrives within the timeout.
"""

from __future__ import annotations

import json
import socket
import time


class QmpError(RuntimeError):
    pass


class Qmp:
    def __init__(self, sock: socket.socket, timeout: float = 30.0):
        self.sock = sock
        self.timeout = timeout
        self.events: list[dict] = []
        self._buf = b""

    def _read(self, deadline: float) -> dict:
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise QmpError("QEMU did not answer on its monitor in time")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:  # it exited with our commands unread
                raise QmpError("QEMU closed its monitor") from None
            except OSError as e:
                raise QmpError(f"QEMU's monitor failed: {e}") from None
            if not chunk:
                raise QmpError("QEMU closed its monitor")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def _send(self, commands, fds=()) -> None:
        data = b"".join(json.dumps({"execute": c, **({"arguments": a} if a else {})}).encode()
                        + b"\n" for c, a in commands)
        try:
            if fds:
                socket.send_fds(self.sock, [data], list(fds))
            else:
                self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            raise QmpError("QEMU closed its monitor") from None
        except OSError as e:
            raise QmpError(f"QEMU's monitor failed: {e}") from None

    def _reply(self, command: str, deadline: float):
        while True:
            reply = self._read(deadline)
            if "QMP" in reply:  # the greeting (commands sent before it wait their turn)
                continue
            if "event" in reply:
                self.events.append(reply)
            elif "error" in reply:
                error = reply["error"]
                raise QmpError(f"{command}: {error.get('class')}: {error.get('desc')}")
            elif "return" in reply:
                return reply["return"]

    def pipeline(self, commands: list[tuple[str, dict]]) -> list:
        """Send every command at once, then read their replies in order: one wake-up
        of QEMU's monitor instead of one per command (each costs milliseconds when the
        host is busy). Sent before QEMU even runs, they wait in the socket."""
        self._send(commands)
        deadline = time.monotonic() + self.timeout
        return [self._reply(command, deadline) for command, _ in commands]

    def execute(self, command: str, fds=(), **arguments):
        """Run one command; its fds (for getfd) ride on the same send."""
        self._send([(command, arguments)], fds)
        return self._reply(command, time.monotonic() + self.timeout)

    def migrate(self, command: str, timeout: float, **arguments) -> None:
        """Run `migrate` or `migrate-incoming` and wait until it completes. Events seen
        before it are dropped: a QEMU that was itself a migration target has already
        reported "completed" once."""
        self.events = []
        self.execute(command, **arguments)
        self.wait_migration(command, timeout)

    def wait_migration(self, command: str, timeout: float) -> None:
        """Until the migration started last completes: a "completed" counts only after
        its "setup" or "active"."""
        deadline = time.monotonic() + timeout
        started = False
        while True:
            event = self.events.pop(0) if self.events else self._read(deadline)
            if event.get("event") != "MIGRATION":
                continue
            status = event["data"]["status"]
            if status in ("setup", "active"):
                started = True
            elif status in ("failed", "cancelled"):
                raise QmpError(f"{command}: migration {status}")
            elif status == "completed" and started:
                return


def setup_commands(ignore_shared: bool = True, source: bool = True) -> list[tuple[str, dict]]:
    """Leave negotiation, and the migration settings: RAM in shared memory is not sent
    (unless `ignore_shared` is False: the naive migration a benchmark compares with);
    a source sends the rest as fast as it can."""
    commands = [("qmp_capabilities", {}),
                ("migrate-set-capabilities", {"capabilities": [
                    {"capability": "x-ignore-shared", "state": ignore_shared},
                    {"capability": "events", "state": True}]})]
    if source:
        commands.append(("migrate-set-parameters", {"max-bandwidth": 1 << 40,
                                                    "downtime-limit": 1}))
    return commands

"""One kernel process as the machine sees it: started ahead of time, spoken to over a
socket pair with luofs.protocol_kernel's messages, stopped or killed.

Unhappy paths: a kernel that dies (its socket closes: replies are None, expect()
raises KernelError with its exit status); one that panics (KernelPanic); one that says
something unreadable or out of turn (KernelError); one that does not answer in time
(KernelError naming it, and saying so if it is stopped — its late reply is skipped by
the next ask). A crash notice (Crashing) is handed to `on_crash` wherever it arrives,
and a live update's Progress to `on_progress`.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys

from devices.host import DeviceHost
from devices.transport import start_server

from . import protocol, wire
from .control import stopped_note
from .protocol import Progress, Shutdown
from .protocol_kernel import Crashing, Loaded, Panicked

log = logging.getLogger("luofs.machine")

KERNEL_STOP_TIMEOUT = 10.0


class KernelError(RuntimeError):
    pass


class KernelPanic(KernelError):
    """The kernel refused the hand-over: retrying with the same data cannot help."""


class KernelProcess:
    """One kernel process and the machine's end of its control socket."""

    def __init__(self, root: str, root_fd: int, number: int, log_path: str, on_crash=None,
                 devices: DeviceHost | None = None, trace_dir: str | None = None):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock = ours
        self.number = number
        self.on_crash = on_crash
        self.on_progress = None  # Progress -> None, while someone watches an update
        self.loaded = False
        self.owed = 0  # replies to requests that timed out, still to come and be skipped
        passed = [theirs]
        extra_args = []
        if devices is not None:  # the kernel's drivers talk to the hardware on their own line
            host_end, kernel_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            passed.append(kernel_end)
            extra_args = ["--device-fd", str(kernel_end.fileno())]
        if trace_dir is not None:
            extra_args += ["--trace-dir", trace_dir]
        with wire.open_log(log_path) as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "luofs.kernel", "--root", root, "--root-fd", str(root_fd),
                 "--control-fd", str(theirs.fileno()), *extra_args],
                pass_fds=[root_fd, *(s.fileno() for s in passed)], stdin=subprocess.DEVNULL,
                stdout=log_file, stderr=log_file)
        for s in passed:
            s.close()
        if devices is not None:
            start_server(devices, host_end)  # ends when this kernel's end closes

    def recv(self):
        """(message, fd groups) of the next message that is not a crash notice (those go to
        on_crash); (None, {}) when the kernel is gone; ProtocolError for garbage."""
        while True:
            message, fds = protocol.recv(self.sock)
            if isinstance(message, Progress):
                if self.on_progress is not None:
                    self.on_progress(message)
                continue
            if not isinstance(message, Crashing):
                return message, fds
            log.warning("kernel #%d is crashing at fault point %s", self.number, message.point)
            if self.on_crash is not None:
                self.on_crash(message.point)

    def wait_loaded(self, timeout: float) -> None:
        if not self.loaded:
            self.expect(Loaded, timeout)
            self.loaded = True

    def expect(self, kind: type, timeout: float):
        self.sock.settimeout(timeout)
        try:
            message, fds = self.recv()
        except socket.timeout:
            raise KernelError(f"kernel did not answer within {timeout:.0f} s") from None
        except ConnectionError:  # it died with a message of ours unread
            message, fds = None, {}
        except protocol.ProtocolError as e:
            raise KernelError(f"kernel #{self.number} said something unreadable: {e}") from None
        finally:
            self.sock.settimeout(None)
        protocol.close_fds(fds)
        if message is None:
            raise KernelError(f"kernel #{self.number} died (status {self.proc.wait()})")
        if isinstance(message, Panicked):
            raise KernelPanic(f"kernel panic: {message.error}")
        if not isinstance(message, kind):
            raise KernelError(getattr(message, "error", None) or f"unexpected message {message}")
        return message

    def ask(self, message, timeout: float = 60.0, fds: dict | None = None):
        """(reply, fd groups); (None, {}) if the kernel died. KernelError if it does not
        answer in time (its late reply is skipped by the next ask). `fds` go with the
        message (the caller keeps its own)."""
        self.sock.settimeout(timeout)
        try:
            while self.owed:  # a late reply to an earlier request is no answer to this one
                late, fds = self.recv()
                protocol.close_fds(fds)
                self.owed -= 1
                if late is None:
                    return None, {}
            protocol.send(self.sock, message, fds)
            try:
                return self.recv()
            except socket.timeout:
                self.owed += 1
                raise
        except socket.timeout:
            raise KernelError(f"kernel #{self.number} (pid {self.proc.pid}) did not answer "
                              f"within {timeout:.0f} s{stopped_note(self.proc.pid)}") from None
        except ConnectionError:
            return None, {}
        except protocol.ProtocolError as e:
            raise KernelError(f"kernel #{self.number} said something unreadable: {e}") from None
        finally:
            if self.sock.fileno() >= 0:
                self.sock.settimeout(None)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.sock.close()

    def stop(self) -> None:
        if self.proc.poll() is None and not stopped_note(self.proc.pid):
            try:
                _reply, fds = self.ask(Shutdown(), timeout=KERNEL_STOP_TIMEOUT)
                protocol.close_fds(fds)
                self.proc.wait(KERNEL_STOP_TIMEOUT)
            except (KernelError, OSError, protocol.ProtocolError, subprocess.TimeoutExpired):
                pass
        self.kill()

"""The machine process: what survives every live update.

It owns the control socket that the `luofs` command talks to, starts kernel #0,
and (with the KHO issue) emulated physical memory, devices, and each next kernel.
It never imports pyfuse3 or trio: it must stay small and always responsive.
"""

from __future__ import annotations

import argparse
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import time

from . import wire
from .mounts import detach_mount

log = logging.getLogger("luofs.machine")

KERNEL_START_TIMEOUT = 30.0
KERNEL_STOP_TIMEOUT = 10.0


class KernelProcess:
    """One kernel process and the machine's end of its control socket."""

    def __init__(self, root: str, number: int, log_path: str, extra_args=()):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock = ours
        with open(log_path, "ab") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "luofs.kernel", "--root", root,
                 "--control-fd", str(theirs.fileno()), "--number", str(number), *extra_args],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                stdout=log_file, stderr=log_file)
        theirs.close()
        self.number = number

    def wait_ready(self, timeout: float) -> dict:
        self.sock.settimeout(timeout)
        try:
            message, _fds = wire.recv(self.sock)
        except socket.timeout:
            raise RuntimeError(f"kernel did not serve within {timeout:.0f} s") from None
        finally:
            self.sock.settimeout(None)
        if message is None or message.get("event") != "ready":
            error = (message or {}).get("error", "it exited before serving")
            raise RuntimeError(f"kernel #{self.number} failed to start: {error}")
        return message

    def ask(self, message: dict, timeout: float = 30.0) -> dict:
        self.sock.settimeout(timeout)
        try:
            wire.send(self.sock, message)
            reply, fds = wire.recv(self.sock)
        finally:
            self.sock.settimeout(None)
        for fd in fds:
            os.close(fd)
        return reply or {"ok": False, "error": "kernel went away"}

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.ask({"op": "shutdown"}, timeout=KERNEL_STOP_TIMEOUT)
                self.proc.wait(KERNEL_STOP_TIMEOUT)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.sock.close()


class Machine:
    def __init__(self, root: str, state: str, kernel_args: list[str]):
        self.root = os.path.realpath(root)
        self.state = state
        self.kernel_args = kernel_args
        self.kernel: KernelProcess | None = None
        self.started = time.time()
        self.running = True
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(wire.control_address(root))  # EADDRINUSE: already served
        self.listener.listen(16)

    @property
    def kernel_log(self) -> str:
        return os.path.join(self.state, "kernel.log")

    def boot(self) -> None:
        self.kernel = KernelProcess(self.root, 0, self.kernel_log, self.kernel_args)
        try:
            self.kernel.wait_ready(KERNEL_START_TIMEOUT)
        except Exception:
            self.kernel.proc.kill()
            self.kernel.proc.wait()
            detach_mount(self.root)
            raise

    def serve(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ, "listener")
        sel.register(self.kernel.sock, selectors.EVENT_READ, "kernel")
        while self.running:
            for key, _ in sel.select(timeout=1.0):
                if key.data == "listener":
                    conn, _ = self.listener.accept()
                    with conn:
                        self.handle(conn)
                elif key.data == "kernel":
                    message, fds = wire.recv(self.kernel.sock)
                    for fd in fds:
                        os.close(fd)
                    if message is None:
                        sel.unregister(self.kernel.sock)
                        self.kernel_died()
        self.shutdown()

    def kernel_died(self) -> None:
        code = self.kernel.proc.wait()
        log.error("kernel #%d exited unexpectedly (status %s); see %s",
                  self.kernel.number, code, self.kernel_log)
        detach_mount(self.root)
        self.running = False

    def handle(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        try:
            message, fds = wire.recv(conn)
        except OSError:
            return
        for fd in fds:
            os.close(fd)
        if message is None:
            return
        op = message.get("op")
        if op == "status":
            reply = self.kernel.ask({"op": "status"})
            reply["machine"] = {"pid": os.getpid(), "root": self.root, "state_dir": self.state,
                                "uptime_s": round(time.time() - self.started, 3),
                                "kernel_log": self.kernel_log}
        elif op == "shutdown":
            self.running = False
            if self.kernel is not None:
                self.kernel.stop()
                self.kernel = None
            detach_mount(self.root)
            reply = {"ok": True}
        else:
            reply = {"ok": False, "error": f"unknown op {op!r}"}
        try:
            wire.send(conn, reply)
        except OSError:
            pass

    def shutdown(self) -> None:
        self.listener.close()  # from now on `luofs` sees no machine here
        if self.kernel is not None:
            self.kernel.stop()
            self.kernel = None
        detach_mount(self.root)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="luofs-machine", description=__doc__)
    p.add_argument("--root", required=True)
    p.add_argument("--ready-fd", type=int, required=True)
    p.add_argument("--state-dir", required=True)
    p.add_argument("kernel_args", nargs="*")
    args = p.parse_args(argv)
    logging.basicConfig(level=os.environ.get("LUOFS_LOG", "INFO").upper(), stream=sys.stderr,
                        format=f"%(asctime)s machine[{os.getpid()}] %(levelname)s %(message)s")
    ready = os.fdopen(args.ready_fd, "w")
    try:
        machine = Machine(args.root, args.state_dir, args.kernel_args)
    except OSError as e:
        ready.write(f"error: {args.root} is already served by another luofs machine ({e})\n")
        return 1
    signal.signal(signal.SIGTERM, lambda *_: setattr(machine, "running", False))
    try:
        machine.boot()
    except Exception as e:
        ready.write(f"error: {e} (log: {machine.kernel_log})\n")
        return 1
    ready.write(f"ready {os.getpid()}\n")
    ready.close()
    machine.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())

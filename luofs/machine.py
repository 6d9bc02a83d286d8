"""The machine process: what survives every live update.

It owns the emulated physical memory (a sparse memfd), the control socket the
`luofs` command talks to, and each kernel process. A live update starts the next
kernel ahead of time (it imports and waits, as `kexec -l` loads an image), then
asks the running kernel to freeze and hand over, and passes what it handed over —
the RAM, the KHO root address and the preserved files themselves — to the next.
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

from devices.host import DeviceHost
from devices.ram import RamView
from devices.spec import parse_spec
from devices.transport import start_server

from . import limits, wire
from .mounts import detach_mount

log = logging.getLogger("luofs.machine")

KERNEL_START_TIMEOUT = 60.0
KERNEL_STOP_TIMEOUT = 10.0
DEFAULT_MEMORY = 1 << 30


class KernelError(RuntimeError):
    pass


class KernelPanic(KernelError):
    """The kernel refused the hand-over: retrying with the same data cannot help."""


RELOAD_RETRIES = 2  # a kernel that dies while reloading is replaced, the hand-over kept


class KernelProcess:
    """One kernel process and the machine's end of its control socket."""

    def __init__(self, root: str, number: int, log_path: str, extra_args=(), on_crash=None,
                 devices: DeviceHost | None = None):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock = ours
        self.number = number
        self.on_crash = on_crash
        self.args = list(extra_args)
        self.loaded = False
        passed = [theirs]
        device_args = []
        if devices is not None:  # the kernel's drivers talk to the hardware on their own line
            host_end, kernel_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            passed.append(kernel_end)
            device_args = ["--device-fd", str(kernel_end.fileno())]
        with open(log_path, "ab") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "luofs.kernel", "--root", root,
                 "--control-fd", str(theirs.fileno()), *device_args, *extra_args],
                pass_fds=[s.fileno() for s in passed], stdin=subprocess.DEVNULL,
                stdout=log_file, stderr=log_file)
        for s in passed:
            s.close()
        if devices is not None:
            start_server(devices, host_end)  # ends when this kernel's end closes

    def recv(self) -> tuple[dict | None, list[int]]:
        """The next message that is not a crash notice (those go to on_crash)."""
        while True:
            message, fds = wire.recv(self.sock)
            if message is None or message.get("event") != "crashing":
                return message, fds
            log.warning("kernel #%d is crashing at fault point %s", self.number, message["point"])
            if self.on_crash is not None:
                self.on_crash(message["point"])

    def wait_loaded(self, timeout: float) -> None:
        if not self.loaded:
            self.expect("loaded", timeout)
            self.loaded = True

    def expect(self, event: str, timeout: float) -> dict:
        self.sock.settimeout(timeout)
        try:
            message, fds = self.recv()
        except socket.timeout:
            raise KernelError(f"kernel did not answer within {timeout:.0f} s") from None
        except ConnectionError:  # it died with a message of ours unread
            message, fds = None, []
        finally:
            self.sock.settimeout(None)
        for fd in fds:
            os.close(fd)
        if message is None:
            raise KernelError(f"kernel #{self.number} died (status {self.proc.wait()})")
        if message.get("event") == "panic":
            raise KernelPanic(f"kernel panic: {message['error']}")
        if message.get("event") != event:
            raise KernelError(message.get("error") or f"unexpected message {message}")
        return message

    def ask(self, message: dict, timeout: float = 60.0) -> tuple[dict, list[int]]:
        self.sock.settimeout(timeout)
        try:
            wire.send(self.sock, message)
            reply, fds = self.recv()
        finally:
            self.sock.settimeout(None)
        return reply or {"ok": False, "gone": True, "error": f"kernel #{self.number} died"}, fds

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.sock.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                _reply, fds = self.ask({"op": "shutdown"}, timeout=KERNEL_STOP_TIMEOUT)
                for fd in fds:
                    os.close(fd)
                self.proc.wait(KERNEL_STOP_TIMEOUT)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()


class Machine:
    def __init__(self, root: str, state: str, memory: int, kernel_args: list[str],
                 devices: str = "none"):
        self.root = os.path.realpath(root)
        self.state = state
        self.kernel_args = kernel_args
        self.kernel: KernelProcess | None = None
        self.standby: KernelProcess | None = None
        self.panic: str | None = None
        self.started = time.time()
        self.running = True
        self.kexecs = 0
        self.last_blackout_ms: float | None = None
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(wire.control_address(root))  # EADDRINUSE: already served
        self.listener.listen(16)
        self.ram = os.memfd_create("luofs-ram", os.MFD_CLOEXEC)
        os.ftruncate(self.ram, memory)
        self.memory = memory
        topology = parse_spec(devices)
        # Devices live here, so DMA and interrupts go on while no kernel runs.
        self.devices = DeviceHost(RamView(os.dup(self.ram)), topology) if topology.devices else None

    @property
    def kernel_log(self) -> str:
        return os.path.join(self.state, "kernel.log")

    def _disarm(self, point: str) -> None:
        """A crash fault fires once per instance: later kernels must come up."""
        args, kept = self.kernel_args, []
        i = 0
        while i < len(args):
            if args[i] == "--fault" and args[i + 1].split(":")[0] == point:
                i += 2
                continue
            kept.append(args[i])
            i += 1
        self.kernel_args = kept
        os.environ["LUOFS_FAULT"] = ",".join(
            f for f in os.environ.get("LUOFS_FAULT", "").split(",") if f and f.split(":")[0] != point)

    def _load(self, number: int) -> KernelProcess:
        """The next kernel, imported and waiting: the standby one if it still fits."""
        kernel, self.standby = self.standby, None
        if kernel is None or kernel.args != self.kernel_args or kernel.proc.poll() is not None:
            if kernel is not None:
                kernel.kill()
            kernel = self._spawn()
        kernel.number = number
        try:
            kernel.wait_loaded(KERNEL_START_TIMEOUT)
        except BaseException:
            kernel.kill()
            raise
        return kernel

    def _spawn(self) -> KernelProcess:
        return KernelProcess(self.root, -1, self.kernel_log, self.kernel_args, self._disarm,
                             self.devices)

    def _prepare_standby(self) -> None:
        """Start importing the next kernel now (as `kexec -l` loads an image ahead of
        time), so that `luofs kexec` does not wait for Python to start."""
        if self.standby is None and self.running:
            self.standby = self._spawn()

    def _send_boot(self, kernel: KernelProcess, boot: dict, fds=(), hold: bool = False) -> bool:
        """The boot message, with RAM and the handed-over files; `hold`: build everything
        but wait for a "mount" before mounting. False if the kernel is gone."""
        try:
            wire.send(kernel.sock, {"op": "boot", **boot, "hold_mount": hold}, [self.ram, *fds])
        except OSError as e:
            log.warning("kernel #%d cannot take its boot message: %s", kernel.number, e)
            return False
        return True

    def _start(self, kernel: KernelProcess, boot: dict, fds=(), sent: bool = False) -> dict:
        """Boot `kernel` (unless its boot and mount went ahead, `sent`) until it serves."""
        try:
            if not sent and not self._send_boot(kernel, boot, fds):
                raise KernelError(f"kernel #{kernel.number} is gone")
            return kernel.expect("ready", KERNEL_START_TIMEOUT)
        except BaseException:
            kernel.kill()
            detach_mount(self.root)
            raise

    def cold_boot(self) -> None:
        """Kernel #0 on fresh memory: nothing is carried."""
        if self.devices is not None:
            self.devices.reset_all()  # before RAM is cleared under their DMA
        os.ftruncate(self.ram, 0)  # forget every page of a previous life
        os.ftruncate(self.ram, self.memory)
        self.kernel = self._load(0)
        self._start(self.kernel, {})
        self.panic = None
        self._prepare_standby()

    def kexec(self) -> dict:
        if self.kernel is None:
            return {"ok": False, "error": f"no kernel is running ({self.panic or 'stopped'}); "
                                          "`luofs boot` starts a fresh one"}
        old = self.kernel
        nxt = self._load(old.number + 1)  # loaded before the freeze: not in the blackout
        written_before = self._records_written()
        t_freeze = time.perf_counter()
        reply, fds = old.ask({"op": "reboot"})
        if not reply.get("ok"):
            for fd in fds:
                os.close(fd)
            nxt.kill()
            if reply.get("gone"):  # it died mid-freeze: nothing was handed over
                self.kernel_died()
                return {"ok": False, "error": f"{reply['error']} during the freeze; "
                                              f"preserved state is lost ({self.panic})"}
            return {"ok": False, "errno": reply.get("errno"), "error": reply.get("error")}
        t_reply = time.perf_counter()
        boot = {"root_phys": reply["root_phys"], "root_size": reply["root_size"],
                "number": nxt.number, "parked": reply.get("parked", []),
                "keepers": reply.get("keepers", 0), "keeper_pids": reply.get("keeper_pids", [])}
        # The next kernel rebuilds from the hand-over while the old one unmounts, and mounts
        # once the mount point is free. Not with devices: their drivers must see the old
        # kernel stop before the next one attaches.
        sent = self.devices is None and self._send_boot(nxt, boot, fds, hold=True)
        try:
            old.expect("unmounted", KERNEL_STOP_TIMEOUT)
        except KernelError as e:
            log.warning("old kernel after the hand-over: %s; detaching its mount", e)
            detach_mount(self.root)
        if sent:  # the mount point is free: the next kernel need not wait for the old exit
            try:
                wire.send(nxt.sock, {"op": "mount"})
            except OSError:
                pass  # what it said before it went (a panic, say) is read in _start
        else:
            old.kill()
        if self.devices is not None:  # interrupts latch until the next drivers attach
            self.devices.kexec(reply.get("devices", []))
        t_handed = time.perf_counter()
        self.kernel = None
        try:
            # The hand-over is complete: the machine keeps the files until a kernel has
            # them, so a next kernel that dies while reloading is simply replaced.
            for attempt in range(RELOAD_RETRIES + 1):
                try:
                    ready = self._start(nxt, boot, fds, sent=sent)
                    break
                except KernelPanic:
                    raise
                except KernelError as e:
                    if attempt == RELOAD_RETRIES:
                        raise
                    log.error("%s while reloading; starting another kernel", e)
                    nxt = self._load(nxt.number)
                    sent = False
        except KernelError as e:
            self.panic = str(e)
            log.error("kernel #%d did not come up: %s", nxt.number, e)
            return {"ok": False, "error": str(e)}
        finally:
            for fd in fds:
                os.close(fd)
            old.kill()  # (when the next kernel went ahead, its exit did not hold anything up)
        self.kernel = nxt
        t_ready = time.perf_counter()
        written_after = self._records_written()
        self._prepare_standby()
        self.kexecs += 1
        self.last_blackout_ms = round((t_ready - t_freeze) * 1000, 3)
        log.info("kexec to #%d: hand-over %.1f ms, old kernel unmounted %.1f ms, next kernel "
                 "serving %.1f ms; blackout %.1f ms", nxt.number, (t_reply - t_freeze) * 1000,
                 (t_handed - t_reply) * 1000, (t_ready - t_handed) * 1000, self.last_blackout_ms)
        if ready.get("lost"):
            log.error("kexec to #%d lost files with their keepers: %s", nxt.number, ready["lost"])
        return {"ok": True, "liveupdate_number": ready["liveupdate_number"],
                "lost": ready.get("lost"),
                "sessions": reply["sessions"], "files": reply["files"],
                "dropped": reply.get("dropped", 0),
                "blackout_ms": self.last_blackout_ms,
                "freeze_ms": round((t_handed - t_freeze) * 1000, 3),
                "start_ms": round((t_ready - t_handed) * 1000, 3),
                # what each DMA engine wrote while no kernel served it
                "blackout_records": {label: written_after[label] - n
                                     for label, n in written_before.items()}}

    def _records_written(self) -> dict[str, int]:
        if self.devices is None:
            return {}
        return {d["label"]: d["records_written"] for d in self.devices.status()
                if d.get("kind") == "dma"}

    def serve(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ, "listener")
        watched = None
        while self.running:
            if self.kernel is not None and watched is not self.kernel:
                if watched is not None:
                    sel.unregister(watched.sock)
                sel.register(self.kernel.sock, selectors.EVENT_READ, "kernel")
                watched = self.kernel
            for key, _ in sel.select(timeout=1.0):
                if key.data == "listener":
                    conn, _ = self.listener.accept()
                    with conn:
                        self.handle(conn)
                elif key.data == "kernel" and watched is self.kernel:
                    message, fds = self.kernel.recv()
                    for fd in fds:
                        os.close(fd)
                    if message is None:
                        sel.unregister(watched.sock)
                        watched = None
                        self.kernel_died()
        self.shutdown()

    def kernel_died(self) -> None:
        if self.devices is not None:
            self.devices.kernel_gone()
        code = self.kernel.proc.wait()
        self.panic = (f"kernel #{self.kernel.number} died (status {code}); "
                      f"see {self.kernel_log}")
        log.error("%s", self.panic)
        self.kernel.sock.close()
        self.kernel = None
        detach_mount(self.root)

    def status(self) -> dict:
        reply = {"ok": True}
        if self.kernel is not None:
            kreply, fds = self.kernel.ask({"op": "status"})
            for fd in fds:
                os.close(fd)
            reply["kernel"] = kreply.get("kernel")
        reply["machine"] = {"pid": os.getpid(), "root": self.root, "state_dir": self.state,
                            "uptime_s": round(time.time() - self.started, 3),
                            "kernel_log": self.kernel_log, "memory": self.memory,
                            "devices": self.devices.status() if self.devices else [],
                            "kexecs": self.kexecs, "last_blackout_ms": self.last_blackout_ms,
                            "panic": self.panic}
        return reply

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
        try:
            if op == "status":
                reply = self.status()
            elif op == "kho-dump":
                if self.kernel is None:
                    raise KernelError(f"no kernel is running ({self.panic or 'stopped'})")
                reply, fds = self.kernel.ask(message)
                for fd in fds:
                    os.close(fd)
            elif op == "kexec":
                reply = self.kexec()
            elif op == "cold-boot":
                if self.kernel is not None:
                    self.kernel.stop()
                    self.kernel = None
                detach_mount(self.root)
                self.cold_boot()
                reply = {"ok": True}
            elif op == "shutdown":
                self.running = False
                self._drop_standby()
                if self.kernel is not None:
                    self.kernel.stop()
                    self.kernel = None
                detach_mount(self.root)
                reply = {"ok": True}
            else:
                reply = {"ok": False, "error": f"unknown op {op!r}"}
        except KernelError as e:
            reply = {"ok": False, "error": str(e)}
        except OSError as e:  # e.g. a kernel that stopped answering: the machine stays up
            log.error("%s: %s", op, e)
            reply = {"ok": False, "error": f"{op}: {e}"}
        try:
            wire.send(conn, reply)
        except OSError:
            pass

    def _drop_standby(self) -> None:
        if self.standby is not None:
            self.standby.kill()
            self.standby = None

    def shutdown(self) -> None:
        self.listener.close()  # from now on `luofs` sees no machine here
        self._drop_standby()
        if self.kernel is not None:
            self.kernel.stop()
            self.kernel = None
        detach_mount(self.root)
        if self.devices is not None:
            self.devices.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="luofs-machine", description=__doc__)
    p.add_argument("--root", required=True)
    p.add_argument("--ready-fd", type=int, required=True)
    p.add_argument("--state-dir", required=True)
    p.add_argument("--memory", type=int, default=DEFAULT_MEMORY)
    p.add_argument("--devices", default="none")
    p.add_argument("kernel_args", nargs="*")
    args = p.parse_args(argv)
    logging.basicConfig(level=os.environ.get("LUOFS_LOG", "INFO").upper(), stream=sys.stderr,
                        format=f"%(asctime)s machine[{os.getpid()}] %(levelname)s %(message)s")
    limits.raise_fd_limit()
    ready = os.fdopen(args.ready_fd, "w")
    try:
        machine = Machine(args.root, args.state_dir, args.memory, args.kernel_args, args.devices)
    except OSError as e:
        ready.write(f"error: {args.root} is already served by another luofs machine ({e})\n")
        return 1
    signal.signal(signal.SIGTERM, lambda *_: setattr(machine, "running", False))
    try:
        machine.cold_boot()
    except KernelError as e:
        ready.write(f"error: {e} (log: {machine.kernel_log})\n")
        return 1
    ready.write(f"ready {os.getpid()}\n")
    ready.close()
    machine.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())

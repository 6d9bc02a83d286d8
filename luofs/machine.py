"""The machine process: what survives every live update.

It owns the emulated physical memory (a sparse memfd), the control socket the
`luofs` command talks to (luofs/control_server.py: who may, and for how long), and
each kernel process (luofs/kernel_process.py). A live update (luofs/machine_kexec.py)
starts the next kernel ahead of time (it imports and waits, as `kexec -l` loads an
image), then asks the running kernel to freeze and hand over, and passes what it
handed over — the RAM, the KHO root address and the preserved files themselves — to
the next.
It never imports pyfuse3 or trio: it must stay small and always responsive.

Each live update is traced (luofs/trace.py, luofs/machine_trace.py): the machine
records what it drives; a client that watches gets Progress before the reply.

Unhappy paths: a refused freeze leaves the old kernel serving (Error with its errno);
a kernel that dies or panics leaves the machine up without a kernel (`panic`, shown
by status; `luofs boot` then cold-boots); a next kernel that dies while reloading is
replaced (machine_kexec.py); any failure of one client request is that request's Error.
"""

from __future__ import annotations

import argparse
import logging
import os
import selectors
import signal
import socket
import sys
import time

from devices.host import DeviceHost
from devices.ram import RamView
from devices.spec import parse_spec

from . import limits, machine_kexec, participants, protocol, spawn, userspace
from .control import stopped_note
from .control_server import CLIENT_TIMEOUT, ControlServer
from .kernel_process import KernelError, KernelProcess
from .kexec_image import LoadedImage
from .machine_trace import UpdateTrace
from .mounts import detach_mount
from .protocol import (RAM, ColdBoot, Error, HandOver, KexecLoad, KexecRequest, KhoDumpReply,
                       KhoDumpRequest, MachineStatus, Ok, Shutdown, StatusRequest)
from .protocol_kernel import KernelBoot, KernelStatus, MachineConfig, Ready, Started
from .protocol_vmm import KvmRegister, KvmRetrieve, KvmVm, Spawn

log = logging.getLogger("luofs.machine")

# What the running kernel answers to each request the machine passes on to it.
_ANSWERS = {KhoDumpRequest: KhoDumpReply, KvmRegister: Ok, KvmRetrieve: KvmVm}

KERNEL_START_TIMEOUT = 60.0
KERNEL_STATUS_TIMEOUT = 5.0


class Machine:
    def __init__(self, config: MachineConfig, state: str):
        self.root = os.path.realpath(config.root)
        # The root is resolved once and held: every kernel mounts on this very directory,
        # whatever is renamed or swapped for a symlink at its path meanwhile.
        self.root_fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW
                               | os.O_CLOEXEC)
        self.state = state
        self.kernel_config = config.kernel  # a crash fault that fired is dropped from it
        self.kernel: KernelProcess | None = None
        self.standby: KernelProcess | None = None
        self.panic: str | None = None
        self.started = time.time()
        self.running = True
        self.resuming: participants.Resuming | None = None  # an update's last step
        self.reply_gate = None  # the reply to the request being served waits for it
        self.kexecs = 0
        self.last_blackout_ms: float | None = None
        self.sel = selectors.DefaultSelector()
        self.control = ControlServer(state, self.sel)  # EADDRINUSE: already served
        self.client = None  # the connection whose request is being answered
        self.updates = UpdateTrace(state)
        self.ram = os.memfd_create("luofs-ram", os.MFD_CLOEXEC)
        os.ftruncate(self.ram, config.memory)
        self.memory = config.memory
        topology = parse_spec(config.devices)
        # Devices live here, so DMA and interrupts go on while no kernel runs.
        self.devices = DeviceHost(RamView(os.dup(self.ram)), topology) if topology.devices else None
        self.image = LoadedImage()  # what kexec_file_load (`luofs kexec --load`) loaded
        self.userspace = userspace.Userspace(self.root, state, config.init, dict(config.init_env))
        # The next kernel's, made ahead of time when a program asks to start there (a
        # VMM's successor): luofs/spawn.py; it becomes the current one at the kexec.
        self.next_userspace: userspace.Userspace | None = None
        self.old_userspace: userspace.Userspace | None = None  # ended, being collected
        self.handlers = {StatusRequest: self.status, KhoDumpRequest: self.to_kernel,
                         KexecRequest: lambda r: userspace.kexec(self, r),
                         KexecLoad: lambda r: userspace.kexec_load(self, r),
                         ColdBoot: self.restart, Shutdown: self.stop,
                         Spawn: lambda r, fds: spawn.serve(self, r, fds),
                         KvmRegister: self.to_kernel, KvmRetrieve: self.to_kernel}

    @property
    def kernel_log(self) -> str:
        return os.path.join(self.state, "kernel.log")

    def _disarm(self, point: str) -> None:
        """A crash fault fires once per instance: later kernels must come up."""
        self.kernel_config = self.kernel_config.without_fault(point)

    def _load(self, number: int) -> KernelProcess:
        """The next kernel, imported and waiting: the standby one if it is still alive."""
        kernel, self.standby = self.standby, None
        if kernel is None or kernel.proc.poll() is not None:
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
        return KernelProcess(self.root, self.root_fd, -1, self.kernel_log, self._disarm,
                             self.devices, self.updates.directory)

    def _prepare_standby(self) -> None:
        """Start importing the next kernel now (as `kexec -l` loads an image ahead of
        time), so that `luofs kexec` does not wait for Python to start."""
        if self.standby is None and self.running:
            self.standby = self._spawn()

    def _send_boot(self, kernel: KernelProcess, handover: HandOver | None = None,
                   fds: dict | None = None, hold: bool = False) -> bool:
        """The boot message, with RAM and the handed-over files; `hold`: build everything
        but wait for a MountRoot before mounting. False if the kernel is gone."""
        boot = KernelBoot(self.kernel_config, handover, hold)
        try:
            protocol.send(kernel.sock, boot, {RAM: [self.ram], **(fds or {})})
        except OSError as e:
            log.warning("kernel #%d cannot take its boot message: %s", kernel.number, e)
            return False
        return True

    def _start(self, kernel: KernelProcess, handover: HandOver | None = None,
               fds: dict | None = None, sent: bool = False) -> Ready:
        """Boot `kernel` (unless its boot and mount went ahead, `sent`) until it serves."""
        try:
            if not sent and not self._send_boot(kernel, handover, fds):
                raise KernelError(f"kernel #{kernel.number} is gone")
            return kernel.expect(Ready, KERNEL_START_TIMEOUT)
        except BaseException:
            kernel.kill()
            detach_mount(self.root)
            raise

    def cold_boot(self) -> None:
        """Kernel #0 on fresh memory: nothing is carried."""
        userspace.stop_all(self, "cold boot")
        if self.devices is not None:
            self.devices.reset_all()  # before RAM is cleared under their DMA
        os.ftruncate(self.ram, 0)  # forget every page of a previous life
        os.ftruncate(self.ram, self.memory)
        self.kernel = self._load(0)
        self._start(self.kernel)
        self.panic = None
        self.userspace.start(0, self.kernel_config.debugfs)
        self._prepare_standby()

    def kexec(self, _request=None):
        return machine_kexec.kexec(self)

    def serve(self) -> None:
        watched = None
        while self.running:
            watched = self._watch(watched)
            if self.resuming is not None and not self.resuming.watched:
                # Here, after _watch: a gone kernel's socket may have held its fd number.
                self.sel.register(self.resuming, selectors.EVENT_READ, "resumed")
                self.resuming.watched = True
            for key, _ in self.sel.select(timeout=self.control.timeout(1.0)):
                if key.data == "resumed":
                    self._updated()
                    break
                if key.data is self.control:
                    request = self.control.ready(key.fileobj)
                    if request is not None:
                        conn, message, fds = request
                        self.client = conn  # (a kexec's progress goes to it)
                        try:
                            reply, reply_fds = self.respond(message, fds)
                        finally:
                            self.client = None
                        gate, self.reply_gate = self.reply_gate, None
                        self.control.reply(conn, reply, reply_fds, gate)
                        break  # the kernel may have changed (its fd freed): watch anew first
                elif key.data == "kernel" and watched is self.kernel:
                    if self._kernel_spoke() is None:
                        self.kernel_died()
                        break
            self.control.expire()  # after the reads: a request that came in time is served
        self.shutdown()

    def _updated(self) -> None:
        """The successors have taken over: the standby kernel starts loading, the old
        userspace's end (the old QEMU's teardown, say) is collected, kexec answers."""
        self.sel.unregister(self.resuming)
        resuming, self.resuming = self.resuming, None
        self._prepare_standby()
        userspace.collect_old(self)
        self.updates.end(self.kernel)  # before kexec's answer: `luofs trace` finds it all
        resuming.close()

    def _watch(self, watched: KernelProcess | None) -> KernelProcess | None:
        """Watch the running kernel's socket, and no other: a socket of a kernel that is
        gone must leave the selector before its fd number is used again."""
        if watched is self.kernel:
            return watched
        if watched is not None:
            self.sel.unregister(watched.sock)
        if self.kernel is not None:
            self.sel.register(self.kernel.sock, selectors.EVENT_READ, "kernel")
        return self.kernel

    def _kernel_spoke(self):
        """What the running kernel said unasked (None: it is gone); anything but a crash
        notice is out of turn and only logged."""
        try:
            message, fds = self.kernel.recv()
        except protocol.ProtocolError as e:
            log.error("kernel #%d: %s", self.kernel.number, e)
            return True
        except ConnectionError:
            return None
        protocol.close_fds(fds)
        if message is not None and self.kernel.owed:
            self.kernel.owed -= 1
            log.warning("kernel #%d answered late with %s", self.kernel.number, message.TAG)
        elif message is not None:
            log.warning("kernel #%d said %s out of turn", self.kernel.number, message.TAG)
        return message

    def kernel_died(self) -> None:
        if self.devices is not None:
            self.devices.kernel_gone()
        code = self.kernel.proc.wait()
        self.panic = (f"kernel #{self.kernel.number} died (status {code}); "
                      f"see {self.kernel_log}")
        log.error("%s", self.panic)
        userspace.stop_all(self, "kernel panic")
        self.kernel.sock.close()
        self.kernel = None
        detach_mount(self.root)

    def status(self, _request=None) -> MachineStatus:
        kernel, problem = None, None
        stopped = self.kernel is not None and stopped_note(self.kernel.proc.pid)
        if stopped:  # asking would only wait for the timeout
            problem = (f"kernel #{self.kernel.number} (pid {self.kernel.proc.pid}) "
                       f"serves nothing{stopped}")
        elif self.kernel is not None:
            try:
                reply, fds = self.kernel.ask(StatusRequest(), timeout=KERNEL_STATUS_TIMEOUT)
                protocol.close_fds(fds)
                if isinstance(reply, KernelStatus):
                    kernel = reply.kernel
                else:
                    problem = f"kernel #{self.kernel.number} answered status with " + (
                        reply.TAG if reply is not None else "nothing: it died")
            except KernelError as e:
                problem = str(e)
        return MachineStatus(kernel=kernel, machine={
            "pid": os.getpid(), "root": self.root, "state_dir": self.state,
            "uptime_s": round(time.time() - self.started, 3),
            "kernel_log": self.kernel_log, "memory": self.memory,
            "devices": self.devices.status() if self.devices else [],
            "kexecs": self.kexecs, "last_blackout_ms": self.last_blackout_ms,
            "panic": self.panic, "kernel_problem": problem,
            "userspace": self.userspace.status(), "next_kernel": self.image.status(),
            "next_userspace": self.next_userspace.status() if self.next_userspace else None})

    def to_kernel(self, request, fds: dict | None = None):
        """A request the running kernel answers (kho-dump; a VMM's to the kvm subsystem):
        (its reply, which must be the request's or Error, and the reply's fds)."""
        if self.kernel is None:
            raise KernelError(f"no kernel is running ({self.panic or 'stopped'})")
        reply, reply_fds = self.kernel.ask(request, fds=fds)
        if not isinstance(reply, (_ANSWERS[type(request)], Error)):
            protocol.close_fds(reply_fds)
            raise KernelError(f"kernel #{self.kernel.number} answered {request.TAG} with "
                              f"{reply.TAG if reply is not None else 'nothing: it died'}")
        return reply, reply_fds

    def restart(self, _request=None) -> Ok:
        """Cold boot: a fresh kernel #0 on fresh memory (after a panic)."""
        self._stop_kernel()
        self.cold_boot()
        return Ok()

    def stop(self, _request=None) -> Ok:
        self.running = False
        self._stop_all()
        return Ok()

    def _stop_kernel(self) -> None:
        if self.kernel is not None:
            self.kernel.stop()
            self.kernel = None
        detach_mount(self.root)

    def _stop_all(self) -> None:
        """The userspaces, the standby kernel, the running one and its mount."""
        if self.resuming is not None:  # (its thread ends with the successors' sockets)
            self.resuming.gate.set()
        userspace.stop_all(self, "shutdown")
        self._drop_standby()
        self._stop_kernel()

    def respond(self, request, fds: dict | None = None) -> tuple:
        """(reply, its fds) to one client request: an Error for anything that fails;
        nothing a client sends ends the machine. A request's fds are closed here: a
        handler passes on copies (to a kernel, to a program it starts)."""
        handler = self.handlers.get(type(request))
        reply_fds = {}
        try:
            if handler is None:
                raise KernelError(f"{request.TAG} is not a request the machine takes")
            reply = handler(request, fds) if request.FD_GROUPS else handler(request)
            if isinstance(reply, tuple):
                reply, reply_fds = reply
        except KernelError as e:
            reply = Error(str(e))
        except OSError as e:  # e.g. a kernel that stopped answering: the machine stays up
            log.error("%s: %s", request.TAG, e)
            reply = Error(f"{request.TAG}: {e}")
        except Exception as e:  # a bug must cost one request, never the preserved state
            log.exception("%s failed", request.TAG)
            reply = Error(f"{request.TAG}: internal error: {e!r}")
        finally:
            protocol.close_fds(fds or {})
        return reply, reply_fds

    def _drop_standby(self) -> None:
        if self.standby is not None:
            self.standby.kill()
            self.standby = None

    def shutdown(self) -> None:
        self.control.close()  # from now on `luofs` sees no machine here
        participants.shutdown(self.state)  # (told first: they end in order, then the rest)
        self._stop_all()
        if self.devices is not None:
            self.devices.close()


def _configure(sock: socket.socket) -> MachineConfig:
    """The CLI's MachineConfig, from the start-up socket."""
    sock.settimeout(CLIENT_TIMEOUT)
    config, fds = protocol.recv(sock)
    protocol.close_fds(fds)
    if not isinstance(config, MachineConfig):
        raise protocol.ProtocolError(f"expected a machine-config, got {config!r}")
    return config


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="luofs-machine", description=__doc__)
    p.add_argument("--config-fd", type=int, required=True,
                   help="a socket on which the CLI sends a MachineConfig, answered by Started")
    p.add_argument("--state-dir", required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=os.environ.get("LUOFS_LOG", "INFO").upper(), stream=sys.stderr,
                        format=f"%(asctime)s machine[{os.getpid()}] %(levelname)s %(message)s")
    limits.raise_fd_limit()
    with socket.socket(fileno=args.config_fd) as starter:
        try:
            config = _configure(starter)
        except (OSError, protocol.ProtocolError) as e:
            log.error("no usable configuration: %s", e)
            return 1
        try:
            machine = Machine(config, args.state_dir)
        except OSError as e:
            protocol.send(starter, Error(f"{config.root} is already served by another luofs "
                                         f"machine ({e})"))
            return 1
        signal.signal(signal.SIGTERM, lambda *_: setattr(machine, "running", False))
        try:
            machine.cold_boot()
        except KernelError as e:
            protocol.send(starter, Error(f"{e} (log: {machine.kernel_log})"))
            return 1
        protocol.send(starter, Started(os.getpid()))
    machine.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())

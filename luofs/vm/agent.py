"""The VMM of one luofs VM: it keeps a guest running through every live update.

It lives in the running kernel's userspace (started there by the machine:
luofs/spawn.py). Guest RAM is a memfd that QEMU maps shared; how RAM and saved
state cross an update is the carrier's business (carry.py: a LUO session under
mainline, the kernel's kvm subsystem under the RFC profiles). The VMM starts its
successor — the next VMM, imported and waiting — in the next kernel's userspace,
which the machine makes ahead of time for it, as the next kernel is loaded ahead
of time (successor.py). Who asks it to prepare: the machine under mainline (it
registers as an update participant, luofs/participants.py), the kvm subsystem
under the RFCs (on the socket it registered with).

    prepare  wait until the successor has loaded (else EAGAIN: not in the pause);
             stop the guest; save vCPU and device state with x-ignore-shared (RAM
             is not sent) into a memfd; the carrier takes it; tell the successor
             when the guest stopped
    cancel   the update was refused: resume the guest; tell the successor
    after    this VMM stops with its userspace at the freeze (frozen, its QEMU with
             it: the RAM and state are the kernel's by then) and is killed once the
             successor has resumed the guest, so the old QEMU's teardown is not in
             the pause; one that lives on (`luofs kexec --keep-userspace`) ends when
             its successor took over

Unhappy paths: QEMU dies (the VMM ends, unregisters and stands its successor
down); prepare fails (the guest is resumed and the update refused with the errno);
the successor dies (another is started, unless an update is under way).
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import select
import socket
import sys
import threading
import time

from .. import participants, protocol, spawn, wire
from ..protocol import Error, Ok
from ..protocol_participant import Cancel, Prepare
from ..protocol_vmm import StandDown, SuccessorLoaded, TookOver, Unsaved, VmSaved
from . import carry, qemu, vm_dir
from .qmp import QmpError

log = logging.getLogger("luofs.vm")

SAVE_TIMEOUT = 60.0
SUCCESSOR_WAIT = 20.0  # for the next VMM to finish loading, at prepare
FAULT_ENV = "LUOFS_VM_FAULT"  # "save[:ERRNO]": the VMM refuses to prepare (for tests)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def _fault(point: str) -> None:
    armed, _, code = os.environ.get(FAULT_ENV, "").partition(":")
    if armed == point:
        value = getattr(errno, code, None) if code and not code.isdigit() else int(code or 5)
        raise OSError(value or errno.EIO, f"fault injected at the VMM's {point}")


class Agent:
    def __init__(self, root: str, machine: qemu.Machine, ram: int, generation: int, abi: str):
        self.root = root
        self.machine = machine
        self.ram = ram
        self.generation = generation
        self.abi = abi
        self.carrier = carry.carrier(abi, root)
        self.proc = None
        self.qmp = None
        self.successor: socket.socket | None = None
        self.successor_pid: int | None = None  # as the host sees it
        self.successor_ready = False
        self.listener: participants.Listener | None = None
        self.prepared: VmSaved | None = None
        self.last_update: dict | None = None
        self.error: str | None = None  # why it stopped, when it was not asked to
        self.handed_over = False  # the successor took over: the VM is its now
        self.running = False
        self._spawning: threading.Thread | None = None
        self.status_stale = False  # a successor started since the status was written
        self.log_file = open(os.path.join(machine.directory, "agent.log"), "ab")

    # -- the successor ----------------------------------------------------------------------
    def start_successor(self) -> threading.Thread:
        """The next VMM, in the next kernel's userspace; without one an update is refused.
        Asked of the machine on a thread: the machine may be waiting for this VMM
        meanwhile (a kexec that asks it to prepare), and this request waits for it."""
        if self._spawning is None or not self._spawning.is_alive():
            self._spawning = threading.Thread(target=self._spawn_successor, daemon=True)
            self._spawning.start()
        return self._spawning

    def _spawn_successor(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv = [sys.executable, "-m", "luofs.vm.successor", "--root", self.root, "--name",
                self.machine.name, "--abi", self.abi, "--generation", str(self.generation + 1),
                "--peer-fd", "3"]
        try:
            spawned = spawn.spawn(self.root, argv, "next", [theirs.fileno()],
                                  self.log_file.fileno())
        except OSError as e:
            log.error("VM %s: cannot start the next VMM: %s", self.machine.name, e.strerror)
            ours.close()
            return
        finally:
            theirs.close()
        self.successor, self.successor_pid, self.successor_ready = ours, spawned.pid, False
        self.status_stale = True

    def wait_successor(self, timeout: float) -> None:
        if self.successor is not None and not self.successor_ready:
            self.successor.settimeout(timeout)
            try:
                self.on_successor()
            except OSError:
                pass
            finally:
                if self.successor is not None:
                    self.successor.settimeout(None)
        if not self.successor_ready:
            raise OSError(errno.EAGAIN, f"VM {self.machine.name}: its next VMM is not ready")

    def on_successor(self) -> None:
        """What the successor said: loaded, took over, or its end."""
        try:
            message, fds = protocol.recv(self.successor)
            protocol.close_fds(fds)
        except (protocol.ProtocolError, ConnectionError):
            message = None
        if isinstance(message, SuccessorLoaded):
            self.successor_ready = True
        elif isinstance(message, TookOver):  # this VMM lived on (--keep-userspace): end
            self.handed_over, self.running = True, False
        elif message is None:
            log.warning("VM %s: its next VMM ended", self.machine.name)
            self.successor.close()
            self.successor, self.successor_pid, self.successor_ready = None, None, False
            if self.prepared is None and self.running:
                self.start_successor()

    def tell_successor(self, message) -> None:
        if self.successor is not None:
            try:
                protocol.send(self.successor, message)
            except OSError:
                pass  # it ended: on_successor() will see

    # -- status ------------------------------------------------------------------------------
    def write_status(self, state: str, error: str | None = None) -> None:
        self.status_stale = False
        write_status(self.machine.directory, {
            "name": self.machine.name, "state": state, "error": error, "abi": self.abi,
            "generation": self.generation, "accel": self.machine.accel, "ram": self.machine.ram,
            "pid_ns": spawn.pid_namespace(), "agent_pid": os.getpid(),
            "qemu_pid": self.proc.pid if self.proc else None,
            "successor_pid": self.successor_pid, "serial_log": self.machine.serial_log,
            "serial_socket": self.machine.serial_socket, "last_update": self.last_update})

    # -- the update --------------------------------------------------------------------------
    def prepare(self) -> tuple[VmSaved, int]:
        """Stop and save: (when, the state memfd, which the caller closes)."""
        if self.prepared is not None:
            raise OSError(errno.EBUSY, f"VM {self.machine.name} is prepared already")
        self.wait_successor(SUCCESSOR_WAIT)  # before the guest stops: not in its pause
        _fault("save")
        t_stop = time.monotonic()
        self.qmp.execute("stop")
        state = os.memfd_create(f"luofs-vm-state:{self.machine.name}", os.MFD_CLOEXEC)
        try:
            self.qmp.execute("getfd", fds=[state], fdname="luofs-state")
            self.qmp.migrate("migrate", SAVE_TIMEOUT, uri="fd:luofs-state")
            t_saved = time.monotonic()
            self.carrier.saved(state)
        except BaseException:
            os.close(state)
            self.qmp.execute("cont")
            raise
        self.prepared = VmSaved(t_stop, t_saved, time.monotonic(), os.fstat(state).st_size,
                                self.listener.pid if self.listener else 0)
        self.tell_successor(self.prepared)
        return self.prepared, state

    def cancel(self) -> None:
        if self.prepared is None:
            return
        self.qmp.execute("cont")  # the guest first; the rest can be redone while it runs
        self.prepared = None
        self.carrier.cancelled(self.machine, self.ram, self.generation)
        self.tell_successor(Unsaved())
        if self.successor is None:
            self.start_successor()
        self.write_status("running")

    def handle(self, op: str) -> dict:
        """The machine's requests (luofs/participants.py; prepare and cancel: mainline)."""
        try:
            if op == "prepare":
                os.close(self.prepare()[1])
            elif op == "cancel":
                self.cancel()
            elif op == "shutdown":
                self.running = False
            else:
                return {"ok": False, "errno": errno.EINVAL, "error": f"{op}: not a VMM's"}
        except (OSError, QmpError) as e:
            return {"ok": False, "errno": getattr(e, "errno", None) or errno.EIO,
                    "error": f"VM {self.machine.name}: {getattr(e, 'strerror', None) or e}"}
        return {"ok": True}

    def on_kernel(self) -> None:
        """The kvm subsystem's requests (RFC profiles), on the socket it was given."""
        driver = self.carrier.driver
        try:
            message, fds = protocol.recv(driver)
            protocol.close_fds(fds)
        except (protocol.ProtocolError, ConnectionError):
            message = None
        if message is None:  # the kernel is gone: a live update, or its death
            self.carrier.close()
            if self.prepared is None:  # nothing of this VM was carried
                self.error = "its kernel went away without carrying it (not prepared)"
                self.running = False
            return
        reply, fds = Error(f"{message.TAG}: not a VMM's request", errno.EPROTO), {}
        op = {Prepare: "prepare", Cancel: "cancel"}.get(type(message))
        try:
            if op == "prepare":
                reply, state = self.prepare()
                fds = {"state": [state]}
            elif op == "cancel":
                self.cancel()
                reply = Ok()
        except (OSError, QmpError) as e:
            reply = Error(f"{getattr(e, 'strerror', None) or e}",
                          getattr(e, "errno", None) or errno.EIO)
        try:
            protocol.send(driver, reply, fds)
        except OSError:
            pass
        finally:
            protocol.close_fds(fds)

    # -- the loop ------------------------------------------------------------------------------
    def register(self) -> None:
        """Known to whoever prepares it for the next update: the machine (a participant)
        and, under the RFCs, the kernel's kvm subsystem."""
        self.carrier.register(self.machine, self.ram, self.generation)
        self.listener = participants.Listener(wire.state_dir(self.root), self.machine.name)

    def serve(self) -> None:
        self.running = True
        qemu_exit = os.pidfd_open(self.proc.pid)
        try:
            while self.running:
                sources = [self.listener, qemu_exit, self.successor, self.carrier_driver()]
                ready = select.select([s for s in sources if s is not None], [], [], 1.0)[0]
                if self.status_stale and self.prepared is None:
                    self.write_status("running", self.error)
                if qemu_exit in ready:
                    self.error = f"QEMU exited with status {self.proc.wait()}"
                    log.error("VM %s: %s", self.machine.name, self.error)
                    return
                if self.carrier_driver() in ready:
                    self.on_kernel()
                if self.successor is not None and self.successor in ready:
                    self.on_successor()
                if self.listener in ready:
                    self.listener.serve_one(self.handle)
        finally:
            os.close(qemu_exit)
            self.end()

    def carrier_driver(self):
        return getattr(self.carrier, "driver", None)

    def end(self) -> None:
        """Everything this VMM started; its registration (its successor stands down,
        unless it took over)."""
        if self.listener is not None:
            self.listener.close()
        if self._spawning is not None:  # a successor on its way must hear it too
            self._spawning.join(10.0)
        if self.successor is not None:
            if not self.handed_over:
                self.tell_successor(StandDown())
            self.successor.close()
        t = time.monotonic()
        if self.proc is not None:
            qemu.stop(self.proc)
        teardown = _ms(time.monotonic() - t)
        self.carrier.close()
        if not self.handed_over:  # (after that, the status is the successor's)
            self.write_status("stopped", self.error)
        log.info("VM %s: this VMM ends; its QEMU's teardown took %.1f ms", self.machine.name,
                 teardown)


def write_status(directory: str, status: dict) -> None:
    path = os.path.join(directory, "status.json")
    with open(path + ".tmp", "w") as f:
        json.dump(status, f, indent=1)
    os.replace(path + ".tmp", path)


# -- a fresh VM ---------------------------------------------------------------------------------
def fresh(root: str, machine: qemu.Machine, abi: str) -> Agent:
    """A new VM, running and registered; under mainline its RAM preserved from the start."""
    probe = participants.socket_path(wire.state_dir(root), machine.name)
    if os.path.exists(probe):
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
            try:
                s.connect(probe)
                raise FileExistsError(errno.EEXIST, f"VM {machine.name!r} already runs on {root}")
            except (ConnectionRefusedError, FileNotFoundError):
                pass  # a dead one's: Listener replaces it
    os.makedirs(machine.directory, exist_ok=True)
    open(machine.serial_log, "w").close()  # a new VM's log starts empty
    ram = os.memfd_create(f"luofs-vm-ram:{machine.name}", os.MFD_CLOEXEC)
    os.ftruncate(ram, machine.ram)
    agent = Agent(root, machine, ram, 0, abi)
    try:
        if agent.carrier.machine_prepares:  # mainline: its RAM must fit before QEMU runs
            agent.carrier.register(machine, ram, 0)
        agent.proc, agent.qmp = qemu.start(machine, ram, log=agent.log_file)
        if not agent.carrier.machine_prepares:
            agent.carrier.register(machine, ram, 0)
        agent.listener = participants.Listener(wire.state_dir(root), machine.name)
        agent.start_successor().join()  # (nothing waits for this VMM yet)
        agent.write_status("running")
    except BaseException:
        agent.end()
        raise
    return agent


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="luofs-vm-agent", description=__doc__)
    p.add_argument("--root", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--ram", type=int, required=True)
    p.add_argument("--accel", choices=["kvm", "tcg"], required=True)
    p.add_argument("--abi", default="mainline")
    p.add_argument("--ready-fd", type=int, required=True)
    p.add_argument("extra", nargs="*")
    args = p.parse_args(argv)
    logging.basicConfig(level=os.environ.get("LUOFS_LOG", "INFO").upper(), stream=sys.stderr,
                        format=f"%(asctime)s vm-agent[{os.getpid()}] %(levelname)s %(message)s")
    ready = os.fdopen(args.ready_fd, "w")
    try:
        machine = qemu.Machine(args.name, args.ram, args.accel, vm_dir(args.root, args.name),
                               tuple(args.extra))
        agent = fresh(args.root, machine, args.abi)
    except (OSError, QmpError, qemu.QemuMissing) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        ready.write(f"error: {reason}\n")  # (the client's strerror names the call)
        return 1
    ready.write(f"ready {os.getpid()}\n")
    ready.close()
    agent.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())

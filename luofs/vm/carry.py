"""How a VM's RAM and saved state cross a live update: the VMM's part, per ABI.

Mainline (`Sessions`): the VMM itself preserves them in a LUO session "vm-NAME"
(RAM as TOKEN_RAM from the start, the VM's description as TOKEN_CONFIG, the state
as TOKEN_STATE at prepare), and its successor retrieves the session and FINISHes.
The machine asks the VMM to prepare (luofs/participants.py).

RFC profiles (`Kvm`): the VM belongs to the kernel's kvm subsystem
(luofs/subsystems/kvm.py). The VMM registers it (KvmRegister through the machine,
with the RAM memfd and its end of a socket pair); the kernel drives it on that
socket at PREPARE and CANCEL and preserves the state the VMM hands back; the next
kernel's kvm subsystem knows the VM from its KHO node, and the successor takes it
with KvmRetrieve. FINISH is the global event, the orchestrator's.

Unhappy paths: OSError with the kernel's errno and a message naming the step.
"""

from __future__ import annotations

import errno
import json
import socket
import time
from dataclasses import dataclass

from ..client import LiveUpdate, Session

TOKEN_RAM, TOKEN_STATE, TOKEN_CONFIG = 1, 2, 3
DEVICE_BUSY_WAIT = 10.0  # /dev/liveupdate has one opener at a time


def session_name(name: str) -> str:
    return f"vm-{name}"


@dataclass
class Retrieved:
    """A VM as the next kernel handed it over: its description and its files."""

    name: str
    ram: int
    accel: str
    qemu_args: tuple[str, ...]
    generation: int
    ram_fd: int
    state_fd: int


def _device(root: str) -> LiveUpdate:
    deadline = time.monotonic() + DEVICE_BUSY_WAIT
    while True:
        try:
            return LiveUpdate(root)
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.005)


class Sessions:
    """Mainline: the VM in a LUO session of the VMM's own."""

    machine_prepares = True  # the machine is the update's orchestrator

    def __init__(self, root: str):
        self.root = root
        self.session: Session | None = None

    def register(self, machine, ram_fd: int, generation: int) -> None:
        config = {"name": machine.name, "ram": machine.ram, "accel": machine.accel,
                  "extra": list(machine.extra), "generation": generation}
        with _device(self.root) as lu:
            session = lu.create_session(session_name(machine.name))
        try:
            session.preserve_fd(ram_fd, TOKEN_RAM)
            session.preserve_bytes(TOKEN_CONFIG, json.dumps(config).encode())
        except BaseException:
            session.close()
            raise
        self.session = session

    def saved(self, state_fd: int) -> None:
        self.session.preserve_fd(state_fd, TOKEN_STATE)

    def cancelled(self, machine, ram_fd: int, generation: int) -> None:
        """The state is unpreserved with the session; the next update preserves afresh."""
        self.close()
        self.register(machine, ram_fd, generation)

    def close(self) -> None:
        if self.session is not None:
            try:
                self.session.close()
            except OSError:
                pass  # a session of a kernel that is gone
            self.session = None

    @staticmethod
    def retrieve(root: str, name: str) -> tuple[Retrieved, object]:
        """The VM, and what to call once it runs (FINISH)."""
        lu = _device(root)
        try:
            session = lu.retrieve_session(session_name(name))
            ram = session.retrieve_fd(TOKEN_RAM)
            state = session.retrieve_fd(TOKEN_STATE)
            config = json.loads(session.retrieve_bytes(TOKEN_CONFIG))
        except BaseException:
            lu.close()
            raise

        def finish() -> None:  # /dev/liveupdate closes once the guest runs
            try:
                session.finish()
            finally:
                session.close()
                lu.close()

        return Retrieved(name, config["ram"], config["accel"], tuple(config["extra"]),
                         config["generation"], ram, state), finish


class Kvm:
    """RFC profiles: the VM is the kernel's kvm subsystem's."""

    machine_prepares = False  # the kernel's kvm subsystem drives the VMM

    def __init__(self, root: str):
        self.root = root
        self.driver: socket.socket | None = None  # the kernel drives us on it

    def register(self, machine, ram_fd: int, generation: int) -> None:
        from ..control import request_fds
        from ..protocol import Ok, close_fds
        from ..protocol_vmm import KvmRegister

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            reply, fds = request_fds(self.root, KvmRegister(
                machine.name, machine.ram, machine.accel, tuple(machine.extra)),
                {"ram": [ram_fd], "vmm": [theirs.fileno()]})
        finally:
            theirs.close()
        close_fds(fds)
        if not isinstance(reply, Ok):
            ours.close()
            raise OSError(getattr(reply, "errno", 0) or errno.EPROTO,
                          f"kvm: register VM {machine.name}: "
                          f"{getattr(reply, 'error', reply.TAG)}")
        self.driver = ours

    def saved(self, state_fd: int) -> None:
        pass  # the state goes to the kernel with the answer to its Prepare

    def cancelled(self, machine, ram_fd: int, generation: int) -> None:
        pass  # the VM stays registered; the kernel unpreserved what it had taken

    def close(self) -> None:
        if self.driver is not None:
            self.driver.close()  # the kernel forgets the VM
            self.driver = None

    @staticmethod
    def retrieve(root: str, name: str) -> tuple[Retrieved, object]:
        from ..control import request_fds
        from ..protocol import close_fds
        from ..protocol_vmm import KvmRetrieve, KvmVm

        reply, fds = request_fds(root, KvmRetrieve(name), {})
        if not isinstance(reply, KvmVm) or len(fds.get("ram", ())) != 1 or \
                len(fds.get("state", ())) != 1:
            close_fds(fds)
            raise OSError(getattr(reply, "errno", 0) or errno.EPROTO,
                          f"kvm: retrieve VM {name}: {getattr(reply, 'error', reply.TAG)}")
        return Retrieved(reply.name, reply.ram, reply.accel, reply.qemu_args, -1,
                         fds["ram"][0], fds["state"][0]), lambda: None


def carrier(abi: str, root: str):
    return Sessions(root) if abi == "mainline" else Kvm(root)

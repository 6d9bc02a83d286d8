"""The kvm subsystem (RFC profiles): this kernel's running VMs, carried to the next.

DOC: Under the RFCs the VMM is a subsystem (spec/rfc.md §5, §7 names KVM): the
kernel, not user space, knows the VMs and carries them. A VMM registers its VM
(`KvmRegister` through the machine: name, RAM size, accelerator, QEMU arguments,
the guest-RAM memfd, and its end of a socket pair the subsystem drives it on). The
VM is forgotten when the VMM closes that socket, as KVM destroys a VM whose fd is
closed. The callbacks:

    prepare  each VM in registration order: pin its RAM (the memfd handler's
             preserve), ask its VMM to stop the guest and save its vCPU and device
             state (Prepare -> VmSaved with the state memfd), preserve that; then
             publish the `kvm` KHO node (kvm_node.py) and return its address
    freeze   record both memfds (the handler's freeze), publish the node again with
             the final description; its address is the subsystem's u64
    cancel   unpublish, unfreeze, unpreserve, and tell each VMM to resume (Cancel)
    finish   let go of the VMs the previous kernel handed over (retrieved or not)

The memfds travel as LUO files in a pseudo-session `kvm` of LUO's image; the node
names them by token. The next kernel reads its u64 back (get_subsystem_data),
decodes the node and matches the tokens to the handed-over files; its VMMs take a
VM with `KvmRetrieve` (fds of its RAM and state, and the description).
Unhappy paths, each a LuoError with the errno a caller sees: register in a state
other than NORMAL/UPDATED EBUSY, a bad name or a RAM fd that is not a memfd of
the stated size EINVAL, a name taken EEXIST; a VMM that refuses prepare (its errno),
that does not answer in time ETIMEDOUT or answers nonsense EPROTO vetoes PREPARE
(the VMs already prepared resume); a VMM gone meanwhile loses its VM, nothing
else; retrieve outside UPDATED EBUSY, of an unknown VM ENOENT, twice EINVAL. A node
that does not decode leaves no incoming VM (`received=corrupt`), never a panic.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import dataclass
from types import SimpleNamespace

from kho import MEMFD_COMPATIBLE as MEMFD
from kho import KhoFormatError
from kho.handover import read_subtree

from .. import protocol
from ..core import CarriedFile, CarriedSession
from ..core.errors import LuoError
from ..core.handler import freeze_all
from ..core.state import State
from ..core.subsystem_registry import Subsystem, SubsystemRegistry
from ..fdutil import OwnedFile
from ..protocol import Error, Ok
from ..protocol_participant import Cancel, Prepare
from ..protocol_vmm import KvmRegister, KvmVm, VmSaved
from ..uapi import errnos
from ..waitfd import readable
from . import kvm_node
from .kvm_node import SUBTREE, VmDescription

log = logging.getLogger("luofs.kvm")

NAME = "kvm"
SESSION = b"kvm"  # LUO's pseudo-session for the VMs' memfds
VMM_TIMEOUT = 30.0  # a VMM saves in milliseconds; it may first wait for its successor


@dataclass(eq=False)
class Vm:
    name: str
    ram_size: int
    accel: str
    qemu_args: tuple[str, ...]
    ram: OwnedFile | None
    vmm: socket.socket | None = None  # outgoing: the kernel's end of the VMM's socket
    state: OwnedFile | None = None
    state_bytes: int = 0
    ram_data: int = 0  # the memfd handler's handles
    state_data: int = 0
    stage: str = "registered"  # registered, ram, stopped, saved, frozen
    ram_token: int = 0  # incoming: the tokens in LUO's kvm session
    state_token: int = 0
    retrieved: bool = False


def _memfd(fd: int, what: str) -> OwnedFile:
    """A copy of `fd` if it is a memfd. Classified by its /proc link, never by touching
    the file: a file of our own FUSE mount would make this kernel ask itself."""
    try:
        link = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        link = ""
    if not link.startswith("/memfd:"):
        raise LuoError(errnos.EINVAL, f"{what} is not a memfd")
    return OwnedFile(os.dup(fd), "tmpfs")


class KvmSubsystem:
    def __init__(self, parts):
        self.parts = parts
        self.handler = parts.handlers.by_compatible(MEMFD)
        self.outgoing: dict[str, Vm] = {}
        self.incoming: dict[str, Vm] = {}
        self.engaged: list[Vm] = []  # prepared by the last PREPARE, in order
        self.verdict = "none"  # what the previous kernel left: none, intact or corrupt
        self.handle: Subsystem | None = None
        self._state = lambda: State.NORMAL
        self._handed: dict = {}  # incoming memfds by handle, until a VM takes them

    # ---- this kernel's registration, and what the previous one handed over -----------

    def register(self, registry: SubsystemRegistry, state, image=None,
                 handed: dict | None = None) -> None:
        """`image`/`handed`: the previous kernel's LUO image and files, if any."""
        self._state = state
        self.handle = registry.register_subsystem(
            NAME, prepare=self._prepare, freeze=self._freeze, cancel=self._cancel,
            finish=self._finish)
        try:
            phys = registry.get_subsystem_data(self.handle)
        except LuoError:
            return  # a cold boot, or the previous kernel saved nothing for us
        files = {f.token: f for s in (image.sessions if image else []) if s.name == SESSION
                 for f in s.files}
        self._handed = {f.data: file for f in files.values()
                        if (file := (handed or {}).get(MEMFD, {}).get(f.data)) is not None}
        try:
            if phys != self.parts.incoming.subtree_phys.get(SUBTREE):
                raise KhoFormatError(f"the kvm u64 {phys:#x} is not the kvm node's address")
            for vm in kvm_node.decode(read_subtree(self.parts.memory, phys, SUBTREE)):
                ram, state = (files.get(t) for t in (vm.ram_token, vm.state_token))
                if ram is None or state is None:
                    raise KhoFormatError(f"VM {vm.name}: a token is not in LUO's kvm session")
                self.incoming[vm.name] = Vm(
                    vm.name, vm.ram_size, vm.accel, vm.qemu_args, None, state_bytes=vm.state_size,
                    ram_data=ram.data, state_data=state.data, stage="incoming",
                    ram_token=vm.ram_token, state_token=vm.state_token)
        except KhoFormatError as e:
            log.error("the kvm hand-over is unusable: %s; its VMs are lost", e)
            self.verdict, self.incoming = "corrupt", {}
            for file in self._handed.values():
                file.close()
            self._handed = {}
            return
        self.verdict = "intact"

    # ---- requests of VMMs ------------------------------------------------------------

    def register_vm(self, request: KvmRegister, fds: dict) -> None:
        state = self._state()
        if state not in (State.NORMAL, State.UPDATED):
            raise LuoError(errnos.EBUSY, f"cannot register a VM in state {state}")
        try:
            kvm_node.check_name(request.name)
        except ValueError as e:
            raise LuoError(errnos.EINVAL, str(e)) from None
        if len(fds.get("ram", ())) != 1 or len(fds.get("vmm", ())) != 1:
            raise LuoError(errnos.EINVAL, "a VM is registered with one RAM fd and one VMM socket")
        self._drop_gone()
        if request.name in self.outgoing:
            raise LuoError(errnos.EEXIST, f"a VM named {request.name!r} is registered")
        ram = _memfd(fds["ram"][0], "the guest RAM")
        try:
            if os.fstat(ram.fd).st_size != request.ram:
                raise LuoError(errnos.EINVAL, f"the guest RAM memfd is not {request.ram} bytes")
            try:
                vmm = socket.socket(fileno=os.dup(fds["vmm"][0]))
            except OSError:
                raise LuoError(errnos.EINVAL, "the VMM's fd is not a socket") from None
        except BaseException:
            ram.close()
            raise
        self.outgoing[request.name] = Vm(request.name, request.ram, request.accel,
                                         request.qemu_args, ram, vmm)
        log.info("VM %s registered (%d MiB, %s)", request.name, request.ram >> 20, request.accel)

    def retrieve_vm(self, name: str) -> tuple[KvmVm, dict]:
        """The handed-over VM `name`, and fds of its RAM and state (the caller closes them)."""
        state = self._state()
        if state is not State.UPDATED:
            raise LuoError(errnos.EBUSY, f"VMs are retrieved only in UPDATED, not {state}")
        vm = self.incoming.get(name)
        if vm is None:
            raise LuoError(errnos.ENOENT, f"the previous kernel handed over no VM {name!r}")
        if vm.retrieved:
            raise LuoError(errnos.EINVAL, f"VM {name!r} was retrieved before")
        vm.retrieved = True  # (before the handler runs, as FD_RESTORE marks its file)
        vm.ram = self.handler.retrieve(vm.ram_data, self._handed.pop(vm.ram_data, None))
        vm.state = self.handler.retrieve(vm.state_data, self._handed.pop(vm.state_data, None))
        reply = KvmVm(vm.name, vm.ram_size, vm.accel, vm.qemu_args, vm.state_bytes,
                      vm.ram_token, vm.state_token)
        return reply, {"ram": [os.dup(vm.ram.fd)], "state": [os.dup(vm.state.fd)]}

    def _drop_gone(self) -> None:
        """Forget the VMs whose VMM closed its socket (unless an update holds them)."""
        for vm in list(self.outgoing.values()):
            if vm.stage == "registered" and readable(vm.vmm, 0):
                log.info("VM %s: its VMM is gone; the VM with it", vm.name)
                self._forget(vm)

    def _forget(self, vm: Vm) -> None:
        del self.outgoing[vm.name]
        vm.vmm.close()
        vm.ram.close()

    # ---- the callbacks -----------------------------------------------------------------

    def _prepare(self, arg, data: int) -> int:
        self._drop_gone()
        engaged: list[Vm] = []
        try:
            for vm in list(self.outgoing.values()):
                if self._prepare_vm(vm):
                    engaged.append(vm)
            self.engaged = engaged
            return self._publish()
        except BaseException:
            for vm in reversed(engaged):
                self._release(vm)
            self.engaged = []
            raise

    def _prepare_vm(self, vm: Vm) -> bool:
        """One VM prepared (True), or gone with its VMM (False); on failure its own part
        is undone and the LuoError vetoes PREPARE."""
        try:
            vm.ram_data = self.handler.preserve(vm.ram)  # pinned before the guest stops
            vm.stage = "ram"
            reply, fds = self._ask(vm, Prepare())
            if reply is None:
                self._release(vm)
                self._forget(vm)
                return False
            if isinstance(reply, Error):
                raise LuoError(reply.errno or errnos.EIO, f"VM {vm.name}: {reply.error}")
            if not isinstance(reply, VmSaved) or len(fds.get("state", ())) != 1:
                protocol.close_fds(fds)
                raise LuoError(errnos.EPROTO, f"VM {vm.name}: its VMM answered {reply.TAG}")
            vm.stage = "stopped"  # from here on a release resumes the guest
            try:
                vm.state = _memfd(fds["state"][0], f"VM {vm.name}'s saved state")
            finally:
                protocol.close_fds(fds)
            vm.state_bytes = reply.state_bytes
            vm.state_data = self.handler.preserve(vm.state)
            vm.stage = "saved"
        except BaseException:
            self._release(vm)
            raise
        return True

    def _ask(self, vm: Vm, message):
        """The VMM's reply; (None, {}) if it is gone. LuoError if it does not answer."""
        vm.vmm.settimeout(VMM_TIMEOUT)
        try:
            protocol.send(vm.vmm, message)
            return protocol.recv(vm.vmm, protocol.MAX_REQUEST)
        except socket.timeout:
            raise LuoError(errnos.ETIMEDOUT, f"VM {vm.name}: its VMM did not answer "
                                             f"{message.TAG} within {VMM_TIMEOUT:.0f} s") from None
        except protocol.ProtocolError as e:
            raise LuoError(errnos.EPROTO, f"VM {vm.name}: its VMM's reply: {e}") from None
        except (BrokenPipeError, ConnectionResetError):
            return None, {}

    def _freeze(self, arg, data: int) -> int:
        entries = [SimpleNamespace(handler=self.handler, file=f, data=d, vm=vm, which=which)
                   for vm in self.engaged
                   for which, f, d in (("ram", vm.ram, vm.ram_data),
                                       ("state", vm.state, vm.state_data))]
        freeze_all(entries)  # all or none; a failure is cancelled by the state machine
        for entry in entries:
            setattr(entry.vm, f"{entry.which}_data", entry.data)
            entry.vm.stage = "frozen"
        return self._publish()

    def _publish(self) -> int:
        """(Re)write the kvm node into KHO; its address."""
        for i, vm in enumerate(self.engaged):
            vm.ram_token, vm.state_token = 2 * i, 2 * i + 1
        blob = kvm_node.encode([VmDescription(vm.name, vm.ram_size, vm.state_bytes,
                                              vm.ram_token, vm.state_token, vm.accel,
                                              vm.qemu_args) for vm in self.engaged])
        self._unpublish()
        try:
            return self.parts.handover.add_subtree(SUBTREE, blob)
        except (MemoryError, OSError) as e:
            raise LuoError(errnos.ENOMEM, f"kvm: cannot publish its KHO node: {e}") from None

    def _unpublish(self) -> None:
        if SUBTREE in self.parts.handover.subtrees:
            self.parts.handover.remove_subtree(SUBTREE)

    def _cancel(self, arg, data: int) -> None:
        engaged, self.engaged = self.engaged, []
        self._unpublish()
        for vm in reversed(engaged):
            self._release(vm)

    def _release(self, vm: Vm) -> None:
        """Undo what prepare and freeze did to `vm`, last step first; a stopped guest
        resumes."""
        if vm.stage == "frozen":
            self.handler.unfreeze(vm.ram, vm.ram_data)
            self.handler.unfreeze(vm.state, vm.state_data)
        if vm.state is not None:
            if vm.stage in ("saved", "frozen"):
                self.handler.unpreserve(vm.state, vm.state_data)
            vm.state.close()
            vm.state = None
        if vm.stage != "registered":
            self.handler.unpreserve(vm.ram, vm.ram_data)
        stopped, vm.stage, vm.ram_data, vm.state_data = vm.stage not in ("registered", "ram"), \
            "registered", 0, 0
        if stopped:
            try:
                reply, _fds = self._ask(vm, Cancel())
            except LuoError as e:
                reply = Error(e.reason)
            if not isinstance(reply, Ok):
                log.error("VM %s: its VMM did not resume the guest: %s", vm.name,
                          getattr(reply, "error", "gone"))

    def _finish(self, arg, data: int) -> None:
        incoming, self.incoming = self.incoming, {}
        for vm in incoming.values():
            for f, d in ((vm.ram, vm.ram_data), (vm.state, vm.state_data)):
                private = f if vm.retrieved else self._handed.pop(d, None)
                self.handler.finish(f, d, vm.retrieved, private)
                if vm.retrieved and f is not None:
                    f.close()  # LUO's reference; the VMM has its own
        for file in self._handed.values():  # (of a VM whose retrieve failed half-way)
            file.close()
        self._handed = {}

    # ---- the hand-over and the views ----------------------------------------------------

    def carried(self) -> list[CarriedSession]:
        """After FREEZE: the VMs' memfds, as LUO's pseudo-session `kvm`."""
        if not self.engaged:
            return []
        files = []
        for vm in self.engaged:
            files += [CarriedFile(vm.ram_token, MEMFD, vm.ram_data, vm.ram),
                      CarriedFile(vm.state_token, MEMFD, vm.state_data, vm.state)]
        return [CarriedSession(SESSION, tuple(files))]

    def unretrieved(self) -> int:
        return sum(not vm.retrieved for vm in self.incoming.values())

    def status(self) -> dict:
        self._drop_gone()
        return {"received": self.verdict,
                "outgoing": [{"name": vm.name, "ram": vm.ram_size, "accel": vm.accel,
                              "stage": vm.stage} for vm in self.outgoing.values()],
                "incoming": [{"name": vm.name, "ram": vm.ram_size, "accel": vm.accel,
                              "state_bytes": vm.state_bytes, "ram_token": vm.ram_token,
                              "state_token": vm.state_token, "retrieved": vm.retrieved,
                              "qemu_args": list(vm.qemu_args)} for vm in self.incoming.values()]}

    def describe(self) -> bytes:
        """What sys/kernel/liveupdate/subsystems/kvm shows below the u64."""
        info = self.status()
        lines = [f"received={info['received']}"]
        for vm in info["outgoing"]:
            lines.append(f"outgoing {vm['name']} ram={vm['ram']} accel={vm['accel']} "
                         f"stage={vm['stage']}")
        for vm in info["incoming"]:
            lines.append(f"incoming {vm['name']} ram={vm['ram']} accel={vm['accel']} "
                         f"state-bytes={vm['state_bytes']} ram-token={vm['ram_token']:#x} "
                         f"state-token={vm['state_token']:#x} retrieved={int(vm['retrieved'])} "
                         f"qemu-args={json.dumps(vm['qemu_args'])}")
        return "\n".join(lines).encode() + b"\n"


__all__ = ["KvmSubsystem", "NAME", "SESSION", "VMM_TIMEOUT"]

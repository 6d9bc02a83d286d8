"""The messages of VMMs (luofs vm), registered with luofs.protocol's one encoder and decoder.

To the machine, on its control socket (answered by the named reply or Error):
    Spawn        start a program in the current kernel's userspace or in the next
                 one's (made ahead of time): a VMM's successor -> Spawned
    KvmRegister  RFC profiles: a VM joins the kernel's kvm subsystem, with its RAM
                 memfd and the VMM's end of a socket pair the kernel drives it on
                 -> Ok (the machine forwards it to the kernel)
    KvmRetrieve  RFC profiles, next kernel: the VM as the previous kernel's kvm
                 subsystem handed it over, with its RAM and saved state -> KvmVm
From the kvm subsystem to a VMM, on that socket pair: protocol_participant's
Prepare and Cancel, answered by VmSaved (with the state memfd) or Ok / Error.
Between a VMM and its successor (the VMM of the next kernel): VmSaved (when the
guest stopped, no fds), Unsaved, StandDown, SuccessorLoaded, TookOver.
"""

from .protocol import Message, ProtocolError

__all__ = ["Spawn", "Spawned", "KvmRegister", "KvmRetrieve", "KvmVm", "VmSaved", "Unsaved",
           "StandDown", "SuccessorLoaded", "TookOver", "WHERE"]

WHERE = ("current", "next")


class Spawn(Message, tag="spawn", groups=("stdio", "fds")):
    """Run `argv` (PATH searched) with `env` in a userspace: "current", or "next" (the
    next kernel's, made ahead of time and bound to that kernel's files at the kexec).
    The `fds` group becomes fds 3, 4, ... of the program; `stdio` its stdout and stderr."""

    argv: tuple[str, ...]
    env: dict[str, str]
    where: str = "current"

    def validate(self) -> None:
        if not self.argv or self.where not in WHERE:
            raise ProtocolError(f"spawn: argv {self.argv!r} (not empty), where "
                                f"{self.where!r} ({'|'.join(WHERE)})")


class Spawned(Message, tag="spawned"):
    """`pid` as the machine sees it; `pid1`: PID 1 of the userspace it runs in (None:
    there is no userspace, it runs as a plain process)."""

    pid: int
    pid1: int | None = None


class KvmRegister(Message, tag="kvm-register", groups=("ram", "vmm")):
    name: str
    ram: int  # bytes of guest RAM: the memfd's size
    accel: str
    qemu_args: tuple[str, ...] = ()


class KvmRetrieve(Message, tag="kvm-retrieve"):
    name: str


class KvmVm(Message, tag="kvm-vm", groups=("ram", "state")):
    """A handed-over VM: its description from the kvm subsystem's KHO node, its files."""

    name: str
    ram: int
    accel: str
    qemu_args: tuple[str, ...]
    state_bytes: int
    ram_token: int
    state_token: int


class VmSaved(Message, tag="vm-saved", groups=("state",)):
    """The guest is stopped and its state saved (into the memfd sent with it, to the
    kernel; times on CLOCK_MONOTONIC, for the successor's account of the pause)."""

    t_stop: float
    t_saved: float
    t_prepared: float
    state_bytes: int
    pid: int = 0  # the VMM that saved it (its part of the update's trace)


class Unsaved(Message, tag="vm-unsaved"):
    """The update was cancelled: the guest runs in the predecessor again."""


class StandDown(Message, tag="vm-stand-down"):
    """The VMM ends without an update: its successor ends too."""


class SuccessorLoaded(Message, tag="vm-successor-loaded"):
    """The successor has imported everything and waits for the update."""


class TookOver(Message, tag="vm-took-over"):
    """The guest runs in the next kernel: a predecessor still alive ends."""

"""The message types of luofs.protocol beyond the hand-over, one per thing said.

Import them from luofs.protocol (which registers them): a typo in a message name is
then an import error, never a silent branch. Requests that several receivers
understand (status, kho-dump, shutdown) are one type each.
"""

import dataclasses

from .protocol import FILES, KEEPERS, RAM, HandOver, ProtocolError, message

__all__ = [
    "Ok", "Error", "StatusRequest", "MachineStatus", "KhoDumpRequest", "KhoDumpReply",
    "KexecRequest", "KexecDone", "ColdBoot", "Shutdown", "KernelConfig", "MachineConfig",
    "Started", "KernelBoot", "MountRoot", "Reboot", "Loaded", "Crashing", "Ready", "Panicked",
    "Unmounted", "Failed", "KernelStatus", "Park", "Parked", "Fetch", "Fetched", "Drop",
    "Records", "RecordsReply",
]

from .protocol import Error, Ok  # noqa: E402  (defined beside the codec: every channel's)


# ---- CLI -> machine (status, kho-dump and shutdown also machine -> kernel) ----------------

@message("status")
class StatusRequest:
    pass


@message("machine-status")
class MachineStatus:
    machine: dict
    kernel: dict | None = None


@message("kho-dump")
class KhoDumpRequest:
    which: str = "out"  # "out": what the kernel would hand over; "in": what it received
    format: str = "json"  # or "dts"

    def validate(self) -> None:
        if self.which not in ("in", "out") or self.format not in ("json", "dts"):
            raise ProtocolError(f"kho-dump: which {self.which!r} (in|out), "
                                f"format {self.format!r} (json|dts)")


@message("kho-dump-reply")
class KhoDumpReply:
    text: str = ""  # dts
    tree: dict | None = None  # json


@message("kexec")
class KexecRequest:
    pass


@message("kexec-done")
class KexecDone:
    liveupdate_number: int
    sessions: int
    files: int
    blackout_ms: float
    freeze_ms: float
    start_ms: float
    blackout_records: dict[str, int]  # what each DMA engine wrote while no kernel served it
    dropped: int = 0  # incoming sessions nobody retrieved, which ended here
    lost: dict | None = None  # as Ready.lost: the update happened, these did not arrive


@message("cold-boot")
class ColdBoot:
    pass


@message("shutdown")
class Shutdown:
    pass


# ---- CLI -> machine at start-up ----------------------------------------------------------

@message("kernel-config")
class KernelConfig:
    """What every kernel of an instance runs with; a crash fault that fired is dropped
    from the machine's copy, so it fires once per instance."""

    abi: str = "mainline"
    cmdline: str = "liveupdate=on kho=on"
    debugfs: bool = False
    faults: tuple[tuple[str, int], ...] = ()  # (point, errno)
    log_level: str = ""  # the kernel's own default ($LUOFS_LOG, else INFO) when empty

    def without_fault(self, point: str) -> "KernelConfig":
        return dataclasses.replace(self, faults=tuple(f for f in self.faults if f[0] != point))


@message("machine-config")
class MachineConfig:
    root: str
    memory: int
    devices: str
    kernel: KernelConfig


@message("started")
class Started:
    pid: int


# ---- machine -> kernel ----------------------------------------------------------------------

@message("boot", groups=(RAM, FILES, KEEPERS))
class KernelBoot:
    """RAM, and after a live update the hand-over with its files; `hold_mount`: build
    everything but wait for a `MountRoot` before mounting."""

    config: KernelConfig
    handover: HandOver | None = None
    hold_mount: bool = False


@message("mount")
class MountRoot:
    pass


@message("reboot")
class Reboot:
    """Freeze and hand over: answered by HandOver (with its fd groups) or Error."""


# ---- kernel -> machine ------------------------------------------------------------------------

@message("loaded")
class Loaded:
    pid: int


@message("crashing")
class Crashing:
    point: str


@message("ready")
class Ready:
    pid: int
    liveupdate_number: int
    mnt_id: int | None = None
    lost: dict | None = None  # files that died with a keeper in the blackout: what, whose


@message("panicked")
class Panicked:
    error: str


@message("unmounted")
class Unmounted:
    pass


@message("failed")
class Failed:
    error: str


@message("kernel-status")
class KernelStatus:
    kernel: dict


# ---- kernel -> keeper -------------------------------------------------------------------------

@message("park", groups=(FILES,))
class Park:
    """Keep the files sent along; answered by Parked with their slots."""


@message("parked")
class Parked:
    slots: tuple[int, ...]


@message("fetch")
class Fetch:
    slots: tuple[int, ...]


@message("fetched", groups=(FILES,))
class Fetched:
    pass


@message("drop")
class Drop:
    slots: tuple[int, ...]


@message("records")
class Records:
    """Position, size and seals of the files in `runs` of (first slot, count), each
    record followed by `pad`."""

    runs: tuple[tuple[int, int], ...]
    pad: bytes = b""


@message("records-reply")
class RecordsReply:
    records: bytes


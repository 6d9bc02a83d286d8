"""The messages between the machine and its kernels (and the CLI's MachineConfig that
starts the machine), registered with luofs.protocol's one encoder and decoder.

A module apart from luofs.protocol so that `luofs kexec` and `luofs status`, which
speak only the control channel, do not build these classes at start-up.
"""

import dataclasses

from .protocol import FILES, KEEPERS, RAM, HandOver, Message

__all__ = ["KernelConfig", "MachineConfig", "Started", "KernelBoot", "MountRoot", "Reboot",
           "TraceFlush", "Loaded", "Crashing", "Ready", "Panicked", "Unmounted", "Failed", "KernelStatus"]


# ---- CLI -> machine at start-up ----------------------------------------------------------

class KernelConfig(Message, tag="kernel-config"):
    """What every kernel of an instance runs with; a crash fault that fired is dropped
    from the machine's copy, so it fires once per instance."""

    abi: str = "mainline"
    cmdline: str = "liveupdate=on kho=on"
    debugfs: bool = False
    faults: tuple[tuple[str, int], ...] = ()  # (point, errno)
    log_level: str = ""  # the kernel's own default ($LUOFS_LOG, else INFO) when empty

    def without_fault(self, point: str) -> "KernelConfig":
        return dataclasses.replace(self, faults=tuple(f for f in self.faults if f[0] != point))


class MachineConfig(Message, tag="machine-config"):
    root: str
    memory: int
    devices: str
    kernel: KernelConfig
    init: tuple[str, ...] = ()  # `boot --init PROG ARGS`: PID 1 of every kernel's userspace
    init_env: tuple[tuple[str, str], ...] = ()  # what init needs on top of the machine's


class Started(Message, tag="started"):
    pid: int


# ---- machine -> kernel ----------------------------------------------------------------------

class KernelBoot(Message, tag="boot", groups=(RAM, FILES, KEEPERS)):
    """RAM, and after a live update the hand-over with its files; `hold_mount`: build
    everything but wait for a `MountRoot` before mounting."""

    config: KernelConfig
    handover: HandOver | None = None
    hold_mount: bool = False


class MountRoot(Message, tag="mount"):
    pass


class Reboot(Message, tag="reboot"):
    """Freeze and hand over: answered by HandOver (with its fd groups) or Error;
    `progress_ms`: Progress messages before the answer, as KexecRequest's."""

    progress_ms: int | None = None


class TraceFlush(Message, tag="trace-flush"):
    """The live update is over: write your lines of its trace (luofs/trace.py); Ok."""


# ---- kernel -> machine ------------------------------------------------------------------------

class Loaded(Message, tag="loaded"):
    pid: int


class Crashing(Message, tag="crashing"):
    point: str


class Ready(Message, tag="ready"):
    pid: int
    liveupdate_number: int
    mnt_id: int | None = None
    lost: dict | None = None  # files that died with a keeper in the blackout: what, whose


class Panicked(Message, tag="panicked"):
    error: str


class Unmounted(Message, tag="unmounted"):
    """The old kernel has unmounted; `trace`: its part of the update's trace, for the
    machine to write (luofs.trace.Recorder.export)."""

    trace: str = ""


class Failed(Message, tag="failed"):
    error: str


class KernelStatus(Message, tag="kernel-status"):
    kernel: dict

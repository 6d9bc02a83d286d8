"""luofs vm: a QEMU virtual machine that lives through every live update.

    from luofs import vm
    info = vm.start(root, ram=64 << 20)        # guest RAM: a preserved memfd
    ...                                         # luofs kexec: the guest pauses, then goes on
    vm.check(root)                              # the guest re-checks all its RAM
    vm.stop(root)

Map: agent.py is the VMM (in the running kernel's userspace), successor.py the
next VMM (in the next kernel's, started before the freeze); carry.py how the VM
crosses an update (a LUO session under mainline, the kvm subsystem under the RFC
profiles); qemu.py the QEMU command line; qmp.py the monitor; accel.py KVM or TCG;
guest.py what the test guest (native/guest) prints and writes; linux_guest.py
the same for the Linux test guest (native/linux-guest, `--kernel`). Unhappy paths:
start() raises VmError with the agent's reason (QEMU missing, no luofs kernel at
root, the name taken, RAM that does not fit in the machine's memory); check()
raises VmError when the guest does not answer. status() gives pids as the caller's
namespace sees them (the VMM's own are its userspace's).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

from .. import participants, spawn, wire
from ..protocol_participant import PowerOff
from ..waitfd import readable
from .guest import SerialLog

__all__ = ["start", "status", "stop", "check", "serial", "VmError", "vm_dir"]

START_TIMEOUT = 120.0


class VmError(RuntimeError):
    pass


def vm_dir(root: str, name: str) -> str:
    """Where VM `name` keeps its status, serial log and VMM log."""
    return os.path.join(wire.state_dir(root), "vm", name)


def start(root: str, ram: int, name: str = "vm0", qemu_args=(), accel: str | None = None,
          kernel: str | None = None, initrd: str | None = None, append: str | None = None) -> dict:
    """Start VM `name` with `ram` bytes of guest RAM; returns its status once it runs.
    The guest is the bare-metal test guest, or `kernel` (with `initrd` and `append`)."""
    from . import accel as _accel, qemu  # (agent.py imports this package: not at the top)

    root = os.path.realpath(root)
    qemu.check_ram(ram)
    qemu_args = (*qemu.linux_boot(kernel, initrd, append), *qemu_args)
    try:
        accel = accel or _accel.choose(qemu.binary())
    except qemu.QemuMissing as e:
        raise VmError(str(e)) from None
    abi = _abi(root)
    read_end, write_end = os.pipe()
    log_path = os.path.join(wire.state_dir(root), f"vm-{name}.log")
    try:  # in the running kernel's userspace (it outlives this command, as the machine does)
        with open(log_path, "ab") as log:
            spawn.spawn(root, [sys.executable, "-m", "luofs.vm.agent", "--root", root, "--name",
                               name, "--ram", str(ram), "--accel", accel, "--abi", abi,
                               "--ready-fd", "3", "--", *qemu_args],
                        "current", [write_end], log.fileno())
    except OSError as e:
        os.close(read_end)
        raise VmError(f"cannot start the VMM: {e.strerror}") from None
    finally:
        os.close(write_end)
    with os.fdopen(read_end) as ready:
        line = ready.readline().strip()
    if not line.startswith("ready"):
        raise VmError(line.removeprefix("error: ") or f"the VMM exited; see {log_path}")
    return status(root, name)


def _abi(root: str) -> str:
    """The running kernel's ABI: mainline VMMs use sessions, RFC ones the kvm subsystem."""
    from ..client import status as machine_status

    try:
        kernel = machine_status(root, timeout=10).get("kernel")
    except OSError:  # (no machine is a ConnectionError)
        kernel = None
    if not kernel:
        raise VmError(f"no luofs kernel serves {root} (luofs boot --root {root})")
    return kernel["abi"]


def status(root: str, name: str = "vm0") -> dict:
    """The VM's status; its VMM's and QEMU's pids as our PID namespace names them (None
    once gone)."""
    path = os.path.join(vm_dir(os.path.realpath(root), name), "status.json")
    try:
        with open(path) as f:
            info = json.load(f)
    except FileNotFoundError:
        raise VmError(f"no VM {name!r} on {root}") from None
    namespace = info.get("pid_ns")
    if namespace is not None:
        for key in ("agent_pid", "qemu_pid"):
            info[key] = spawn.host_pid(namespace, info[key])
    return info


def serial(root: str, name: str = "vm0") -> SerialLog:
    return SerialLog.read(status(root, name)["serial_log"])


def check(root: str, name: str = "vm0", timeout: float = 60.0) -> dict:
    """Ask the guest to re-check every RAM word; its answer (errors, words)."""
    info = status(root, name)
    before = len(SerialLog.read(info["serial_log"]).checks)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(info["serial_socket"])
        s.sendall(b"c")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        checks = SerialLog.read(info["serial_log"]).checks
        if len(checks) > before:
            return checks[-1]
        time.sleep(0.05)
    raise VmError(f"VM {name}: the guest did not answer a check within {timeout:.0f} s")


def stop(root: str, name: str = "vm0") -> None:
    """End the VM: its QEMU, its next VMM, its session; returns once its agent is gone."""
    info = status(root, name)
    path = participants.socket_path(wire.state_dir(os.path.realpath(root)), name)
    if info["agent_pid"] is None:
        return
    try:
        pidfd = os.pidfd_open(info["agent_pid"])
    except ProcessLookupError:
        return
    try:
        participants.ask(path, PowerOff(), 30.0)
        if not readable(pidfd, 30.0):
            raise VmError(f"VM {name}: its agent (pid {info['agent_pid']}) did not end")
    finally:
        os.close(pidfd)

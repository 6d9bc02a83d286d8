"""Starting QEMU for luofs vm: the command line, and a QMP monitor on a socket pair.

Guest RAM is the caller's memfd, mapped shared through /proc/self/fd/N (QEMU's
memory-backend-memfd cannot adopt an existing memfd, and with share=off guest
writes would never reach it). The serial port is a socket a host may write
commands to, logged to a file that every generation of the VM appends to.
Unhappy paths: no QEMU binary (QemuMissing, saying how to install it); QEMU exits
or stays silent during start-up (QmpError; its stderr is in the VMM's log).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from dataclasses import dataclass

from . import guest
from .qmp import Qmp, setup_commands

QEMU_ENV = "LUOFS_QEMU"
MIN_RAM = 8 << 20  # the guest's pattern starts at 4 MiB


class QemuMissing(RuntimeError):
    pass


def binary() -> str:
    path = os.environ.get(QEMU_ENV) or shutil.which("qemu-system-x86_64")
    if not path:
        raise QemuMissing("QEMU is missing: install Debian's qemu-system-x86 "
                          "(`make test` does), or set $LUOFS_QEMU")
    return path


def check_ram(size: int) -> None:
    if size < MIN_RAM or size % (1 << 20):
        raise ValueError(f"guest RAM must be a multiple of 1 MiB, at least {MIN_RAM >> 20} MiB")


def linux_boot(kernel: str | None, initrd: str | None = None,
               append: str | None = None) -> tuple[str, ...]:
    """QEMU's arguments that boot `kernel` in place of the test guest; () without one.

    The paths are made absolute: every later VMM starts its QEMU with the same
    arguments (the incoming QEMU reads the same kernel, as migration wants the same
    machine), from wherever it runs."""
    if kernel is None:
        if initrd is not None or append is not None:
            raise ValueError("--initrd and --append need --kernel")
        return ()
    args = []
    for option, what, path in (("-kernel", "kernel", kernel), ("-initrd", "initramfs", initrd)):
        if path is not None:
            if not os.path.isfile(path):
                raise ValueError(f"no {what} at {path}")
            args += [option, os.path.abspath(path)]
    return (*args, *(("-append", append) if append is not None else ()))


@dataclass(frozen=True)
class Machine:
    """What a VM is, identically on both sides of a migration."""

    name: str
    ram: int
    accel: str
    directory: str
    extra: tuple[str, ...] = ()

    @property
    def serial_log(self) -> str:
        return os.path.join(self.directory, "serial.log")

    @property
    def serial_socket(self) -> str:
        return os.path.join(self.directory, "serial.sock")

    def command(self, qemu: str, ram_fd: int, qmp_fd: int, incoming: bool) -> list[str]:
        mib = f"{self.ram >> 20}M"
        return [qemu, "-name", f"luofs-vm:{self.name}", "-nodefaults", "-no-user-config",
                # A lean PC (no ACPI, HPET, SMBus, SATA, USB, vmport): less to build, so
                # QEMU starts ~15% sooner, and its start is most of the pause.
                "-display", "none", "-machine", f"pc,accel={self.accel},memory-backend=mem,"
                "acpi=off,hpet=off,smbus=off,sata=off,usb=off,vmport=off",
                "-m", mib, "-object", f"memory-backend-file,id=mem,size={mib},"
                f"mem-path=/proc/self/fd/{ram_fd},share=on",
                *(() if "-kernel" in self.extra else ("-kernel", guest.image())),
                "-chardev", f"socket,id=ser,path={self.serial_socket},server=on,wait=off,"
                f"logfile={self.serial_log},logappend=on", "-serial", "chardev:ser",
                "-chardev", f"socket,id=qmp,fd={qmp_fd}", "-mon", "chardev=qmp,mode=control",
                *(["-incoming", "defer"] if incoming else []), *self.extra]


def start(machine: Machine, ram_fd: int, incoming_fd: int | None = None, log=None,
          ignore_shared: bool = True) -> tuple[subprocess.Popen, Qmp]:
    """QEMU running, its monitor ready for migration; with `incoming_fd`, loading the
    state from it instead (wait with qmp.wait_migration, then `cont`)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    extra_fds = [] if incoming_fd is None else [incoming_fd]
    try:
        proc = subprocess.Popen(
            machine.command(binary(), ram_fd, theirs.fileno(), incoming_fd is not None),
            pass_fds=[ram_fd, theirs.fileno(), *extra_fds], stdin=subprocess.DEVNULL,
            stdout=log, stderr=log)
    finally:
        theirs.close()
    qmp = Qmp(ours)
    commands = setup_commands(ignore_shared, source=incoming_fd is None)
    if incoming_fd is not None:
        commands.append(("migrate-incoming", {"uri": f"fd:{incoming_fd}"}))
    try:
        qmp.pipeline(commands)
    except BaseException:
        stop(proc)
        ours.close()
        raise
    return proc, qmp


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()

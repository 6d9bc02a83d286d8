"""`luofs boot`: check the root, start the machine and kernel #0, or start kernel #0 cold
after a panic.

Unhappy paths: every refusal is a CliError with the message the user sees — no FUSE,
a root that is not a directory, holds files, or has another file system mounted on it
(a stale luofs mount is cleaned), an instance already serving it, bad options; a
machine that cannot start says why (its log is named).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from .cli import DEFAULT_MEMORY, MACHINE_START_TIMEOUT, CliError, _ask, _machine_answers, _ok, _root, size


def cmd_boot(args) -> int:
    root = _root(args)
    _check_boot_root(root)
    running = _machine_answers(root)
    if running is not None:
        return _cold_boot_after_panic(root, running)
    _clean_stale_mount(root)
    if os.listdir(root):
        raise CliError(f"{root} is not empty: luofs mounts over it and would hide its files")
    config = _machine_config(root, args)
    from . import wire

    try:  # only once everything is known to be valid
        state = wire.state_dir(root, create=True)
    except PermissionError as e:
        raise CliError(e.strerror) from None
    pid = _start_machine(config, state)
    served = f"{root}/dev/liveupdate" if args.abi != "rfc-v1" else f"{root}/sys (rfc-v1)"
    print(f"luofs: kernel #0 serves {served} (machine pid {pid})")
    return 0


def _check_boot_root(root: str) -> None:
    from .doctor import preflight

    lacking = preflight()  # the hard requirements that cost microseconds to probe
    if lacking:
        raise CliError(lacking)
    if not os.path.isdir(root):
        raise CliError(f"{root} is not a directory")


def _cold_boot_after_panic(root: str, running) -> int:
    """`boot` where a machine runs: a fresh kernel #0 if its kernel died, else busy."""
    from .protocol import ColdBoot

    panic = running.machine.get("panic")
    if not panic:
        raise CliError(f"{root} is busy: a luofs kernel already serves it "
                       f"(luofs shutdown --root {root})")
    # The kernel died or refused its hand-over: what it held cannot be had back.
    print(f"luofs: {panic}; starting kernel #0 cold: preserved state is lost", file=sys.stderr)
    _ok(_ask(root, ColdBoot(), timeout=MACHINE_START_TIMEOUT), "cold boot")
    print(f"luofs: kernel #0 serves {root}/dev/liveupdate")
    return 0


def _clean_stale_mount(root: str) -> None:
    from .mounts import detach_mount, is_luofs, is_stale, mount_entry

    entry = mount_entry(root)
    if entry is None and not is_stale(root):
        return
    if not is_luofs(entry):
        what = f"a {entry[0]} file system is" if entry else "something unreachable is"
        raise CliError(f"{root} is busy: {what} mounted there (luofs cleans only its own)")
    detach_mount(root)
    print(f"luofs: cleaned a stale luofs mount at {root}", file=sys.stderr)


def _machine_config(root: str, args):
    """The options of `boot`, checked, as the MachineConfig the machine starts with."""
    from devices import parse_spec

    from .core import faults
    from .protocol_kernel import KernelConfig, MachineConfig

    try:
        parse_spec(args.devices)
    except ValueError as e:
        raise CliError(f"--devices: {e}") from None
    try:  # $LUOFS_FAULT arms points too, as --fault does
        armed = faults.parse(",".join([os.environ.get("LUOFS_FAULT", ""), *args.fault]))
    except ValueError as e:
        raise CliError(str(e)) from None
    kernel = KernelConfig(abi=args.abi, cmdline=args.cmdline, debugfs=args.debugfs,
                          faults=tuple(armed.items()), log_level=args.log_level or "")
    from . import cli_userspace

    return MachineConfig(root=root, memory=args.memory, devices=args.devices, kernel=kernel,
                         **cli_userspace.init_config(root, args))  # --init


class _DeferredSigint:
    """Ctrl-C held back while the machine is forked (its pid would be lost with it)."""

    def __enter__(self) -> "_DeferredSigint":
        self.pending = False
        try:
            self.previous = signal.signal(signal.SIGINT, self._hold)
            self.armed = True
        except ValueError:  # not the main thread (the CLI called in-process): nothing held
            self.armed = False
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def _hold(self, signum, frame):
        self.pending = True

    def restore(self) -> None:
        """Ctrl-C raises again from now on."""
        if self.armed:
            signal.signal(signal.SIGINT, self.previous)
            self.armed = False

    def take(self) -> None:
        """restore(), then raise the Ctrl-C held back, if any."""
        self.restore()
        if self.pending:
            raise KeyboardInterrupt


def _stop_starting_machine(pid: int, root: str) -> None:
    """End the machine `pid` that `boot` was starting, its kernel's mount and its state."""
    from . import teardown
    from .mounts import detach_mount

    try:
        teardown.stop_group(pid, asked=False)
    except teardown.TeardownError:
        pass  # it outlived SIGKILL: nothing more a CLI can do; the mount is still ours
    detach_mount(root)
    teardown.remove_state(root)


def _start_machine(config, state: str) -> int:
    """Start the machine in its own session; its pid once kernel #0 serves."""
    import socket
    import subprocess

    from . import protocol, wire
    from .protocol_kernel import Started

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    log_path = os.path.join(state, "machine.log")
    with ours, theirs, wire.open_log(log_path) as log_file, _DeferredSigint() as interrupted:
        proc = subprocess.Popen(
            [sys.executable, "-m", "luofs.machine", "--config-fd", str(theirs.fileno()),
             "--state-dir", state],
            pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=log_file,
            stderr=log_file, start_new_session=True)
        theirs.close()
        ours.settimeout(MACHINE_START_TIMEOUT)
        try:
            interrupted.take()  # a Ctrl-C while the machine was being started
            protocol.send(ours, config)
            reply, fds = protocol.recv(ours)
            protocol.close_fds(fds)
        except (OSError, protocol.ProtocolError) as e:
            reply = protocol.Error(str(e))
        except KeyboardInterrupt:  # Ctrl-C: no half-started instance is left behind
            _stop_starting_machine(proc.pid, config.root)
            raise
    if isinstance(reply, Started):
        return reply.pid
    if proc.poll() is None and reply is not None:
        proc.kill()
    proc.wait(10)
    raise CliError(getattr(reply, "error", None) or
                   f"the machine exited (status {proc.returncode}); see {log_path}")


def add_boot_options(boot: argparse.ArgumentParser) -> None:
    from . import personalities  # the one list of ABIs (their modules are not loaded)
    from .core.faults import POINTS

    boot.add_argument("--log-level", help="kernel log level (DEBUG shows why requests fail)")
    boot.add_argument("--abi", choices=personalities.names(), default=personalities.DEFAULT,
                      help="which LUO to emulate: mainline (sessions, the default); rfc-v1 "
                           "(sysfs state/prepare/finish, no device); rfc-v2 (ioctl events "
                           "and kernel-generated tokens)")
    boot.add_argument("--devices", nargs="?", const="default", default="none", metavar="SPEC",
                      help="emulated devices that keep running through live updates: "
                           "`--devices` alone gives the default set (a PCI bridge with two "
                           "DMA engines); SPEC is LABEL[@PARENT][:k=v,…];… with labels "
                           "bridgeN or dmaN and options rate=RECORDS_PER_S, ring=ENTRIES, "
                           "lu=0 (no liveupdate callbacks); default: none")
    boot.add_argument("--debugfs", action="store_true",
                      help="serve KHO's debugfs under sys/kernel/debug/kho/{out,in}")
    boot.add_argument("--cold", action="store_true",
                      help="accepted for clarity: after a kernel panic or crash, `boot` always "
                           "starts kernel #0 fresh and says what was lost")
    boot.add_argument("--memory", type=size, default=DEFAULT_MEMORY,
                      help="emulated physical memory, e.g. 256M or 4G (sparse; default 1G); preserved "
                           "memfds pin their pages in it: what does not fit fails with ENOMEM")
    boot.add_argument("--fault", action="append", default=[], metavar="POINT[:ERRNO]",
                      help="make a named callback fail in every kernel of this instance "
                           f"(default errno EIO); points: {', '.join(POINTS)}")
    boot.add_argument("--cmdline", default="liveupdate=on kho=on",
                      help="what proc/cmdline shows (default: %(default)s)")



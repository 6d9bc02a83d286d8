"""The `luofs` command: boot an emulated kernel, inspect it, stop it.

Every command takes --root DIR (default: $LUOFS_ROOT), the directory where the
emulated kernel serves dev/liveupdate, sys/ and proc/.
"""

# Imports are per subcommand (inside the functions): `luofs kexec` and `luofs status`
# are run by orchestrators in the pause of a live update, and must start in milliseconds.
from __future__ import annotations

import argparse
import os
import sys

EXIT_USAGE = 64  # sysexits EX_USAGE: `luofs kexec` exits with errnos, 2 would be ENOENT
DEFAULT_MEMORY = 1 << 30
MACHINE_START_TIMEOUT = 120.0


def _width() -> int:
    """The terminal's width, as argparse would find it, without its `import shutil` (which
    loads compression modules: milliseconds of every command's start)."""
    try:
        return int(os.environ["COLUMNS"]) - 2
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns - 2
    except (AttributeError, ValueError, OSError):
        return 78


class _Formatter(argparse.HelpFormatter):
    def __init__(self, prog, indent_increment=2, max_help_position=24, width=None):
        super().__init__(prog, indent_increment, max_help_position, width or _width())


class _RawFormatter(_Formatter, argparse.RawDescriptionHelpFormatter):
    pass


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


class CliError(Exception):
    pass


def _root(args) -> str:
    root = args.root or os.environ.get("LUOFS_ROOT")
    if not root:
        raise CliError("no root given: pass --root DIR or set LUOFS_ROOT")
    return os.path.realpath(root)


def _ask(root: str, message, timeout: float | None = 60.0):
    """The machine's reply to `message`; CliError saying why there is none."""
    from . import control, protocol

    try:
        return control.request(root, message, timeout)
    except (control.NoMachine, PermissionError) as e:
        raise CliError(e.strerror) from None
    except (OSError, protocol.ProtocolError) as e:
        raise CliError(f"{e}") from None


def _machine_answers(root: str):
    """The machine's MachineStatus, or None if none serves ROOT."""
    from . import control
    from .protocol import MachineStatus, StatusRequest

    try:
        reply = _ask(root, StatusRequest(), timeout=10)
    except CliError as e:
        if isinstance(e.__context__, (control.NoMachine, control.MachineGone)):
            return None  # none listens, or it is on its way out
        raise
    if not isinstance(reply, MachineStatus):
        _ok(reply, "status")
        raise CliError(f"the machine answered status with {reply.TAG}")
    return reply


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
    if not os.path.exists("/dev/fuse"):
        raise CliError("FUSE is missing: /dev/fuse does not exist (modprobe fuse, or install fuse3)")
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


def _start_machine(config, state: str) -> int:
    """Start the machine in its own session; its pid once kernel #0 serves."""
    import socket
    import subprocess

    from . import protocol, wire
    from .protocol_kernel import Started

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    log_path = os.path.join(state, "machine.log")
    with ours, theirs, wire.open_log(log_path) as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "luofs.machine", "--config-fd", str(theirs.fileno()),
             "--state-dir", state],
            pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=log_file,
            stderr=log_file, start_new_session=True)
        theirs.close()
        ours.settimeout(MACHINE_START_TIMEOUT)
        try:
            protocol.send(ours, config)
            reply, fds = protocol.recv(ours)
            protocol.close_fds(fds)
        except (OSError, protocol.ProtocolError) as e:
            reply = protocol.Error(str(e))
    if isinstance(reply, Started):
        return reply.pid
    if proc.poll() is None and reply is not None:
        proc.kill()
    proc.wait(10)
    raise CliError(getattr(reply, "error", None) or
                   f"the machine exited (status {proc.returncode}); see {log_path}")


def _ok(reply, what: str):
    """`reply`, unless it is an Error: then CliError saying why `what` failed."""
    from .protocol import Error

    if isinstance(reply, Error):
        raise CliError(reply.error or f"{what} failed")
    return reply


def cmd_kexec(args) -> int:
    from . import cli_userspace
    from .protocol import Error, KexecDone, KexecLoad

    root = _root(args)
    request = cli_userspace.kexec_request(args)  # --cmdline, --load, --keep-userspace
    reply = _ask(root, request, timeout=600)
    if isinstance(request, KexecLoad):
        return cli_userspace.kexec_load_status(reply)
    if isinstance(reply, Error):
        print(f"luofs kexec: {reply.error}", file=sys.stderr)
        if reply.errno:  # the freeze refused: the old kernel keeps running, nothing changed
            print("luofs kexec: the running kernel keeps serving; nothing was changed",
                  file=sys.stderr)
            return reply.errno if reply.errno > 1 else 1
        return 1
    if not isinstance(reply, KexecDone):
        raise CliError(f"the machine answered kexec with {reply.TAG}")
    print(f"luofs: live update done: kernel #{reply.liveupdate_number} serves {root}; "
          f"carried {reply.sessions} session(s), {reply.files} file(s); "
          f"blackout {reply.blackout_ms:.1f} ms (freeze + hand-over {reply.freeze_ms:.1f}, "
          f"next kernel up {reply.start_ms:.1f})")
    if reply.dropped:  # as the kernel does: what nobody retrieved ends here
        print(f"luofs: dropped {reply.dropped} incoming session(s) nobody retrieved "
              f"from the previous update", file=sys.stderr)
    if reply.lost:  # the update happened, but not everything arrived: say what, and fail
        lost = reply.lost
        sessions = ", ".join(f"'{name}' ({n})" for name, n in lost["sessions"].items())
        print(f"luofs kexec: {lost['files']} preserved file(s) were lost with a file keeper "
              f"that died during the update{': sessions ' + sessions if sessions else ''}",
              file=sys.stderr)
        return 1
    return 0


def cmd_kho_dump(args) -> int:
    import json

    from .protocol import KhoDumpRequest

    fmt = "dts" if args.dts else "json"
    if args.file:
        import kho  # only this subcommand needs it

        with open(args.file, "rb") as f:
            blob = f.read()
        try:
            if fmt == "dts":
                print(kho.dump_dts(blob), end="")
            else:
                print(json.dumps(kho.dump_json(blob), indent=2))
        except kho.KhoFormatError as e:
            raise CliError(f"{args.file}: {e}") from None
        return 0
    root = _root(args)
    reply = _ok(_ask(root, KhoDumpRequest("in" if args.incoming else "out", fmt)), "kho dump")
    print(reply.text, end="") if fmt == "dts" else print(json.dumps(reply.tree, indent=2))
    return 0


def cmd_run(args) -> int:
    import shutil

    from . import supervise

    root = _root(args)
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise CliError("nothing to run: luofs run --root DIR -- PROG ARGS…")
    if not os.path.isdir(os.path.join(root, "sys", "kernel", "liveupdate")):  # every ABI's
        raise CliError(f"no luofs kernel serves {root} (luofs boot --root {root})")
    luofs_bin = os.path.abspath(sys.argv[0]) if os.path.basename(
        sys.argv[0]) == "luofs" else shutil.which("luofs") or "luofs"
    try:
        command, env = supervise.command(root, argv, dict(os.environ), luofs_bin)
    except supervise.NotBuilt as e:
        raise CliError(str(e)) from None
    from . import cli_userspace

    return cli_userspace.run(root, command, env, _machine_answers(root), argv[0])


def cmd_status(args) -> int:
    root = _root(args)
    reply = _machine_answers(root)
    if reply is None:
        from .mounts import is_luofs, mount_entry

        entry = mount_entry(root)
        if is_luofs(entry):
            raise CliError(f"{root} has a stale luofs mount and no machine; "
                           f"`luofs boot --root {root}` cleans it")
        other = f" (a {entry[0]} file system is mounted there)" if entry else ""
        raise CliError(f"no luofs kernel serves {root}{other}")
    if args.json:
        import json

        from .client import status_dict

        print(json.dumps(status_dict(reply), indent=2))
        return 0
    k, m = reply.kernel, reply.machine
    print(f"root:            {m['root']}")
    print(f"machine:         pid {m['pid']}, up {m['uptime_s']} s, logs in {m['state_dir']}")
    print(f"live updates:    {m['kexecs']}, last blackout {m['last_blackout_ms']} ms")
    from . import cli_userspace

    for line in cli_userspace.status_lines(m):
        print(line)
    if k is None:
        print(f"kernel:          none — {m.get('kernel_problem') or m['panic']}")
        return 0
    _print_kernel(k, m)
    return 0


def _print_kernel(k: dict, m: dict) -> None:
    print(f"kernel:          pid {k['pid']}, {k['abi']}, liveupdate number "
          f"{k['liveupdate_number']}, state {k['state']}")
    for keeper in k.get("keepers", []):
        if not keeper["alive"]:
            print(f"file keeper:     pid {keeper['pid']} died holding {keeper['files']} file(s)")
    if k.get("lost"):
        print("lost files:      " + ", ".join(f"{owner} ({n})" for owner, n in k["lost"].items())
              + " — a live update is refused until they are closed")
    if k.get("lost_at_boot"):
        lost = k["lost_at_boot"]
        print(f"lost at boot:    {lost['files']} file(s) of "
              + (", ".join(f"'{name}' ({n})" for name, n in lost["sessions"].items())
                 or "the hand-over") + " died with a file keeper during the update")
    if k["device_open"] is not None:
        print(f"/dev/liveupdate: {'open' if k['device_open'] else 'closed'}")
    for name, data in k.get("subsystems", {}).items():
        print(f"subsystem:       {name} data {data:#x}")
    if "files" in k:
        print(f"files:           outgoing tokens {k['files']['outgoing']}, "
              f"incoming {k['files']['incoming']}")
    _print_devices(m.get("devices", []), k.get("devices", []))
    if k["abi"] == "mainline":
        print(f"sessions:        {len(k['sessions'])}")
    shown = 20
    for s in k["sessions"][:shown]:
        extra = " (retrieved)" if s["retrieved"] else ""
        print(f"  {s['direction']:8} {s['name']}: {s['files']} file(s){extra}")
    if len(k["sessions"]) > shown:
        print(f"  … and {len(k['sessions']) - shown} more (luofs status --json lists all)")


def _print_devices(machine: list[dict], kernel: list[dict]) -> None:
    """One line per DMA engine: what the hardware did beside what its driver saw."""
    drivers = {d["path"]: d for d in kernel}
    for dev in machine:
        if dev.get("kind") != "dma":
            continue
        drv = drivers.get(dev["path"], {})
        flags = "/".join("1" if drv.get(name) else "0"
                         for name in ("requested", "preserved", "reclaimed"))
        print(f"device:          {dev['label']} requested/preserved/reclaimed {flags}: written {dev['records_written']}, "
              f"received {drv.get('records_received', 0)} (this kernel "
              f"{drv.get('records_received_this_kernel', 0)}), gaps {drv.get('seq_gaps', 0)}, "
              f"irq {dev['irq_raised']} raised / {dev['irq_delivered']} delivered / "
              f"{dev['irq_pending']} pending, resets {dev['resets']}")


def cmd_vm(args) -> int:
    from .vm import VmError, cli as vm_cli  # QEMU's driver: only this subcommand needs it

    try:
        return vm_cli.run(args, _root(args))
    except (VmError, ValueError) as e:
        raise CliError(str(e)) from None


def cmd_shutdown(args) -> int:
    from . import control, teardown
    from .mounts import detach_mount
    from .wire import state_dir

    root = _root(args)
    try:
        keep = teardown.shutdown(root, say=lambda text: print(f"luofs: {text}", file=sys.stderr))
    except control.NoMachine:
        from .mounts import mount_entry

        if detach_mount(root) and mount_entry(root) is None:
            print(f"luofs: no machine served {root}; removed its stale mount", file=sys.stderr)
            return 0
        raise CliError(f"no luofs kernel serves {root}") from None
    except (OSError, teardown.TeardownError) as e:
        raise CliError(getattr(e, "strerror", None) or str(e)) from None
    detach_mount(root)  # a kernel killed by force leaves its mount behind
    state = state_dir(root)
    if args.keep_logs or keep:
        print(f"luofs: {root} unmounted; logs kept in {state}")
        return 0
    why = teardown.remove_state(root)  # a clean run leaves nothing behind
    if why:
        print(f"luofs: kept the state dir: {why}", file=sys.stderr)
    print(f"luofs: {root} unmounted")
    return 0


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        value = int(text[:-1]) * units[text[-1]] if text[-1:] in units else int(text)
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None
    if value <= 0 or value % 4096:
        raise argparse.ArgumentTypeError("memory must be a positive multiple of 4096")
    return value


def _add_boot_options(boot: argparse.ArgumentParser) -> None:
    from .core.faults import POINTS

    boot.add_argument("--log-level", help="kernel log level (DEBUG shows why requests fail)")
    boot.add_argument("--abi", choices=["mainline", "rfc-v1", "rfc-v2"], default="mainline",
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
    boot.add_argument("--memory", type=_size, default=DEFAULT_MEMORY,
                      help="emulated physical memory, e.g. 256M or 4G (sparse; default 1G); preserved "
                           "memfds pin their pages in it: what does not fit fails with ENOMEM")
    boot.add_argument("--fault", action="append", default=[], metavar="POINT[:ERRNO]",
                      help="make a named callback fail in every kernel of this instance "
                           f"(default errno EIO); points: {', '.join(POINTS)}")
    boot.add_argument("--cmdline", default="liveupdate=on kho=on",
                      help="what proc/cmdline shows (default: %(default)s)")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; given the `command` about to run, only what that one needs."""
    p = _Parser(
        prog="luofs", description=__doc__,
        formatter_class=_RawFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           parser_class=_Parser)

    def add(name, func, help_text):
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.add_argument("--root", help="directory the kernel serves (default: $LUOFS_ROOT)")
        sp.set_defaults(func=func)
        return sp

    boot = add("boot", cmd_boot, "start the machine and kernel #0 in the background; return "
               "once ROOT/dev/liveupdate is served (cleans a stale mount left at ROOT)")
    if command in (None, "boot"):  # its options need the fault list, and little else does
        _add_boot_options(boot)
    from . import cli_userspace

    cli_userspace.add_boot_options(boot)
    kexec = add("kexec", cmd_kexec, "live update: freeze, hand over through KHO to a new kernel "
                "process; returns when it serves. On a freeze failure the running kernel keeps "
                "serving and the exit status is the errno. The old kernel's userspace ends "
                "after the freeze; the next kernel's starts (with --init) once it serves")
    cli_userspace.add_kexec_options(kexec)
    run = add("run", cmd_run, "run an unmodified program (dynamic or static) in the current "
              "kernel's userspace (its PID and mount namespaces, where /dev/liveupdate, "
              "/proc/cmdline and /sys/kernel/liveupdate are the emulator's) under the seccomp "
              "supervisor, with the LD_PRELOAD shim if it is dynamic, so its ioctl(), "
              "readlink/fstatfs of session fds and reboot(LINUX_REBOOT_CMD_KEXEC) reach this "
              "emulator; exits with its status")
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- PROG ARGS…")
    khop = sub.add_parser("kho", help="inspect KHO hand-over blobs",
                          description="inspect KHO hand-over blobs")
    kho_sub = khop.add_subparsers(dest="kho_command", required=True, metavar="KHO_COMMAND")
    dump = kho_sub.add_parser(
        "dump", help="print a KHO root tree as JSON (default) or DTS",
        description="print a KHO root tree: from FILE (e.g. a copy of "
                    "sys/kernel/debug/kho/out/fdt), or from the kernel serving --root, "
                    "with LUO's sessions and files decoded from its memory")
    dump.add_argument("file", nargs="?", help="a blob file (default: the live kernel's)")
    dump.add_argument("--root", help="directory the kernel serves (default: $LUOFS_ROOT)")
    dump.add_argument("--in", dest="incoming", action="store_true",
                      help="what the running kernel received, not what it would hand over")
    dump.add_argument("--dts", action="store_true", help="device-tree source via dtc")
    dump.set_defaults(func=cmd_kho_dump)
    status = add("status", cmd_status, "show the machine, the kernel and its sessions")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    vm = add("vm", cmd_vm, "a QEMU virtual machine whose guest RAM is a preserved memfd: it "
             "pauses at each live update and goes on in the next kernel")
    vm.add_argument("action", choices=["start", "status", "check", "stop"],
                    help="start a VM; show it and its last update's pause; make the guest "
                         "re-check all its RAM; stop it")
    vm.add_argument("--name", default="vm0", help="the VM's name (default: %(default)s)")
    vm.add_argument("--ram", type=_size, help="start: guest RAM, e.g. 64M or 4G")
    vm.add_argument("--json", action="store_true", help="status: machine-readable output")
    vm.set_defaults(qemu_args=[])  # start: extra QEMU arguments after `--` (see main)
    vm.epilog = "luofs vm start --ram SIZE [--name NAME] [-- EXTRA QEMU ARGUMENTS]"
    shutdown = add("shutdown", cmd_shutdown, "stop the kernel and machine and unmount ROOT; "
                   "remove the instance's logs unless a kernel panicked or died")
    shutdown.add_argument("--keep-logs", action="store_true",
                          help="keep the machine and kernel logs (luofs status shows where)")
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv and not argv[0].startswith("-") else None
    qemu_args = []
    if command == "vm" and "--" in argv:  # QEMU's arguments, whatever they look like
        argv, qemu_args = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    args = build_parser(command).parse_args(argv)
    if qemu_args:
        args.qemu_args = qemu_args
    try:
        return args.func(args)
    except CliError as e:
        print(f"luofs {args.command}: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `luofs status | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a shell reports a process ended by SIGPIPE
    except Exception as e:  # never a traceback for a user: say what failed, and how to see more
        if os.environ.get("LUOFS_DEBUG"):
            raise
        print(f"luofs {args.command}: {type(e).__name__}: {e} (LUOFS_DEBUG=1 shows where)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

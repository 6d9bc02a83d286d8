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
EXIT_INTERRUPTED = 130  # as a shell reports a process ended by SIGINT
EXIT_CLOSED_PIPE = 141  # ... and by SIGPIPE
DEFAULT_MEMORY = 1 << 30
MACHINE_START_TIMEOUT = 120.0

EXIT_STATUS = """\
exit status:
  0       done
  1       failed; the one-line message says why (also: `kexec` carried out the update
          but files died with a file keeper; `vm check` found wrong RAM words)
  ERRNO   `kexec`, `kexec --load`: refused with this errno (e.g. 16 for EBUSY); the
          running kernel keeps serving and nothing was changed
  64      usage error (a bad option or argument)
  130     interrupted (Ctrl-C); `kexec` goes on in the machine: `status` tells the end
  141     the reader of standard output went away (`luofs status | head`); no message
  `run` exits with its program's status (128+N when a signal N ended it)"""


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


def _ask(root: str, message, timeout: float | None = 60.0, on_progress=None):
    """The machine's reply to `message`; CliError saying why there is none."""
    from . import control, protocol

    try:
        return control.request(root, message, timeout, on_progress)
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
    from . import cli_boot  # its checks and the machine's start: only boot needs them

    return cli_boot.cmd_boot(args)


def cmd_status(args) -> int:
    from . import cli_status

    return cli_status.cmd_status(args)


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
    watch = cli_userspace.ProgressLine() if sys.stderr.isatty() else None
    request = cli_userspace.kexec_request(args, watch)  # --cmdline, --load, --keep-userspace
    try:
        reply = _ask(root, request, timeout=600, on_progress=watch and watch.show)
    finally:
        if watch is not None:
            watch.clear()
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
    from . import cli_trace

    cli_trace.print_breakdown(root, reply.liveupdate_number)
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


def cmd_trace(args) -> int:
    from . import cli_trace

    return cli_trace.cmd_trace(args, _root(args))


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


def cmd_vm(args) -> int:
    from .vm import VmError, cli as vm_cli  # QEMU's driver: only this subcommand needs it

    try:
        return vm_cli.run(args, _root(args))
    except (VmError, ValueError) as e:
        raise CliError(str(e)) from None


def cmd_doctor(args) -> int:
    from . import doctor

    return doctor.run(as_json=args.json)


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


def size(text: str) -> int:
    """A size argument: 4096, 64M, 4G (a positive multiple of 4096)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        value = int(text[:-1]) * units[text[-1]] if text[-1:] in units else int(text)
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None
    if value <= 0 or value % 4096:
        raise argparse.ArgumentTypeError("memory must be a positive multiple of 4096")
    return value


def _update_number(text: str):
    if text == "last":
        return None
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not an update: {text!r} (N ≥ 1, or last)")
    return int(text)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; given the `command` about to run, only what that one needs."""
    p = _Parser(
        prog="luofs", description=__doc__, epilog=EXIT_STATUS,
        formatter_class=_RawFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           parser_class=_Parser)

    def add(name, func, help_text):
        sp = sub.add_parser(name, help=help_text, description=help_text,
                            epilog="exit status: see `luofs --help`")
        sp.add_argument("--root", help="directory the kernel serves (default: $LUOFS_ROOT)")
        sp.set_defaults(func=func)
        return sp

    boot = add("boot", cmd_boot, "start the machine and kernel #0 in the background; return "
               "once ROOT/dev/liveupdate is served (cleans a stale mount left at ROOT)")
    if command in (None, "boot"):  # its options need the fault list, and little else does
        from . import cli_boot

        cli_boot.add_boot_options(boot)
    from . import cli_userspace

    cli_userspace.add_boot_options(boot)
    kexec = add("kexec", cmd_kexec, "live update: freeze, hand over through KHO to a new kernel "
                "process; returns when it serves and prints the blackout, then its main phases "
                "(all of them: luofs trace); on a terminal a long update shows its progress. "
                "On a freeze failure the running kernel keeps "
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
    trace = add("trace", cmd_trace, "a live update's phases, as every process of it recorded "
                "them: a Chrome/Perfetto trace (JSON that ui.perfetto.dev and chrome://tracing "
                "open) and a PNG timeline. Works after `luofs shutdown --keep-logs` too")
    trace.add_argument("--update", type=_update_number, default="last", metavar="N|last",
                       help="which live update: N is the number of the kernel it started "
                            "(default: the last one recorded)")
    trace.add_argument("-o", "--output", metavar="FILE.json",
                       help="write the Chrome/Perfetto trace there ('-': stdout; the default "
                            "when no --png is given)")
    trace.add_argument("--png", metavar="FILE.png",
                       help="draw the timeline (needs matplotlib: pip install 'luofs[png]')")
    trace.epilog = ("exit status: 0 written; 1 no such trace (none recorded, LUOFS_TRACE=0, "
                    "or the state dir is gone), no matplotlib for --png (nothing is written), "
                    "or a file that cannot be written; 64 a bad option")
    status = add("status", cmd_status, "show the machine, the kernel and its sessions")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    vm = add("vm", cmd_vm, "a QEMU virtual machine whose guest RAM is a preserved memfd: it "
             "pauses at each live update and goes on in the next kernel. Its VMM runs in "
             "the kernel's userspace; mainline: it preserves the VM in a LUO session and the "
             "kexec prepares it; RFC profiles: the VM is the kvm subsystem's, and the state "
             "machine's PREPARE stops and saves it (sysfs prepare / EVENT_PREPARE)")
    vm.add_argument("action", choices=["start", "status", "check", "stop"],
                    help="start a VM; show it and its last update's pause; make the guest "
                         "re-check all its RAM; stop it")
    vm.add_argument("--name", default="vm0", help="the VM's name (default: %(default)s)")
    vm.add_argument("--ram", type=size, help="start: guest RAM, e.g. 64M or 4G")
    vm.add_argument("--kernel", help="start: boot this kernel (e.g. a Linux bzImage) instead of "
                    "luofs's bare-metal test guest; every later VMM reads it again")
    vm.add_argument("--initrd", help="start: the kernel's initramfs")
    vm.add_argument("--append", help="start: the kernel's command line, e.g. 'console=ttyS0'")
    vm.add_argument("--json", action="store_true", help="status: machine-readable output")
    vm.set_defaults(qemu_args=[])  # start: extra QEMU arguments after `--` (see main)
    vm.epilog = ("luofs vm start --ram SIZE [--name NAME] [--kernel FILE [--initrd FILE] "
                 "[--append LINE]] [-- EXTRA QEMU ARGUMENTS]")
    doctor = sub.add_parser(
        "doctor", help="check this machine for everything luofs needs, and say how to get "
                       "what is missing",
        description="check this machine for everything luofs needs: FUSE, root, the kernel's "
                    "seccomp user notification, pidfds of threads and namespaces, memfds, the "
                    "native pieces (and where they are), QEMU and KVM for luofs vm. One line a "
                    "check: ok, MISSING (required by boot, run or kexec) or optional, with the "
                    "fix. Exit status: 0 when everything required is there, 1 otherwise")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.set_defaults(func=cmd_doctor)
    shutdown = add("shutdown", cmd_shutdown, "stop the kernel and machine and unmount ROOT; "
                   "remove the instance's logs unless a kernel panicked or died")
    shutdown.add_argument("--keep-logs", action="store_true",
                          help="keep the machine and kernel logs (luofs status shows where)")
    return p


# What Ctrl-C leaves behind, where that is not "nothing happened".
_INTERRUPTED = {
    "kexec": "; the machine carries the live update through on its own "
             "(`luofs status` says how it ended)",
    "boot": "; the machine it was starting was stopped",
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv and not argv[0].startswith("-") else None
    try:
        return _main(argv, command)
    except KeyboardInterrupt:  # never a traceback for Ctrl-C, wherever it lands
        print(f"luofs{' ' + command if command else ''}: interrupted"
              f"{_INTERRUPTED.get(command, '')}", file=sys.stderr)
        return EXIT_INTERRUPTED


def _main(argv: list[str], command: str | None) -> int:
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
        return EXIT_CLOSED_PIPE
    except Exception as e:  # never a traceback for a user: say what failed, and how to see more
        if os.environ.get("LUOFS_DEBUG"):
            raise
        print(f"luofs {args.command}: {type(e).__name__}: {e} (LUOFS_DEBUG=1 shows where)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

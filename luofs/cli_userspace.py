"""The `luofs` command's userspace parts: `boot --init`, `kexec`'s load options, `run`, status.

cli.py calls in here from its subcommands (imported only by those that need it); the
machine's side is luofs/userspace.py and luofs/kexec_image.py.

Unhappy paths: every refusal is a CliError with the message the user sees — an --init
that is not an executable, init arguments without --init, --load/--unload mixed with
other options, a kernel whose userspace has ended or cannot be joined. Without a
userspace at all (no root, launcher not built) `luofs run` warns and runs the program
as a plain process.
"""

from __future__ import annotations

import os
import sys

from .cli import CliError  # cli imports this module only from its subcommands


def add_boot_options(boot) -> None:
    boot.add_argument("--init", metavar="PROG",
                      help="run PROG (with the shim) as PID 1 of every kernel's userspace: "
                           "kernel #0 and each next one; when it exits the userspace is "
                           "over and `luofs status` says how it ended")
    boot.add_argument("init_args", nargs="*", metavar="-- ARGS", help="arguments for --init")


def add_kexec_options(kexec) -> None:
    kexec.add_argument("--cmdline", help="the next kernel's proc/cmdline (default: the loaded "
                       "image's, else the running kernel's)")
    kexec.add_argument("--load", action="store_true", help="only load the next kernel (with "
                       "--cmdline), as kexec_file_load(2) or `kexec -l` does")
    kexec.add_argument("--unload", action="store_true", help="forget a loaded next kernel")
    kexec.add_argument("--keep-userspace", action="store_true",
                       help="deviation, for a harness that drives the update from inside: "
                            "the userspace survives and is given the next kernel's files")


def init_config(root: str, args) -> dict:
    """MachineConfig's init fields: `--init PROG [-- ARGS]` and what the shim needs."""
    if args.init_args and not args.init:
        raise CliError(f"arguments {' '.join(args.init_args)!r} given without --init PROG")
    if not args.init:
        return {}
    import shutil  # here: `luofs kexec` and `status` must start lean

    program = shutil.which(args.init)
    if program is None:
        raise CliError(f"--init {args.init}: no such executable")
    from . import native

    if os.geteuid() != 0:
        raise CliError("--init needs root: a userspace is a set of namespaces")
    if not os.path.exists(native.path(native.USERSPACE)):
        raise CliError("--init needs the userspace launcher: "
                       f"{native.missing(native.USERSPACE)}")
    return {"init": (os.path.abspath(program), *args.init_args),
            "init_env": tuple(program_env(root, {}).items())}


def kexec_request(args, watch=None):
    """KexecLoad for --load/--unload, else KexecRequest (with progress for `watch`)."""
    from .protocol import KexecLoad, KexecRequest

    if args.load or args.unload:
        if args.load and args.unload or args.keep_userspace:
            raise CliError("--load and --unload go alone (--cmdline with --load)")
        if args.unload and args.cmdline is not None:
            raise CliError("--unload takes no --cmdline")
        return KexecLoad(cmdline=args.cmdline, unload=args.unload)
    return KexecRequest(cmdline=args.cmdline, keep_userspace=args.keep_userspace,
                        progress_ms=watch.every_ms if watch is not None else None)


class ProgressLine:
    """A long update's progress on one stderr line, rewritten in place: for a terminal
    only (never a pipe). The machine and the kernel send it at most every
    $LUOFS_PROGRESS_MS (default 200), and not before that long: short updates show none."""

    DEFAULT_MS = 200

    def __init__(self):
        try:
            self.every_ms = max(0, int(os.environ.get("LUOFS_PROGRESS_MS") or self.DEFAULT_MS))
        except ValueError:
            self.every_ms = self.DEFAULT_MS
        self.shown = False

    def show(self, progress) -> None:
        count = f": {progress.done:,}/{progress.total:,}" if progress.total else ""
        sys.stderr.write(f"\r\x1b[Kluofs kexec: {progress.what}{count} …")
        sys.stderr.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self.shown = False


def kexec_load_status(reply) -> int:
    """As `kexec -l`: silent unless it fails, then the errno as exit status."""
    from .protocol import Error, Ok

    if isinstance(reply, Ok):
        return 0
    if isinstance(reply, Error):
        print(f"luofs kexec: {reply.error}", file=sys.stderr)
        return reply.errno or 1
    raise CliError(f"the machine answered kexec-load with {reply.TAG}")


def program_env(root: str, env: dict) -> dict:
    """What an --init needs for its /dev/liveupdate calls to reach this emulator: the
    shim (PID 1 is the program itself, so no supervisor can stand in front of it)."""
    from . import supervise

    try:
        shim = supervise.shim_path()
    except supervise.NotBuilt as e:
        raise CliError(str(e)) from None
    env["LD_PRELOAD"] = " ".join(filter(None, [shim, env.get("LD_PRELOAD")]))
    env["LUOFS_ROOT"] = root
    # reboot(LINUX_REBOOT_CMD_KEXEC) in the program runs this very `luofs`.
    import shutil

    env.setdefault("LUOFS_BIN", os.path.abspath(sys.argv[0]) if os.path.basename(
        sys.argv[0]) == "luofs" else shutil.which("luofs") or "luofs")
    return env


def run(root: str, command: list[str], env: dict, status, name: str) -> int:
    """Join the current kernel's userspace (`status`: the machine's MachineStatus) and run
    `command` there: the supervisor's command line for program `name` (supervise.py)."""
    from . import userspace

    if status is None:
        raise CliError(f"no luofs kernel serves {root} (luofs boot --root {root})")
    us = status.machine.get("userspace") or {}
    if not us.get("running") and str(us.get("ended")).startswith("none:"):
        # Namespaces need root (or the launcher was not built): run as a plain process.
        print(f"luofs run: warning: kernel #{us.get('kernel')} has no userspace "
              f"({us['ended'][6:]}); {name} runs outside it, as a plain process",
              file=sys.stderr)
        try:
            os.execvpe(command[0], command, env)
        except OSError as e:
            raise CliError(f"{command[0]}: {e.strerror}") from None
    if not us.get("running"):
        raise CliError(f"kernel #{us.get('kernel')} has no userspace: {us.get('ended')}")
    from .freezer import of_process

    cgroup = of_process(us["pid"])  # (read while our /proc is the host's)
    try:
        pid1 = userspace.join(us["pid"])
    except OSError as e:
        raise CliError(f"cannot join the userspace of kernel #{us['kernel']}: "
                       f"{e.strerror}") from None
    return userspace.run_joined(command, env, pid1, name, cgroup)


def status_lines(machine: dict) -> list[str]:
    """`luofs status`: the userspace, and a loaded next kernel."""
    us, image, lines = machine.get("userspace"), machine.get("next_kernel"), []
    made = machine.get("next_userspace")
    if us is not None and str(us["ended"]).startswith("none:"):
        lines.append(f"userspace:       none ({us['ended'][6:]}): luofs run runs plain "
                     "processes")
    elif us is not None:
        who = " ".join(us["init"]) if us["init"] else "reaper"
        state = f"PID 1 is pid {us['pid']}" if us["running"] else f"ended: {us['ended']}"
        lines.append(f"userspace:       kernel #{us['kernel']}, init {who}; {state}")
    if made is not None and made["running"]:
        lines.append(f"next userspace:  made ahead of time for kernel #{made['kernel']} "
                     f"(PID 1 is pid {made['pid']}, waiting for the kexec)")
    if image is not None and image["loaded"]:
        cmdline = image["cmdline"] if image["cmdline"] is not None else "(the running one)"
        lines.append(f"next kernel:     loaded, cmdline {cmdline}")
    return lines

"""The `luofs` command: boot an emulated kernel, inspect it, stop it.

Every command takes --root DIR (default: $LUOFS_ROOT), the directory where the
emulated kernel serves dev/liveupdate, sys/ and proc/.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import subprocess
import sys

from devices import parse_spec

from . import wire
from .core import faults
from .mounts import detach_mount, is_stale, mount_entry

EXIT_USAGE = 64  # sysexits EX_USAGE: `luofs kexec` exits with errnos, 2 would be ENOENT


class _Parser(argparse.ArgumentParser):
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


def _machine_answers(root: str) -> dict | None:
    try:
        return wire.request(root, {"op": "status"}, timeout=10)
    except (ConnectionError, FileNotFoundError):
        return None  # none listens, or it is on its way out


def cmd_boot(args) -> int:
    root = _root(args)
    if not os.path.exists("/dev/fuse"):
        raise CliError("FUSE is missing: /dev/fuse does not exist (modprobe fuse, or install fuse3)")
    if not os.path.isdir(root):
        raise CliError(f"{root} is not a directory")
    running = _machine_answers(root)
    if running is not None:
        panic = running["machine"].get("panic")
        if panic:
            # The kernel died or refused its hand-over: what it held cannot be had back.
            print(f"luofs: {panic}; starting kernel #0 cold: preserved state is lost",
                  file=sys.stderr)
            _ok(wire.request(root, {"op": "cold-boot"}, timeout=120), "cold boot")
            print(f"luofs: kernel #0 serves {root}/dev/liveupdate")
            return 0
        raise CliError(f"{root} is busy: a luofs kernel already serves it "
                       f"(luofs shutdown --root {root})")
    entry = mount_entry(root)
    if entry is not None or is_stale(root):
        if entry is not None and not entry[0].startswith("fuse"):
            raise CliError(f"{root} is busy: a {entry[0]} file system is mounted there")
        detach_mount(root)
        print(f"luofs: cleaned a stale FUSE mount at {root}", file=sys.stderr)
    if os.listdir(root):
        raise CliError(f"{root} is not empty: luofs mounts over it and would hide its files")
    try:
        parse_spec(args.devices)
    except ValueError as e:
        raise CliError(f"--devices: {e}") from None
    kernel_args = (["--cmdline", args.cmdline, "--abi", args.abi]
                   + (["--debugfs"] if args.debugfs else []))
    for fault in args.fault:
        try:
            faults.parse(fault)
        except ValueError as e:
            raise CliError(str(e)) from None
        kernel_args += ["--fault", fault]
    if args.log_level:
        kernel_args += ["--log-level", args.log_level]
    state = wire.state_dir(root)  # only once everything is known to be valid
    read_end, write_end = os.pipe()
    with open(os.path.join(state, "machine.log"), "ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "luofs.machine", "--root", root, "--ready-fd", str(write_end),
             "--state-dir", state, "--memory", str(args.memory), "--devices", args.devices,
             "--", *kernel_args],
            pass_fds=[write_end], stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
            start_new_session=True)
    os.close(write_end)
    with os.fdopen(read_end) as ready:
        line = ready.readline().strip()
    if not line.startswith("ready"):
        proc.wait(10)
        raise CliError(line.removeprefix("error: ") or
                       f"the machine exited (status {proc.returncode}); "
                       f"see {os.path.join(state, 'machine.log')}")
    served = f"{root}/dev/liveupdate" if args.abi != "rfc-v1" else f"{root}/sys (rfc-v1)"
    print(f"luofs: kernel #0 serves {served} (machine pid {proc.pid})")
    return 0


def _ok(reply: dict, what: str) -> dict:
    if not reply.get("ok"):
        raise CliError(reply.get("error") or f"{what} failed")
    return reply


def cmd_kexec(args) -> int:
    root = _root(args)
    try:
        reply = wire.request(root, {"op": "kexec"}, timeout=600)
    except (ConnectionError, FileNotFoundError):
        raise CliError(f"no luofs kernel serves {root}") from None
    if not reply.get("ok"):
        code = reply.get("errno")
        print(f"luofs kexec: {reply.get('error')}", file=sys.stderr)
        if code:  # the freeze refused: the old kernel keeps running, nothing changed
            print("luofs kexec: the running kernel keeps serving; nothing was changed",
                  file=sys.stderr)
            return code if code > 1 else 1
        return 1
    print(f"luofs: live update done: kernel #{reply['liveupdate_number']} serves {root}; "
          f"carried {reply['sessions']} session(s), {reply['files']} file(s); "
          f"blackout {reply['blackout_ms']:.1f} ms (freeze + hand-over {reply['freeze_ms']:.1f}, "
          f"next kernel up {reply['start_ms']:.1f})")
    if reply.get("dropped"):  # as the kernel does: what nobody retrieved ends here
        print(f"luofs: dropped {reply['dropped']} incoming session(s) nobody retrieved "
              f"from the previous update", file=sys.stderr)
    lost = reply.get("lost")
    if lost:  # the update happened, but not everything arrived: say what, and fail
        sessions = ", ".join(f"'{name}' ({n})" for name, n in lost["sessions"].items())
        print(f"luofs kexec: {lost['files']} preserved file(s) were lost with a file keeper "
              f"that died during the update{': sessions ' + sessions if sessions else ''}",
              file=sys.stderr)
        return 1
    return 0


def cmd_kho_dump(args) -> int:
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
    try:
        reply = wire.request(root, {"op": "kho-dump", "which": "in" if args.incoming else "out",
                                    "format": fmt})
    except (ConnectionError, FileNotFoundError):
        raise CliError(f"no luofs kernel serves {root}") from None
    _ok(reply, "kho dump")
    print(reply["text"], end="") if fmt == "dts" else print(json.dumps(reply["json"], indent=2))
    return 0


def cmd_run(args) -> int:
    from . import supervise

    root = _root(args)
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise CliError("nothing to run: luofs run --root DIR -- PROG ARGS…")
    if not os.path.exists(os.path.join(root, "dev", "liveupdate")):
        raise CliError(f"no luofs kernel serves {root} (luofs boot --root {root})")
    luofs_bin = os.path.abspath(sys.argv[0]) if os.path.basename(
        sys.argv[0]) == "luofs" else shutil.which("luofs") or "luofs"
    try:
        argv, env = supervise.command(root, argv, dict(os.environ), luofs_bin)
    except supervise.NotBuilt as e:
        raise CliError(str(e)) from None
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as e:
        raise CliError(f"{argv[0]}: {e.strerror}") from None


def cmd_status(args) -> int:
    root = _root(args)
    reply = _machine_answers(root)
    if reply is None:
        if mount_entry(root) is not None or is_stale(root):
            raise CliError(f"{root} has a stale luofs mount and no machine; "
                           f"`luofs boot --root {root}` cleans it")
        raise CliError(f"no luofs kernel serves {root}")
    if args.json:
        print(json.dumps(reply, indent=2))
        return 0
    k, m = reply.get("kernel"), reply["machine"]
    print(f"root:            {m['root']}")
    print(f"machine:         pid {m['pid']}, up {m['uptime_s']} s, logs in {m['state_dir']}")
    print(f"live updates:    {m['kexecs']}, last blackout {m['last_blackout_ms']} ms")
    if k is None:
        print(f"kernel:          none — {m['panic']}")
        return 0
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
    return 0


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


def cmd_shutdown(args) -> int:
    root = _root(args)
    status = _machine_answers(root)
    if status is None:
        if detach_mount(root):
            print(f"luofs: no machine served {root}; removed its stale mount", file=sys.stderr)
            return 0
        raise CliError(f"no luofs kernel serves {root}")
    machine = os.pidfd_open(status["machine"]["pid"])
    try:
        reply = wire.request(root, {"op": "shutdown"}, timeout=60)
        if not reply.get("ok"):
            raise CliError(reply.get("error", "shutdown failed"))
        # Return only once the machine is gone: no stray process, no mount.
        if not select.select([machine], [], [], 15)[0]:
            raise CliError(f"the machine (pid {status['machine']['pid']}) did not exit")
    finally:
        os.close(machine)
    state = status["machine"]["state_dir"]
    if args.keep_logs or status["machine"].get("panic"):
        print(f"luofs: {root} unmounted; logs kept in {state}")
    else:
        shutil.rmtree(state, ignore_errors=True)  # a clean run leaves nothing behind
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


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="luofs", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           parser_class=_Parser)

    def add(name, func, help_text):
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.add_argument("--root", help="directory the kernel serves (default: $LUOFS_ROOT)")
        sp.set_defaults(func=func)
        return sp

    boot = add("boot", cmd_boot, "start the machine and kernel #0 in the background; return "
               "once ROOT/dev/liveupdate is served (cleans a stale mount left at ROOT)")
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
    boot.add_argument("--memory", type=_size, default=1 << 30,
                      help="emulated physical memory, e.g. 256M or 4G (sparse; default 1G)")
    boot.add_argument("--fault", action="append", default=[], metavar="POINT[:ERRNO]",
                      help="make a named callback fail in every kernel of this instance "
                           f"(default errno EIO); points: {', '.join(faults.POINTS)}")
    boot.add_argument("--cmdline", default="liveupdate=on kho=on",
                      help="what proc/cmdline shows (default: %(default)s)")
    add("kexec", cmd_kexec, "live update: freeze, hand over through KHO to a new kernel process; "
        "returns when it serves. On a freeze failure the running kernel keeps serving and "
        "the exit status is the errno")
    run = add("run", cmd_run, "run an unmodified program (dynamic or static) under the seccomp "
              "supervisor, with the LD_PRELOAD shim if it is dynamic, so its ioctl(), "
              "readlink/fstatfs of session fds and reboot(LINUX_REBOOT_CMD_KEXEC) reach this "
              "emulator (and, through the shim, its open(\"/dev/liveupdate\"))")
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
    shutdown = add("shutdown", cmd_shutdown, "stop the kernel and machine and unmount ROOT; "
                   "remove the instance's logs unless a kernel panicked or died")
    shutdown.add_argument("--keep-logs", action="store_true",
                          help="keep the machine and kernel logs (luofs status shows where)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CliError as e:
        print(f"luofs {args.command}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

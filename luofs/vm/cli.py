"""`luofs vm ACTION`: the command face of luofs.vm (start, status, check, stop).

Errors (VmError, a bad size) come back as the CLI's one-line messages, exit status 1.
"""

from __future__ import annotations

import json

from . import VmError, check, start, status, stop


def _describe_update(update: dict) -> str:
    """(When the guest stopped is the predecessor's word: without it, no pause.)"""
    parts = ", ".join(f"{k.replace('_', ' ')} {v:.1f}" for k, v in update["parts_ms"].items())
    if update["pause_ms"] is None:
        return f"the guest stopped at an unknown time; resuming it took: {parts}"
    return (f"guest-visible pause {update['pause_ms']:.1f} ms ({update['accel'].upper()}, "
            f"{update['ram'] >> 20} MiB, state {update['state_bytes'] / 1024:.0f} KiB): {parts}")


def run(args, root: str) -> int:
    """Raises VmError or ValueError with a message for the user."""
    if args.action == "start":
        if not args.ram:
            raise ValueError("--ram SIZE is required (e.g. --ram 256M)")
        info = start(root, args.ram, args.name, args.qemu_args, kernel=args.kernel,
                     initrd=args.initrd, append=args.append)
        print(f"luofs vm: {info['name']} runs: {info['ram'] >> 20} MiB of guest RAM in a "
              f"preserved memfd, {info['accel'].upper()}; QEMU pid {info['qemu_pid']}, VMM pid "
              f"{info['agent_pid']}; serial log {info['serial_log']}")
    elif args.action == "status":
        info = status(root, args.name)
        if args.json:
            print(json.dumps(info, indent=2))
            return 0
        print(f"vm {info['name']}: {info['state']}{' (' + info['error'] + ')' if info['error'] else ''}, "
              f"{info['ram'] >> 20} MiB, {info['accel'].upper()}, live updates lived through "
              f"{info['generation']}, QEMU pid {info['qemu_pid']}")
        if info["last_update"]:
            print(f"last update: {_describe_update(info['last_update'])}")
    elif args.action == "check":
        result = check(root, args.name)
        print(f"luofs vm: the guest re-checked {result['words']} RAM words: "
              f"{result['errors']} wrong" + (f" (first at {result['first_bad']:#x})"
                                             if result["errors"] else ""))
        return 0 if result["errors"] == 0 else 1
    elif args.action == "stop":
        stop(root, args.name)
        print(f"luofs vm: {args.name} stopped")
    return 0


__all__ = ["run", "VmError"]

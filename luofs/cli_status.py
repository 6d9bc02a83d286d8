"""`luofs status`: the machine, its userspace, the kernel, its sessions and devices.

Unhappy paths: no machine is a CliError that says whether a stale luofs mount (or
another file system) is left at the root.
"""

from __future__ import annotations

from .cli import CliError, _machine_answers, _root


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
    kvm = k.get("kvm") or {}
    for vm in kvm.get("outgoing", []):
        print(f"kvm vm:          {vm['name']}, {vm['ram'] >> 20} MiB, {vm['stage']}")
    for vm in kvm.get("incoming", []):
        print(f"kvm vm:          {vm['name']} handed over ({vm['state_bytes']} bytes of state), "
              f"{'retrieved' if vm['retrieved'] else 'not retrieved'}")
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



"""The kvm subsystem's KHO node: the VMs one kernel hands to the next.

::

    / { compatible = "luofs,kvm-v1";
        vm0 { compatible = "luofs,kvm-vm-v1";
              ram-size = [u64]; state-size = [u64];
              ram-token = [u64]; state-token = [u64];   (in LUO's "kvm" pseudo-session)
              accel = "tcg"; qemu-args = "-rtc\\0base=utc\\0"; }; };

One node per VM, named after it (so VM names are FDT node names). The memfds
themselves travel as LUO files (the RAM and the saved vCPU and device state); the
node names them by token. u64 values are 8 little-endian bytes, as KHO stores them;
strings are NUL-terminated UTF-8. Unhappy paths: anything that does not decode
(header, compatible, a missing or ill-sized property, two VMs with one token) is a
KhoFormatError; a description that cannot be encoded is ValueError.
"""

from __future__ import annotations

from dataclasses import dataclass

import fdt

from kho.errors import KhoFormatError
from kho.fdt_blob import (check_compatible, check_node_name, get_prop, get_u64, new_node,
                          new_tree, parse_fdt, to_blob, u64_prop)

SUBTREE = "kvm"
COMPATIBLE = "luofs,kvm-v1"
VM_COMPATIBLE = "luofs,kvm-vm-v1"
MAX_NAME = 63


@dataclass(frozen=True)
class VmDescription:
    name: str
    ram_size: int
    state_size: int
    ram_token: int
    state_token: int
    accel: str
    qemu_args: tuple[str, ...] = ()


def check_name(name: str) -> None:
    """ValueError unless `name` can name a VM's node."""
    check_node_name(name)
    if len(name) > MAX_NAME:
        raise ValueError(f"VM name {name[:16]!r}… is longer than {MAX_NAME} characters")


def _strings(values) -> bytes:
    return b"".join(v.encode() + b"\0" for v in values)


def encode(vms: list[VmDescription]) -> bytes:
    tree = new_tree(COMPATIBLE)
    for vm in vms:
        check_name(vm.name)
        if any("\0" in s for s in (vm.accel, *vm.qemu_args)):
            raise ValueError(f"VM {vm.name}: a string holds a NUL byte")
        node = new_node(vm.name, VM_COMPATIBLE)
        for prop, value in (("ram-size", vm.ram_size), ("state-size", vm.state_size),
                            ("ram-token", vm.ram_token), ("state-token", vm.state_token)):
            node.append(u64_prop(prop, value))
        node.append(fdt.PropBytes("accel", data=_strings([vm.accel])))
        node.append(fdt.PropBytes("qemu-args", data=_strings(vm.qemu_args)))
        tree.root.append(node)
    return to_blob(tree)


def _texts(raw: bytes, what: str) -> list[str]:
    if raw and not raw.endswith(b"\0"):
        raise KhoFormatError(f"{what} is not NUL-terminated")
    try:
        return [part.decode() for part in raw[:-1].split(b"\0")] if raw else []
    except UnicodeDecodeError:
        raise KhoFormatError(f"{what} is not UTF-8") from None


def decode(blob: bytes) -> list[VmDescription]:
    tree = parse_fdt(blob, "kvm node")
    check_compatible(tree.root, COMPATIBLE, "kvm node")
    vms, tokens = [], set()
    for node in tree.root.nodes:
        what = f"kvm node, VM {node.name}"
        check_compatible(node, VM_COMPATIBLE, what)
        accel = _texts(get_prop(node, "accel", what), f"{what}: accel")
        if len(accel) != 1:
            raise KhoFormatError(f"{what}: accel holds {len(accel)} strings, not 1")
        vm = VmDescription(node.name, get_u64(node, "ram-size", what),
                           get_u64(node, "state-size", what), get_u64(node, "ram-token", what),
                           get_u64(node, "state-token", what), accel[0],
                           tuple(_texts(get_prop(node, "qemu-args", what), f"{what}: qemu-args")))
        if {vm.ram_token, vm.state_token} & tokens or vm.ram_token == vm.state_token:
            raise KhoFormatError(f"{what}: a token is named twice")
        tokens |= {vm.ram_token, vm.state_token}
        vms.append(vm)
    return vms

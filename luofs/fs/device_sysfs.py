"""The device part of sysfs (spec/rfc.md §6), from the device layer's own description:

    sys/devices/<path>/liveupdate/{requested,preserved,reclaimed}
    sys/bus/<bus>/devices/<name> -> ../../../devices/<path>

The tree comes from ``luofs.device_adapter.sysfs_tree``, whose stores already fail with
LuoError (the device layer's errno), as every other store here does.
"""

from __future__ import annotations

from devices.sysfs import Attribute, Link

from .nodes import Dir, Node, Symlink, TextFile


def device_sysfs(tree: dict) -> dict[bytes, Node]:
    return {name.encode(): _node(entry) for name, entry in tree.items()}


def _node(entry) -> Node:
    if isinstance(entry, Attribute):
        return TextFile(entry.render, entry.mode, store=entry.store)
    if isinstance(entry, Link):
        return Symlink(entry.target.encode())
    return Dir(0o755, {name.encode(): _node(child) for name, child in entry.items()})

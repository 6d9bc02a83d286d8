"""The device part of sysfs (spec/rfc.md §6), from the device layer's own description:

    sys/devices/<path>/liveupdate/{requested,preserved,reclaimed}
    sys/bus/<bus>/devices/<name> -> ../../../devices/<path>
"""

from __future__ import annotations

from devices import Attribute, Link, sysfs_tree

from .nodes import Dir, Node, Symlink, TextFile


def device_sysfs(layer) -> dict[bytes, Node]:
    return {name.encode(): _node(entry) for name, entry in sysfs_tree(layer).items()}


def _node(entry) -> Node:
    if isinstance(entry, Attribute):
        return TextFile(entry.render, entry.mode, store=entry.store)
    if isinstance(entry, Link):
        return Symlink(entry.target.encode())
    return Dir(0o755, {name.encode(): _node(child) for name, child in entry.items()})

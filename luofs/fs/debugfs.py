"""KHO's debugfs, as mainline lays it out (spec/uapi.md §18, kho.md §7):

    sys/kernel/debug/kho/out/{fdt, scratch_phys, scratch_len, sub_fdts/<name>}
    sys/kernel/debug/kho/in/{fdt, sub_fdts/<name>}      (only after a hand-over boot)

Blobs are read from emulated memory at open, so `cat` and `dtc` see the current tree.
"""

from __future__ import annotations

from kho import scratch_areas, scratch_debugfs

from .nodes import Dir, DynamicDir, Node, TextFile


def kho_debugfs(memory, handover, incoming, intern) -> Dir:
    """KHO's outgoing `handover` and the `incoming` one (None after a cold boot) in
    emulated `memory`. `intern(key, make)` keeps a dynamic node's inode stable while its
    name exists."""
    scratch = scratch_debugfs(scratch_areas(memory.size))

    def out_subtrees() -> dict[bytes, Node]:
        return {name.encode(): intern(("kho-out", name), lambda name=name: TextFile(
            lambda: handover.subtrees.get(name, b""), 0o400))
            for name in handover.subtrees}

    out = Dir(0o700, {
        b"fdt": TextFile(lambda: handover.root_blob, 0o400),
        b"scratch_phys": TextFile(lambda: scratch["scratch_phys"].encode(), 0o400),
        b"scratch_len": TextFile(lambda: scratch["scratch_len"].encode(), 0o400),
        b"sub_fdts": DynamicDir(out_subtrees, 0o700),
    })
    children = {b"out": out}
    if incoming is not None:
        children[b"in"] = Dir(0o700, {
            b"fdt": TextFile(lambda: incoming.root_blob, 0o400),
            b"sub_fdts": Dir(0o700, {
                name.encode(): TextFile(lambda blob=blob: blob, 0o400)
                for name, blob in incoming.subtrees.items()}),
        })
    return Dir(0o700, {b"kho": Dir(0o700, children)})

"""The KHO root tree (kho.md §2): what the next kernel finds first.

It names the preserved-memory map and, per KHO user, the physical address of
that user's own FDT ("subtree").  Values are little-endian u64s.
"""

from dataclasses import dataclass, field

from .fdt_blob import (check_compatible, get_u64, new_node, new_tree, parse_fdt, to_blob,
                       u64_prop)

KHO_COMPATIBLE = "kho-v1"
MEM_MAP_PROP = "preserved-memory-map"
SUBTREE_PROP = "fdt"
_WHAT = "KHO root"


@dataclass
class KhoRoot:
    """The decoded root tree; ``subtrees`` keeps the order of the nodes."""

    mem_map_phys: int
    subtrees: dict[str, int] = field(default_factory=dict)


def build_root(mem_map_phys: int, subtrees: dict[str, int]) -> bytes:
    """Build the root FDT; one child node per subtree, in the dict's order."""
    tree = new_tree(KHO_COMPATIBLE)
    tree.root.append(u64_prop(MEM_MAP_PROP, mem_map_phys))
    for name, phys in subtrees.items():
        node = new_node(name)
        node.append(u64_prop(SUBTREE_PROP, phys))
        tree.root.append(node)
    return to_blob(tree)


def parse_root(blob: bytes) -> KhoRoot:
    """Decode and fully validate a root tree (extra bytes after totalsize are ignored)."""
    root = parse_fdt(blob, _WHAT).root
    check_compatible(root, KHO_COMPATIBLE, _WHAT)
    # Duplicate node names never get here: the fdt library refuses them.
    subtrees = {node.name: get_u64(node, SUBTREE_PROP, f"{_WHAT}: subtree '{node.name}'")
                for node in root.nodes}
    return KhoRoot(get_u64(root, MEM_MAP_PROP, _WHAT), subtrees)

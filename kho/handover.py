"""The handover itself: the old kernel's builder and the new kernel's view.

Old kernel (6.19 model, kho.md §8): KHO users preserve memory and register
subtrees at any time; :meth:`Handover.finalize` preserves a page for the root
tree, serializes the memory map and writes the root.  :meth:`Handover.abort`
undoes finalize (the 6.16 / RFC v2 ``kho_abort``).  A subtree's own pages are
KHO's; memory a subtree points to belongs to its user, who unpreserves it when
it removes the subtree (LUO: ``kho.luo_write.publish_luo``).

New kernel: :meth:`IncomingHandover.load` is ``kho_populate`` plus the memory
map walk: it validates the root, reserves every preserved block so the
allocator never hands it out, and exposes the subtrees.

Unhappy paths: changing subtrees or preserved memory while finalized is EBUSY,
finalizing twice EEXIST, aborting when not finalized ENOENT, a duplicate or
missing subtree EEXIST/ENOENT; out of memory (OutOfPhysicalMemory) leaves
nothing allocated.  A handover that is damaged or points outside RAM or outside
preserved memory raises KhoFormatError from :meth:`IncomingHandover.load`.
"""

import errno

from .errors import KhoFormatError
from .fdt_blob import FDT_HEADER_SIZE, check_node_name, fdt_header, fdt_totalsize
from .mem_map import mem_map_pages, release_mem_map
from .memory import PAGE_SIZE, pages_for, read_handover
from .preserve import PreservedMemory
from .root_tree import build_root, parse_root


class Handover:
    """What the running kernel will hand to the next one.

    Subtree blobs are copied into preserved pages when added, so the caller
    may drop its copy; :attr:`subtrees` reads them back from RAM, which is
    what debugfs ``out/sub_fdts/<name>`` shows.
    """

    def __init__(self, memory, preserved: PreservedMemory = None):
        self.memory = memory
        self.preserved = PreservedMemory() if preserved is None else preserved
        self._subtrees: dict[str, tuple[int, int]] = {}  # name -> (phys, size)
        self._root = None  # (phys, size) while finalized
        self._mem_map_phys = 0

    @property
    def finalized(self) -> bool:
        return self._root is not None

    def add_subtree(self, name: str, blob: bytes) -> int:
        """Copy an FDT into new preserved pages and register it; return its address."""
        self._check_open(f"add_subtree({name!r})")
        check_node_name(name)
        if name in self._subtrees:
            raise FileExistsError(errno.EEXIST, f"KHO subtree {name!r} already exists")
        size = fdt_totalsize(blob, f"KHO subtree {name!r}")
        npages = pages_for(size)
        phys = self.memory.alloc_pages(npages)
        try:
            self.memory.write(phys, bytes(blob[:size]))
            self.preserved.preserve(phys, npages * PAGE_SIZE)
        except BaseException:
            self.memory.free_pages(phys, npages)
            raise
        self._subtrees[name] = (phys, size)
        return phys

    def remove_subtree(self, name: str) -> None:
        """Unregister a subtree and release its pages."""
        self._check_open(f"remove_subtree({name!r})")
        if name not in self._subtrees:
            raise FileNotFoundError(errno.ENOENT, f"KHO subtree {name!r} does not exist")
        phys, size = self._subtrees.pop(name)
        self.preserved.unpreserve(phys, pages_for(size) * PAGE_SIZE)
        self.memory.free_pages(phys, pages_for(size))

    @property
    def subtrees(self) -> dict[str, bytes]:
        return {name: self.memory.read(phys, size) for name, (phys, size) in self._subtrees.items()}

    @property
    def root_blob(self) -> bytes:
        """The root tree as debugfs ``out/fdt`` shows it.

        Before finalize the memory map is 0, as in a 6.19 kernel whose root
        tree exists from boot and gets its map at finalize.
        """
        if self._root is not None:
            return self.memory.read(*self._root)
        return self._build_root()

    def finalize(self) -> tuple[int, int]:
        """Write root tree and memory map; return ``(root_phys, root_size)``.

        Afterwards preserving and subtree changes fail with EBUSY until
        :meth:`abort`.  On failure nothing stays allocated or preserved.
        """
        if self._root is not None:
            raise FileExistsError(errno.EEXIST, "KHO is already finalized")
        # The map's address does not change the root's size, so a placeholder
        # tree tells how many pages the root needs; those pages must be
        # preserved before the map is serialized, to be part of it.
        npages = pages_for(len(self._build_root()))
        root_phys = self.memory.alloc_pages(npages)
        try:
            self.preserved.preserve(root_phys, npages * PAGE_SIZE)
            try:
                self._mem_map_phys = self.preserved.serialize(self.memory)
            except BaseException:
                self.preserved.unpreserve(root_phys, npages * PAGE_SIZE)
                raise
        except BaseException:
            self.memory.free_pages(root_phys, npages)
            raise
        blob = self._build_root()
        self.memory.write(root_phys, blob)
        self.preserved.freeze()
        self._root = (root_phys, len(blob))
        return self._root

    def abort(self) -> None:
        """Undo :meth:`finalize`: free the map and the root, thaw preserved memory."""
        if self._root is None:
            raise FileNotFoundError(errno.ENOENT, "KHO is not finalized")
        root_phys, root_size = self._root
        release_mem_map(self.memory, self._mem_map_phys)
        self._mem_map_phys = 0
        self.preserved.thaw()
        self.preserved.unpreserve(root_phys, pages_for(root_size) * PAGE_SIZE)
        self.memory.free_pages(root_phys, pages_for(root_size))
        self._root = None

    def _build_root(self) -> bytes:
        return build_root(self._mem_map_phys,
                          {name: phys for name, (phys, _) in self._subtrees.items()})

    def _check_open(self, what: str) -> None:
        if self._root is not None:
            raise OSError(errno.EBUSY, f"{what}: KHO is finalized")


class IncomingHandover:
    """What the previous kernel handed over, validated and reserved.

    :attr:`subtrees` holds each sub-FDT's bytes (up to its totalsize);
    :attr:`subtree_phys` says where they live.
    """

    def __init__(self, memory, root_blob: bytes, root_phys: int, mem_map_phys: int,
                 preserved: PreservedMemory, subtrees: dict[str, bytes],
                 subtree_phys: dict[str, int]):
        self.memory = memory
        self.root_blob = root_blob
        self.root_phys = root_phys
        self.mem_map_phys = mem_map_phys
        self.preserved = preserved
        self.subtrees = subtrees
        self.subtree_phys = subtree_phys

    @classmethod
    def load(cls, memory, root_phys: int, root_size: int) -> "IncomingHandover":
        """Validate the handover at ``root_phys`` and reserve all preserved blocks in
        ``memory``, and the pages of the memory map.

        Nothing may be allocated from ``memory`` before this returns: the
        memory map itself lives in unpreserved pages.
        """
        blob = read_handover(memory, root_phys, root_size, "KHO root")
        root = parse_root(blob)
        blob = blob[:fdt_totalsize(blob, "KHO root")]
        preserved = PreservedMemory.deserialize(memory, root.mem_map_phys)
        _check_preserved(preserved, root_phys, len(blob), "KHO root")
        subtrees = {}
        for name, phys in root.subtrees.items():
            subtrees[name] = read_subtree(memory, phys, name)
            _check_preserved(preserved, phys, len(subtrees[name]), f"KHO subtree '{name}'")
        for block in preserved:
            memory.reserve(block.phys, block.size)
        # The map itself lives in pages nobody preserved. Reserving them too keeps the
        # whole hand-over read-only for this kernel's life: if it dies before it serves,
        # the machine boots another one from exactly what the old kernel wrote.
        for page in mem_map_pages(memory, root.mem_map_phys):
            memory.reserve(page, PAGE_SIZE)
        return cls(memory, blob, root_phys, root.mem_map_phys, preserved, subtrees,
                   dict(root.subtrees))

    def release(self) -> None:
        """Free the root and subtree pages; their bytes stay available here.

        For a kernel that has read what it needs (the device simulator in
        ``devices.testing`` does).  luofs's kernel process does not: its debugfs
        ``in/`` shows the handover for the kernel's whole life, and the next
        kernel's memory map starts afresh from what this one preserves.
        """
        for phys, size in [(self.root_phys, len(self.root_blob))] + [
                (self.subtree_phys[name], len(blob)) for name, blob in self.subtrees.items()]:
            self.memory.free_pages(phys, pages_for(size))


def read_subtree(memory, phys: int, name: str) -> bytes:
    """Read the sub-FDT at ``phys``: exactly its header's totalsize, validated."""
    what = f"KHO subtree '{name}'"
    size = fdt_header(read_handover(memory, phys, FDT_HEADER_SIZE, what), what).totalsize
    subtree = read_handover(memory, phys, size, what)
    fdt_totalsize(subtree, what)
    return subtree


def _check_preserved(preserved: PreservedMemory, phys: int, size: int, what: str) -> None:
    if not preserved.covers(phys, size):
        raise KhoFormatError(f"{what} at {phys:#x} (+{size:#x}) is not in preserved memory")

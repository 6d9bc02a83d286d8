"""The inode tree the emulated kernel serves: static directories and files, plus
dynamic nodes (views of live state) interned by a stable key so that a name keeps
its inode number while it exists, and is forgotten exactly when the kernel says so.
"""

from __future__ import annotations

import stat
from typing import Callable, Hashable

ROOT_INO = 1  # pyfuse3.ROOT_INODE


class Node:
    dynamic = False  # static nodes live as long as the mount

    def __init__(self, mode: int):
        self.ino = 0  # set by InodeTable.add
        self.mode = mode
        self.lookups = 0

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


class Dir(Node):
    def __init__(self, mode: int = 0o755, children: dict[bytes, Node] | None = None):
        super().__init__(stat.S_IFDIR | mode)
        self.fixed: dict[bytes, Node] = dict(children or {})

    def children(self) -> dict[bytes, Node]:
        return self.fixed


class DynamicDir(Dir):
    """A directory whose entries are computed on every lookup or readdir."""

    def __init__(self, list_children: Callable[[], dict[bytes, Node]], mode: int = 0o755):
        super().__init__(mode)
        self._list = list_children

    def children(self) -> dict[bytes, Node]:
        return self._list()


class TextFile(Node):
    """A sysfs-style attribute: `render` is its show op (None: write-only), `store` its
    store op (None: read-only), `version` counts changes worth a poll() wake-up."""

    def __init__(self, render: Callable[[], bytes] | None, mode: int = 0o444,
                 store: Callable[[bytes], None] | None = None,
                 version: Callable[[], int] | None = None):
        super().__init__(stat.S_IFREG | mode)
        self.render = render
        self.store = store
        self.version = version


class Symlink(Node):
    def __init__(self, target: bytes):
        super().__init__(stat.S_IFLNK | 0o777)
        self.target = target


class ControlFile(Node):
    """A file whose fd stands for a kernel object: ioctls arrive as getxattr frames."""

    def __init__(self, mode: int = 0o600):
        super().__init__(stat.S_IFREG | mode)


class InodeTable:
    def __init__(self):
        self._nodes: dict[int, Node] = {}
        self._interned: dict[Hashable, Node] = {}
        self._keys: dict[int, Hashable] = {}
        self._next = ROOT_INO

    def add(self, node: Node) -> Node:
        node.ino = self._next
        self._next += 1
        self._nodes[node.ino] = node
        return node

    def add_tree(self, node: Node) -> Node:
        """Number a static subtree depth first, so inode numbers are stable per layout."""
        self.add(node)
        if isinstance(node, Dir):
            for child in node.fixed.values():
                self.add_tree(child)
        return node

    def intern(self, key: Hashable, make: Callable[[], Node]) -> Node:
        node = self._interned.get(key)
        if node is None:
            node = self.add(make())
            node.dynamic = True
            self._interned[key] = node
            self._keys[node.ino] = key
        return node

    def get(self, ino: int) -> Node | None:
        return self._nodes.get(ino)

    def remember(self, node: Node) -> None:
        node.lookups += 1

    def forget(self, ino: int, count: int) -> None:
        node = self._nodes.get(ino)
        if node is None:
            return
        node.lookups -= count
        if node.lookups <= 0 and node.dynamic:
            self.drop(node)

    def drop(self, node: Node) -> None:
        """Unlink a dynamic node's key now; the inode itself goes once nothing refers to it."""
        key = self._keys.pop(node.ino, None)
        if key is not None and self._interned.get(key) is node:
            del self._interned[key]
        if node.lookups <= 0 and not getattr(node, "pinned", False):
            self._nodes.pop(node.ino, None)

    def __len__(self) -> int:
        return len(self._nodes)

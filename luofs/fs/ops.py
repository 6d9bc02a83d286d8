"""The FUSE front end: inode operations on a tree it is given, for a device it is given.

DOC: It decides nothing. The tree (sys/, proc/ and whatever else the kernel serves)
comes from the kernel, built by its personality; the device behind dev/liveupdate
is the personality's too. Here: lookups and lookup counts, attributes, sysfs-style
reads (a read at offset 0 shows the value now), writes to control files, poll on
state files, and releases. Ioctls go to the transport (fs/transport.py).
Unhappy paths: only FUSEError(errno) leaves a handler; the device's LuoError becomes
its errno; anything unexpected is logged and answered EIO (never a dead kernel).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import select
from dataclasses import dataclass

import pyfuse3
import trio

from ..core import LuoError, Rebooting
from ..uapi import frames
from .nodes import ROOT_INO, ControlFile, Dir, InodeTable, Node, Symlink, TextFile
from .transport import IoctlTransport, SessionNode

log = logging.getLogger("luofs.fs")

STATIC_TIMEOUT = 60.0  # the layout never changes while mounted
SYSFS_SIZE = 4096  # what sysfs reports for every attribute


@dataclass
class Handle:
    node: Node
    snapshot: bytes = b""
    seen: int = 0  # the state version this open file last read (for poll)


def _never_crash(method):
    """An unexpected exception in a handler would stop pyfuse3's main loop, i.e. kill
    the kernel: log it and answer EIO instead."""

    @functools.wraps(method)
    async def wrapper(*args, **kwargs):
        try:
            return await method(*args, **kwargs)
        except (pyfuse3.FUSEError, trio.Cancelled):
            raise
        except Exception:
            log.exception("internal error in %s", method.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


# What FUSE sends that is answered (forget is not): see KernelFS.on_first_request.
_REQUEST_OPS = ("lookup", "getattr", "setattr", "readlink", "opendir", "readdir", "releasedir",
                "statfs", "open", "read", "poll", "write", "flush", "release", "create",
                "getxattr", "setxattr", "listxattr", "removexattr")


class KernelFS(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(self, table: InodeTable, tree: dict[bytes, Node], device=None):
        """`tree`: the root's entries besides dev/ (built with `table.intern` for dynamic
        nodes); `device`: what dev/liveupdate opens and ioctls reach, or None."""
        super().__init__()
        self.table = table
        self.handles: dict[int, Handle] = {}
        self._pollers: dict[int, object] = {}  # fh → the kernel's poll handle, until woken
        self._next_fh = 1
        self.device = device
        self.device_node = ControlFile(0o600)
        self.requests = Dir(0o700)  # create() target for device ioctls; never lists anything
        self.transport = IoctlTransport(table, device, self.device_node)
        self.root = self.table.add_tree(Dir(0o755, {
            b"dev": Dir(0o755, {b"liveupdate": self.device_node} if device else {}),
            **tree,
            b".luofs": self.requests,
        }))
        assert self.root.ino == ROOT_INO

    def on_first_request(self, callback) -> None:
        """`callback(op)` once the first request is answered (a live update's trace shows
        it). Until then every op is shadowed on the instance; the first one served drops
        the shadows, so later requests pay nothing."""
        shadowed = [name for name in _REQUEST_OPS if name in type(self).__dict__]

        def shadow(name: str):
            method = getattr(self, name)

            async def first(*args, **kwargs):
                was_first = name in self.__dict__  # (two may have been looked up at once)
                for other in shadowed:
                    self.__dict__.pop(other, None)
                try:
                    return await method(*args, **kwargs)
                finally:
                    if was_first:
                        callback(name)
            return first

        for name in shadowed:
            setattr(self, name, shadow(name))

    @property
    def mnt_id(self) -> int:
        return self.transport.mnt_id

    @mnt_id.setter
    def mnt_id(self, value: int) -> None:
        self.transport.mnt_id = value

    def wake_pollers(self, change=None) -> None:
        """sysfs_notify(): wake every poll() on a state file that is waiting."""
        pollers, self._pollers = self._pollers, {}
        for handle in pollers.values():
            try:
                handle.notify()
            except Exception:  # a poller that went away in the meantime
                log.debug("poll notify failed", exc_info=True)

    # ---- attributes and names ------------------------------------------------------------

    def _attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        a.st_mode = node.mode
        a.st_nlink = 2 if node.is_dir else 1
        a.st_uid = a.st_gid = 0
        a.st_size = (SYSFS_SIZE if isinstance(node, TextFile) else
                     len(node.target) if isinstance(node, Symlink) else 0)
        a.st_blksize = 4096
        # Views change, so their names and attributes are never cached; a session's
        # attributes never change (fstat stays off the wire) but its name must never
        # resolve again once its create is done.
        a.attr_timeout = 0.0 if node.dynamic else STATIC_TIMEOUT
        a.entry_timeout = 0.0 if (node.dynamic or isinstance(node, SessionNode)) else STATIC_TIMEOUT
        return a

    def _node(self, ino: int) -> Node:
        node = self.table.get(ino)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    async def lookup(self, parent_inode, name, ctx=None):
        parent = self._node(parent_inode)
        if not isinstance(parent, Dir):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        child = parent.children().get(name)
        if child is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        self.table.remember(child)
        return self._attrs(child)

    async def forget(self, inode_list):
        for ino, count in inode_list:
            self.table.forget(ino, count)

    async def getattr(self, inode, ctx=None):
        return self._attrs(self._node(inode))

    async def setattr(self, inode, attr, fields, fh, ctx):
        node = self._node(inode)
        if isinstance(node, TextFile) and node.store and fields.update_size:
            return self._attrs(node)  # `echo > file` truncates first, as sysfs allows
        raise pyfuse3.FUSEError(errno.EPERM)

    async def readlink(self, inode, ctx):
        node = self._node(inode)
        if not isinstance(node, Symlink):
            raise pyfuse3.FUSEError(errno.EINVAL)
        return node.target

    async def opendir(self, inode, ctx):
        node = self._node(inode)
        if not isinstance(node, Dir):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh, start_id, token):
        node = self._node(fh)
        if node is self.requests:
            return
        entries = sorted(node.children().items())
        for i, (name, child) in enumerate(entries[start_id:], start_id + 1):
            if not pyfuse3.readdir_reply(token, name, self._attrs(child), i):
                break
            self.table.remember(child)

    async def releasedir(self, fh):
        pass

    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_namemax = frames.NAME_MAX
        return s

    # ---- files -----------------------------------------------------------------------------

    def _new_handle(self, node: Node, snapshot: bytes = b"") -> int:
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = Handle(node, snapshot)
        return fh

    async def open(self, inode, flags, ctx):
        node = self._node(inode)
        if node is self.device_node:
            self._luo_call(self.device.open, flags, ctx.uid)
            return pyfuse3.FileInfo(fh=self._new_handle(node), direct_io=True, nonseekable=True)
        if isinstance(node, SessionNode):
            raise pyfuse3.FUSEError(errno.ENXIO)  # an anon inode cannot be reopened by path
        if isinstance(node, TextFile):
            mode = flags & os.O_ACCMODE
            # as sysfs: no write op, or no show op, refuses that access even to root
            if (mode != os.O_RDONLY and node.store is None
                    or mode != os.O_WRONLY and node.render is None):
                raise pyfuse3.FUSEError(errno.EACCES)
            fh = self._new_handle(node)
            if mode != os.O_WRONLY:
                self._refresh(self.handles[fh])
            return pyfuse3.FileInfo(fh=fh, direct_io=True)
        raise pyfuse3.FUSEError(errno.EISDIR if node.is_dir else errno.EACCES)

    def _refresh(self, handle: Handle) -> None:
        """sysfs semantics: a read from offset 0 shows the value now, and counts as
        having seen the latest change (for poll)."""
        node = handle.node
        handle.seen = node.version() if node.version else 0
        handle.snapshot = node.render()

    async def read(self, fh, off, size):
        handle = self.handles[fh]
        if isinstance(handle.node, ControlFile):
            raise pyfuse3.FUSEError(errno.EINVAL)  # LUO files have no read op
        if off == 0:
            self._refresh(handle)
        return handle.snapshot[off : off + size]

    async def poll(self, inode, fh, poll_handle, ctx):
        """As a sysfs attribute: always readable; POLLPRI|POLLERR once the value changed
        since this open file last read it (sysfs_notify)."""
        handle = self.handles.get(fh)
        if handle is None or not isinstance(handle.node, TextFile):
            return select.POLLIN | select.POLLRDNORM
        events = select.POLLIN | select.POLLRDNORM
        if handle.node.version and handle.node.version() != handle.seen:
            events |= select.POLLPRI | select.POLLERR
        elif poll_handle is not None and handle.node.version:
            self._pollers[fh] = poll_handle
        return events

    async def write(self, fh, off, buf):
        handle = self.handles[fh]
        node = handle.node
        if isinstance(node, ControlFile):
            log.debug("write of %d bytes to a control file refused", len(buf))
            raise pyfuse3.FUSEError(errno.EINVAL)
        if not isinstance(node, TextFile) or node.store is None:
            raise pyfuse3.FUSEError(errno.EACCES)
        # kernfs hands a store at most a page per write(2) and ignores the offset; the
        # writer sees a short write and sends the rest, parsed anew.
        buf = buf[:SYSFS_SIZE]
        self._luo_call(node.store, buf)
        return len(buf)

    async def flush(self, fh):
        # Nothing to flush: ENOSYS makes the kernel stop sending FLUSH for the whole
        # mount, so close() costs no round trip (the seccomp supervisor closes its
        # copy of the caller's file after every request).
        raise pyfuse3.FUSEError(errno.ENOSYS)

    async def release(self, fh):
        handle = self.handles.pop(fh, None)
        self._pollers.pop(fh, None)
        if handle is None:
            return
        node = handle.node
        if node is self.device_node:
            self.device.close()
        elif isinstance(node, SessionNode):
            node.pinned = False
            try:
                self.device.close_session(node.session)
            except Rebooting:
                pass  # the old kernel is on its way out; the session was already carried
            if node.lookups <= 0:
                self.table.drop(node)

    # ---- ioctls ----------------------------------------------------------------------------

    async def create(self, parent_inode, name, mode, flags, ctx):
        """Device ioctls that return a session fd (CREATE/RETRIEVE_SESSION)."""
        if parent_inode != self.requests.ino:
            raise pyfuse3.FUSEError(errno.EACCES)
        try:
            node = self.transport.create(name, ctx)
        except Rebooting:
            await trio.sleep_forever()  # as the kernel blocks; the unmount ends the wait
        fh = self._new_handle(node)
        return pyfuse3.FileInfo(fh=fh, direct_io=True, nonseekable=True), self._attrs(node)

    async def getxattr(self, inode, name, ctx):
        if not name.startswith(frames.XATTR_PREFIX):
            raise pyfuse3.FUSEError(errno.ENODATA)
        try:
            return self.transport.getxattr(self._node(inode), name, ctx)
        except Rebooting:
            await trio.sleep_forever()  # as the kernel blocks; the unmount ends the wait

    def _luo_call(self, fn, *args):
        try:
            return fn(*args)
        except LuoError as e:
            log.debug("%s", e)
            raise pyfuse3.FUSEError(e.errno) from None

    # ---- extended attributes other than requests ------------------------------------------

    async def setxattr(self, inode, name, value, ctx):
        raise pyfuse3.FUSEError(errno.EOPNOTSUPP)  # never ENOSYS: it would disable getxattr

    async def listxattr(self, inode, ctx):
        return []

    async def removexattr(self, inode, name, ctx):
        raise pyfuse3.FUSEError(errno.EOPNOTSUPP)


for _name in ("lookup", "forget", "getattr", "setattr", "opendir", "readdir", "statfs", "open",
              "read", "write", "release", "create", "getxattr", "setxattr", "listxattr",
              "removexattr", "poll", "readlink"):
    setattr(KernelFS, _name, _never_crash(getattr(KernelFS, _name)))

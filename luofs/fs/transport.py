"""The ioctl transport: requests that arrive as FUSE getxattr or create, run on the
device behind the file they were issued on, and their replies.

DOC: A session or device ioctl travels as a frame in the *name* of a getxattr on the
file it is issued on; its reply is the value. Device ioctls that return a session fd
travel as a create in ROOT/.luofs/: the new file is the session fd. Both operations
tell us which thread asks, so files the caller passes are taken from it (never a pid
it claims). A repeated *pure* request (its reply depends only on its bytes and the
session's fixed name) is answered from a small per-session memo, never while the
kernel is on its way out and never with an error.
Unhappy paths: a malformed frame is EINVAL; a getxattr request whose caller does not
say its buffer holds any reply is ERANGE before it runs (a request that fails changes
nothing); an fd the caller does not hold, or that
is not a file of this mount, is EBADF; a reply fd that cannot be delivered is EFAULT;
the core's LuoError becomes its errno; a request during the reboot raises Rebooting,
and the file system's handler (fs/ops.py) blocks it until the unmount ends it, as the
kernel's would.
"""

from __future__ import annotations

import errno
import logging
import socket
from typing import Callable

import pyfuse3

from ..core import LuoError, Request, Session
from ..fdutil import MountTypes
from ..uapi import frames
from ..uapi.ioctl import ioc_size
from .caller import FuseCaller, inode_behind
from .nodes import ControlFile, InodeTable, Node

log = logging.getLogger("luofs.fs")

MEMO_REPLIES = 16  # per session file: callers differ only in the fd number they use


class SessionNode(ControlFile):
    """The inode behind one session fd (an anon inode in the real kernel)."""

    def __init__(self, session: Session):
        # Whoever holds the fd may ioctl it, as on the kernel: the request is a getxattr,
        # which default_permissions lets through only with read permission. The inode
        # cannot be reached by path (its name never resolves again, and reopening it
        # through /proc gives ENXIO), so the bits guard nothing else.
        super().__init__(0o666)
        self.session = session
        self.pinned = True  # until its file is released
        # Successful replies of pure commands, by request name: a status-only ioctl then
        # costs one dictionary lookup beyond the FUSE round trip.
        self.replies: dict[bytes, bytes] = {}


class IoctlTransport:
    """Runs ioctl frames on `device` (a personality's dev/liveupdate) for the file
    system; `device_node` is the inode of dev/liveupdate."""

    def __init__(self, table: InodeTable, device, device_node: Node):
        self.table = table
        self.device = device
        self.device_node = device_node
        self.mounts = MountTypes()
        self.mnt_id = -1  # set once mounted: identifies our files in other processes' fdinfo

    # Both requests run to the end without waiting for anything: plain functions, not
    # coroutines (one coroutine less per ioctl). Rebooting passes to the file system's
    # handler, which waits for the unmount as the kernel blocks the caller.

    def create(self, name: bytes, ctx) -> SessionNode:
        """Device ioctls that return a session fd (CREATE/RETRIEVE_SESSION)."""
        req = self._decode(frames.frame_from_create_name, name)
        node = self._node_held(ctx.pid, req.file_fd)
        caller = FuseCaller(ctx.pid, self.mounts, self.mnt_id,
                            fd_table_full=req.flags.fd_table_full)
        try:
            outcome = self._ioctl(node, req, caller)
        finally:
            caller.close()
        if outcome.session is None:  # a command that returns no fd cannot travel this way
            raise pyfuse3.FUSEError(errno.EINVAL)
        node = self.table.add(SessionNode(outcome.session))
        self.table.remember(node)
        return node

    def getxattr(self, node: Node, name: bytes, ctx) -> bytes:
        replies = getattr(node, "replies", None)
        if replies is not None:
            reply = replies.get(name)
            if reply is not None and not self.device.rebooting:
                return reply
        try:  # as _decode(), without its frame: this runs on every ioctl
            req = frames.decode_request(frames.frame_from_xattr_name(name))
        except frames.FrameError as e:
            log.debug("bad request frame: %s", e)
            raise pyfuse3.FUSEError(errno.EINVAL) from None
        if not req.flags.room_for_reply:  # FUSE would say ERANGE only after it ran
            raise pyfuse3.FUSEError(errno.ERANGE)
        on_device = node is self.device_node
        # A reply through getxattr cannot carry a session fd (a file of this mount): for
        # mainline's device ioctls only the create path can, so here there is no fd.
        caller = FuseCaller(ctx.pid, self.mounts, self.mnt_id, fd_table_full=(
            req.flags.fd_table_full or on_device and self.device.has_sessions))
        try:
            if on_device and self._node_held(ctx.pid, req.file_fd) is not node:
                raise pyfuse3.FUSEError(errno.EBADF)  # only a holder of the device may ioctl
            outcome = self._ioctl(node, req, caller)
            if outcome.file is None:
                reply = frames.PLAIN_REPLY_HEADER + outcome.copy_back  # encode_reply's
                if replies is not None and outcome.command.pure:
                    if len(replies) >= MEMO_REPLIES:
                        replies.clear()
                    replies[name] = reply
                return reply
            self._send_fd(caller, req.reply_fd, outcome.file.fd)
            return frames.encode_reply(outcome.copy_back, outcome.command.fd_out_offset, True)
        finally:
            caller.close()

    def _node_held(self, tid: int, fd: int) -> Node:
        """Our node behind the caller's fd; EBADF unless the caller really holds one."""
        ino = inode_behind(tid, fd, self.mnt_id, self.mounts)
        node = self.table.get(ino) if ino is not None else None
        if node is None:
            log.debug("tid %d: fd %d is not a file of this mount", tid, fd)
            raise pyfuse3.FUSEError(errno.EBADF)
        return node

    def _ioctl(self, node: Node, req, caller: FuseCaller):
        """Run one ioctl on the device; LuoError becomes the FUSE errno, Rebooting passes."""
        # A number that encodes its size is never a mainline command: the dispatch
        # rejects it (EINVAL, EFAULT or ENOTTY) before `size` matters.
        on_device = node is self.device_node
        sized = (not on_device or self.device.sized) and not ioc_size(req.cmd)
        if sized and not frames.sized_ok(req):
            log.debug("request frame carries %d bytes for its size", len(req.arg))
            raise pyfuse3.FUSEError(errno.EINVAL)
        flags = req.flags
        request = Request(req.cmd, req.arg, flags.arg_fault, flags.copy_fault, flags.tail_nonzero)
        try:
            if on_device:
                return self.device.ioctl(request, caller)
            if isinstance(node, SessionNode):
                return self.device.session_ioctl(node.session, request, caller)
        except LuoError as e:
            log.debug("%s", e)
            raise pyfuse3.FUSEError(e.errno) from None
        raise pyfuse3.FUSEError(errno.ENOTTY)  # an ordinary file has no ioctls

    @staticmethod
    def _decode(unwrap: Callable[[bytes], bytes], name: bytes):
        try:
            return frames.decode_request(unwrap(name))
        except frames.FrameError as e:
            log.debug("bad request frame: %s", e)
            raise pyfuse3.FUSEError(errno.EINVAL) from None

    @staticmethod
    def _send_fd(caller: FuseCaller, reply_fd: int, fd: int) -> None:
        try:
            sock_file = caller.take_socket(reply_fd)
        except LuoError as e:
            log.debug("reply socket: %s", e)
            raise pyfuse3.FUSEError(errno.EFAULT) from None
        try:
            if sock_file.is_fuse:  # never a socket; never ask a FUSE file anything here
                raise OSError(errno.ENOTSOCK, "reply fd is not a socket")
            # Family, type and protocol given, the socket object asks the kernel only
            # whether it is a socket (getsockname, ENOTSOCK if not); sendmsg does not care
            # what else it believes. It borrows sock_file's fd.
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM, 0, sock_file.fd)
            try:
                socket.send_fds(sock, [b"F"], [fd], flags=socket.MSG_DONTWAIT)
            finally:
                sock.detach()
        except OSError as e:
            log.debug("cannot send the fd back: %s", e)
            raise pyfuse3.FUSEError(errno.EFAULT) from None
        finally:
            sock_file.close()

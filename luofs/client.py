"""Python client for /dev/liveupdate, real or emulated.

    from luofs.client import LiveUpdate
    with LiveUpdate(root) as lu, lu.create_session("vm1") as s:
        s.preserve_fd(memfd, token=1)
        ...  # keep `s` open across `luofs kexec`

Failures raise OSError with the kernel's errno and a message naming the operation.

For orchestrators, `kexec(root)` performs a live update and `status(root)` reads the
instance's state, both straight over the machine's control socket (no `luofs` process
to start in the pause).
`ioctl()` below is the transport the emulator needs in place of the ioctl(2) system
call: the same rules (and the same struct bytes) as the C shim.
"""

from __future__ import annotations

import errno
import fcntl
import os
import random
import socket
import threading

from .uapi import frames, ioctl as nums, rfc_v2, structs

__all__ = ["LiveUpdate", "Session", "LiveUpdateV2", "ioctl", "DEVICE_PATH", "kexec", "status"]

DEVICE_PATH = "dev/liveupdate"
REQUEST_DIR = ".luofs"
# Commands whose success hands the caller a new fd, and where its number goes.
_SESSION_RETURNING = {nums.LIVEUPDATE_IOCTL_CREATE_SESSION, nums.LIVEUPDATE_IOCTL_RETRIEVE_SESSION}
_FD_RETURNING = {nums.LIVEUPDATE_SESSION_RETRIEVE_FD, rfc_v2.LIVEUPDATE_IOCTL_FD_RESTORE}


def _default_root(root) -> str:
    root = root or os.environ.get("LUOFS_ROOT")
    if not root:
        raise ValueError("no luofs root: pass root= or set LUOFS_ROOT")
    return os.fspath(root)


class _ReplySocket(threading.local):
    """A socket pair per thread (and per process, after fork) that receives returned fds."""

    pid = -1
    ours: socket.socket | None = None
    theirs: socket.socket | None = None

    def get(self) -> tuple[socket.socket, socket.socket]:
        if self.pid != os.getpid() or self.ours is None:
            self.ours, self.theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            os.set_inheritable(self.ours.fileno(), False)
            os.set_inheritable(self.theirs.fileno(), False)
            self.pid = os.getpid()
        return self.ours, self.theirs


_reply = _ReplySocket()


def _fd_table_full(probe_fd: int) -> bool:
    try:
        os.close(os.dup(probe_fd))
    except OSError as e:
        if e.errno == errno.EMFILE:
            return True
        raise
    return False


# getxattr names of requests that carry no fault flag and return no fd, by (fd, cmd, arg):
# the frame is a function of those alone, and a program asks the same thing often.
_plain_names: dict[tuple[int, int, bytes], bytes] = {}
_PLAIN_NAMES_MAX = 256


def _plain_reply(raw: bytes) -> bytes:
    if raw.startswith(frames.PLAIN_REPLY_HEADER):
        return raw[len(frames.PLAIN_REPLY_HEADER):]
    reply = frames.decode_reply(raw)
    if reply.fd_sent:  # the kernel cannot send an fd where none was asked for
        raise OSError(errno.EPROTO, "the kernel sent an fd without a reply socket")
    return bytes(reply.data)


def ioctl(root: str, fd: int, cmd: int, arg: bytes) -> tuple[bytes, int | None]:
    """Issue `cmd` on emulated file `fd` with the caller's struct bytes `arg`.

    Returns (bytes the kernel copied back, new fd or None); raises OSError(errno).
    `arg` is the caller's whole buffer: the first u32 is `size`, as in the kernel.
    """
    arg = bytes(arg)
    key = (fd, cmd, arg)
    name = _plain_names.get(key)
    if name is not None:  # asked before: same frame, no fd to pass either way
        return _plain_reply(os.getxattr(fd, name)), None
    carried, flags = _copy_from_user(cmd, arg)
    if cmd in _SESSION_RETURNING:
        return _create_ioctl(root, fd, cmd, carried, flags)
    return _xattr_ioctl(key, fd, cmd, carried, flags)


def _copy_from_user(cmd: int, arg: bytes) -> tuple[bytes, dict]:
    """What the kernel would read of the caller's struct: the bytes a frame carries, and
    flags for what it could not read (so the daemon applies §4's rules in order)."""
    flags = {}
    encoded = nums.ioc_size(cmd)
    if encoded:
        # RFC v2: the number encodes size and direction; the kernel copies exactly
        # that much in (for _IOW/_IOWR), or faults.
        want = encoded if nums.ioc_dir(cmd) & nums.IOC_WRITE else 0
        if len(arg) < max(want, 4):  # unreadable: EFAULT wherever a kernel reads it
            return b"", {"arg_fault": True}
        return arg[:want], flags
    if len(arg) < 4:
        return b"", {"arg_fault": True}
    size = int.from_bytes(arg[:4], "little")
    want = frames.expected_arg_len(size)
    if len(arg) < min(size, want):
        flags["copy_fault"] = True  # the buffer ends before `size` bytes
    elif size > want and any(arg[want:size]):
        flags["tail_nonzero"] = True
    if len(arg) < size:
        flags["copy_fault"] = True
    return arg[:want], flags


def _create_ioctl(root: str, fd: int, cmd: int, carried: bytes, flags: dict
                  ) -> tuple[bytes, int]:
    """A device ioctl that returns a session fd: a create in ROOT/.luofs/, whose new file
    is the session fd."""
    nonce = random.getrandbits(32)  # a create name is never reused (nor its dentry)
    frame = frames.encode_request(cmd, carried, file_fd=fd, nonce=nonce, **flags)
    path = os.path.join(root, REQUEST_DIR, frames.request_create_name(frame).decode())
    try:
        new_fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        if e.errno != errno.EMFILE:
            raise
        # No fd to give: let the kernel decide which error comes first.
        flags["fd_table_full"] = True
        frame = frames.encode_request(cmd, carried, file_fd=fd, nonce=nonce, **flags)
        os.getxattr(fd, frames.request_xattr_name(frame))
        raise  # unreachable unless the kernel disagrees: the fd table is full
    reply = carried[: structs.struct_size(structs.CreateSession)]
    reply = reply[:4] + new_fd.to_bytes(4, "little", signed=True) + reply[8:]
    return reply, new_fd


def _xattr_ioctl(key, fd: int, cmd: int, carried: bytes, flags: dict
                 ) -> tuple[bytes, int | None]:
    """Any other ioctl: a getxattr whose value is the reply; a returned fd arrives on
    this thread's reply socket."""
    if cmd not in _FD_RETURNING:
        name = frames.request_xattr_name(frames.encode_request(cmd, carried, file_fd=fd, **flags))
        if not flags:  # no fault to report: the same bytes make the same frame next time
            if len(_plain_names) >= _PLAIN_NAMES_MAX:
                _plain_names.clear()
            _plain_names[key] = name
        # Replies are at most 80 bytes, inside os.getxattr's first 128-byte try: one request.
        return _plain_reply(os.getxattr(fd, name)), None
    reply_fd = -1
    ours, theirs = _reply.get()
    if _fd_table_full(ours.fileno()):
        flags["fd_table_full"] = True
    else:
        reply_fd = theirs.fileno()
    frame = frames.encode_request(cmd, carried, file_fd=fd, reply_fd=reply_fd, **flags)
    reply = frames.decode_reply(os.getxattr(fd, frames.request_xattr_name(frame)))
    data = bytes(reply.data)
    new_fd = None
    if reply.fd_sent:
        new_fd = _recv_fd(ours)
        if reply.fd_offset >= 0:
            off = reply.fd_offset
            data = data[:off] + new_fd.to_bytes(4, "little", signed=True) + data[off + 4:]
    return data, new_fd


def _recv_fd(sock: socket.socket) -> int:
    """One fd from SCM_RIGHTS, close-on-exec as the kernel allocates it. (socket.recv_fds
    would do, but it drops its flags argument, and with it MSG_CMSG_CLOEXEC.)"""
    _msg, ancdata, msg_flags, _addr = sock.recvmsg(16, socket.CMSG_SPACE(4),
                                                   socket.MSG_CMSG_CLOEXEC)
    fds = [int.from_bytes(data[:4], "little", signed=True)
           for level, kind, data in ancdata
           if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS and len(data) >= 4]
    if not fds or msg_flags & socket.MSG_CTRUNC:
        for fd in fds:
            os.close(fd)
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
    return fds[0]


def _close(obj) -> None:
    fd, obj.fd = obj.fd, -1
    if fd < 0:
        return
    try:
        os.close(fd)
    except OSError as e:
        # The fd is released either way; a file of a kernel replaced by a live update
        # reports that from its flush, and that is no error for the closer.
        if e.errno not in _KERNEL_GONE:
            raise


# "This kernel is gone" (a live update replaced it, or it died): FUSE says ENOTCONN once
# the mount is gone and ECONNABORTED for a request the unmount cut short. Callers see
# one errno for both, ENOTCONN.
_KERNEL_GONE = (errno.ENOTCONN, errno.ECONNABORTED)


def _fail(e: OSError, what: str) -> OSError:
    code = errno.ENOTCONN if e.errno in _KERNEL_GONE else e.errno
    return OSError(code, f"{what}: {os.strerror(code)}")


def _name_bytes(name: str | bytes) -> bytes:
    raw = name.encode() if isinstance(name, str) else bytes(name)
    return raw.ljust(nums.LIVEUPDATE_SESSION_NAME_LENGTH, b"\0")[: nums.LIVEUPDATE_SESSION_NAME_LENGTH]


_BYTES_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
_GET_NAME_ARG = structs.GetName.build(dict(size=72, reserved=0, name=bytes(64)))
_FINISH_ARG = structs.Finish.build(dict(size=8, reserved=0))
_CREATE_SESSION = structs.codec(structs.CreateSession)
_PRESERVE_FD = structs.codec(structs.PreserveFd)
_RETRIEVE_FD = structs.codec(structs.RetrieveFd)
_GET_NAME = structs.codec(structs.GetName)


class _File:
    """An fd of the emulated kernel: closed by close() or by leaving a `with` block."""

    root: str
    fd: int

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        _close(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _call(self, cmd: int, arg: bytes, what: str, *details):
        """`what` (formatted with `details`) names the operation in an error; it is built
        only then: a status-only ioctl costs little more than its FUSE request."""
        try:
            return ioctl(self.root, self.fd, cmd, arg)
        except OSError as e:
            raise _fail(e, self._what(what.format(*details))) from None

    def _what(self, what: str) -> str:
        return what


class _Device(_File):
    def __init__(self, root: str | os.PathLike | None = None):
        self.root = _default_root(root)
        try:
            self.fd = os.open(os.path.join(self.root, DEVICE_PATH), os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise _fail(e, "open /dev/liveupdate") from None


class LiveUpdate(_Device):
    """An open /dev/liveupdate (exclusive: a second opener gets EBUSY)."""

    def _session(self, cmd: int, what: str, name: str | bytes) -> "Session":
        arg = _CREATE_SESSION.pack(72, -1, _name_bytes(name))
        _reply, fd = self._call(cmd, arg, "{} {!r}", what, name)
        raw = name.encode() if isinstance(name, str) else bytes(name)
        return Session(self.root, fd, raw.split(b"\0")[0])

    def create_session(self, name: str | bytes) -> "Session":
        return self._session(nums.LIVEUPDATE_IOCTL_CREATE_SESSION, "CREATE_SESSION", name)

    def retrieve_session(self, name: str | bytes) -> "Session":
        return self._session(nums.LIVEUPDATE_IOCTL_RETRIEVE_SESSION, "RETRIEVE_SESSION", name)


class Session(_File):
    """A session fd. Closing it unpreserves (outgoing) or finishes (retrieved) the session."""

    def __init__(self, root: str, fd: int, name: bytes):
        self.root = root
        self.fd = fd
        self._name = name

    @property
    def name(self) -> str:
        return self._name.decode(errors="surrogateescape")

    def _what(self, what: str) -> str:
        return f"{what} on session {self.name!r}"

    def preserve_fd(self, fd: int, token: int) -> None:
        self._call(nums.LIVEUPDATE_SESSION_PRESERVE_FD, _PRESERVE_FD.pack(16, fd, token),
                   "PRESERVE_FD fd {} token {:#x}", fd, token)

    def preserve_bytes(self, token: int, data: bytes) -> None:
        """Preserve small state (a VMM's device state, a config) as `token`: a memfd
        holding `data`, sealed against any change, that only LUO keeps."""
        fd = os.memfd_create(f"luofs-bytes-{token:#x}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.lseek(fd, 0, os.SEEK_SET)  # the position is carried: the reader starts at 0
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _BYTES_SEALS)
            self.preserve_fd(fd, token)
        finally:
            os.close(fd)

    def retrieve_bytes(self, token: int) -> bytes:
        """What preserve_bytes() kept as `token` (the whole file, whatever its position)."""
        fd = self.retrieve_fd(token)
        try:
            size, chunks = os.fstat(fd).st_size, []
            while size > 0:
                chunk = os.pread(fd, size, sum(map(len, chunks)))
                if not chunk:
                    break
                chunks.append(chunk)
                size -= len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def retrieve_fd(self, token: int) -> int:
        _reply, fd = self._call(nums.LIVEUPDATE_SESSION_RETRIEVE_FD,
                                _RETRIEVE_FD.pack(16, -1, token), "RETRIEVE_FD token {:#x}", token)
        return fd

    def finish(self) -> None:
        self._call(nums.LIVEUPDATE_SESSION_FINISH, _FINISH_ARG, "FINISH")

    def get_name(self) -> bytes:
        reply, _ = self._call(nums.LIVEUPDATE_SESSION_GET_NAME, _GET_NAME_ARG, "GET_NAME")
        return _GET_NAME.parse(reply).name.split(b"\0")[0]


class LiveUpdateV2(_Device):
    """/dev/liveupdate under `luofs boot --abi rfc-v2` (spec/rfc.md §3): the kernel picks
    tokens, and user space drives the global state with events."""

    def preserve(self, fd: int) -> int:
        """FD_PRESERVE: returns the token the kernel chose."""
        arg = structs.codec(rfc_v2.LiveupdateFd).build(dict(fd=fd, flags=0, token=0))
        reply, _ = self._call(rfc_v2.LIVEUPDATE_IOCTL_FD_PRESERVE, arg, "FD_PRESERVE fd {}", fd)
        return structs.codec(rfc_v2.LiveupdateFd).parse(reply).token

    def unpreserve(self, token: int) -> None:
        arg = structs.codec(rfc_v2.Token).build(dict(token=token))
        self._call(rfc_v2.LIVEUPDATE_IOCTL_FD_UNPRESERVE, arg, "FD_UNPRESERVE token {}", token)

    def restore(self, token: int) -> int:
        """FD_RESTORE: a new fd (close-on-exec) for a file the previous kernel handed over."""
        arg = structs.codec(rfc_v2.LiveupdateFd).build(dict(fd=-1, flags=0, token=token))
        _reply, fd = self._call(rfc_v2.LIVEUPDATE_IOCTL_FD_RESTORE, arg, "FD_RESTORE token {}",
                                token)
        return fd

    def state(self) -> str:
        reply, _ = self._call(rfc_v2.LIVEUPDATE_IOCTL_GET_STATE, bytes(4), "GET_STATE")
        value = structs.codec(rfc_v2.StateArg).parse(reply).state
        return rfc_v2.LiveupdateState(value).name.lower()

    def prepare(self) -> None:
        self._call(rfc_v2.LIVEUPDATE_IOCTL_EVENT_PREPARE, b"", "EVENT_PREPARE")

    def freeze(self) -> None:
        self._call(rfc_v2.LIVEUPDATE_IOCTL_EVENT_FREEZE, b"", "EVENT_FREEZE")

    def cancel(self) -> None:
        self._call(rfc_v2.LIVEUPDATE_IOCTL_EVENT_CANCEL, b"", "EVENT_CANCEL")

    def finish(self) -> None:
        self._call(rfc_v2.LIVEUPDATE_IOCTL_EVENT_FINISH, b"", "EVENT_FINISH")


def _machine_request(root, message, timeout: float | None):
    """The machine's reply; OSError with the errno it gives (EIO if none) on an Error."""
    from . import control
    from .protocol import Error

    reply = control.request(os.path.realpath(_default_root(root)), message, timeout)
    if isinstance(reply, Error):
        raise OSError(reply.errno or errno.EIO, reply.error)
    return reply


def kexec(root=None, timeout: float | None = 600.0) -> dict:
    """Live-update the instance serving ROOT; what `luofs kexec` reports, as a dict
    (liveupdate_number, sessions, files, blackout_ms, freeze_ms, start_ms,
    blackout_records). A refused freeze raises OSError with its errno (the old kernel
    serves on); a next kernel that did not come up raises OSError(EIO); no machine
    raises luofs.control.NoMachine (a ConnectionError)."""
    import dataclasses

    from .protocol import KexecDone, KexecRequest

    reply = _machine_request(root, KexecRequest(), timeout)
    if not isinstance(reply, KexecDone):
        raise OSError(errno.EPROTO, f"the machine answered kexec with {reply.TAG}")
    return dataclasses.asdict(reply)


def status(root=None, timeout: float | None = 60.0) -> dict:
    """{"machine": {...}, "kernel": {...}} as `luofs status --json` prints it ("kernel"
    is missing while no kernel serves: see machine["panic"] / ["kernel_problem"])."""
    from .protocol import MachineStatus, StatusRequest

    reply = _machine_request(root, StatusRequest(), timeout)
    if not isinstance(reply, MachineStatus):
        raise OSError(errno.EPROTO, f"the machine answered status with {reply.TAG}")
    return status_dict(reply)


def status_dict(reply) -> dict:
    out = {"ok": True, "machine": reply.machine}
    if reply.kernel is not None:
        out["kernel"] = reply.kernel
    return out

"""The RFC v2 (May 2025) ABI of /dev/liveupdate (spec/rfc.md §3), and its rules.

Unlike mainline, these ioctls carry their direction and size in the request
number (`_IOWR(0xBA, 0, 16)` …), so a command has exactly one encoding and its
argument has a fixed size; there is no `size` field and no E2BIG.

name           nr  number      argument                           errnos, in the order checked
FD_PRESERVE    0   0xC010BA00  liveupdate_fd: in fd, out token    flags≠0 EINVAL, bad fd EBADF,
                                                                  not NORMAL/UPDATED EBUSY,
                                                                  no handler ENOENT
FD_UNPRESERVE  1   0x4008BA01  u64 token                          not NORMAL/UPDATED EBUSY,
                                                                  unknown token ENOENT
FD_RESTORE     2   0xC010BA02  liveupdate_fd: in token, out fd    flags≠0 EINVAL, fd table full
                                                                  EMFILE, not UPDATED EBUSY,
                                                                  unknown ENOENT, again EINVAL
GET_STATE      3   0x8004BA03  u32 enum liveupdate_state, out     —
EVENT_PREPARE  4   0xBA04      none                               the state machine's: EINVAL
EVENT_FREEZE   5   0xBA05      none                               for an illegal move, else a
EVENT_CANCEL   6   0xBA06      none                               callback's errno
EVENT_FINISH   7   0xBA07      none
SELFTESTS      8   0xC010BA08  {u64 cmd; u64 arg}                 EOPNOTSUPP (no CONFIG_LIVE-
                                                                  UPDATE_SELFTESTS here)

Common: a request whose type byte is not 0xBA, or any number not in the table
(another encoding of a known nr included), → ENOTTY; an argument that cannot be
read (None, or shorter than the encoded size) → EFAULT. open(): no CAP_SYS_ADMIN
→ EACCES, then O_EXCL → EINVAL; any number of openers.

Tokens are the kernel's: one counter per kernel, from 0, +1 per successful
FD_PRESERVE, never reused. Outgoing files (preserved in this kernel) and incoming
ones (handed over, restorable in UPDATED) are separate tables.

The file table reuses the mainline file-handler ops (luofs/core/handler.py), so
the memfd handler works unchanged; the RFC v2 ops map onto them so:
    FD_PRESERVE  → can_preserve only (the RFC registers the file, data = 0)
    PREPARE      → preserve(file) → data     (RFC: prepare(file, arg, &data))
    FREEZE       → freeze(file, data) → data
    CANCEL       → unfreeze (if frozen), then unpreserve, in reverse token order
    FD_RESTORE   → retrieve(data)            (RFC: retrieve(arg, data, &file))
    FINISH       → finish(file, data, retrieved) for every incoming file
RFC v2 has no double-preservation check (get_id is unused) and no can_finish.

The rules (checks, the file table, the device) live in luofs/core/rfc_v2.py.
"""

from __future__ import annotations

import enum

from construct import Bytes, Int32sl, Int32ul, Int64ul, Struct, Terminated

from .ioctl import (IO, IOC_READ, IOC_WRITE, IOR, IOW, IOWR, LIVEUPDATE_IOCTL_TYPE, ioc_dir,
                    ioc_size)

# ---- the ABI ------------------------------------------------------------------------------

# struct liveupdate_fd (16 bytes)
LiveupdateFd = Struct(
    "fd" / Int32sl,  # FD_PRESERVE: in; FD_RESTORE: out
    "flags" / Int32ul,  # must be 0
    "token" / Int64ul,  # FD_PRESERVE: out; FD_RESTORE: in
    Terminated,
)

# FD_UNPRESERVE's argument: a bare u64
Token = Struct(
    "token" / Int64ul,
    Terminated,
)

# GET_STATE's argument: enum liveupdate_state, written by the kernel
StateArg = Struct(
    "state" / Int32ul,
    Terminated,
)

# SELFTESTS' argument
Selftest = Struct(
    "cmd" / Int64ul,
    "arg" / Int64ul,  # user pointer to a SelftestArg
    Terminated,
)

SELFTEST_NAME_LENGTH = 32
SELFTEST_MAX_SUBSYSTEMS = 16

# What Selftest.arg points to
SelftestArg = Struct(
    "name" / Bytes(SELFTEST_NAME_LENGTH),
    "data_page" / Int64ul,  # user pointer to one data page
    Terminated,
)


class SelftestCmd(enum.IntEnum):
    REGISTER = 0
    UNREGISTER = 1
    GETDATA = 2


class LiveupdateState(enum.IntEnum):
    """enum liveupdate_state as RFC v2 numbers it (PATCH v2 and later shifted it by one)."""

    NORMAL = 0
    PREPARED = 1
    FROZEN = 2
    UPDATED = 3


LIVEUPDATE_IOCTL_FD_PRESERVE = IOWR(LIVEUPDATE_IOCTL_TYPE, 0x00, 16)
LIVEUPDATE_IOCTL_FD_UNPRESERVE = IOW(LIVEUPDATE_IOCTL_TYPE, 0x01, 8)
LIVEUPDATE_IOCTL_FD_RESTORE = IOWR(LIVEUPDATE_IOCTL_TYPE, 0x02, 16)
LIVEUPDATE_IOCTL_GET_STATE = IOR(LIVEUPDATE_IOCTL_TYPE, 0x03, 4)
LIVEUPDATE_IOCTL_EVENT_PREPARE = IO(LIVEUPDATE_IOCTL_TYPE, 0x04)
LIVEUPDATE_IOCTL_EVENT_FREEZE = IO(LIVEUPDATE_IOCTL_TYPE, 0x05)
LIVEUPDATE_IOCTL_EVENT_CANCEL = IO(LIVEUPDATE_IOCTL_TYPE, 0x06)
LIVEUPDATE_IOCTL_EVENT_FINISH = IO(LIVEUPDATE_IOCTL_TYPE, 0x07)
LIVEUPDATE_IOCTL_SELFTESTS = IOWR(LIVEUPDATE_IOCTL_TYPE, 0x08, 16)


def arg_in_len(cmd: int) -> int:
    """Bytes the kernel reads from the argument (what a transport must carry in)."""
    return ioc_size(cmd) if ioc_dir(cmd) & IOC_WRITE else 0


def arg_out_len(cmd: int) -> int:
    """Bytes the kernel may write back (what a transport must carry out)."""
    return ioc_size(cmd) if ioc_dir(cmd) & IOC_READ else 0


__all__ = [
    "LiveupdateFd", "Token", "StateArg", "Selftest", "SelftestArg", "SelftestCmd",
    "SELFTEST_NAME_LENGTH", "SELFTEST_MAX_SUBSYSTEMS", "LiveupdateState",
    "LIVEUPDATE_IOCTL_FD_PRESERVE", "LIVEUPDATE_IOCTL_FD_UNPRESERVE",
    "LIVEUPDATE_IOCTL_FD_RESTORE", "LIVEUPDATE_IOCTL_GET_STATE",
    "LIVEUPDATE_IOCTL_EVENT_PREPARE", "LIVEUPDATE_IOCTL_EVENT_FREEZE",
    "LIVEUPDATE_IOCTL_EVENT_CANCEL", "LIVEUPDATE_IOCTL_EVENT_FINISH",
    "LIVEUPDATE_IOCTL_SELFTESTS", "ioc_size", "ioc_dir", "arg_in_len", "arg_out_len",
]

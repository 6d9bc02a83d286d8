"""The kernel's errno vocabulary: the one error language luofs speaks (spec/uapi.md §19)."""

import errno as _errno

# Values are the Linux generic ones; pinned by tests so a platform surprise is caught.
EPERM = 1
ENOENT = 2
EIO = 5
E2BIG = 7
EBADF = 9
EAGAIN = 11
ENOMEM = 12
EACCES = 13
EFAULT = 14
EBUSY = 16
EEXIST = 17
EINVAL = 22
EMFILE = 24
ENOTTY = 25
EFBIG = 27
ENOSPC = 28
EPROTO = 71
EOPNOTSUPP = 95
ETIMEDOUT = 110


def errno_name(value: int) -> str:
    """'EBUSY' for 16; 'errno 1234' for numbers Linux does not name."""
    return _errno.errorcode.get(value, f"errno {value}")

"""The one error type of ``devices/``: a Linux errno plus a reason.

Every rule the device layer enforces, every driver callback that vetoes and every
request the machine refuses ends as :class:`DeviceError`. Numbers are Linux's,
taken from the standard library's :mod:`errno` (this package imports nothing from
the LUO core). The kernel process turns a ``DeviceError`` into LUO's own error at
one place, ``luofs/device_adapter.py``; inside ``devices/`` nothing else is raised
on purpose (a driver bug is wrapped as EIO by the layer).
"""

from __future__ import annotations

import errno as _errno
from errno import EBUSY, EEXIST, EFAULT, EINVAL, EIO, ENODEV, ENOENT, ENOMEM

__all__ = ["DeviceError", "errno_name",
           "EBUSY", "EEXIST", "EFAULT", "EINVAL", "EIO", "ENODEV", "ENOENT", "ENOMEM"]


def errno_name(value: int) -> str:
    """'EBUSY' for 16; 'errno 1234' for numbers Linux does not name."""
    return _errno.errorcode.get(value, f"errno {value}")


class DeviceError(Exception):
    """A device rule, driver or the hardware said no; ``errno`` is what user space sees."""

    def __init__(self, errno: int, reason: str):
        super().__init__(errno, reason)
        self.errno = errno
        self.reason = reason

    def __str__(self) -> str:
        return f"{errno_name(self.errno)}: {self.reason}"

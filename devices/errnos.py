"""The errnos the device layer returns, beside luofs's own table (luofs/uapi/errnos.py).

Linux generic values; ENODEV is the one the LUO uapi never needed.
"""

from luofs.uapi.errnos import EBUSY, EEXIST, EINVAL, EIO, ENOENT, ENOMEM, errno_name  # noqa: F401

ENODEV = 19
EFAULT = 14

__all__ = ["EBUSY", "EEXIST", "EINVAL", "EIO", "ENODEV", "ENOENT", "ENOMEM", "EFAULT", "errno_name"]

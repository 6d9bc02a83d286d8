"""The ABI of /dev/liveupdate: ioctl numbers, argument structs, errnos, transport frames."""

from . import errnos, frames, ioctl, structs
from .errnos import errno_name
from .ioctl import (
    LIVEUPDATE_IOCTL_CREATE_SESSION,
    LIVEUPDATE_IOCTL_RETRIEVE_SESSION,
    LIVEUPDATE_IOCTL_TYPE,
    LIVEUPDATE_SESSION_FINISH,
    LIVEUPDATE_SESSION_GET_NAME,
    LIVEUPDATE_SESSION_NAME_LENGTH,
    LIVEUPDATE_SESSION_PRESERVE_FD,
    LIVEUPDATE_SESSION_RETRIEVE_FD,
)

__all__ = [
    "errnos",
    "frames",
    "ioctl",
    "structs",
    "errno_name",
    "LIVEUPDATE_IOCTL_CREATE_SESSION",
    "LIVEUPDATE_IOCTL_RETRIEVE_SESSION",
    "LIVEUPDATE_IOCTL_TYPE",
    "LIVEUPDATE_SESSION_FINISH",
    "LIVEUPDATE_SESSION_GET_NAME",
    "LIVEUPDATE_SESSION_NAME_LENGTH",
    "LIVEUPDATE_SESSION_PRESERVE_FD",
    "LIVEUPDATE_SESSION_RETRIEVE_FD",
]

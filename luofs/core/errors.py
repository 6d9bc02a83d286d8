"""One error type for every rule the core enforces: the kernel's errno plus a reason."""

from ..uapi.errnos import errno_name


class LuoError(Exception):
    """A rule said no. `errno` is exactly what the real kernel returns to user space."""

    def __init__(self, errno: int, reason: str):
        super().__init__(errno, reason)
        self.errno = errno
        self.reason = reason

    def __str__(self) -> str:
        return f"{errno_name(self.errno)}: {self.reason}"

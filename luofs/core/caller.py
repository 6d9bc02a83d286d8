"""What the core needs to know about the process that issued a request.

The FUSE layer implements this with pidfd_getfd(2) on the verified calling thread;
unit tests use a fake. The core calls it at the exact points where the kernel
would touch the caller's fd table, so errno precedence matches the kernel's.
"""

from __future__ import annotations

from typing import Any, Protocol


class Caller(Protocol):
    def reserve_fd(self) -> None:
        """Raise LuoError(EMFILE) if the caller's fd table is full."""

    def take_file(self, fd: int) -> Any:
        """The caller's open file `fd`, as LUO's own reference; LuoError(EBADF) if none.

        The returned object has `close()`; the core closes what it does not keep.
        """

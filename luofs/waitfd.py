"""Waiting for one file descriptor, whatever its number.

select() refuses descriptors above 1023 ("filedescriptor out of range"), and a program
that uses luofs may well hold thousands of memfds when it calls `luofs shutdown` or the
pytest fixture; poll() has no such limit.
"""

from __future__ import annotations

import select


def readable(fd, timeout: float | None) -> bool:
    """True once `fd` (an int or anything with fileno()) is readable, or hung up; False
    after `timeout` seconds (None: wait as long as it takes)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(None if timeout is None else max(0, int(timeout * 1000))))

"""Finding and removing FUSE mounts left behind by a dead daemon.

A dead or hung daemon leaves a mount where every access fails (ENOTCONN) or hangs.
`umount -l` detaches it from the tree; writing to its fusectl `abort` file fails
every request still pending, so nothing stays stuck in D state.
"""

from __future__ import annotations

import errno
import os
import subprocess

FUSECTL = "/sys/fs/fuse/connections"


def mount_entry(path: str) -> tuple[str, str] | None:
    """(fstype, major:minor) of the topmost mount at path, or None."""
    target = os.path.realpath(path)
    found = None
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if fields[4].encode().decode("unicode_escape") == target:
                    sep = fields.index("-")
                    found = (fields[sep + 1], fields[2])
    except OSError:
        pass
    return found


def is_stale(path: str) -> bool:
    try:
        os.stat(path)
    except OSError as e:
        return e.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    return False


def _abort_connection(dev: str) -> None:
    if not os.path.isdir(FUSECTL) or not os.listdir(FUSECTL):
        subprocess.run(["mount", "-t", "fusectl", "none", FUSECTL], capture_output=True)
    minor = dev.split(":")[1]
    try:
        with open(os.path.join(FUSECTL, minor, "abort"), "w") as f:
            f.write("1")
    except OSError:
        pass


def detach_mount(path: str) -> bool:
    """Abort and lazily unmount every FUSE mount stacked at path. True if one was there."""
    detached = False
    for _ in range(8):  # mounts can be stacked
        entry = mount_entry(path)
        if entry is None or not entry[0].startswith("fuse"):
            return detached
        _abort_connection(entry[1])
        subprocess.run(["umount", "-l", os.path.realpath(path)], capture_output=True)
        detached = True
    return detached

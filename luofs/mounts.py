"""The mount table, and removing FUSE mounts left behind by a dead daemon.

`mount_table()` is the one reader of /proc/self/mountinfo: mount ids (what fdinfo's
mnt_id names), devices, mount points and file-system types all come from it.

A dead or hung daemon leaves a mount where every access fails (ENOTCONN) or hangs.
Only luofs's own mounts (type fuse.luofs) are ever cleaned: another file system,
FUSE or not, healthy or not, is someone else's.
`umount -l` detaches it from the tree; writing to its fusectl `abort` file fails
every request still pending, so nothing stays stuck in D state.

Unhappy paths: an unreadable mountinfo raises OSError from `mount_table()` (and
means "no mount" to `mount_entry`); a fusectl that cannot be mounted or written
leaves only the lazy unmount, which still detaches the mount.
"""

from __future__ import annotations

import errno
import os
import subprocess
from typing import NamedTuple

FUSECTL = "/sys/fs/fuse/connections"
LUOFS_FSTYPE = "fuse.luofs"  # mountinfo's type of our mounts (subtype=luofs)


class MountEntry(NamedTuple):
    """One line of /proc/self/mountinfo."""

    mount_id: int
    device: str  # major:minor
    mount_point: str
    fstype: str


def mount_table() -> list[MountEntry]:
    """Every mount this process sees, in mountinfo's order (a later entry at the same
    mount point is stacked on the earlier one)."""
    table = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            fstype = fields[fields.index("-") + 1]
            point = fields[4].encode().decode("unicode_escape")  # "\040" and kin
            table.append(MountEntry(int(fields[0]), fields[2], point, fstype))
    return table


def topmost(target: str, table: list[MountEntry] | None = None) -> MountEntry | None:
    """The mount on top at `target`, a resolved path (resolving it here could stat
    our own mount from the loop that must answer it), or None."""
    table = mount_table() if table is None else table
    return next((entry for entry in reversed(table) if entry.mount_point == target), None)


def mount_entry(path: str) -> tuple[str, str] | None:
    """(fstype, major:minor) of the topmost mount at path, or None."""
    try:
        entry = topmost(os.path.realpath(path))
    except OSError:
        return None
    return None if entry is None else (entry.fstype, entry.device)


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


def is_luofs(entry: tuple[str, str] | None) -> bool:
    return entry is not None and entry[0] == LUOFS_FSTYPE


def detach_mount(path: str) -> bool:
    """Abort and lazily unmount every luofs mount stacked at path (never another file
    system's, FUSE or not). True if one was there."""
    detached = False
    for _ in range(8):  # mounts can be stacked
        entry = mount_entry(path)
        if not is_luofs(entry):
            return detached
        _abort_connection(entry[1])
        subprocess.run(["umount", "-l", os.path.realpath(path)], capture_output=True)
        detached = True
    return detached

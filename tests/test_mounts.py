"""luofs.mounts: the one reader of /proc/self/mountinfo."""

import os

from luofs.mounts import MountEntry, mount_entry, mount_table, topmost


def test_the_table_has_the_root_mount_with_its_id_device_and_type():
    table = mount_table()
    root = [entry for entry in table if entry.mount_point == "/"]
    assert root and all(isinstance(entry, MountEntry) for entry in table)
    assert all(entry.mount_id > 0 and entry.fstype for entry in table)
    assert all(entry.device.count(":") == 1 for entry in table)
    assert topmost("/", table) == root[-1]


def test_the_mount_id_is_the_one_fdinfo_names():
    fd = os.open("/", os.O_RDONLY)
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            mnt_id = int(next(line for line in f if line.startswith("mnt_id:")).split()[1])
    finally:
        os.close(fd)
    assert topmost("/").mount_id == mnt_id


def test_a_path_that_is_no_mount_point_has_no_entry(tmp_path):
    assert topmost(str(tmp_path)) is None
    assert mount_entry(str(tmp_path)) is None


def test_mount_entry_is_the_topmost_type_and_device():
    entry = topmost("/")
    assert mount_entry("/") == (entry.fstype, entry.device)

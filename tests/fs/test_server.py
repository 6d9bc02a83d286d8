"""Mounting (luofs/fs/server.py): each kernel mounts on the directory the machine
resolved once, through its descriptor, and never over a directory that holds files
(issue 12 §6: a root swapped for a symlink during a kexec got luofs mounted on a
root-owned, non-empty directory)."""

import os
import subprocess
import sys
import textwrap

# Mount an empty luofs tree through ROOT_FD in a process of its own, report where it
# landed (or why it did not), unmount.
MOUNT = textwrap.dedent("""
    import os, sys
    from luofs.fs.nodes import InodeTable
    from luofs.fs.ops import KernelFS
    from luofs.fs.server import Mount, NotEmpty

    root, fd = sys.argv[1], int(sys.argv[2])
    try:
        with Mount(KernelFS(InodeTable(), {}), root, fd):
            print(*[line.split()[4] for line in open("/proc/self/mountinfo")
                    if " fuse.luofs " in line and line.split()[4].startswith(sys.argv[3])])
    except NotEmpty as e:
        print("refused:", e.strerror)
""")


def mount_through_fd(path: str, fd: int, under: str) -> str:
    out = subprocess.run([sys.executable, "-c", MOUNT, path, str(fd), under], pass_fds=[fd],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_the_mount_goes_onto_the_directory_held_not_what_its_path_names_now(tmp_path):
    root, moved, victim = tmp_path / "root", tmp_path / "moved", tmp_path / "victim"
    root.mkdir()
    victim.mkdir()
    (victim / "precious").write_text("someone's")
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        os.rename(root, moved)  # the swap: ROOT now names the victim
        os.symlink(victim, root)
        assert mount_through_fd(str(root), fd, str(tmp_path)) == str(moved)
    finally:
        os.close(fd)
    assert os.listdir(victim) == ["precious"]


def test_a_directory_that_holds_files_is_refused(tmp_path):
    (tmp_path / "a file").write_text("x")
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        out = mount_through_fd(str(tmp_path), fd, str(tmp_path))
    finally:
        os.close(fd)
    assert out == f"refused: {tmp_path} is not empty: luofs will not mount over it and " \
                  "hide its files"
    assert not any(f" {tmp_path} " in line for line in open("/proc/self/mountinfo"))

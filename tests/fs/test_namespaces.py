"""Callers in any mount namespace (issue 13, item 1).

The same FUSE file reached from another mount namespace, or through a bind mount,
has another mount id but the same file system: a caller there is served as any
other. Each view runs a whole two-stage life in one client process: create a
session, preserve a memfd, hold the session across a live update, retrieve.
"""

import os
import subprocess
import sys

import pytest

from luofs import fileid

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="unshare(CLONE_NEWNS) needs root")

CLIENT = """
import hashlib, os, subprocess, sys
from luofs.client import LiveUpdate

stage, root, real_root = sys.argv[1:]
data = hashlib.sha256(b"ns").digest() * 2048
with LiveUpdate(root) as lu:
    if stage == "1":  # hold the session across the kexec, as a two-stage program does
        s = lu.create_session("ns")
        memfd = os.memfd_create("ns")
        os.write(memfd, data)
        s.preserve_fd(memfd, 7)
        assert s.get_name() == b"ns", s.get_name()
        subprocess.run([sys.executable, "-m", "luofs", "kexec", "--root", real_root],
                       check=True, stdout=subprocess.DEVNULL)
        print("preserved", len(data))
    else:
        with lu.retrieve_session("ns") as s:
            fd = s.retrieve_fd(7)
            assert os.pread(fd, len(data) + 1, 0) == data
            s.finish()
        print("retrieved", len(data))
"""


def in_view(view: str, root: str, stage: int) -> list[str]:
    """argv that runs CLIENT's stage in a fresh `view` (a private copy of the mounts
    does not follow the next kernel's mount: each stage gets its own)."""
    client = [sys.executable, "-c", CLIENT, str(stage)]
    if view == "unshare":  # a mount namespace of its own
        return ["unshare", "-m", *client, root, root]
    view_dir = f"{root}.view"
    if view == "bind-root":  # chrooted into a bind mount of / (the same paths)
        script = f'mount --rbind / "{view_dir}" && exec chroot "{view_dir}" "$@"'
        return ["unshare", "-m", "sh", "-c", script, "sh", *client, root, root]
    # Through a bind mount of the directory above ROOT, in a namespace of its own so
    # the host's mount table is untouched.
    script = (f'mkdir -p "{view_dir}" && mount --rbind "{os.path.dirname(root)}" "{view_dir}"'
              f' && exec "$@"')
    return ["unshare", "-m", "sh", "-c", script, "sh", *client,
            os.path.join(view_dir, os.path.basename(root)), root]


@pytest.mark.parametrize("view", ["unshare", "bind", "bind-root"])
def test_a_caller_in_another_view_of_the_mount_is_served(luofs_instance, view):
    root = luofs_instance.root
    os.makedirs(f"{root}.view", exist_ok=True)
    try:
        for stage, said in ((1, "preserved 65536\n"), (2, "retrieved 65536\n")):
            result = subprocess.run(in_view(view, root, stage), capture_output=True,
                                    text=True, timeout=120)
            assert (result.returncode, result.stdout) == (0, said), result.stderr
    finally:
        if os.path.isdir(f"{root}.view"):
            os.rmdir(f"{root}.view")  # its mounts lived and died in the namespace


def test_fileid_names_the_file_system_not_the_mount(luofs_instance):
    """st_dev/st_ino of the device: the same from here and from another namespace."""
    here = fileid.of_fd(fd := os.open(luofs_instance.path("dev", "liveupdate"), os.O_PATH))
    os.close(fd)
    there = subprocess.run(
        ["unshare", "-m", sys.executable, "-c",
         "import os, sys; from luofs import fileid; "
         "fd = os.open(sys.argv[1], os.O_PATH); print(*fileid.of_process_fd('self', fd)[:2])",
         luofs_instance.path("dev", "liveupdate")], capture_output=True, text=True, check=True)
    assert there.stdout.split() == [str(here.dev), str(here.ino)]


def test_fileid_mount_id_is_the_one_fdinfo_shows(luofs_instance, tmp_path):
    """The caller's file is classified by statx's mount id, where fdinfo's used to be read:
    the two must name the same mount for every kind of file (including ours)."""
    import socket

    from luofs.fdutil import fdinfo

    a, b = socket.socketpair()
    r, w = os.pipe()
    fds = [os.memfd_create("m"), os.open(tmp_path, os.O_RDONLY), os.open(tmp_path, os.O_PATH),
           a.fileno(), r, os.open(luofs_instance.path("sys/kernel/liveupdate/state"), os.O_RDONLY),
           os.open(luofs_instance.path("dev", "liveupdate"), os.O_PATH)]
    try:
        for fd in fds:
            assert fileid.of_process_fd("self", fd).mnt_id == int(fdinfo("self", fd)["mnt_id"])
            assert fileid.of_fd(fd).mnt_id == int(fdinfo("self", fd)["mnt_id"])
    finally:
        for fd in fds:
            if fd != a.fileno():
                os.close(fd)
        a.close()
        b.close()
        os.close(w)


def test_fileid_errors_are_the_kernels():
    with pytest.raises(OSError) as e:
        fileid.of_process_fd("self", 999999)
    assert e.value.errno == 2  # ENOENT: no such fd
    with pytest.raises(OSError) as e:
        fileid.of_fd(-1)
    assert e.value.errno == 9  # EBADF


def test_mount_types_finds_a_mount_of_another_namespace_in_the_callers_mountinfo(tmp_path):
    """A tmpfs only another namespace has: its type comes from that process's mountinfo,
    and only for the file system (st_dev) the mount id had when it was looked up."""
    from luofs.fdutil import MountTypes, fdinfo

    holder = subprocess.Popen(
        ["unshare", "-m", "sh", "-c", f'mount -t tmpfs none "{tmp_path}" && '
         f'exec 3>"{tmp_path}/f" && echo ready && exec sleep 60'], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"ready\n"
        shell_fd = 3  # sleep inherited it
        mnt_id = int(fdinfo(holder.pid, shell_fd)["mnt_id"])
        dev = fileid.of_process_fd(holder.pid, shell_fd).dev
        mounts = MountTypes()
        assert mounts.fstype(mnt_id) == ""  # not in our namespace
        assert mounts.fstype(mnt_id, dev, holder.pid) == "tmpfs"
        assert mounts.fstype(mnt_id, dev + 1, holder.pid) == ""  # a reused id: not trusted
        assert mounts.dev(mnt_id) is None
    finally:
        holder.kill()
        holder.wait()

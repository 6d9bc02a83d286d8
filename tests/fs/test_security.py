"""Issue 7 §6: permissions as on a real system, and no process can reach another's fds."""

import errno
import os
import subprocess
import sys

import pytest

from luofs.client import LiveUpdate

NOBODY = 65534


def as_nobody(script: str) -> subprocess.CompletedProcess:
    """A shell as user nobody (the venv's python lies under root's 0700 dirs)."""
    def drop():
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)

    return subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True,
                          preexec_fn=drop)


def test_other_users_read_sysfs_but_cannot_open_the_device(luofs_instance):
    root = luofs_instance.root
    result = as_nobody(f"cat {root}/sys/kernel/liveupdate/state; "
                       f"exec 3<>{root}/dev/liveupdate && echo opened")
    assert result.stdout == "normal\n"
    assert "Permission denied" in result.stderr


def test_preserve_takes_the_callers_own_fd_never_another_process(luofs_instance):
    """A process names fd N: the daemon takes N from that very process (pidfd_getfd on the
    verified calling thread), so another process's memfd at N is out of reach."""
    memfd = os.memfd_create("secret")
    target = 200
    os.dup2(memfd, target)
    os.close(memfd)
    code = (
        "import os, errno, sys\n"
        "from luofs.client import LiveUpdate\n"
        f"lu = LiveUpdate({luofs_instance.root!r})\n"
        "s = lu.create_session('thief')\n"
        "out = []\n"
        "for setup in ('closed', 'devnull'):\n"
        "    if setup == 'devnull':\n"
        f"        os.dup2(os.open('/dev/null', os.O_RDWR), {target})\n"
        "    try:\n"
        f"        s.preserve_fd({target}, len(out))\n"
        "        out.append('preserved')\n"
        "    except OSError as e:\n"
        "        out.append(errno.errorcode[e.errno])\n"
        "print(' '.join(out))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            pass_fds=())
    assert result.stdout.split() == ["EBADF", "ENOENT"], result.stderr
    with LiveUpdate(luofs_instance.root) as lu, lu.create_session("owner") as s:
        s.preserve_fd(target, 1)  # still ours to preserve: the attempts never touched it
    os.close(target)


def test_device_ioctls_need_a_holder_of_the_device(luofs_instance):
    """A request naming an fd that is not this mount's device is refused (EBADF)."""
    from luofs.client import ioctl
    from luofs.uapi import ioctl as nums, structs

    with luofs_instance.client():
        null = os.open("/dev/null", os.O_RDONLY)
        try:
            arg = structs.CreateSession.build(dict(size=72, fd=0, name=b"x".ljust(64, b"\0")))
            with pytest.raises(OSError) as e:
                ioctl(luofs_instance.root, null, nums.LIVEUPDATE_IOCTL_CREATE_SESSION, arg)
            assert e.value.errno == errno.EBADF
        finally:
            os.close(null)


def test_session_fd_cannot_be_reopened_by_path(luofs_instance):
    with luofs_instance.client() as lu, lu.create_session("anon") as s:
        with pytest.raises(OSError) as e:
            os.open(f"/proc/self/fd/{s.fd}", os.O_RDWR)
        assert e.value.errno in (errno.ENXIO, errno.ENOENT)
        assert os.listdir(luofs_instance.path(".luofs")) == []

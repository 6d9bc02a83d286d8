"""luofs cleans only its own mounts (issue 12 §7): a healthy FUSE file system of someone
else's at the root is refused by `boot`, left alone by `shutdown` and `status`."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from luofs.mounts import mount_entry

# A FUSE file system that is not luofs: an empty root directory, served until killed.
OTHER_FS = textwrap.dedent("""
    import sys, pyfuse3, trio

    class Empty(pyfuse3.Operations):
        async def getattr(self, inode, ctx=None):
            a = pyfuse3.EntryAttributes()
            a.st_ino, a.st_mode, a.st_nlink = inode, 0o40755, 2
            return a

        async def opendir(self, inode, ctx):
            return inode

        async def readdir(self, fh, start_id, token):
            pass

    pyfuse3.init(Empty(), sys.argv[1], {"fsname=other", "subtype=other"})
    print("mounted", flush=True)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)
""")


def luofs(*args):
    return subprocess.run([sys.executable, "-m", "luofs", *args], capture_output=True,
                          text=True, timeout=60)


@pytest.fixture
def foreign(tmp_path):
    root = str(tmp_path / "root")
    os.mkdir(root)
    proc = subprocess.Popen([sys.executable, "-c", OTHER_FS, root], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "mounted"
    yield root
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    subprocess.run(["umount", "-l", root], capture_output=True)  # our own, by path


def healthy(root: str) -> bool:
    return mount_entry(root) == ("fuse.other", mount_entry(root)[1]) and os.listdir(root) == []


def test_boot_refuses_a_foreign_fuse_mount_and_leaves_it_alone(foreign):
    result = luofs("boot", "--root", foreign)
    assert result.returncode == 1
    assert "busy: a fuse.other file system is mounted there" in result.stderr
    assert healthy(foreign)


def test_shutdown_and_status_leave_a_foreign_fuse_mount_alone(foreign):
    for command in ("shutdown", "status"):
        result = luofs(command, "--root", foreign)
        assert result.returncode == 1, result
        assert "no luofs kernel serves" in result.stderr
        assert "Traceback" not in result.stderr
        time.sleep(0.05)
        assert healthy(foreign)

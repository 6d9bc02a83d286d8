"""SIGKILL of the kernel process at each phase (issue 7 §4): each has a defined outcome.

Crash points (`--fault crash.*`) make the kernel kill itself exactly there, once per
instance, so the machine's recovery is tested deterministically.
"""

import errno
import os
import subprocess
import sys

import pytest

from luofs.testing import booted


def luofs(*args):
    return subprocess.run([sys.executable, "-m", "luofs", *args], capture_output=True, text=True)


def preserved_session(inst, payload=b"guest memory"):
    lu = inst.client()
    s = lu.create_session("vm")
    fd = os.memfd_create("m")
    os.write(fd, payload)
    s.preserve_fd(fd, 1)
    os.close(fd)
    lu.close()
    return s


def test_crash_during_preserve_loses_the_kernel_and_boot_starts_cold():
    with booted(["--fault", "crash.preserve"]) as inst:
        with inst.client() as lu, lu.create_session("vm") as s:
            with pytest.raises(OSError) as e:
                s.preserve_fd(os.memfd_create("m"), 1)
            assert e.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
        status = luofs("status", "--root", inst.root)
        assert "died" in status.stdout and "kernel:          none" in status.stdout
        boot = luofs("boot", "--root", inst.root)
        assert boot.returncode == 0 and "preserved state is lost" in boot.stderr
        with inst.client() as lu:
            lu.create_session("vm").close()  # the fresh kernel works


def test_crash_during_freeze_fails_the_kexec_and_boot_starts_cold():
    with booted(["--fault", "crash.freeze"]) as inst:
        s = preserved_session(inst)
        result = luofs("kexec", "--root", inst.root)
        assert result.returncode == 1 and "during the freeze" in result.stderr
        assert not os.path.exists(inst.path("dev/liveupdate"))
        assert luofs("boot", "--root", inst.root).returncode == 0
        assert inst.status()["kernel"]["liveupdate_number"] == 0
        s.close()


def test_crash_after_handing_over_loses_nothing():
    with booted(["--fault", "crash.handed-over"]) as inst:
        s = preserved_session(inst, b"x" * 100_000)
        assert luofs("kexec", "--root", inst.root).returncode == 0
        with inst.client() as lu, lu.retrieve_session("vm") as r:
            fd = r.retrieve_fd(1)
            assert os.pread(fd, 200_000, 0) == b"x" * 100_000
            os.close(fd)
        s.close()


def test_crash_of_the_next_kernel_while_reloading_is_retried_and_loses_nothing():
    with booted(["--fault", "crash.reload"]) as inst:
        s = preserved_session(inst, b"survives a crashed reload")
        result = luofs("kexec", "--root", inst.root)
        assert result.returncode == 0, result.stderr
        assert inst.status()["kernel"]["liveupdate_number"] == 1
        with inst.client() as lu, lu.retrieve_session("vm") as r:
            fd = r.retrieve_fd(1)
            assert os.pread(fd, 100, 0) == b"survives a crashed reload"
            os.close(fd)
        s.close()


def test_a_crashed_reload_leaves_every_file_of_many_sessions_intact():
    """The reloading kernel allocated over the old kernel's memory map before it died,
    and the retry lost 14 of 100 files to EIO (issue 12 §3)."""
    with booted(["--fault", "crash.reload"]) as inst:
        lu = inst.client()
        expected, held = {}, []
        for i in range(20):
            s = lu.create_session(f"s{i}")
            for token in range(5):
                fd = os.memfd_create("m")
                expected[(i, token)] = os.urandom(100 + 37 * token + i)
                os.write(fd, expected[(i, token)])
                s.preserve_fd(fd, token)
                os.close(fd)
            held.append(s)
        result = luofs("kexec", "--root", inst.root)
        assert result.returncode == 0 and "100 file(s)" in result.stdout, result.stderr
        got = {}
        with inst.client() as lu2:
            for i in range(20):
                with lu2.retrieve_session(f"s{i}") as r:
                    for token in range(5):
                        fd = r.retrieve_fd(token)
                        got[(i, token)] = os.pread(fd, 1000, 0)
                        os.close(fd)
        assert got == expected


def test_sigkill_of_a_client_at_any_time_releases_its_sessions(luofs_instance):
    code = (
        "import os, sys\n"
        "from luofs.client import LiveUpdate\n"
        f"lu = LiveUpdate({luofs_instance.root!r})\n"
        "s = lu.create_session('doomed')\n"
        "s.preserve_fd(os.memfd_create('m'), 1)\n"
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n"
        outgoing = luofs_instance.path("sys/kernel/liveupdate/sessions/outgoing")
        assert os.listdir(outgoing) == ["doomed"]
        child.kill()
        child.wait()
        assert os.listdir(outgoing) == []  # its fds closed with it: the session is gone
        with luofs_instance.client() as lu:  # and the device it held is free again
            lu.create_session("doomed").close()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_sigkill_of_the_machine_leaves_nothing_that_boot_cannot_clean(tmp_path):
    root = str(tmp_path / "root")
    os.mkdir(root)
    assert luofs("boot", "--root", root).returncode == 0
    from luofs.client import status as machine_status
    status = machine_status(root)
    machine, kernel = status["machine"]["pid"], status["kernel"]["pid"]
    os.kill(machine, 9)
    pidfd = os.pidfd_open(kernel)
    import select
    assert select.select([pidfd], [], [], 15)[0], "the kernel outlived its machine"
    os.close(pidfd)
    boot = luofs("boot", "--root", root)
    try:
        assert boot.returncode == 0, boot.stderr
    finally:
        assert luofs("shutdown", "--root", root).returncode == 0

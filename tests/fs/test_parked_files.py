"""Preserved files beyond a kernel's direct limit are parked in keeper processes and still
carried exactly (LUOFS_DIRECT_FILES lowers the limit so a handful of files does it)."""

import errno
import os
import subprocess
import sys
import time

import pytest

from luofs.testing import booted


def luofs(*args):
    return subprocess.run([sys.executable, "-m", "luofs", *args], capture_output=True, text=True)


def keepers_of(inst) -> set[int]:
    """The keepers this instance's running kernel started (not another test's: tests run
    side by side)."""
    kernel = str(inst.status()["kernel"]["pid"])
    out = subprocess.run(["pgrep", "-P", kernel, "-f", "luofs.keeper"], capture_output=True,
                         text=True).stdout
    return {int(pid) for pid in out.split()}


def alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if os.path.exists(f"/proc/{pid}")}


def test_parked_files_are_carried_through_live_updates(monkeypatch):
    monkeypatch.setenv("LUOFS_DIRECT_FILES", "2")
    with booted() as inst:
        want = {}
        with inst.client() as lu:
            sessions = [lu.create_session(f"vm{i}") for i in range(3)]
            for i, s in enumerate(sessions):
                for t in range(3):
                    fd = os.memfd_create("ram")
                    content = f"session {i} token {t} ".encode() * (t + 1)
                    os.write(fd, content)
                    os.lseek(fd, t, os.SEEK_SET)
                    s.preserve_fd(fd, t)
                    os.close(fd)
                    want[(i, t)] = content
        started = keepers_of(inst)
        assert started  # 7 of the 9 files went to a keeper
        sessions[2].close()  # a closed session's parked files are dropped, not carried
        for update in range(2):
            inst.kexec()
            for s in sessions:
                s.close()
            with inst.client() as lu:
                sessions = []
                for i in range(2):
                    old = lu.retrieve_session(f"vm{i}")
                    fds = [old.retrieve_fd(t) for t in range(3)]
                    for t, fd in enumerate(fds):
                        assert os.pread(fd, 1000, 0) == want[(i, t)], (update, i, t)
                        assert os.lseek(fd, 0, os.SEEK_CUR) == t
                    old.finish()
                    old.close()
                    again = lu.create_session(f"vm{i}")
                    for t, fd in enumerate(fds):
                        again.preserve_fd(fd, t)
                        os.close(fd)
                    sessions.append(again)
            started |= keepers_of(inst)  # the next kernel parks what is preserved anew
        for s in sessions:
            s.close()
    deadline = time.monotonic() + 10  # keepers end when their last socket closes
    while alive(started) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(started)  # nothing left running once the instance is gone


def test_a_dead_keeper_refuses_the_update_and_the_kernel_serves_on(monkeypatch):
    monkeypatch.setenv("LUOFS_DIRECT_FILES", "0")
    with booted() as inst:
        with inst.client() as lu, lu.create_session("vm") as s:
            s.preserve_fd(os.memfd_create("m"), 1)
            mine = keepers_of(inst)
            assert mine
            for pid in mine:
                os.kill(pid, 9)
            result = luofs("kexec", "--root", inst.root)
            assert result.returncode == errno.EIO, result.stderr
            assert "1 preserved file(s) died with their file keeper: session 'vm' (1)" \
                in result.stderr
            assert s.get_name() == b"vm"  # the old kernel serves on
            status = luofs("status", "--root", inst.root).stdout
            assert "died holding 1 file(s)" in status and "session 'vm' (1)" in status
            assert inst.status()["kernel"]["lost"] == {"session 'vm'": 1}
        # once what held the lost file is closed, the update goes ahead
        assert luofs("kexec", "--root", inst.root).returncode == 0


def test_a_keeper_that_dies_in_the_blackout_fails_the_kexec_naming_what_was_lost(monkeypatch):
    monkeypatch.setenv("LUOFS_DIRECT_FILES", "1")
    with booted(["--fault", "keeper.die"]) as inst:
        with inst.client() as lu:
            kept, lost = lu.create_session("kept"), lu.create_session("lost")
            for s, n in ((kept, 1), (lost, 2)):
                for t in range(n):
                    fd = os.memfd_create("m")
                    os.write(fd, f"{s.name} {t}".encode())
                    s.preserve_fd(fd, t)
                    os.close(fd)
        result = luofs("kexec", "--root", inst.root)
        assert result.returncode == 1
        assert "2 preserved file(s) were lost with a file keeper that died during the " \
               "update: sessions 'lost' (2)" in result.stderr, result.stderr
        assert "'lost' (2)" in luofs("status", "--root", inst.root).stdout
        with inst.client() as lu:
            with lu.retrieve_session("kept") as s:
                fd = s.retrieve_fd(0)
                assert os.pread(fd, 100, 0) == b"kept 0"  # the direct file arrived
                os.close(fd)
            with lu.retrieve_session("lost") as s:
                with pytest.raises(OSError) as e:
                    s.retrieve_fd(0)
                assert e.value.errno == errno.EIO

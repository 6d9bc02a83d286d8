"""Programs the machine starts in a kernel's userspace (luofs/spawn.py, native luofs-spawn):
in the current one, and in the next one, made ahead of time and bound to the next
kernel's files at the kexec (what a VMM's successor needs)."""

import errno
import os
import time

import pytest

from luofs import freezer, spawn
from luofs.testing import booted

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="namespaces need root")

NAMESPACES = ("pid", "mnt", "user")


def namespaces(pid) -> tuple[str, ...]:
    return tuple(os.readlink(f"/proc/{pid}/ns/{ns}") for ns in NAMESPACES)


def parent(pid) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("PPid:")).split()[1])


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "it did not happen in time"
        time.sleep(0.02)


def gone(pid) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_program_starts_in_the_current_userspace_as_its_pid1s_child(tmp_path):
    with booted() as inst:
        out = tmp_path / "out"
        r, w = os.pipe()
        os.write(w, b"through fd 3")
        os.close(w)
        with open(out, "wb") as log:
            started = spawn.spawn(inst.root, ["sh", "-c", "cat <&3; echo; cat /proc/cmdline; "
                                              "exec sleep 100"], "current", [r], log.fileno())
        os.close(r)
        us = inst.status()["machine"]["userspace"]
        assert started.pid1 == us["pid"]
        assert namespaces(started.pid) == namespaces(us["pid"]) != namespaces("self")
        assert parent(started.pid) == us["pid"]  # an orphan of that userspace, not the host's
        wait_for(lambda: out.read_bytes().count(b"\n") == 2)
        assert out.read_text() == "through fd 3\nliveupdate=on kho=on\n"
        with open(f"/proc/{started.pid}/status") as f:
            inner = int(next(line for line in f if line.startswith("NSpid:")).split()[-1])
        assert inner != started.pid
        assert spawn.host_pid(spawn.pid_namespace(started.pid), inner) == started.pid
        assert spawn.host_pid(spawn.pid_namespace(started.pid), 99999) is None
    assert gone(started.pid)  # it ended with its userspace


def test_a_program_of_the_next_userspace_starts_before_the_kexec_and_runs_after_it(tmp_path):
    with booted() as inst:
        out = tmp_path / "out"
        go_r, go_w = os.pipe()
        with open(out, "wb") as log:  # it reads /proc/cmdline once we close `go_w`
            started = spawn.spawn(inst.root, ["sh", "-c", "cat <&3 >/dev/null; "
                                              "cat /proc/cmdline; exec sleep 100"], "next",
                                  [go_r], log.fileno())
        os.close(go_r)
        status = inst.status()["machine"]
        held = status["next_userspace"]
        assert held["kernel"] == 1 and held["pid"] == started.pid1 != status["userspace"]["pid"]
        assert namespaces(started.pid) == namespaces(started.pid1)
        old = status["userspace"]["pid"]
        assert spawn.spawn(inst.root, ["true"], "next").pid1 == started.pid1  # the same one
        code = os.system(f"{os.sys.executable} -m luofs kexec --root {inst.root} "
                         "--cmdline 'liveupdate=on kho=on next=1' >/dev/null")
        assert code == 0
        status = inst.status()["machine"]
        assert status["userspace"]["pid"] == started.pid1 and status["next_userspace"] is None
        assert status["userspace"]["kernel"] == 1 and gone(old)
        os.close(go_w)
        wait_for(lambda: out.read_text() != "")
        assert out.read_text() == "liveupdate=on kho=on next=1\n"  # the next kernel's files
        assert not gone(started.pid)


def test_what_cannot_be_started_is_an_error_and_nothing_runs():
    with booted() as inst:
        with pytest.raises(OSError, match="exec /no/such/program: No such file or directory"):
            spawn.spawn(inst.root, ["/no/such/program"])
        with pytest.raises(OSError) as e:  # a request is at most 4 KiB
            spawn.spawn(inst.root, ["true"], env={"BIG": "x" * 5000})
        assert e.value.errno == errno.EIO and "bad request" in str(e.value)


def test_a_userspace_whose_init_ended_takes_no_programs():
    with booted(["--init", "/bin/true"]) as inst:
        wait_for(lambda: not inst.status()["machine"]["userspace"]["running"])
        with pytest.raises(OSError, match="kernel #0 has no userspace: init exited with "
                                          "status 0"):
            spawn.spawn(inst.root, ["true"])


def test_the_next_init_waits_for_the_next_kernel(tmp_path):
    """An --init of a userspace made ahead of time runs only once the next kernel serves:
    it reads that kernel's command line."""
    script = tmp_path / "init"
    script.write_text("#!/bin/sh\ncat /proc/cmdline >> $LOG\nexec sleep 1000\n")
    script.chmod(0o755)
    log = tmp_path / "log"
    os.environ["LOG"] = str(log)
    try:
        with booted(["--init", str(script)]) as inst:
            wait_for(lambda: log.exists() and log.read_text() != "")
            spawn.spawn(inst.root, ["sleep", "100"], "next")
            time.sleep(0.5)
            assert log.read_text() == "liveupdate=on kho=on\n"  # held: not run yet
            inst.kexec()
            wait_for(lambda: log.read_text().count("\n") == 2)
    finally:
        del os.environ["LOG"]


def test_the_old_userspace_stops_at_the_freeze_and_ends_after_the_successors(tmp_path):
    """With a userspace made ahead of time, the old one is frozen at the freeze (no process
    of it runs again) and killed once the successors have taken over."""
    from .test_participants import Fake

    beats = tmp_path / "beats"
    program = ("import os, time\nfd = os.open(%r, os.O_WRONLY | os.O_CREAT | os.O_APPEND)\n"
               "while True:\n    os.write(fd, b'%%f\\n' %% time.monotonic())\n"
               "    time.sleep(0.002)\n" % str(beats))
    with booted() as inst:
        beating = spawn.spawn(inst.root, [os.sys.executable, "-c", program])
        spawn.spawn(inst.root, ["sleep", "100"], "next")  # the next userspace, made now
        resumed = []

        def slow_resume(op):
            resumed.append(time.monotonic())
            resumed.append(not gone(beating.pid))  # frozen, not ended yet (with cgroup v2)
            time.sleep(0.5)  # the old userspace must not run meanwhile
            return {"ok": True}

        successor = Fake(inst.state_dir, "late", {"resume": slow_resume}, successor=True)
        wait_for(lambda: beats.exists() and beats.read_text().count("\n") > 10)
        inst.kexec()
        assert successor.ops == ["resume"] and gone(beating.pid)
        last = float(beats.read_text().split()[-1])
        assert last < resumed[0]  # frozen before the successors were asked
        assert resumed[1] == (freezer.of_process(os.getpid()) is not None)  # its end waited
        successor.close()

"""Issue 12 §8: against a stopped (SIGSTOP) or dead kernel or machine, `luofs status`,
`kexec` and `shutdown` answer at once with a clear message — never a traceback — and
`shutdown` escalates until nothing of the instance is left."""

import os
import signal
import subprocess
import sys
import time

import pytest

from luofs import wire
from luofs.client import status
from luofs.mounts import detach_mount, mount_entry


def luofs(*args) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "luofs", *args], capture_output=True,
                            text=True, timeout=120)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie waiting for init is gone for us
        return f.read().rpartition(")")[2].split()[0] != "Z"


def wait_gone(*pids: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while any(map(alive, pids)):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def instance(tmp_path):
    root = str(tmp_path / "root")
    os.mkdir(root)
    assert luofs("boot", "--root", root).returncode == 0
    info = status(root)
    machine, kernel = info["machine"]["pid"], info["kernel"]["pid"]
    # By pidfd: a pid the test saw die may belong to someone else by the time we clean up.
    pidfds = [os.pidfd_open(pid) for pid in (machine, kernel)]
    yield root, machine, kernel
    for pidfd in pidfds:  # whatever the test left
        for sig in (signal.SIGCONT, signal.SIGKILL):
            try:
                signal.pidfd_send_signal(pidfd, sig)
            except ProcessLookupError:
                pass
        os.close(pidfd)
    detach_mount(root)
    subprocess.run(["rm", "-rf", wire.state_dir(root)])


def nothing_left(root: str, *pids: int) -> None:
    assert wait_gone(*pids), [p for p in pids if alive(p)]
    assert mount_entry(root) is None


def test_a_stopped_kernel(instance):
    root, machine, kernel = instance
    os.kill(kernel, signal.SIGSTOP)
    t0 = time.monotonic()
    result = luofs("status", "--root", root)
    assert result.returncode == 0
    assert (f"kernel:          none — kernel #0 (pid {kernel}) serves nothing: it is stopped "
            f"(SIGSTOP; `kill -CONT {kernel}` resumes it)") in result.stdout
    result = luofs("kexec", "--root", root)
    assert result.returncode == 1
    assert f"kernel #0 (pid {kernel}) cannot freeze: it is stopped" in result.stderr
    assert "nothing was changed" in result.stderr
    assert time.monotonic() - t0 < 10  # no command waited for a timeout
    result = luofs("shutdown", "--root", root)
    assert result.returncode == 0, result.stderr
    nothing_left(root, machine, kernel)


def test_a_stopped_machine(instance):
    root, machine, kernel = instance
    os.kill(machine, signal.SIGSTOP)
    t0 = time.monotonic()
    for command in ("status", "kexec"):
        result = luofs(command, "--root", root)
        assert result.returncode == 1
        assert (f"luofs {command}: the luofs machine of {root} (pid {machine}) cannot answer: "
                f"it is stopped (SIGSTOP; `kill -CONT {machine}` resumes it)") in result.stderr
    assert time.monotonic() - t0 < 10
    result = luofs("shutdown", "--root", root)
    assert result.returncode == 0, result.stderr
    assert "stopping it by force" in result.stderr and "logs kept" in result.stdout
    nothing_left(root, machine, kernel)


def test_a_dead_machine(instance):
    root, machine, kernel = instance
    os.kill(machine, signal.SIGKILL)
    assert wait_gone(machine, kernel)  # a kernel without its machine stops
    for command in ("status", "kexec", "shutdown"):
        result = luofs(command, "--root", root)
        assert result.returncode == 1 and "no luofs kernel serves" in result.stderr
    nothing_left(root, machine, kernel)


def test_a_dead_kernel(instance):
    root, machine, kernel = instance
    os.kill(kernel, signal.SIGKILL)
    assert wait_gone(kernel)
    time.sleep(0.5)  # the machine notices
    result = luofs("status", "--root", root)
    assert result.returncode == 0 and "kernel #0 died (status -9)" in result.stdout
    result = luofs("kexec", "--root", root)
    assert result.returncode == 1 and "no kernel is running (kernel #0 died" in result.stderr
    result = luofs("shutdown", "--root", root)
    assert result.returncode == 0 and "logs kept" in result.stdout
    nothing_left(root, machine, kernel)


def test_an_absent_instance(tmp_path):
    for command in ("status", "kexec", "shutdown"):
        result = luofs(command, "--root", str(tmp_path))
        assert result.returncode == 1 and f"no luofs kernel serves {tmp_path}" in result.stderr

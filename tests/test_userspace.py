"""Each kernel's userspace (issue 13): `luofs run` inside it, the kexec that ends it,
`--init`, and the `--keep-userspace` opt-out."""

import os
import subprocess
import sys
import time

import pytest

from luofs import native, userspace
from luofs.testing import booted

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="namespaces need root")

ENV = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
LUOCTL = native.path(native.LUOCTL)


def luofs(*args):
    return subprocess.run([sys.executable, "-m", "luofs", *args], capture_output=True,
                          text=True, env=ENV, timeout=120)


def in_userspace(instance, script: str):
    return luofs("run", "--root", instance.root, "--", "sh", "-c", script)


def pid_ns(pid) -> str:
    return os.readlink(f"/proc/{pid}/ns/pid")


def processes_in(ns: str) -> set[tuple[int, str]]:
    """(pid, start time) of each process in PID namespace `ns`: namespace ids and pids
    are reused, the pair is not."""
    found = set()
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and pid_ns(entry) == ns:
                found.add((int(entry), started(entry)))
        except OSError:
            pass  # gone meanwhile
    return found


def started(pid) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[19]


def still_running(processes: set[tuple[int, str]]) -> list[int]:
    alive = []
    for pid, start in processes:
        try:
            if started(pid) == start:
                alive.append(pid)
        except OSError:
            pass
    return alive


def current(instance) -> dict:
    return instance.status()["machine"]["userspace"]


def test_the_userspace_is_root_only_for_files(luofs_instance):
    """A user namespace that maps every id to itself: root for files, but what needs the
    host's root (remounting its file systems: an init's shutdown path) is refused. Only
    the namespace is checked here: a probe that worked would change the host."""
    result = in_userspace(luofs_instance, "readlink /proc/self/ns/user; cat /proc/self/uid_map "
                          "/proc/self/gid_map; id -u; cat /etc/shadow >/dev/null && echo files")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] != os.readlink("/proc/self/ns/user")
    assert [line.split() for line in lines[1:3]] == [["0", "0", "4294967295"]] * 2
    assert lines[3:] == ["0", "files"]


def test_luofs_run_starts_programs_in_the_kernels_userspace(luofs_instance):
    result = in_userspace(luofs_instance, "echo $$; readlink /proc/self/ns/pid; cat /proc/cmdline;"
                          " test -c /dev/liveupdate && echo device; cat /sys/kernel/liveupdate/state;"
                          " test -c /dev/null && test -d /dev/pts && echo host-dev")
    assert result.returncode == 0, result.stderr
    pid, ns, cmdline, device, state, host = result.stdout.split("\n")[:6]
    us = current(luofs_instance)
    assert us["running"] and us["kernel"] == 0 and us["init"] is None
    assert ns == pid_ns(us["pid"]) != pid_ns("self")
    assert int(pid) > 1  # PID 1 is the reaper
    assert (cmdline, device, state, host) == ("liveupdate=on kho=on", "device", "normal", "host-dev")
    with open("/proc/cmdline") as f:  # the host's own files are untouched
        assert f.read() != "liveupdate=on kho=on\n"


def test_a_kexec_ends_the_old_userspace_and_nothing_else(luofs_instance):
    result = in_userspace(luofs_instance, "setsid sleep 1000 </dev/null >/dev/null 2>&1 & echo $!")
    assert result.returncode == 0, result.stderr
    old = current(luofs_instance)
    old_ns = pid_ns(old["pid"])
    old_processes = processes_in(old_ns)
    assert len(old_processes) >= 2  # the reaper, the daemon it adopted (and its supervisor)
    outside = subprocess.Popen(["sleep", "1000"])  # not started through luofs
    try:
        luofs_instance.kexec()
        assert still_running(old_processes) == []
        assert outside.poll() is None
    finally:
        outside.kill()
        outside.wait()
    new = current(luofs_instance)
    assert new["kernel"] == 1 and new["running"] and new["pid"] != old["pid"]
    result = in_userspace(luofs_instance, "stat -c %d /dev/liveupdate")  # the next kernel's
    device = os.stat(luofs_instance.path("dev", "liveupdate")).st_dev
    assert (result.returncode, result.stdout) == (0, f"{device}\n"), result.stderr


def test_a_program_asking_for_the_kexec_ends_with_its_userspace(luofs_instance):
    result = luofs("run", "--root", luofs_instance.root, "--", LUOCTL, "create", "x", "kexec")
    assert result.returncode == 128 + 9
    assert f"luofs run: {LUOCTL} ended with its userspace" in result.stderr
    assert luofs_instance.status()["kernel"]["liveupdate_number"] == 1


def test_keep_userspace_carries_it_to_the_next_kernel(luofs_instance):
    pid1 = current(luofs_instance)["pid"]
    result = in_userspace(
        luofs_instance, f"luofs kexec --root {luofs_instance.root} --keep-userspace --cmdline x=1 "
                        f">/dev/null && cat /proc/cmdline /sys/kernel/liveupdate/state && "
                        f"{LUOCTL} create kept name")
    assert result.stdout.split() == ["x=1", "normal", "kept"], result.stderr
    us = current(luofs_instance)
    assert (us["kernel"], us["pid"], us["running"]) == (1, pid1, True)


def test_the_userspace_shows_the_kho_debugfs_when_booted_with_it():
    with booted(["--debugfs"]) as instance:
        result = in_userspace(instance, "ls /sys/kernel/debug/kho")
        assert (result.returncode, result.stdout.split()) == (0, ["out"]), result.stderr


def test_when_init_exits_the_userspace_is_over_and_status_says_how(tmp_path):
    init = tmp_path / "init"
    init.write_text("#!/bin/sh\nexit 3\n")
    init.chmod(0o755)
    with booted(["--init", str(init)]) as instance:
        deadline = time.monotonic() + 30
        while current(instance)["running"] and time.monotonic() < deadline:
            time.sleep(0.05)
        us = current(instance)
        assert (us["running"], us["ended"]) == (False, "init exited with status 3")
        assert us["init"] == [str(init)]
        text = luofs("status", "--root", instance.root).stdout
        assert "ended: init exited with status 3" in text
        result = luofs("run", "--root", instance.root, "--", "true")
        assert result.returncode == 1
        assert "kernel #0 has no userspace: init exited with status 3" in result.stderr
        assert instance.read("sys", "kernel", "liveupdate", "state") == "normal\n"


def test_boot_refuses_an_init_that_cannot_run_or_arguments_without_one(tmp_path):
    result = luofs("boot", "--root", str(tmp_path), "--init", "/nonexistent/init")
    assert (result.returncode, result.stderr) == (
        1, "luofs boot: --init /nonexistent/init: no such executable\n")
    result = luofs("boot", "--root", str(tmp_path), "x", "y")
    assert (result.returncode, result.stderr) == (
        1, "luofs boot: arguments 'x y' given without --init PROG\n")


def test_boot_refuses_an_init_it_could_not_start(tmp_path, monkeypatch, capsys):
    env = {**ENV, "LUOFS_USERSPACE": str(tmp_path / "missing")}
    result = subprocess.run([sys.executable, "-m", "luofs", "boot", "--root", str(tmp_path),
                             "--init", "/bin/true"], capture_output=True, text=True, env=env)
    assert (result.returncode, result.stderr) == (
        1, f"luofs boot: --init needs the userspace launcher: {tmp_path / 'missing'} is not "
           "built: run `make native` (or set LUOFS_USERSPACE)\n")
    from luofs import cli

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert cli.main(["boot", "--root", str(tmp_path), "--init", "/bin/true"]) == 1
    assert capsys.readouterr().err == (
        "luofs boot: --init needs root: a userspace is a set of namespaces\n")


def test_a_launcher_that_fails_leaves_no_userspace_and_says_why(tmp_path):
    us = userspace.Userspace("/nonexistent", str(tmp_path))
    us.start(0)
    assert us.status()["running"] is False
    assert us.ended == ("bind /nonexistent/proc/cmdline on /proc/cmdline: "
                        "No such file or directory")


def test_without_the_launcher_there_is_no_userspace(tmp_path, monkeypatch):
    monkeypatch.setenv("LUOFS_USERSPACE", "/nonexistent/luofs-userspace")
    us = userspace.Userspace("/nonexistent", str(tmp_path))
    us.start(0)
    assert us.ended == "none: /nonexistent/luofs-userspace is not built (run `make native`)"
    us.stop("shutdown")  # harmless with nothing running


def test_without_a_userspace_luofs_run_warns_and_runs_the_program_plainly(tmp_path):
    env = {**ENV, "LUOFS_USERSPACE": str(tmp_path / "missing")}  # the machine inherits it
    root = tmp_path / "root"
    root.mkdir()
    boot = subprocess.run([sys.executable, "-m", "luofs", "boot", "--root", str(root)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert boot.returncode == 0, boot.stderr
    try:
        result = luofs("run", "--root", str(root), "--", "sh", "-c", "readlink /proc/self/ns/pid")
        assert (result.returncode, result.stdout) == (0, f"{pid_ns('self')}\n")
        assert result.stderr == (f"luofs run: warning: kernel #0 has no userspace "
                                 f"({tmp_path / 'missing'} is not built (run `make native`)); "
                                 "sh runs outside it, as a plain process\n")
        text = luofs("status", "--root", str(root)).stdout
        assert (f"userspace:       none ({tmp_path / 'missing'} is not built "
                "(run `make native`)): luofs run runs plain processes\n") in text
    finally:
        luofs("shutdown", "--root", str(root))


@pytest.mark.parametrize("args, message", [
    (["--load", "--unload"], "--load and --unload go alone (--cmdline with --load)"),
    (["--load", "--keep-userspace"], "--load and --unload go alone (--cmdline with --load)"),
    (["--unload", "--cmdline", "a=1"], "--unload takes no --cmdline"),
])
def test_kexec_option_mistakes_are_refused_before_asking_the_machine(tmp_path, args, message):
    result = luofs("kexec", "--root", str(tmp_path), *args)
    assert (result.returncode, result.stderr) == (1, f"luofs kexec: {message}\n")


def test_a_userspace_ended_by_a_stop_says_why(luofs_instance, tmp_path):
    us = userspace.Userspace(luofs_instance.root, str(tmp_path))
    us.start(7)
    assert us.status()["running"] and us.status()["kernel"] == 7
    us.stop("test")
    assert us.status() == {"kernel": 7, "pid": None, "init": None, "running": False,
                           "ended": "PID 1 was killed by SIGKILL (ended by the test)",
                           "log": str(tmp_path / "userspace.log")}


def test_without_root_there_is_no_userspace(tmp_path, monkeypatch):
    monkeypatch.setattr(userspace.os, "geteuid", lambda: 1000)
    us = userspace.Userspace("/nonexistent", str(tmp_path))
    us.start(0)
    assert (us.running(), us.ended) == (False, "none: namespaces need root")


def test_luofs_run_says_when_it_cannot_join(monkeypatch, capsys, tmp_path):
    from luofs import cli

    from luofs.protocol import MachineStatus

    monkeypatch.setattr(cli, "_machine_answers", lambda root: MachineStatus(machine={
        "userspace": {"kernel": 3, "pid": 999999999, "running": True, "ended": None}}))
    # (a pid above pid_max: nobody has it)
    (tmp_path / "sys" / "kernel" / "liveupdate").mkdir(parents=True)
    assert cli.main(["run", "--root", str(tmp_path), "--", "true"]) == 1
    assert capsys.readouterr().err == (
        "luofs run: cannot join the userspace of kernel #3: No such process\n")


def test_the_launcher_refuses_bad_arguments_and_a_userspace_it_cannot_enter():
    launcher = userspace.launcher_path()
    result = subprocess.run([launcher], capture_output=True, text=True)
    assert result.returncode == 64 and result.stderr.startswith("usage: luofs-userspace /ROOT")
    result = subprocess.run([launcher, "--rebind", "999999999", "/"], capture_output=True,
                            text=True)
    assert (result.returncode, result.stdout) == (
        1, "error: enter the mount namespace of 999999999: No such process\n")


def test_rfc_v1_sysfs_control_at_its_real_path_from_the_userspace():
    with booted(["--abi", "rfc-v1"]) as instance:
        result = in_userspace(instance, "test -e /dev/liveupdate || echo no-device; "
                              "echo 1 > /sys/kernel/liveupdate/prepare && "
                              "cat /sys/kernel/liveupdate/state")
        assert (result.returncode, result.stdout) == (0, "no-device\nprepared\n"), result.stderr
        assert instance.read("sys", "kernel", "liveupdate", "state") == "prepared\n"


def test_a_command_line_the_kernel_would_refuse_is_einval_and_nothing_changes(luofs_instance):
    long = "x" * 3000
    for extra in ([], ["--load"]):
        result = luofs("kexec", "--root", luofs_instance.root, *extra, "--cmdline", long)
        assert (result.returncode, result.stderr.splitlines()[0]) == (
            22, "luofs kexec: a command line holds at most 2047 bytes")
    status = luofs_instance.status()
    assert status["kernel"]["liveupdate_number"] == 0
    assert status["machine"]["next_kernel"] == {"loaded": False, "cmdline": None}
    assert luofs_instance.read("proc", "cmdline") == "liveupdate=on kho=on\n"

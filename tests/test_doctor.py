"""`luofs doctor` (issue 16): one line a check, the fix for what is missing, exit 1 when a
required piece is; `luofs boot`'s preflight refuses with the same words."""

import ctypes
import errno
import json
import os
import subprocess
import sys

import pytest

from luofs import cli, doctor, native

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="this machine's checks need root")


def luofs_doctor(*args, **env):
    return subprocess.run([sys.executable, "-m", "luofs", "doctor", *args], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=60)


def test_a_machine_with_everything_required_passes_and_says_where_the_pieces_are():
    result = luofs_doctor(LUOFS_VM_ACCEL="tcg")  # KVM's probe is not this test's business
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "luofs doctor: everything luofs boot, run and kexec need is here"
    names = ["root", "/dev/fuse", "libfuse3 (pyfuse3)", "fusermount3", "pidfd of a thread",
             "seccomp notification", "user+mount+PID ns", "memfd",
             *(piece.name for piece in native.PIECES), "linux/liveupdate.h", "dtc", "qemu"]
    assert [line[9:31].rstrip() for line in lines[:len(names)]] == names
    shim = next(line for line in lines if line[9:].startswith("libluofs-shim.so "))
    assert shim == (f"ok       libluofs-shim.so      "
                    f"{native.CHECKOUT_DIR}/libluofs-shim.so (checkout)")


def test_json_has_every_check_and_the_verdict():
    result = luofs_doctor("--json", LUOFS_VM_ACCEL="tcg")
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["ok"] is True
    assert {check["name"] for check in report["checks"]} >= {"root", "/dev/fuse", "memfd"}
    assert all(set(check) == {"name", "required", "ok", "detail", "fix"}
               for check in report["checks"])


def test_a_missing_required_piece_is_named_with_its_fix_and_exits_1(tmp_path):
    missing = str(tmp_path / "shim.so")
    result = luofs_doctor(LUOFS_SHIM=missing, LUOFS_VM_ACCEL="tcg")
    assert result.returncode == doctor.EXIT_MISSING == 1
    assert (f"MISSING  libluofs-shim.so      the LD_PRELOAD shim of luofs run and --init: "
            f"{missing} is missing; fix: $LUOFS_SHIM names it: point it at a built one, or "
            "unset it\n") in result.stdout
    assert result.stderr == ("luofs doctor: missing libluofs-shim.so: luofs boot, run or kexec "
                             "will fail\n")
    result = luofs_doctor("--json", LUOFS_SHIM=missing, LUOFS_VM_ACCEL="tcg")
    assert result.returncode == 1 and json.loads(result.stdout)["ok"] is False


def test_a_missing_optional_piece_is_reported_but_passes(tmp_path):
    result = luofs_doctor(LUOFS_QEMU=str(tmp_path / "qemu"), LUOFS_GUEST=str(tmp_path / "g"))
    assert result.returncode == 0, result.stderr
    assert (f"optional qemu                  {tmp_path / 'qemu'} is not an executable; fix: "
            "Debian/Ubuntu: apt-get install qemu-system-x86, or set $LUOFS_QEMU to QEMU\n"
            ) in result.stdout
    assert f"optional luofs-guest.elf       the test guest of luofs vm: {tmp_path / 'g'}" \
        in result.stdout


def test_a_piece_found_nowhere_says_how_to_build_it(monkeypatch, tmp_path):
    monkeypatch.delenv("LUOFS_SUPERVISOR", raising=False)
    monkeypatch.setattr(native, "PACKAGE_DIR", str(tmp_path / "package"))
    monkeypatch.setattr(native, "CHECKOUT_DIR", str(tmp_path / "build"))
    check = doctor.native_piece(native.SUPERVISOR)
    assert (check.ok, check.required) == (False, True)
    assert check.line() == ("MISSING  luofs-supervise       the seccomp supervisor of luofs run: "
                            f"{tmp_path}/build/luofs-supervise is missing; fix: run `make "
                            "native` (or set LUOFS_SUPERVISOR)")
    monkeypatch.setattr(native, "CHECKOUT", str(tmp_path))  # no native/Makefile: installed
    assert doctor.native_piece(native.SUPERVISOR).fix == (
        "reinstall luofs where gcc and make are installed (pip builds the native pieces); "
        "`luofs doctor` says what is missing (or set LUOFS_SUPERVISOR)")


def test_a_user_is_told_to_be_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    check = doctor.root()
    assert (check.ok, check.required, check.detail) == (False, True, "running as uid 1000")
    assert check.fix.startswith("run luofs as root (sudo)")


class RefusingLibc:
    """libc whose unshare and syscall fail as a kernel without them would."""

    def __init__(self, err):
        self.err = err

    def _fail(self, *args):
        ctypes.set_errno(self.err)
        return -1

    unshare = syscall = _fail


@pytest.mark.parametrize("sysctls, fix", [
    ({}, "in a container: docker run --privileged (or a seccomp profile allowing unshare)"),
    ({"user.max_user_namespaces": "0"}, "sysctl -w user.max_user_namespaces=15000"),
])
def test_namespaces_that_cannot_be_made_are_named_with_the_errno(monkeypatch, sysctls, fix):
    monkeypatch.setattr(doctor, "_libc", lambda: (ctypes, RefusingLibc(errno.EPERM)))
    monkeypatch.setattr(doctor, "_sysctl", sysctls.get)
    check = doctor.namespaces()  # the probe's child gets the refusing libc too
    assert (check.ok, check.fix) == (False, fix)
    assert check.detail.startswith("unshare fails (Operation not permitted)")


def test_the_real_namespace_probe_passes_here():
    assert doctor.namespaces().ok


def test_a_kernel_without_seccomp_notification_is_named(monkeypatch):
    monkeypatch.setattr(doctor, "_libc", lambda: (ctypes, RefusingLibc(errno.EOPNOTSUPP)))
    check = doctor.seccomp_notify()
    assert (check.ok, check.required) == (False, True)
    assert check.detail == "SECCOMP_RET_USER_NOTIF is not available (Operation not supported)"


def test_boot_refuses_at_once_on_a_kernel_without_thread_pidfds(monkeypatch, tmp_path, capsys):
    def pidfd_open(pid, flags=0):
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    monkeypatch.setattr(os, "pidfd_open", pidfd_open)
    assert cli.main(["boot", "--root", str(tmp_path)]) == 1
    assert capsys.readouterr().err == (
        f"luofs boot: pidfd of a thread: pidfd_open(PIDFD_THREAD) fails (Invalid argument) on "
        f"Linux {os.uname().release}; fix: luofs needs Linux 6.9 or later (luofs doctor "
        "checks the rest)\n")
    assert os.listdir(tmp_path) == []  # nothing was started or mounted


def test_boot_refuses_without_fuse(monkeypatch, tmp_path, capsys):
    real_open = os.open

    def no_fuse(path, *args, **kwargs):
        if path == "/dev/fuse":
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", no_fuse)
    assert cli.main(["boot", "--root", str(tmp_path)]) == 1
    assert capsys.readouterr().err == (
        "luofs boot: /dev/fuse: cannot open /dev/fuse: No such file or directory; fix: "
        "modprobe fuse (Debian/Ubuntu: apt-get install fuse3); in a container, pass the "
        "device (docker run --device /dev/fuse --cap-add SYS_ADMIN) (luofs doctor checks "
        "the rest)\n")

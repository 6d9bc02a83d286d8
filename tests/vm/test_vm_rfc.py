"""luofs vm under the RFC profiles: the VMM is the kvm subsystem's (issue 15). The RFC state
machine drives it (sysfs under rfc-v1, ioctls under rfc-v2); the VM crosses in the
subsystem's KHO node; the next kernel's VMM takes it from there. Skipped without QEMU."""

import errno
import json
import os
import subprocess
import sys
import time

import pytest

from luofs import vm
from luofs.client import LiveUpdateV2

from .test_vm import QEMU, MiB, Tracked, alive, running_vm, sample_guest_ram, wait_for

pytestmark = [
    pytest.mark.skipif(not QEMU, reason="QEMU is not installed: Debian's qemu-system-x86 "
                                        "(`make test` installs it)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="mount tests need root"),
]

LU = "sys/kernel/liveupdate"


def event(inst, abi, name):
    """PREPARE, CANCEL or FINISH as the profile lets user space ask for it."""
    if abi == "rfc-v1":
        value = {"prepare": ("prepare", b"1"), "cancel": ("prepare", b"0"),
                 "finish": ("finish", b"1")}[name]
        fd = os.open(inst.path(LU, value[0]), os.O_WRONLY)
        try:
            os.write(fd, value[1])
        finally:
            os.close(fd)
    else:
        with LiveUpdateV2(inst.root) as lu:
            getattr(lu, name)()


def ticking(t: Tracked, by=20) -> None:
    before = t.serial().last_tick
    wait_for(lambda: t.serial().last_tick >= before + by)


def stopped(t: Tracked) -> bool:
    before = t.serial().last_tick
    time.sleep(0.3)
    return t.serial().last_tick == before


@pytest.mark.parametrize("abi", ["rfc-v1", "rfc-v2"])
def test_a_guest_lives_through_two_rfc_updates(abi):
    with running_vm(["--abi", abi]) as (inst, t):
        [(seed, lo, hi)] = t.serial().boots
        inode = sample_guest_ram(t.status()["qemu_pid"], seed, lo, hi)[0]
        for number in (1, 2):
            event(inst, abi, "prepare")  # the kvm subsystem stops and saves the guest
            assert inst.read(LU, "state") == "prepared\n" and stopped(t)
            inst.kexec()
            assert inst.read(LU, "state") == "updated\n"
            view = inst.read(LU, "subsystems", "kvm")  # the next kernel knows it from KHO
            assert "received=intact\n" in view and "incoming vm0 ram=67108864" in view
            assert "retrieved=1" in view and "outgoing vm0" in view  # taken, registered anew
            info = t.status()
            assert (info["abi"], info["generation"], info["state"]) == (abi, number, "running")
            assert 0 < info["last_update"]["state_bytes"] < MiB
            ticking(t)
            ino, bad, _heartbeat, seed_word = sample_guest_ram(info["qemu_pid"], seed, lo, hi)
            assert ino == inode and bad == [] and seed_word == seed
            event(inst, abi, "finish")
            assert inst.read(LU, "state") == "normal\n"
        ticks = [tick for tick, _ in t.serial().ticks]
        assert ticks == list(range(10, 10 * len(ticks) + 1, 10)) and len(t.serial().boots) == 1
        assert vm.check(inst.root)["errors"] == 0


def test_the_kvm_node_is_in_the_kho_hand_over():
    with running_vm(["--abi", "rfc-v1"], ram=16 * MiB) as (inst, t):
        event(inst, "rfc-v1", "prepare")
        inst.kexec()
        dump = json.loads(subprocess.run(
            [sys.executable, "-m", "luofs", "kho", "dump", "--root", inst.root, "--in"],
            capture_output=True, text=True, check=True).stdout)
        kvm = dump["subtrees"]["kvm"]
        assert kvm["compatible"] == ["luofs,kvm-v1"]
        luo = dump["subtrees"]["LUO"]["luo"]
        assert luo["subsystems"]["kvm"] == kvm["fdt"]  # the subsystem's u64 is its node
        assert [(s["name"], len(s["files"])) for s in luo["sessions"]] == [("kvm", 2)]


def test_cancel_resumes_the_guest():
    with running_vm(["--abi", "rfc-v2"], ram=16 * MiB) as (inst, t):
        qemu = t.status()["qemu_pid"]
        event(inst, "rfc-v2", "prepare")
        assert stopped(t)
        event(inst, "rfc-v2", "cancel")
        ticking(t)
        assert t.status()["qemu_pid"] == qemu and "stage=registered" in inst.read(
            LU, "subsystems", "kvm")
        event(inst, "rfc-v2", "prepare")  # and it can be prepared again
        inst.kexec()
        ticking(t)
        assert t.status()["generation"] == 1


@pytest.mark.parametrize("abi", ["rfc-v1", "rfc-v2"])
def test_a_vmm_that_refuses_prepare_fails_the_event_with_its_errno(abi, monkeypatch):
    monkeypatch.setenv("LUOFS_VM_FAULT", "save:ENOSPC")  # the VMMs inherit it
    with running_vm(["--abi", abi], ram=16 * MiB) as (inst, t):
        with pytest.raises(OSError) as e:
            event(inst, abi, "prepare")
        assert e.value.errno == errno.ENOSPC
        assert inst.read(LU, "state") == "normal\n"
        ticking(t)  # the guest never stopped
        assert t.status()["state"] == "running"


def test_a_kexec_that_was_not_prepared_loses_the_vm():
    """RFC: from NORMAL a kexec carries nothing; the VMM died with the old kernel's
    userspace, and its successor finds no VM to take."""
    with running_vm(["--abi", "rfc-v1"], ram=16 * MiB) as (inst, t):
        old = t.status()
        inst.kexec()
        info = t.status()
        assert info["state"] == "lost"
        assert info["error"] == ("VM vm0 did not resume: kvm: retrieve VM vm0: VMs are "
                                 "retrieved only in UPDATED, not normal")  # (EBUSY)
        wait_for(lambda: not any(alive(p) for p in t.pids), 10, "the VM's processes' end")
        assert not alive(old["qemu_pid"])

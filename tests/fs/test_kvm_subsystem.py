"""The kvm subsystem of the RFC profiles (luofs/subsystems/kvm.py) through real mounts, with
VMMs played by threads (no QEMU): registration, the callbacks driven by the RFC state
machine, its KHO node, retrieval in the next kernel, and every errno on the way."""

import errno
import json
import os
import subprocess
import sys
import threading
from types import SimpleNamespace

import pytest

from luofs import protocol
from luofs.client import LiveUpdateV2
from luofs.protocol import Error, Ok
from luofs.protocol_participant import Cancel, Prepare
from luofs.protocol_vmm import VmSaved
from luofs.subsystems import kvm_node
from luofs.testing import booted
from luofs.vm.carry import Kvm

from .test_rfc_profiles import write

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mount tests need root")
LU = "sys/kernel/liveupdate"
MiB = 1 << 20


def raises_errno(code, fn, *args):
    with pytest.raises(OSError) as e:
        fn(*args)
    assert e.value.errno == code, f"expected {errno.errorcode[code]}, got {e.value}"
    return e.value


def kvm_view(inst) -> list[str]:
    return inst.read(LU, "subsystems", "kvm").splitlines()


class FakeVmm:
    """A VMM without QEMU: its VM registered with the kvm subsystem, its answers scripted
    (`answers[op]`: a reply message, or None to close the socket instead)."""

    def __init__(self, root, name="vm0", size=MiB, answers=None):
        self.ram = os.memfd_create(f"ram-{name}")
        os.pwrite(self.ram, name.encode() * 64, 0)
        os.ftruncate(self.ram, size)
        self.name, self.answers, self.ops = name, answers or {}, []
        self.carrier = Kvm(root)
        self.carrier.register(SimpleNamespace(name=name, ram=size, accel="tcg",
                                              extra=("-rtc", "base=utc")), self.ram, 0)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        sock = self.carrier.driver
        while True:
            try:
                message, fds = protocol.recv(sock)
            except OSError:
                return
            protocol.close_fds(fds)
            if message is None:
                return
            op = {Prepare: "prepare", Cancel: "cancel"}[type(message)]
            self.ops.append(op)
            if op in self.answers and self.answers[op] is None:
                sock.close()
                return
            reply, fds = self.answers.get(op), {}
            if reply is None and op == "prepare":
                state = os.memfd_create("state")
                os.write(state, f"state of {self.name}".encode())
                reply, fds = VmSaved(1.0, 2.0, 3.0, os.fstat(state).st_size), {"state": [state]}
            try:
                protocol.send(sock, reply or Ok(), fds)
            except OSError:  # closed by the test meanwhile
                return
            finally:
                protocol.close_fds(fds)

    def close(self):
        self.carrier.close()
        os.close(self.ram)


def kho_json(inst, which) -> dict:
    out = subprocess.run([sys.executable, "-m", "luofs", "kho", "dump", "--root", inst.root,
                          *(["--in"] if which == "in" else [])], capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out)


@pytest.mark.parametrize("abi", ["rfc-v1", "rfc-v2"])
def test_a_vm_crosses_an_update_as_the_kvm_subsystems(abi):
    with booted(["--abi", abi, "--debugfs"]) as inst:
        vmm = FakeVmm(inst.root)
        assert kvm_view(inst)[1:] == ["received=none", "outgoing vm0 ram=1048576 accel=tcg "
                                                       "stage=registered"]
        if abi == "rfc-v1":
            write(inst, "prepare", b"1")
        else:
            with LiveUpdateV2(inst.root) as lu:
                lu.prepare()
        assert vmm.ops == ["prepare"] and inst.read(LU, "state") == "prepared\n"
        view = kvm_view(inst)
        assert view[0] != "data=0x0" and view[2].endswith("stage=saved")
        assert kho_json(inst, "out")["subtrees"]["kvm"]["compatible"] == ["luofs,kvm-v1"]
        inst.kexec()
        assert inst.read(LU, "state") == "updated\n"
        assert kvm_view(inst)[1:] == [
            "received=intact", "incoming vm0 ram=1048576 accel=tcg state-bytes=12 "
            'ram-token=0x0 state-token=0x1 retrieved=0 qemu-args=["-rtc", "base=utc"]']
        assert kho_json(inst, "in")["subtrees"]["kvm"]["compatible"] == ["luofs,kvm-v1"]
        with open(inst.path("sys/kernel/debug/kho/in/sub_fdts/kvm"), "rb") as f:
            assert kvm_node.decode(f.read()) == [kvm_node.VmDescription(
                "vm0", MiB, 12, 0, 1, "tcg", ("-rtc", "base=utc"))]
        raises_errno(errno.ENOENT, Kvm.retrieve, inst.root, "vm1")
        vm, _finish = Kvm.retrieve(inst.root, "vm0")
        try:  # the very memfds: the RAM the VMM registered, the state it saved
            assert os.fstat(vm.ram_fd).st_ino == os.fstat(vmm.ram).st_ino
            assert os.pread(vm.ram_fd, 3, 0) == b"vm0"
            assert os.pread(vm.state_fd, 64, 0) == b"state of vm0"
            assert (vm.ram, vm.accel, vm.qemu_args) == (MiB, "tcg", ("-rtc", "base=utc"))
        finally:
            os.close(vm.ram_fd)
            os.close(vm.state_fd)
        raises_errno(errno.EINVAL, Kvm.retrieve, inst.root, "vm0")  # once
        assert "retrieved=1" in kvm_view(inst)[2]
        if abi == "rfc-v1":
            write(inst, "finish", b"1")
        else:
            with LiveUpdateV2(inst.root) as lu:
                lu.finish()
        assert kvm_view(inst)[1:] == ["received=intact"]  # the old VMM's registration died
        raises_errno(errno.EBUSY, Kvm.retrieve, inst.root, "vm0")  # only in UPDATED
        vmm.close()


def test_registration_and_retrieval_errors():
    with booted(["--abi", "rfc-v1"]) as inst:
        memfd = os.memfd_create("ram")
        os.ftruncate(memfd, MiB)
        register = Kvm(inst.root).register

        def vm(name="vm0", size=MiB):
            return SimpleNamespace(name=name, ram=size, accel="tcg", extra=())

        raises_errno(errno.EINVAL, register, vm("two words"), memfd, 0)
        raises_errno(errno.EINVAL, register, vm("x" * 64), memfd, 0)
        raises_errno(errno.EINVAL, register, vm(size=2 * MiB), memfd, 0)
        r, w = os.pipe()
        raises_errno(errno.EINVAL, register, vm(), r, 0)  # RAM must be a memfd
        raises_errno(errno.EBUSY, Kvm.retrieve, inst.root, "vm0")  # not UPDATED
        vmm = FakeVmm(inst.root)
        raises_errno(errno.EEXIST, register, vm(), memfd, 0)
        write(inst, "prepare", b"1")
        raises_errno(errno.EBUSY, register, vm("late"), memfd, 0)  # an update is in flight
        write(inst, "prepare", b"0")
        assert vmm.ops == ["prepare", "cancel"]
        vmm.close()
        for fd in (memfd, r, w):
            os.close(fd)
    with booted() as inst:  # mainline has no subsystem API
        memfd = os.memfd_create("ram")
        os.ftruncate(memfd, MiB)
        e = raises_errno(errno.EOPNOTSUPP, Kvm(inst.root).register, vm(), memfd, 0)
        assert "mainline has no kvm subsystem" in str(e)
        raises_errno(errno.EOPNOTSUPP, Kvm.retrieve, inst.root, "vm0")
        os.close(memfd)


def test_a_vmm_that_refuses_vetoes_prepare_with_its_errno():
    with booted(["--abi", "rfc-v1"]) as inst:
        a = FakeVmm(inst.root, "a")
        b = FakeVmm(inst.root, "b", answers={"prepare": Error("no room", errno.ENOSPC)})
        raises_errno(errno.ENOSPC, write, inst, "prepare", b"1")
        assert inst.read(LU, "state") == "normal\n"
        assert a.ops == ["prepare", "cancel"] and b.ops == ["prepare"]  # a resumed
        assert [line.split()[-1] for line in kvm_view(inst)[2:]] == ["stage=registered"] * 2
        assert "kvm" not in kho_json(inst, "out")["subtrees"]
        b.answers["prepare"] = Ok()  # not a VmSaved: a VMM that makes no sense
        raises_errno(errno.EPROTO, write, inst, "prepare", b"1")
        a.close()
        b.close()
    with booted(["--abi", "rfc-v2"]) as inst:
        vmm = FakeVmm(inst.root, answers={"prepare": Error("busy", errno.EAGAIN)})
        with LiveUpdateV2(inst.root) as lu:
            raises_errno(errno.EAGAIN, lu.prepare)
            assert lu.state() == "normal"
        vmm.close()


def test_ram_that_does_not_fit_refuses_prepare_before_the_guest_stops():
    with booted(["--abi", "rfc-v1", "--memory", "32M"]) as inst:
        vmm = FakeVmm(inst.root, size=64 * MiB)
        raises_errno(errno.ENOMEM, write, inst, "prepare", b"1")
        assert vmm.ops == []  # never asked to stop
        vmm.close()


def test_a_refused_freeze_resumes_every_vm():
    with booted(["--abi", "rfc-v2", "--fault", "memfd.freeze:ENOSPC"]) as inst:
        vmm = FakeVmm(inst.root)
        with LiveUpdateV2(inst.root) as lu:
            lu.prepare()
            raises_errno(errno.ENOSPC, lu.freeze)
            assert lu.state() == "normal"
        assert vmm.ops == ["prepare", "cancel"]
        vmm.close()


def test_a_vm_whose_vmm_is_gone_is_forgotten_and_refuses_nothing():
    with booted(["--abi", "rfc-v1"]) as inst:
        gone = FakeVmm(inst.root, "gone")
        gone.close()
        dies = FakeVmm(inst.root, "dies", answers={"prepare": None})  # closes when asked
        write(inst, "prepare", b"1")
        assert dies.ops == ["prepare"]
        assert kvm_view(inst)[2:] == []  # neither is known any more
        inst.kexec()
        assert kvm_view(inst)[1:] == ["received=intact"]  # an empty node was handed over
        os.close(dies.ram)

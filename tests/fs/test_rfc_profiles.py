"""The seeds' model through real mounts (issue 5): the global state in every profile,
RFC v1 sysfs control, the RFC v2 ioctls, the mm subsystem across a kexec, faults."""

import errno
import os
import select
import subprocess
import threading

import pytest

from luofs.client import LiveUpdateV2, ioctl
from luofs.testing import booted
from luofs.uapi import rfc_v2

LU = "sys/kernel/liveupdate"


def raises_errno(code, fn, *args):
    with pytest.raises(OSError) as e:
        fn(*args)
    assert e.value.errno == code, f"expected {errno.errorcode[code]}, got {e.value}"


def write(inst, name, data: bytes):
    fd = os.open(inst.path(LU, name), os.O_WRONLY)
    try:
        return os.write(fd, data)
    finally:
        os.close(fd)


def state(inst) -> str:
    return inst.read(LU, "state").strip()


def mm(inst) -> dict:
    return dict(line.split("=") for line in inst.read(LU, "subsystems", "mm").split())


# ---- mainline: the implicit state machine ------------------------------------------------


def test_mainline_state_is_updated_until_every_incoming_session_is_finished(luofs_instance):
    inst = luofs_instance
    with inst.client() as lu:
        a, b = lu.create_session("a"), lu.create_session("b")
        a.preserve_fd(os.memfd_create("m"), 1)
    assert state(inst) == "normal"
    inst.kexec()
    assert state(inst) == "updated"
    with inst.client() as lu:
        ra = lu.retrieve_session("a")
        ra.finish()
        assert state(inst) == "updated"  # "b" is still incoming
        rb = lu.retrieve_session("b")
        rb.close()
        assert state(inst) == "normal"
        ra.close()
    a.close()
    b.close()


def test_mainline_has_no_rfc_control_files(luofs_instance):
    assert sorted(os.listdir(luofs_instance.path(LU))) == ["sessions", "state"]


def test_poll_on_state_wakes_on_every_change():
    """sysfs_notify(): a reader polls for POLLPRI and wakes when the state changes."""
    with booted(["--abi", "rfc-v1"]) as inst:
        fd = os.open(inst.path(LU, "state"), os.O_RDONLY)
        try:
            assert os.read(fd, 100) == b"normal\n"
            poller = select.poll()
            poller.register(fd, select.POLLPRI | select.POLLERR)
            assert poller.poll(0) == []  # nothing changed since the read
            threading.Timer(0.2, write, (inst, "prepare", b"1")).start()
            events = poller.poll(5000)
            assert events and events[0][1] & select.POLLPRI
            assert os.pread(fd, 100, 0) == b"prepared\n"
            assert poller.poll(0) == []  # the read caught up
            write(inst, "prepare", b"0")
            assert poller.poll(5000)[0][1] & select.POLLPRI
        finally:
            os.close(fd)


# ---- RFC v1: sysfs control ------------------------------------------------------------------


def test_rfc_v1_sysfs_cycle_and_the_mm_subsystem_across_a_kexec():
    with booted(["--abi", "rfc-v1"]) as inst:
        assert not os.path.exists(inst.path("dev/liveupdate"))  # v1 has no device
        assert sorted(os.listdir(inst.path(LU))) == ["finish", "prepare", "state", "subsystems"]
        assert state(inst) == "normal"
        write(inst, "prepare", b"1\n")
        assert state(inst) == "prepared" and mm(inst)["outgoing"] != "0x0"
        write(inst, "prepare", b"0")  # CANCEL
        assert state(inst) == "normal" and mm(inst)["outgoing"] == "0x0"
        write(inst, "prepare", b"0x1")  # integers in any base
        inst.kexec()
        assert state(inst) == "updated"
        assert mm(inst)["received"] == "intact"
        write(inst, "finish", b"1")
        assert state(inst) == "normal"
        assert mm(inst)["incoming"] == "0x0"  # FINISH released the previous kernel's pages


def test_rfc_v1_bad_writes_are_einval_and_change_nothing():
    with booted(["--abi", "rfc-v1"]) as inst:
        for name, data in [("prepare", b"2"), ("prepare", b"yes"), ("prepare", b"1x"),
                           ("prepare", b"0"), ("finish", b"1"), ("finish", b"0"),
                           ("finish", b"-1")]:
            raises_errno(errno.EINVAL, write, inst, name, data)
            assert state(inst) == "normal"
        for digits in (4301, 128 << 10):  # an overflow, and more than a sysfs page
            raises_errno(errno.EINVAL, write, inst, "prepare", b"1" * digits)
            assert state(inst) == "normal"
        write(inst, "prepare", b"1")
        raises_errno(errno.EINVAL, write, inst, "prepare", b"1")  # PREPARE from PREPARED
        raises_errno(errno.EINVAL, write, inst, "finish", b"1")
        assert state(inst) == "prepared"
        raises_errno(errno.EACCES, os.open, inst.path(LU, "prepare"), os.O_RDONLY)
        raises_errno(errno.EACCES, os.open, inst.path(LU, "state"), os.O_WRONLY)


def test_rfc_v1_kexec_without_prepare_carries_nothing():
    with booted(["--abi", "rfc-v1"]) as inst:
        inst.kexec()
        assert state(inst) == "normal"
        assert mm(inst)["received"] == "none"


def test_subsystem_prepare_fault_rolls_back_to_normal():
    with booted(["--abi", "rfc-v1", "--fault", "subsystem.mm.prepare:ENOSPC"]) as inst:
        raises_errno(errno.ENOSPC, write, inst, "prepare", b"1")
        assert state(inst) == "normal" and mm(inst)["outgoing"] == "0x0"


# ---- RFC v2: ioctls -------------------------------------------------------------------------


def test_rfc_v2_cycle_carries_files_and_subsystem_data():
    with booted(["--abi", "rfc-v2"]) as inst:
        lu, other = LiveUpdateV2(inst.root), LiveUpdateV2(inst.root)  # many openers
        m = os.memfd_create("guest")
        os.write(m, b"rfc v2 guest memory")
        os.lseek(m, 4, os.SEEK_SET)
        t0 = lu.preserve(m)
        t1 = other.preserve(os.memfd_create("dropped"))
        assert (t0, t1) == (0, 1)  # the kernel's counter
        lu.unpreserve(t1)
        raises_errno(errno.ENOENT, lu.unpreserve, t1)
        raises_errno(errno.EBUSY, lu.restore, t0)  # only in UPDATED
        lu.prepare()
        assert lu.state() == "prepared" and state(inst) == "prepared"
        raises_errno(errno.EBUSY, lu.preserve, m)
        raises_errno(errno.EINVAL, lu.prepare)
        lu.freeze()
        assert lu.state() == "frozen"
        inst.kexec()
        lu = LiveUpdateV2(inst.root)
        assert lu.state() == "updated"
        assert mm(inst)["received"] == "intact"
        fd = lu.restore(t0)
        assert os.pread(fd, 100, 0) == b"rfc v2 guest memory" and os.lseek(fd, 0, 1) == 4
        raises_errno(errno.EINVAL, lu.restore, t0)  # a second restore
        raises_errno(errno.ENOENT, lu.restore, 99)
        lu.finish()
        assert lu.state() == "normal"
        os.close(fd)


def test_rfc_v2_cancel_and_encoding_errors():
    with booted(["--abi", "rfc-v2"]) as inst:
        with LiveUpdateV2(inst.root) as lu:
            lu.preserve(os.memfd_create("m"))
            lu.prepare()
            lu.cancel()
            assert lu.state() == "normal"
            raises_errno(errno.EINVAL, lu.cancel)
            raises_errno(errno.EINVAL, lu.finish)
            bad_flags = rfc_v2.LiveupdateFd.build(dict(fd=0, flags=1, token=0))
            raises_errno(errno.EINVAL, ioctl, inst.root, lu.fd,
                         rfc_v2.LIVEUPDATE_IOCTL_FD_PRESERVE, bad_flags)
            raises_errno(errno.ENOTTY, ioctl, inst.root, lu.fd, 0xBA40, bytes(16))
            raises_errno(errno.EOPNOTSUPP, ioctl, inst.root, lu.fd,
                         rfc_v2.LIVEUPDATE_IOCTL_SELFTESTS, bytes(16))
            raises_errno(errno.EFAULT, ioctl, inst.root, lu.fd,
                         rfc_v2.LIVEUPDATE_IOCTL_FD_PRESERVE, bytes(8))


def test_rfc_v2_freeze_fault_cancels_everyone_and_loses_nothing():
    with booted(["--abi", "rfc-v2", "--fault", "memfd.freeze:EIO"]) as inst:
        with LiveUpdateV2(inst.root) as lu:
            m = os.memfd_create("m")
            t = lu.preserve(m)
            lu.prepare()
            raises_errno(errno.EIO, lu.freeze)
            assert lu.state() == "normal" and mm(inst)["outgoing"] == "0x0"
            lu.unpreserve(t)  # still there, and usable
            lu.preserve(m)


def test_rfc_v2_device_needs_root():
    with booted(["--abi", "rfc-v2"]) as inst:
        def drop():
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
        result = subprocess.run(["/bin/sh", "-c", f"exec 3<>{inst.root}/dev/liveupdate"],
                                capture_output=True, text=True, preexec_fn=drop)
        assert "Permission denied" in result.stderr

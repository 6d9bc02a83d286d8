"""Devices through the live update, through real mounts (issue 6)."""

import errno
import os
import subprocess
import sys
import time

import pytest

from luofs.client import status
from luofs.testing import booted

BRIDGE = "pci0000:00/0000:00:01.0"
DMA0 = f"{BRIDGE}/0000:01:00.0"
DMA1 = f"{BRIDGE}/0000:01:01.0"
SPEC = "bridge0;dma0@bridge0:rate=5000;dma1@bridge0:rate=5000"


def attr(inst, path, name):
    return inst.read("sys/devices", path, "liveupdate", name).strip()


def request(inst, path, value=b"1"):
    fd = os.open(inst.path("sys/devices", path, "liveupdate", "requested"), os.O_WRONLY)
    try:
        os.write(fd, value)
    finally:
        os.close(fd)


def devices(inst):
    info = status(inst.root)
    machine = {d["path"]: d for d in info["machine"]["devices"]}
    kernel = {d["path"]: d for d in info["kernel"]["devices"]}
    return machine, kernel


def received(inst, path):
    return devices(inst)[1][path].get("records_received", 0)


def wait_for(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


def test_a_preserved_device_keeps_working_and_loses_nothing():
    with booted(["--devices", SPEC]) as inst:
        request(inst, DMA0)
        for round_ in range(3):
            assert wait_for(lambda: received(inst, DMA0) > (round_ + 1) * 500)
            machine_before = devices(inst)[0]
            inst.kexec()
            machine, kernel = devices(inst)
            dma0, dma1 = kernel[DMA0], kernel[DMA1]
            assert attr(inst, DMA0, "preserved") == "1" and attr(inst, DMA0, "reclaimed") == "1"
            assert attr(inst, DMA1, "reclaimed") == "0"
            # the preserved engine was never reset, and nothing it wrote went missing
            assert machine[DMA0]["resets"] == machine_before[DMA0]["resets"]
            assert (dma0["seq_gaps"], dma0["duplicates"], dma0["bad_records"]) == (0, 0, 0)
            assert wait_for(lambda: received(inst, DMA0) >= machine_before[DMA0]["records_written"])
            assert machine[DMA0]["irq_discarded"] == 0
            # the other one was shut down and probed fresh: its work was lost
            assert machine[DMA1]["resets"] > machine_before[DMA1]["resets"]
            assert dma1["next_seq"] < machine_before[DMA1]["next_seq"] + 5000
        m = devices(inst)[0][DMA0]
        assert m["irq_raised"] == m["irq_delivered"] + m["irq_pending"] + m["irq_discarded"]


def test_requested_rules():
    with booted(["--abi", "rfc-v1", "--devices",
                 "bridge0;dma0@bridge0;bridge1:lu=0;dma2@bridge1"]) as inst:
        with pytest.raises(OSError) as e:
            request(inst, DMA0, b"maybe")
        assert e.value.errno == errno.EINVAL
        bridge1 = "pci0000:00/0000:00:02.0"
        dma2 = next(p for p in devices(inst)[1] if p.startswith(bridge1 + "/"))
        with pytest.raises(OSError) as e:  # an ancestor's driver has no liveupdate callbacks
            request(inst, dma2)
        assert e.value.errno == errno.EINVAL
        request(inst, DMA0)
        request(inst, DMA0)  # the current value again is a no-op
        fd = os.open(inst.path("sys/kernel/liveupdate/prepare"), os.O_WRONLY)
        os.write(fd, b"1")
        os.close(fd)
        assert attr(inst, DMA0, "preserved") == "1"  # set once its prepare callbacks ran
        with pytest.raises(OSError) as e:  # only while LUO is normal
            request(inst, DMA0, b"0")
        assert e.value.errno == errno.EINVAL
        assert attr(inst, DMA0, "requested") == "1"


def test_a_failing_device_callback_refuses_the_update_and_everything_runs_on():
    with booted(["--devices", "bridge0;dma0@bridge0:fail=reboot:EIO"]) as inst:
        request(inst, DMA0)
        with inst.client() as lu, lu.create_session("vm") as s:
            s.preserve_fd(os.memfd_create("m"), 1)
            result = subprocess.run([sys.executable, "-m", "luofs", "kexec", "--root", inst.root],
                                    capture_output=True, text=True)
            assert result.returncode == errno.EIO, result.stderr
            assert s.get_name() == b"vm"  # the old kernel serves on
        before = received(inst, DMA0)
        assert wait_for(lambda: received(inst, DMA0) > before)  # and its driver still drains
        assert attr(inst, DMA0, "preserved") == "0"


def test_rfc_v2_events_carry_a_requested_device():
    from luofs.client import LiveUpdateV2

    with booted(["--abi", "rfc-v2", "--devices", SPEC]) as inst:
        request(inst, DMA0)
        with LiveUpdateV2(inst.root) as lu:
            lu.prepare()
            assert attr(inst, DMA0, "preserved") == "1"
            lu.freeze()
        before = devices(inst)[0][DMA0]["resets"]
        inst.kexec()
        assert attr(inst, DMA0, "reclaimed") == "1" and attr(inst, DMA1, "reclaimed") == "0"
        assert devices(inst)[0][DMA0]["resets"] == before
        with LiveUpdateV2(inst.root) as lu:
            assert lu.state() == "updated"
            lu.finish()
        assert attr(inst, DMA0, "preserved") == "0" and attr(inst, DMA0, "requested") == "1"


@pytest.mark.parametrize("abi", ["mainline", "rfc-v1", "rfc-v2"])
def test_status_prints_every_profile(abi):
    with booted(["--abi", abi, "--devices", SPEC]) as inst:
        if abi == "mainline":
            lu = inst.client()
            lu.create_session("shown").close()
            lu.close()
        result = subprocess.run([sys.executable, "-m", "luofs", "status", "--root", inst.root],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert f"{abi}, liveupdate number 0, state normal" in result.stdout
        assert result.stdout.count("device:") == 2
        assert ("subsystem:       mm" in result.stdout) == (abi != "mainline")

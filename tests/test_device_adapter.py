"""luofs.device_adapter: the kernel process's seam to devices/ — the RFC participant,
mainline's freeze/cancel, the sysfs stores, attach at boot, and the one place a
DeviceError becomes a LuoError (same errno, same reason)."""

import errno
import os
import socket

import pytest

from devices.errors import DeviceError
from devices.host import DeviceHost
from devices.ram import RamView
from devices.sysfs import resolve
from devices.testing import SimulatedMachine
from devices.transport import start_server
from kho import Handover, PhysicalMemory
from luofs import device_adapter
from luofs.core.errors import LuoError
from luofs.core.state import State, GlobalState
from luofs.device_adapter import DeviceParticipant

SPEC = "bridge0;dma0@bridge0:rate=0;dma1@bridge0:rate=0"
MiB = 1 << 20
DMA0 = "devices/pci0000:00/0000:00:01.0/0000:01:00.0/liveupdate/requested"


@pytest.fixture
def machine():
    with SimulatedMachine(SPEC, memory=16 * MiB, irq_thread=False) as m:
        yield m


@pytest.fixture
def kernel(machine):
    kernel = machine.boot()
    kernel.request("dma0")
    return kernel


def test_a_device_error_leaves_as_the_same_luo_error():
    with pytest.raises(LuoError) as e:
        with device_adapter.luo_errors():
            raise DeviceError(errno.ENODEV, "no device x")
    assert (e.value.errno, e.value.reason) == (errno.ENODEV, "no device x")
    assert str(e.value) == str(DeviceError(errno.ENODEV, "no device x")) == "ENODEV: no device x"


def test_other_errors_pass_unchanged():
    with pytest.raises(KeyError):
        with device_adapter.luo_errors():
            raise KeyError("x")


def test_rfc_v2_events_drive_the_layer(kernel):
    participant = DeviceParticipant(kernel.drivers)
    luo = GlobalState("rfc-v2", [participant])
    luo.prepare()
    assert kernel.device("dma0").lu.preserved and participant.blob is None
    luo.freeze()
    assert luo.state is State.FROZEN and participant.blob is not None
    luo.cancel()
    assert luo.state is State.NORMAL and participant.blob is None
    assert not kernel.device("dma0").lu.preserved and not luo.failures
    assert kernel.machine.host.engine("dma0").irq_attached  # interrupts are back


@pytest.mark.parametrize("phase, state_after", [("prepare", State.NORMAL),
                                                ("reboot", State.NORMAL)])
def test_a_device_veto_refuses_the_event_cleanly(kernel, phase, state_after):
    participant = DeviceParticipant(kernel.drivers)
    luo = GlobalState("rfc-v2", [participant])
    bridge = kernel.device("bridge0").path
    kernel.drivers.layer.fail_at(bridge, phase, errno.EBUSY)
    with pytest.raises(LuoError) as e:
        luo.prepare()
        luo.freeze()
    assert e.value.errno == errno.EBUSY
    assert e.value.reason == f"driver {phase} of {bridge}: fault injected"
    assert luo.state is state_after
    assert not luo.failures  # the cancel that follows a failed freeze is harmless
    assert not any(d.lu.preserved for d in kernel.drivers.tree)


def test_finish_during_an_update_is_a_luo_error(kernel):
    participant = DeviceParticipant(kernel.drivers)
    participant.prepare()
    with pytest.raises(LuoError) as e:
        participant.finish()
    assert e.value.errno == errno.EBUSY
    assert e.value.reason == "the device layer is prepared; cancel first"


def test_mainline_reboot_after_a_device_only_hand_over(machine):
    machine.boot().request("dma0")
    kernel = machine.kexec()
    participant = DeviceParticipant(kernel.drivers)
    luo = GlobalState("mainline", [participant])  # no sessions: it starts NORMAL
    assert kernel.drivers.layer.pending_finish
    assert luo.reboot()
    assert participant.blob is not None  # the previous update was finished first


def test_mainline_freeze_veto_and_cancel(kernel):
    kernel.drivers.layer.fail_at(kernel.device("dma0").path, "reboot", errno.ENOMEM, "bus")
    with pytest.raises(LuoError) as e:
        device_adapter.freeze(kernel.drivers)
    assert e.value.errno == errno.ENOMEM
    with pytest.raises(LuoError) as e:  # the failed freeze cancelled itself: nothing to undo
        device_adapter.cancel(kernel.drivers)
    assert (e.value.errno, e.value.reason) == (errno.EBUSY, "device layer: cancel is not "
                                                            "possible while idle")
    kernel.drivers.layer.clear_faults()
    assert device_adapter.freeze(kernel.drivers) is not None
    device_adapter.cancel(kernel.drivers)
    assert not kernel.device("dma0").lu.preserved


def test_sysfs_stores_fail_with_luo_errors(kernel):
    requested = resolve(device_adapter.sysfs_tree(kernel.drivers), DMA0)
    requested.store(b"0\n")
    assert requested.render() == b"0\n" and not kernel.device("dma0").lu.requested
    with pytest.raises(LuoError) as e:
        requested.store(b"maybe\n")
    assert (e.value.errno, e.value.reason) == (
        errno.EINVAL, "b'maybe\\n' is not a boolean (1/0, y/n, on/off)")
    preserved = resolve(device_adapter.sysfs_tree(kernel.drivers),
                        DMA0.replace("requested", "preserved"))
    assert preserved.store is None


def test_attach_without_a_device_socket_is_none():
    assert device_adapter.attach(None, None, None, None, lambda: "normal") is None


@pytest.fixture
def ram():
    memory = PhysicalMemory(16 * MiB)
    yield memory
    memory.close()


def test_attach_binds_over_the_device_socket(ram):
    host = DeviceHost(RamView(os.dup(ram.fd)), "dma0:rate=0")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server = start_server(host, theirs)
    memory = PhysicalMemory.adopt(os.dup(ram.fd))
    drivers = device_adapter.attach(memory, Handover(memory).preserved, ours.detach(), None,
                                    lambda: "normal")
    try:
        assert drivers.report["probed"] == ["pci0000:00/0000:00:01.0"]
    finally:
        drivers.close()
        drivers.client.transport.close()
        server.join(10)
        host.close()
        host.ram.close()
        memory.close()


def test_attach_to_a_machine_that_went_away_is_eio(ram):
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.close()
    memory = PhysicalMemory.adopt(os.dup(ram.fd))
    with pytest.raises(LuoError) as e:
        device_adapter.attach(memory, Handover(memory).preserved, ours.detach(), None,
                              lambda: "normal")
    assert (e.value.errno, e.value.reason) == (
        errno.EIO, "device request device-list: [Errno 32] Broken pipe")
    memory.close()

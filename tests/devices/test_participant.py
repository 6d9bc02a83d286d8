"""The device layer under LUO's global state machine (luofs.core.state)."""

import pytest

from devices.drivers import DeviceParticipant
from luofs.core.errors import LuoError
from luofs.core.state import State, StateMachine
from luofs.uapi import errnos

SPEC = "bridge0;dma0@bridge0:rate=0;dma1@bridge0:rate=0"


@pytest.fixture
def kernel(machine_factory):
    machine = machine_factory(SPEC, irq_thread=False)
    kernel = machine.boot()
    kernel.request("dma0")
    return kernel


def test_rfc_v2_events_drive_the_layer(kernel):
    participant = DeviceParticipant(kernel.drivers)
    luo = StateMachine("rfc-v2", [participant])
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
    luo = StateMachine("rfc-v2", [participant])
    kernel.drivers.layer.fail_at(kernel.device("bridge0").path, phase, errnos.EBUSY)
    with pytest.raises(LuoError) as e:
        luo.prepare()
        luo.freeze()
    assert e.value.errno == errnos.EBUSY
    assert luo.state is state_after
    assert not luo.failures  # the cancel that follows a failed freeze is harmless
    assert not any(d.lu.preserved for d in kernel.drivers.tree)


def test_mainline_reboot_after_a_device_only_hand_over(machine_factory):
    machine = machine_factory(SPEC, irq_thread=False)
    machine.boot().request("dma0")
    kernel = machine.kexec()
    participant = DeviceParticipant(kernel.drivers)
    luo = StateMachine("mainline", [participant])  # no sessions: it starts NORMAL
    assert kernel.drivers.layer.pending_finish
    assert luo.reboot()
    assert participant.blob is not None  # the previous update was finished first

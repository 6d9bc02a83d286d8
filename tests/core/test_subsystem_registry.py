"""luofs/core/subsystem_registry.py: the RFC v2 subsystem API (spec/rfc.md §5) and its hand-over."""

from __future__ import annotations

import pytest

from kho.luo_image import LuoImage
from kho.luo_read import read_luo
from kho.luo_write import write_luo
from kho.memory import PhysicalMemory
from kho.preserve import PreservedMemory
from luofs.core.errors import LuoError
from luofs.core.faults import Faults
from luofs.core.state import State, GlobalState
from luofs.core.subsystem_registry import Subsystem, SubsystemRegistry
from luofs.uapi import errnos

from .fakes import raises_errno

N, P, F, U = State.NORMAL, State.PREPARED, State.FROZEN, State.UPDATED


class Calls:
    """Callbacks that log (op, name, data) and return planned u64s or fail."""

    def __init__(self):
        self.log: list[tuple] = []
        self.returns: dict[tuple[str, str], int | None] = {}  # (op, name) → new data
        self.fails: dict[tuple[str, str], int] = {}  # (op, name) → errno

    def subsystem(self, name: str, ops=("prepare", "freeze", "cancel", "finish")) -> Subsystem:
        def make(op):
            def callback(arg, data):
                assert arg == f"arg-{name}"
                self.log.append((op, name, data))
                if (op, name) in self.fails:
                    raise LuoError(self.fails[(op, name)], f"{name} {op} fails")
                return self.returns.get((op, name))
            return callback

        return Subsystem(name, arg=f"arg-{name}", **{op: make(op) for op in ops})


def fixed(state: State, **kw) -> SubsystemRegistry:
    return SubsystemRegistry(lambda: state, **kw)


def wired(*names, incoming=None, faults=Faults(), profile="rfc-v2"):
    """A state machine whose participants are the registry's subsystems."""
    calls = Calls()
    holder = {}
    reg = SubsystemRegistry(lambda: holder["sm"].state, incoming=incoming, faults=faults)
    sm = GlobalState(profile, reg.participants, updated=incoming is not None)
    holder["sm"] = sm
    handles = [reg.register(calls.subsystem(name)) for name in names]
    return sm, reg, calls, handles


# ---- registration rules --------------------------------------------------------------------


@pytest.mark.parametrize("state", [N, U])
def test_register_and_unregister_in_normal_and_updated(state):
    reg = fixed(state)
    a = reg.register_subsystem("a")
    b = reg.register(Subsystem("b"))
    assert list(reg) == [a, b] and len(reg) == 2 and a in reg
    reg.unregister_subsystem(a)
    assert list(reg) == [b]
    assert reg.register(a) is a  # a handle can come back after unregistering


@pytest.mark.parametrize("state", [P, F])
def test_register_and_unregister_are_ebusy_while_an_update_is_in_flight(state):
    box = [N]
    reg = SubsystemRegistry(lambda: box[0])
    a = reg.register_subsystem("a")
    box[0] = state
    with raises_errno(errnos.EBUSY):
        reg.register_subsystem("b")
    with raises_errno(errnos.EBUSY):
        reg.register(a)  # EBUSY is checked before EEXIST
    with raises_errno(errnos.EBUSY):
        reg.unregister_subsystem(a)
    with raises_errno(errnos.EBUSY):
        reg.unregister_subsystem(Subsystem("never"))  # … and before ENOENT
    assert list(reg) == [a]


def test_duplicate_handle_or_name_is_eexist():
    reg = fixed(N)
    a = reg.register_subsystem("a")
    with raises_errno(errnos.EEXIST):
        reg.register(a)
    with raises_errno(errnos.EEXIST):
        reg.register_subsystem("a")
    assert list(reg) == [a]


def test_unregistering_an_unknown_handle_is_enoent():
    reg = fixed(N)
    a = reg.register_subsystem("a")
    with raises_errno(errnos.ENOENT):
        reg.unregister_subsystem(Subsystem("a"))  # same name, other handle
    reg.unregister_subsystem(a)
    with raises_errno(errnos.ENOENT):
        reg.unregister_subsystem(a)


@pytest.mark.parametrize("name", ["", "a b", "compatible", "ü", 7, None])
def test_a_name_must_be_able_to_become_an_fdt_property(name):
    with raises_errno(errnos.EINVAL):
        Subsystem(name)


def test_callbacks_must_be_callable():
    with pytest.raises(TypeError):
        Subsystem("a", prepare=5)


def test_handles_compare_by_identity():
    assert Subsystem("a") != Subsystem("a")


# ---- callbacks through the state machine -------------------------------------------------------


def test_prepare_and_freeze_set_the_data_cancel_gets_it_in_reverse():
    sm, reg, calls, (a, b, c) = wired("a", "b", "c")
    calls.returns = {("prepare", "a"): 0x1000, ("freeze", "a"): 0x2000, ("prepare", "c"): 7}
    sm.prepare()
    assert [reg.data(h) for h in (a, b, c)] == [0x1000, 0, 7]
    sm.freeze()
    assert reg.export() == {"a": 0x2000, "b": 0, "c": 7}
    calls.log.clear()
    sm.cancel()
    assert calls.log == [("cancel", "c", 7), ("cancel", "b", 0), ("cancel", "a", 0x2000)]
    assert reg.export() == {"a": 0, "b": 0, "c": 0}  # LUO's copy is reset


def test_freeze_sees_what_prepare_returned_and_none_keeps_it():
    sm, reg, calls, (a,) = wired("a")
    calls.returns = {("prepare", "a"): 42}
    sm.prepare()
    sm.freeze()
    assert ("freeze", "a", 42) in calls.log and reg.data(a) == 42


def test_a_failing_prepare_cancels_the_earlier_ones_only():
    sm, reg, calls, _ = wired("a", "b", "c")
    calls.returns = {("prepare", "a"): 5}
    calls.fails = {("prepare", "b"): errnos.ENOMEM}
    with raises_errno(errnos.ENOMEM):
        sm.prepare()
    assert sm.state is N
    assert calls.log == [("prepare", "a", 0), ("prepare", "b", 0), ("cancel", "a", 5)]


def test_a_failing_freeze_cancels_every_subsystem_in_reverse():
    sm, reg, calls, _ = wired("a", "b", "c")
    sm.prepare()
    calls.log.clear()
    calls.fails = {("freeze", "b"): errnos.EIO}
    with raises_errno(errnos.EIO):
        sm.freeze()
    assert sm.state is N
    assert calls.log == [("freeze", "a", 0), ("freeze", "b", 0),
                         ("cancel", "c", 0), ("cancel", "b", 0), ("cancel", "a", 0)]


@pytest.mark.parametrize("bad", [-1, 1 << 64, True, "1", 1.0])
def test_a_callback_returning_no_u64_vetoes_with_einval(bad):
    sm, reg, calls, (a,) = wired("a")
    calls.returns = {("prepare", "a"): bad}
    with raises_errno(errnos.EINVAL):
        sm.prepare()
    assert sm.state is N and reg.data(a) == 0


def test_subsystems_without_callbacks_take_part_silently():
    reg = SubsystemRegistry(lambda: N)
    sm = GlobalState("rfc-v2", reg.participants)
    reg.register_subsystem("quiet")
    sm.prepare()
    sm.freeze()
    assert reg.export() == {"quiet": 0}


@pytest.mark.parametrize("op", ["prepare", "freeze"])
def test_fault_points(op):
    faults = Faults({f"subsystem.b.{op}": errnos.EIO})
    sm, reg, calls, _ = wired("a", "b", "c", faults=faults)
    with raises_errno(errnos.EIO):
        sm.prepare()
        sm.freeze()
    assert sm.state is N
    assert (op, "b", 0) not in calls.log  # checked before the callback runs
    assert calls.log[-1] == ("cancel", "a", 0)


def test_fault_point_fires_for_a_subsystem_without_callbacks():
    reg = SubsystemRegistry(lambda: N, faults=Faults({"subsystem.quiet.prepare": errnos.ENOSPC}))
    sm = GlobalState("rfc-v2", reg.participants)
    reg.register_subsystem("quiet")
    with raises_errno(errnos.ENOSPC):
        sm.prepare()


def test_files_then_subsystems_and_a_subsystem_veto_cancels_the_files():
    log = []

    class Files:
        name = "files"

        def prepare(self):
            log.append("files prepare")

        def freeze(self):
            log.append("files freeze")

        def cancel(self):
            log.append("files cancel")

        def finish(self):
            log.append("files finish")

    holder = {}
    reg = SubsystemRegistry(lambda: holder["sm"].state)
    files = Files()
    sm = holder["sm"] = GlobalState("rfc-v2", lambda: [files, *reg.participants()])
    reg.register_subsystem("kvm", prepare=lambda arg, data: log.append("kvm prepare"))
    reg.register_subsystem("iommu", prepare=lambda arg, data: (_ for _ in ()).throw(
        LuoError(errnos.EBUSY, "iommu busy")))
    with raises_errno(errnos.EBUSY):
        sm.prepare()
    assert log == ["files prepare", "kvm prepare", "files cancel"]


# ---- the next kernel ---------------------------------------------------------------------------


def test_get_subsystem_data_in_the_next_kernel():
    sm, reg, calls, (kvm,) = wired("kvm", incoming={"kvm": 0xABC, "gone": 1})
    assert reg.get_subsystem_data(kvm) == 0xABC
    assert reg.get_subsystem_data(Subsystem("gone")) == 1  # looked up by name
    with raises_errno(errnos.ENOENT):
        reg.get_subsystem_data(Subsystem("new"))
    sm.finish()
    with raises_errno(errnos.ENOENT):
        reg.get_subsystem_data(kvm)  # only in UPDATED


def test_get_subsystem_data_without_a_previous_kernel_is_enoent():
    with raises_errno(errnos.ENOENT):
        fixed(U).get_subsystem_data(Subsystem("a"))
    with raises_errno(errnos.ENOENT):
        fixed(N, incoming={"a": 1}).get_subsystem_data(Subsystem("a"))


def test_finish_gives_each_subsystem_its_saved_value_in_registration_order():
    sm, reg, calls, handles = wired("b", "a", "new", incoming={"a": 1, "b": 2})
    sm.finish()
    assert calls.log == [("finish", "b", 2), ("finish", "a", 1), ("finish", "new", 0)]
    assert sm.state is N and reg.export() == {"b": 0, "a": 0, "new": 0}


def test_the_u64s_survive_the_luo_subtree_and_come_back_to_their_owners():
    sm, reg, calls, _ = wired("kvm", "vfio,pci", "iommu")
    calls.returns = {("prepare", "kvm"): 0x1234, ("freeze", "vfio,pci"): 2**64 - 1}
    sm.prepare()
    assert sm.reboot() is True
    with PhysicalMemory(16 << 20) as memory:
        blob = write_luo(memory, PreservedMemory(), LuoImage(0, subsystems=reg.export()))
        image = read_luo(memory, blob)
    sm2, reg2, calls2, (iommu, kvm, vfio) = wired("iommu", "kvm", "vfio,pci",
                                                  incoming=image.subsystems)
    assert [reg2.get_subsystem_data(h) for h in (kvm, vfio, iommu)] == [0x1234, 2**64 - 1, 0]
    sm2.finish()
    assert calls2.log == [("finish", "iommu", 0), ("finish", "kvm", 0x1234),
                          ("finish", "vfio,pci", 2**64 - 1)]

"""Callback order, unwinding and finish of the device layer (rfc.md §6)."""

import errno
import logging

import pytest

from devices.errors import DeviceError
from devices.layer import TRANSITIONS, DevLiveupdate, LayerState, Step

PREPARE_ORDER = [("prepare", "driver", "C"), ("prepare", "bus", "C"),
                 ("prepare", "driver", "B"), ("prepare", "bus", "B"),
                 ("prepare", "driver", "E"), ("prepare", "bus", "E"),
                 ("prepare", "driver", "A"), ("prepare", "bus", "A")]


@pytest.fixture
def layer(tree, path):
    layer = DevLiveupdate(tree)
    for name in ("C", "E"):
        layer.set_requested(tree.get(path(name)), True)
    return layer


def flags(tree):
    return {d.name: (d.lu.requested, d.lu.preserved, d.lu.reclaimed) for d in tree}


def preserved(tree):
    return sorted(d.name for d in tree if d.lu.preserved)


def test_prepare_runs_deepest_first_driver_before_bus(layer, tree, recorder):
    devices = layer.prepare()
    assert [d.name for d in devices] == ["C", "B", "E", "A", "root"]
    assert recorder.calls == PREPARE_ORDER
    assert preserved(tree) == ["A", "B", "C", "E", "root"]
    assert layer.state is LayerState.PREPARED


def test_reboot_walks_the_same_list(layer, recorder):
    layer.prepare()
    recorder.calls.clear()
    layer.reboot()
    assert recorder.calls == [("reboot",) + call[1:] for call in PREPARE_ORDER]
    assert layer.state is LayerState.REBOOTED


@pytest.mark.parametrize("at, target, undone", [
    ("C", "driver", []),
    ("C", "bus", [("cancel", "driver", "C")]),
    ("B", "driver", [("cancel", "bus", "C"), ("cancel", "driver", "C")]),
    ("B", "bus", [("cancel", "driver", "B"), ("cancel", "bus", "C"), ("cancel", "driver", "C")]),
    ("A", "driver", [("cancel", "bus", "E"), ("cancel", "driver", "E"), ("cancel", "bus", "B"),
                     ("cancel", "driver", "B"), ("cancel", "bus", "C"),
                     ("cancel", "driver", "C")]),
])
def test_a_prepare_fault_cancels_what_was_done_in_reverse(path, layer, tree, recorder, at, target,
                                                          undone):
    before = flags(tree)
    layer.fail_at(path(at), "prepare", errno.EBUSY, target)
    with pytest.raises(DeviceError) as e:
        layer.prepare()
    assert e.value.errno == errno.EBUSY
    done_before = PREPARE_ORDER[:PREPARE_ORDER.index(("prepare", target, at))]
    assert recorder.calls == done_before + undone  # the failing callback itself never ran
    assert flags(tree) == before
    assert layer.state is LayerState.IDLE and layer.devices == []


def test_an_unwound_prepare_cancels_only_callbacks_whose_prepare_ran(path, layer, tree,
                                                                    recorder):
    c = tree.get(path("C"))
    original = c.driver
    cancels = []  # C's driver: no prepare callback, a cancel one (as the PCI bridge driver)
    c.driver = type(original)("no-prepare", type(original.liveupdate)(
        cancel=lambda dev: cancels.append(dev.name)))
    layer.fail_at(path("B"), "prepare", errno.EIO, "bus")
    try:
        with pytest.raises(DeviceError):
            layer.prepare()
    finally:
        c.driver = original
    assert cancels == []
    assert recorder.calls == [("prepare", "bus", "C"), ("prepare", "driver", "B"),
                              ("cancel", "driver", "B"), ("cancel", "bus", "C")]


def test_after_a_failed_prepare_the_next_one_succeeds(path, layer, tree, recorder):
    layer.fail_at(path("B"), "prepare", errno.EIO)
    with pytest.raises(DeviceError):
        layer.prepare()
    layer.clear_faults()
    recorder.calls.clear()
    layer.prepare()
    assert recorder.calls == PREPARE_ORDER


def test_a_reboot_fault_cancels_every_prepared_device_in_reverse(path, layer, tree, recorder):
    before = flags(tree)
    layer.prepare()
    layer.fail_at(path("E"), "reboot", errno.ENOMEM, "bus")
    recorder.calls.clear()
    with pytest.raises(DeviceError) as e:
        layer.reboot()
    assert e.value.errno == errno.ENOMEM
    cancels = [c for c in recorder.calls if c[0] == "cancel"]
    assert cancels == [("cancel", t, n) for n in ("A", "E", "B", "C") for t in ("bus", "driver")]
    assert flags(tree) == before and layer.state is LayerState.IDLE


def test_cancel_from_prepared_or_rebooted(layer, tree, recorder):
    before = flags(tree)
    layer.prepare()
    layer.reboot()
    recorder.calls.clear()
    layer.cancel()
    assert [c[2] for c in recorder.calls] == ["A", "A", "E", "E", "B", "B", "C", "C"]
    assert flags(tree) == before
    with pytest.raises(DeviceError) as e:
        layer.cancel()
    assert e.value.errno == errno.EBUSY


def test_phases_out_of_order_are_ebusy(layer):
    with pytest.raises(DeviceError) as e:
        layer.reboot()
    assert e.value.errno == errno.EBUSY
    layer.prepare()
    with pytest.raises(DeviceError) as e:
        layer.prepare()
    assert e.value.errno == errno.EBUSY
    with pytest.raises(DeviceError):
        layer.finish()


REACH = {LayerState.IDLE: (), LayerState.PREPARED: ("prepare",),
         LayerState.REBOOTED: ("prepare", "reboot")}
MOVES = {Step.PREPARE: "prepare", Step.REBOOT: "reboot", Step.CANCEL: "cancel"}


@pytest.mark.parametrize("state", list(LayerState))
@pytest.mark.parametrize("step", list(MOVES))
def test_every_move_outside_the_table_is_ebusy(layer, state, step):
    for method in REACH[state]:
        getattr(layer, method)()
    assert layer.state is state
    move = getattr(layer, MOVES[step])
    if (state, step) in TRANSITIONS:
        move()
        assert layer.state is TRANSITIONS[(state, step)]
        return
    with pytest.raises(DeviceError) as e:
        move()
    assert (e.value.errno, e.value.reason) == (
        errno.EBUSY, f"device layer: {step.value} is not possible while {state.value}")
    assert layer.state is state


@pytest.mark.parametrize("state", [LayerState.PREPARED, LayerState.REBOOTED])
def test_finish_is_refused_during_an_update(layer, state):
    for method in REACH[state]:
        getattr(layer, method)()
    with pytest.raises(DeviceError) as e:
        layer.finish()
    assert (e.value.errno, e.value.reason) == (
        errno.EBUSY, f"the device layer is {state.value}; cancel first")


def test_a_callback_that_is_not_a_luo_error_still_unwinds(path, tree, recorder):
    layer = DevLiveupdate(tree)
    c = tree.get(path("C"))
    layer.set_requested(c, True)

    def broken(dev):
        raise RuntimeError("driver bug")

    b = tree.get(path("B"))
    original = b.driver
    b.driver = type(original)("broken", type(original.liveupdate)(prepare=broken))
    try:
        with pytest.raises(DeviceError) as e:
            layer.prepare()
    finally:
        b.driver = original
    assert e.value.errno == errno.EIO
    assert recorder.calls[-2:] == [("cancel", "bus", "C"), ("cancel", "driver", "C")]


def test_requested_is_frozen_outside_normal(path, tree):
    state = {"value": "normal"}
    layer = DevLiveupdate(tree, lambda: state["value"])
    c = tree.get(path("C"))
    layer.store_requested(c, b"1\n")
    state["value"] = "prepared"
    with pytest.raises(DeviceError) as e:
        layer.store_requested(c, b"0\n")
    assert e.value.errno == errno.EINVAL and c.lu.requested


def test_finish_warns_about_unreclaimed_and_clears_flags(path, tree, recorder, caplog):
    layer = DevLiveupdate(tree)
    for name in ("root", "A", "B", "C"):  # as a new kernel adopts a hand-over
        layer.adopt(tree.get(path(name)))
    for name in ("root", "A", "B"):
        layer.reclaimed(tree.get(path(name)))
    assert layer.pending_finish
    with caplog.at_level(logging.WARNING, logger="devices.layer"):
        unreclaimed = layer.finish()
    assert [d.name for d in unreclaimed] == ["C"]
    assert "root/A/B/C was preserved but no driver reclaimed it" in caplog.text
    assert recorder.calls == [("finish", t, n) for n in ("C", "B", "A") for t in ("driver", "bus")]
    assert preserved(tree) == [] and not any(d.lu.reclaimed for d in tree)
    assert tree.get(path("C")).lu.requested  # the user's choice stays
    assert not layer.pending_finish


def test_prepare_refuses_while_a_previous_update_is_unfinished(path, tree):
    layer = DevLiveupdate(tree)
    layer.adopt(tree.get(path("E")))
    with pytest.raises(DeviceError) as e:
        layer.prepare()
    assert e.value.errno == errno.EBUSY


def test_reclaimed_needs_preserved(path, tree):
    layer = DevLiveupdate(tree)
    with pytest.raises(DeviceError) as e:
        layer.reclaimed(tree.get(path("C")))
    assert e.value.errno == errno.EINVAL


def test_finish_and_cancel_failures_only_warn(path, tree, caplog):
    layer = DevLiveupdate(tree)
    c = tree.get(path("C"))

    def explode(dev):
        raise RuntimeError("boom")

    original = c.driver
    c.driver = type(original)("x", type(original.liveupdate)(finish=explode))
    layer.adopt(c)
    with caplog.at_level(logging.ERROR, logger="devices.layer"):
        layer.finish()
    c.driver = original
    assert "driver finish of root/A/B/C failed; ignored" in caplog.text
    assert not c.lu.preserved


def test_shutdown_skips_preserved_devices_children_first(layer, tree):
    layer.prepare()
    assert [d.name for d in layer.shutdown_order()] == ["D", "H", "G", "F"]


def test_fail_at_checks_its_arguments(path, layer, tree):
    with pytest.raises(ValueError):
        layer.fail_at(path("C"), "finish", errno.EIO)
    with pytest.raises(ValueError):
        layer.fail_at(path("root"), "prepare", errno.EIO)  # no driver there
    with pytest.raises(ValueError):
        layer.fail_at(path("F"), "prepare", errno.EIO)  # driver without callbacks


def test_trace_sees_every_callback(path, tree):
    seen = []
    layer = DevLiveupdate(tree, trace=lambda phase, target, dev: seen.append((phase, target,
                                                                              dev.name)))
    layer.set_requested(tree.get(path("D")), True)
    layer.prepare()
    assert seen == [("prepare", t, n) for n in ("D", "B", "A") for t in ("driver", "bus")]

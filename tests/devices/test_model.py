"""The per-device rules of dev_liveupdate (rfc.md §6), on a hand-built tree."""

import errno

import pytest

from devices.errors import DeviceError
from devices.model import (Device, collect_for_update, missing_callbacks, parse_bool,
                           set_requested)


@pytest.fixture
def dev(tree, path):
    """name → Device."""
    return lambda name: tree.get(path(name))


def test_paths_depths_and_ancestry(dev, tree):
    c = dev("C")
    assert c.path == "root/A/B/C"
    assert c.depth == 3 and dev("root").depth == 0
    assert [d.name for d in c.ancestry()] == ["C", "B", "A", "root"]


@pytest.mark.parametrize("state", ["prepared", "frozen", "updated"])
def test_requested_changes_only_while_normal(dev, tree, state):
    c = dev("C")
    with pytest.raises(DeviceError) as e:
        set_requested(c, True, state)
    assert e.value.errno == errno.EINVAL
    assert not c.lu.requested
    c.lu.requested = True
    with pytest.raises(DeviceError) as e:  # even writing the current value
        set_requested(c, True, state)
    assert e.value.errno == errno.EINVAL


def test_requested_write_of_the_current_value_is_a_no_op(dev, tree):
    f = dev("F")  # could not be requested at all
    set_requested(f, False, "normal")
    assert not f.lu.requested
    c = dev("C")
    set_requested(c, True, "normal")
    set_requested(c, True, "normal")
    assert c.lu.requested
    set_requested(c, False, "normal")
    assert not c.lu.requested


@pytest.mark.parametrize("name, reason", [
    ("F", "driver legacy of root/F has no liveupdate callbacks"),
    ("G", "bus isa of root/G has no liveupdate callbacks"),
    ("H", "bus isa of root/G has no liveupdate callbacks"),  # an ancestor's bus
])
def test_requested_needs_callbacks_up_the_ancestry(dev, tree, name, reason):
    device = dev(name)
    assert missing_callbacks(device) == reason
    with pytest.raises(DeviceError) as e:
        set_requested(device, True, "normal")
    assert e.value.errno == errno.EINVAL and reason in e.value.reason
    assert not device.lu.requested


def test_a_device_with_neither_driver_nor_bus_is_neutral(dev):
    assert missing_callbacks(dev("root")) is None
    assert missing_callbacks(dev("C")) is None  # root above it has neither


def test_collect_takes_ancestors_deepest_first_in_registration_order(dev, tree):
    for name in ("E", "C"):
        dev(name).lu.requested = True
    devices = collect_for_update(tree)
    assert [d.name for d in devices] == ["C", "B", "E", "A", "root"]
    assert [d.lu.depth for d in devices] == [3, 2, 2, 1, 0]


def test_collect_with_nothing_requested_is_empty(tree):
    assert collect_for_update(tree) == []


@pytest.mark.parametrize("text, value", [
    (b"1", True), (b"1\n", True), (b"y", True), (b"Yes", True), (b"t", True), (b"on", True),
    (b"0", False), (b"0\n", False), (b"n", False), (b"f", False), (b"off\n", False),
])
def test_parse_bool_is_kstrtobool(text, value):
    assert parse_bool(text) is value


@pytest.mark.parametrize("text", [b"", b"2", b"x", b"o", b"oops", b" 1"])
def test_parse_bool_rejects_the_rest(text):
    with pytest.raises(DeviceError) as e:
        parse_bool(text)
    assert e.value.errno == errno.EINVAL


def test_tree_rejects_duplicates_and_strangers(dev, tree):
    with pytest.raises(ValueError):
        Device("C", dev("B"))
    with pytest.raises(ValueError):
        Device("a/b")
    with pytest.raises(DeviceError) as e:
        tree.get("root/nope")
    assert e.value.errno == 19  # ENODEV

"""The device SPEC of `luofs boot --devices`."""

import errno

import pytest

from devices.spec import DEFAULT_SPEC, DeviceConfig, parse_spec


def test_default_set_is_a_bridge_with_two_dma_engines():
    topology = parse_spec("default")
    assert parse_spec(DEFAULT_SPEC) == topology
    assert [(d.label, d.kind, d.path) for d in topology.devices] == [
        ("bridge0", "bridge", "pci0000:00/0000:00:01.0"),
        ("dma0", "dma", "pci0000:00/0000:00:01.0/0000:01:00.0"),
        ("dma1", "dma", "pci0000:00/0000:00:01.0/0000:01:01.0"),
    ]
    dma0 = topology.by_label("dma0")
    assert (dma0.rate, dma0.ring, dma0.full, dma0.lu, dma0.fail) == (10_000, 4096, "stall",
                                                                     True, None)
    assert dma0.depth == 2 and topology.by_label("bridge0").secondary_bus == 1


@pytest.mark.parametrize("spec", ["", "none", "  none ", None])
def test_no_devices(spec):
    assert parse_spec(spec).devices == ()


def test_addresses_follow_declaration_order():
    topology = parse_spec("dma0; bridge0; bridge1@bridge0; dma1@bridge1; dma2@bridge0; dma3")
    names = {d.label: d.path for d in topology.devices}
    assert names == {
        "dma0": "pci0000:00/0000:00:01.0",
        "bridge0": "pci0000:00/0000:00:02.0",
        "bridge1": "pci0000:00/0000:00:02.0/0000:01:00.0",
        "dma1": "pci0000:00/0000:00:02.0/0000:01:00.0/0000:02:00.0",
        "dma2": "pci0000:00/0000:00:02.0/0000:01:01.0",
        "dma3": "pci0000:00/0000:00:03.0",
    }
    assert topology.by_label("bridge1").secondary_bus == 2
    assert topology.by_label("dma1").depth == 3


def test_options():
    topology = parse_spec("bridge0:lu=0;dma0@bridge0:rate=20k,ring=256,full=drop,"
                          "fail=reboot:EBUSY;dma1:fail=prepare,rate=0")
    bridge, dma0, dma1 = topology.devices
    assert not bridge.lu
    assert (dma0.rate, dma0.ring, dma0.full, dma0.fail) == (20_000, 256, "drop",
                                                            ("reboot", errno.EBUSY))
    assert (dma1.rate, dma1.fail) == (0, ("prepare", errno.EIO))


def test_configs_travel_as_messages():
    for config in parse_spec("bridge0:lu=0;dma0@bridge0:rate=5,fail=reboot:12").devices:
        assert DeviceConfig.from_message(config.to_message()) == config


@pytest.mark.parametrize("spec, message", [
    ("nic0", "a label is a kind"),
    ("dma", "a label is a kind"),
    ("dma0;dma0", "declared twice"),
    ("dma0@bridge0", "parent 'bridge0' is not declared before it"),
    ("dma0;dma1@dma0", "only a bridge has devices behind it"),
    ("dma0:rate", "is not KEY=VALUE"),
    ("dma0:speed=1", "unknown option 'speed'"),
    ("bridge0:rate=1", "unknown option 'rate' for a bridge"),
    ("dma0:rate=1,rate=2", "given twice"),
    ("dma0:ring=100", "multiple of 128"),
    ("dma0:ring=0", "multiple of 128"),
    ("dma0:ring=2097152", "multiple of 128"),
    ("dma0:rate=fast", "expected a number"),
    ("dma0:rate=99999999", "records per second"),
    ("dma0:full=wrap", "stall, drop"),
    ("dma0:lu=2", "expected 0 or 1"),
    ("dma0:fail=finish", "prepare, reboot"),
    ("dma0:fail=reboot:EWHAT", "not an errno"),
    (";".join(f"dma{i}" for i in range(32)), "no free slot"),
])
def test_bad_specs_say_what_is_wrong(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_spec(spec)

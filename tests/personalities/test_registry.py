"""The one list of personalities, and what adding one takes: a module and a line."""

import os

import pytest

from luofs import personalities
from luofs.kernel import build_fs
from luofs.personalities.boot import cold_boot, handover_boot


@pytest.fixture
def echo():
    personalities.register("test-echo", "tests.personalities.echo:Echo")  # the one line
    yield
    personalities.unregister("test-echo")


def test_the_builtin_abis_in_order():
    assert personalities.names() == ("mainline", "rfc-v1", "rfc-v2")


def test_unknown_abi_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown ABI 'v3'; known: mainline, rfc-v1, rfc-v2"):
        personalities.load("v3")


def test_a_registered_personality_boots_serves_and_hands_over(echo, ram):
    old = cold_boot("test-echo", os.dup(ram))
    fs = build_fs(old, cmdline="", debugfs=False)
    assert fs.device is None  # no dev/liveupdate: the tree has only what the ABI serves
    liveupdate = fs.root.children()[b"sys"].children()[b"kernel"].children()[b"liveupdate"]
    assert liveupdate.children()[b"number"].render() == b"0\n"
    handover, groups = old.freeze()
    assert (handover.sessions, handover.files, groups) == (0, 0, {"files": [], "keepers": []})
    new = handover_boot("test-echo", os.dup(ram), handover, groups)
    assert new.parts.liveupdate_number == 1 and new.status()["abi"] == "test-echo"


@pytest.mark.parametrize("abi, control", [
    ("mainline", {b"sessions"}),  # an emulator extension: the sessions view
    ("rfc-v1", {b"prepare", b"finish", b"subsystems"}),  # spec/rfc.md §2
    ("rfc-v2", {b"subsystems"}),
])
def test_every_builtin_abi_serves_its_sysfs_files(abi, control, ram):
    fs = build_fs(cold_boot(abi, os.dup(ram)), cmdline="", debugfs=False)
    liveupdate = fs.root.children()[b"sys"].children()[b"kernel"].children()[b"liveupdate"]
    files = liveupdate.children()
    assert set(files) == {b"state"} | control
    assert files[b"state"].render() == b"normal\n" and files[b"state"].mode & 0o777 == 0o444
    for name in (b"prepare", b"finish") if abi == "rfc-v1" else ():
        assert files[name].mode & 0o777 == 0o200 and files[name].render is None
    assert (fs.device is None) == (abi == "rfc-v1")

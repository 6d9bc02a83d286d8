"""luofs/uapi/rfc_v2.py: the RFC v2 ioctl ABI (spec/rfc.md §3): numbers, structs, states."""

from __future__ import annotations

import struct

import pytest
from construct import ConstructError
from hypothesis import given, strategies as st

from luofs.core.state import State
from luofs.core import rfc_v2 as rules
from luofs.uapi import ioctl, rfc_v2, structs
from luofs.uapi.rfc_v2 import (LiveupdateFd, LiveupdateState, Selftest, SelftestArg, StateArg,
                               Token)

N, P, F, U = State.NORMAL, State.PREPARED, State.FROZEN, State.UPDATED




# ---- the numbers -----------------------------------------------------------------------------

NUMBERS = {
    "LIVEUPDATE_IOCTL_FD_PRESERVE": 0xC010BA00,
    "LIVEUPDATE_IOCTL_FD_UNPRESERVE": 0x4008BA01,
    "LIVEUPDATE_IOCTL_FD_RESTORE": 0xC010BA02,
    "LIVEUPDATE_IOCTL_GET_STATE": 0x8004BA03,
    "LIVEUPDATE_IOCTL_EVENT_PREPARE": 0xBA04,
    "LIVEUPDATE_IOCTL_EVENT_FREEZE": 0xBA05,
    "LIVEUPDATE_IOCTL_EVENT_CANCEL": 0xBA06,
    "LIVEUPDATE_IOCTL_EVENT_FINISH": 0xBA07,
    "LIVEUPDATE_IOCTL_SELFTESTS": 0xC010BA08,
}
# name: (bytes read in, bytes written back)
ARG_LENGTHS = {
    "LIVEUPDATE_IOCTL_FD_PRESERVE": (16, 16), "LIVEUPDATE_IOCTL_FD_UNPRESERVE": (8, 0),
    "LIVEUPDATE_IOCTL_FD_RESTORE": (16, 16), "LIVEUPDATE_IOCTL_GET_STATE": (0, 4),
    "LIVEUPDATE_IOCTL_EVENT_PREPARE": (0, 0), "LIVEUPDATE_IOCTL_EVENT_FREEZE": (0, 0),
    "LIVEUPDATE_IOCTL_EVENT_CANCEL": (0, 0), "LIVEUPDATE_IOCTL_EVENT_FINISH": (0, 0),
    "LIVEUPDATE_IOCTL_SELFTESTS": (16, 16),
}


@pytest.mark.parametrize("name,value", NUMBERS.items())
def test_request_numbers_are_exact(name, value):
    cmd = getattr(rfc_v2, name)
    assert cmd == value
    assert ioctl.ioc_type(cmd) == 0xBA
    assert ioctl.ioc_nr(cmd) == list(NUMBERS).index(name)
    assert (rfc_v2.arg_in_len(cmd), rfc_v2.arg_out_len(cmd)) == ARG_LENGTHS[name]


def test_the_table_has_exactly_these_commands():
    assert {c.cmd for c in rules.COMMANDS} == set(NUMBERS.values())
    assert [c.nr for c in rules.COMMANDS] == list(range(9))


def test_state_enum_is_rfc_v2s():
    assert {s.name: int(s) for s in LiveupdateState} == {
        "NORMAL": 0, "PREPARED": 1, "FROZEN": 2, "UPDATED": 3}
    assert [rules.state_reply(s) for s in (N, P, F, U)] == [
        struct.pack("<I", v) for v in range(4)]


# ---- the structs ------------------------------------------------------------------------------

STRUCTS = {"LiveupdateFd": (LiveupdateFd, 16), "Token": (Token, 8), "StateArg": (StateArg, 4),
           "Selftest": (Selftest, 16), "SelftestArg": (SelftestArg, 40)}


@pytest.mark.parametrize("name", STRUCTS)
def test_struct_sizes(name):
    definition, size = STRUCTS[name]
    assert structs.struct_size(definition) == size


def test_liveupdate_fd_layout():
    raw = LiveupdateFd.build(dict(fd=-2, flags=0x01020304, token=0x1122334455667788))
    assert raw == (struct.pack("<i", -2) + bytes([4, 3, 2, 1])
                   + bytes([0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]))
    assert SelftestArg.build(dict(name=b"dummy".ljust(32, b"\0"), data_page=1))[32:] == \
        struct.pack("<Q", 1)


@pytest.mark.parametrize("name", STRUCTS)
@given(data=st.data())
def test_round_trip_and_codec_agree(name, data):
    definition, size = STRUCTS[name]
    raw = data.draw(st.binary(min_size=size, max_size=size))
    assert definition.build(definition.parse(raw)) == raw
    codec = structs.codec(definition)
    assert codec.build(codec.parse(raw)) == raw
    assert dict(vars(codec.parse(raw))) == {k: v for k, v in definition.parse(raw).items()
                                            if k != "_io"}


@pytest.mark.parametrize("name", STRUCTS)
@pytest.mark.parametrize("delta", [-1, 1])
def test_wrong_lengths_are_errors(name, delta):
    definition, size = STRUCTS[name]
    with pytest.raises(ConstructError):
        definition.parse(bytes(size + delta))


def test_public_names_exist():
    for name in rfc_v2.__all__:
        assert hasattr(rfc_v2, name), name

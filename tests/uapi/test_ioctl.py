"""luofs/uapi/ioctl.py: the six request numbers (spec §2) and the asm-generic encoders."""

import pytest
from hypothesis import given, strategies as st

import luofs.uapi
from luofs.uapi import ioctl

# spec §2: every LUO command is _IO(0xBA, nr): no direction and no size bits.
MAINLINE = {
    "LIVEUPDATE_IOCTL_CREATE_SESSION": 0xBA00,
    "LIVEUPDATE_IOCTL_RETRIEVE_SESSION": 0xBA01,
    "LIVEUPDATE_SESSION_PRESERVE_FD": 0xBA40,
    "LIVEUPDATE_SESSION_RETRIEVE_FD": 0xBA41,
    "LIVEUPDATE_SESSION_FINISH": 0xBA42,
    "LIVEUPDATE_SESSION_GET_NAME": 0xBA43,
}


@pytest.mark.parametrize("name,value", MAINLINE.items())
def test_request_number_is_exact(name, value):
    assert getattr(ioctl, name) == value


@pytest.mark.parametrize("name,value", MAINLINE.items())
def test_package_reexports_the_same_number(name, value):
    assert getattr(luofs.uapi, name) == value


def test_there_are_exactly_six_mainline_numbers():
    found = {n for n in dir(ioctl) if n.startswith(("LIVEUPDATE_IOCTL_", "LIVEUPDATE_SESSION_"))}
    assert found - {"LIVEUPDATE_IOCTL_TYPE", "LIVEUPDATE_SESSION_NAME_LENGTH"} == set(MAINLINE)


@pytest.mark.parametrize("name,value", MAINLINE.items())
def test_number_decodes_to_type_0xba_and_its_nr(name, value):
    assert ioctl.ioc_type(value) == 0xBA
    assert ioctl.ioc_nr(value) == value & 0xFF
    assert value >> ioctl.SIZESHIFT == 0  # _IO: no size, no direction


def test_command_nrs():
    assert (ioctl.LIVEUPDATE_CMD_CREATE_SESSION, ioctl.LIVEUPDATE_CMD_RETRIEVE_SESSION) == (0, 1)
    assert (ioctl.LIVEUPDATE_CMD_SESSION_PRESERVE_FD, ioctl.LIVEUPDATE_CMD_SESSION_RETRIEVE_FD,
            ioctl.LIVEUPDATE_CMD_SESSION_FINISH, ioctl.LIVEUPDATE_CMD_SESSION_GET_NAME) == (
                0x40, 0x41, 0x42, 0x43)


def test_type_and_name_length():
    assert ioctl.LIVEUPDATE_IOCTL_TYPE == 0xBA
    assert ioctl.LIVEUPDATE_SESSION_NAME_LENGTH == 64  # includes the NUL (spec §2)


def test_asm_generic_layout():
    assert (ioctl.NRSHIFT, ioctl.TYPESHIFT, ioctl.SIZESHIFT, ioctl.DIRSHIFT) == (0, 8, 16, 30)
    assert (ioctl.IOC_NONE, ioctl.IOC_WRITE, ioctl.IOC_READ) == (0, 1, 2)


def test_io_encoder():
    assert ioctl.IO(0xBA, 0x40) == 0xBA40
    assert ioctl.IO(0xBB, 0x00) == 0xBB00


@pytest.mark.parametrize("encoded,expected", [
    (ioctl.IOR(ord("f"), 1, 8), 0x80086601),  # FS_IOC_GETFLAGS on 64-bit
    (ioctl.IOW(ord("f"), 2, 8), 0x40086602),  # FS_IOC_SETFLAGS on 64-bit
    (ioctl.IOWR(ord("d"), 0x00, 64), 0xC0406400),  # DRM_IOCTL_VERSION on 64-bit
    (ioctl.IOWR(0xBA, 0x40, 16), 0xC010BA40),  # a confused PRESERVE_FD encoding
])
def test_ior_iow_iowr_match_linux_numbers(encoded, expected):
    assert encoded == expected


def test_other_encodings_of_a_luo_nr_differ_but_keep_the_nr():
    for wrong in (ioctl.IOWR(0xBA, 0x40, 16), ioctl.IOW(0xBA, 0x40, 16),
                  ioctl.IOR(0xBA, 0x40, 16), ioctl.IO(0xBB, 0x40)):
        assert wrong != ioctl.LIVEUPDATE_SESSION_PRESERVE_FD
        assert ioctl.ioc_nr(wrong) == 0x40


@given(direction=st.integers(0, 3), type_=st.integers(0, 255), nr=st.integers(0, 255),
       size=st.integers(0, (1 << 14) - 1))
def test_ioc_nr_and_ioc_type_extract_their_fields(direction, type_, nr, size):
    cmd = ioctl.IOC(direction, type_, nr, size)
    assert ioctl.ioc_nr(cmd) == nr
    assert ioctl.ioc_type(cmd) == type_
    assert cmd >> ioctl.DIRSHIFT == direction
    assert (cmd >> ioctl.SIZESHIFT) & ((1 << 14) - 1) == size
    assert cmd < 1 << 32

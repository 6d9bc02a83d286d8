"""luofs/uapi/errnos.py: the errno vocabulary, pinned to spec §19 and to Python's errno."""

import errno

import pytest

from luofs.uapi import errnos
from luofs.uapi.errnos import errno_name

SPEC_19 = {
    "EPERM": 1, "ENOENT": 2, "EIO": 5, "E2BIG": 7, "EBADF": 9, "EAGAIN": 11, "ENOMEM": 12,
    "EFAULT": 14, "EBUSY": 16, "EEXIST": 17, "EINVAL": 22, "EMFILE": 24, "ENOTTY": 25,
    "EFBIG": 27, "ENOSPC": 28, "EOPNOTSUPP": 95,
}


@pytest.mark.parametrize("name,value", SPEC_19.items())
def test_value_is_the_linux_generic_one(name, value):
    assert getattr(errnos, name) == value


@pytest.mark.parametrize("name", sorted(n for n in dir(errnos) if n.startswith("E")))
def test_every_constant_matches_python_errno(name):
    assert getattr(errnos, name) == getattr(errno, name)


def test_errno_name_of_a_known_value():
    assert errno_name(errnos.EBUSY) == "EBUSY"
    assert errno_name(errnos.E2BIG) == "E2BIG"


def test_errno_name_of_an_unknown_value():
    assert errno_name(1234) == "errno 1234"

"""luofs/core/errors.py: LuoError carries the kernel's errno and a reason."""

from luofs.core import LuoError
from luofs.uapi import errnos


def test_luo_error_carries_errno_and_reason():
    e = LuoError(errnos.EBUSY, "file already preserved")
    assert (e.errno, e.reason) == (16, "file already preserved")
    assert e.args == (16, "file already preserved")


def test_luo_error_str_names_the_errno():
    assert str(LuoError(errnos.E2BIG, "tail")) == "E2BIG: tail"
    assert str(LuoError(1234, "odd")) == "errno 1234: odd"

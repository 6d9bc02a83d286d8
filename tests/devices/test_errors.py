"""devices/errors.py: DeviceError and the errno numbers (Linux's, from the standard library)."""

import pytest

from devices import errors
from devices.errors import DeviceError, errno_name


def test_numbers_are_linuxs():
    assert (errors.EIO, errors.ENOMEM, errors.EFAULT, errors.EBUSY, errors.EEXIST,
            errors.ENODEV, errors.EINVAL, errors.ENOENT) == (5, 12, 14, 16, 17, 19, 22, 2)


def test_a_device_error_says_its_errno_by_name():
    e = DeviceError(errors.EBUSY, "device layer: reboot is not possible while idle")
    assert (e.errno, e.reason) == (16, "device layer: reboot is not possible while idle")
    assert str(e) == "EBUSY: device layer: reboot is not possible while idle"
    assert str(DeviceError(1234, "odd")) == "errno 1234: odd"
    assert errno_name(19) == "ENODEV"


def test_it_is_nothing_of_luos():
    with pytest.raises(DeviceError):
        raise DeviceError(errors.EIO, "x")
    assert DeviceError.__mro__[1] is Exception

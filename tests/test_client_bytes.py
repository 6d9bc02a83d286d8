"""Session.preserve_bytes / retrieve_bytes: small state carried as a sealed memfd."""

import errno
import fcntl
import os
import re

import pytest


def test_bytes_live_through_an_update_sealed(luofs_instance):
    data = bytes(range(256)) * 4099  # > 1 MiB, not a page multiple
    with luofs_instance.client() as lu:
        s = lu.create_session("state")
    s.preserve_bytes(7, data)
    s.preserve_bytes(8, b"")
    with pytest.raises(OSError) as e:
        s.preserve_bytes(7, b"again")
    assert e.value.errno == errno.EEXIST
    assert re.fullmatch(r"PRESERVE_FD fd \d+ token 0x7 on session 'state': File exists",
                        e.value.strerror)
    luofs_instance.kexec()
    with luofs_instance.client() as lu, lu.retrieve_session("state") as s:
        assert s.retrieve_bytes(7) == data
        assert s.retrieve_bytes(8) == b""
        fd = s.retrieve_fd(7)  # the same file again: sealed, so nobody changed it
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
            assert seals & fcntl.F_SEAL_WRITE and seals & fcntl.F_SEAL_SHRINK
            with pytest.raises(OSError) as e:
                os.pwrite(fd, b"x", 0)
            assert e.value.errno == errno.EPERM
        finally:
            os.close(fd)
        with pytest.raises(OSError) as e:
            s.retrieve_bytes(9)
        assert e.value.errno == errno.ENOENT
        assert e.value.strerror == "RETRIEVE_FD token 0x9 on session 'state': No such file or directory"

"""The memfd handler: preserved pages are pinned against the machine's memory (issue 12
§5: what does not fit fails with ENOMEM before a page is allocated), and a retrieved
memfd is read-write whatever the preserved file's access mode (§9)."""

import errno
import os
import time

import pytest

from luofs.core import LuoError
from luofs.fdutil import OwnedFile
from luofs.handlers import MemfdHandler
from luofs.testing import booted

MiB = 1 << 20


def memfd(size: int, data: bytes = b"") -> OwnedFile:
    fd = os.memfd_create("m")
    os.write(fd, data)
    os.ftruncate(fd, size)
    return OwnedFile(fd)


def test_a_file_bigger_than_the_machine_fails_with_enomem_and_allocates_nothing():
    handler = MemfdHandler(memory=8 * MiB)
    huge = memfd(100 << 30)  # 100 GiB, sparse
    t0 = time.monotonic()
    with pytest.raises(LuoError) as e:
        handler.preserve(huge)
    assert e.value.errno == errno.ENOMEM and "does not fit" in e.value.reason
    assert time.monotonic() - t0 < 1  # nothing was filled
    assert os.fstat(huge.fd).st_blocks == 0 and handler.pinned == 0
    huge.close()


def test_what_is_pinned_counts_and_unpreserve_gives_it_back():
    handler = MemfdHandler(memory=8 * MiB)
    a, b = memfd(5 * MiB), memfd(5 * MiB)
    handler.preserve(a)
    assert handler.pinned == 5 * MiB
    with pytest.raises(LuoError) as e:
        handler.preserve(b)
    assert e.value.errno == errno.ENOMEM and handler.pinned == 5 * MiB
    handler.unpreserve(a, 0)
    handler.preserve(b)  # fits now
    assert handler.pinned == 5 * MiB
    a.close()
    b.close()


def test_a_failed_preservation_pins_nothing():
    from luofs.core.faults import Faults

    class Full:  # a store that can neither hold nor park
        def hold(self, file):
            raise OSError(errno.ENOMEM, "no keeper")

    handler = MemfdHandler(memory=8 * MiB, store=Full(), faults=Faults())
    f = memfd(MiB)
    with pytest.raises(LuoError):
        handler.preserve(f)
    assert handler.pinned == 0 and f.pinned == 0
    f.close()


def test_through_the_mount_a_sparse_giant_is_refused_and_a_bystander_is_untouched():
    with booted(["--memory", "64M"]) as inst, inst.client() as lu:
        bystander = lu.create_session("bystander")
        small = os.memfd_create("small")
        os.write(small, b"still here")
        bystander.preserve_fd(small, 1)
        with lu.create_session("greedy") as greedy:
            huge = os.memfd_create("huge")
            os.ftruncate(huge, 100 << 30)
            with pytest.raises(OSError) as e:
                greedy.preserve_fd(huge, 1)
            assert e.value.errno == errno.ENOMEM
            assert os.fstat(huge).st_blocks == 0
            os.close(huge)
        assert bystander.get_name() == b"bystander"
        inst.kexec()
        bystander.close()
        with inst.client() as lu2, lu2.retrieve_session("bystander") as s:
            fd = s.retrieve_fd(1)
            assert os.pread(fd, 100, 0) == b"still here"
            os.close(fd)
        os.close(small)


@pytest.mark.parametrize("mode", [os.O_RDONLY, os.O_WRONLY])
def test_a_memfd_preserved_read_only_or_write_only_comes_back_read_write(mode):
    """As the kernel's: retrieved memfds are O_RDWR, at the preserved position (README)."""
    with booted() as inst:
        lu = inst.client()
        s = lu.create_session("vm")
        fd = os.memfd_create("m")
        os.write(fd, b"0123456789")
        narrow = os.open(f"/proc/self/fd/{fd}", mode)
        os.lseek(narrow, 4, os.SEEK_SET)
        s.preserve_fd(narrow, 1)
        os.close(narrow)
        os.close(fd)
        inst.kexec()
        s.close()
        lu.close()
        with inst.client() as lu2, lu2.retrieve_session("vm") as r:
            got = r.retrieve_fd(1)
            assert __import__("fcntl").fcntl(got, __import__("fcntl").F_GETFL) & os.O_ACCMODE \
                == os.O_RDWR
            assert os.lseek(got, 0, os.SEEK_CUR) == 4
            assert os.read(got, 3) == b"456"
            os.write(got, b"!")
            assert os.pread(got, 10, 0) == b"0123456!89"
            os.close(got)


def test_a_preserved_memfd_is_marked_frozen_until_unpreserved():
    """The shim and the supervisor refuse ftruncate/fallocate on what carries the mark
    (spec/uapi.md §15); it goes with the preservation."""
    from luofs.handlers.memfd import FROZEN_XATTR

    handler = MemfdHandler(memory=8 * MiB)
    f = memfd(4096)
    handler.preserve(f)
    assert os.getxattr(f.fd, FROZEN_XATTR) == b"1"
    handler.unpreserve(f, 0)
    with pytest.raises(OSError) as e:
        os.getxattr(f.fd, FROZEN_XATTR)
    assert e.value.errno == errno.ENODATA
    f.close()

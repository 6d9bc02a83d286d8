"""Every errno path of spec/uapi.md §4–§13 that needs no reboot, through a real mount."""

import errno
import fcntl
import os
import socket
import stat

import pytest

from luofs.client import ioctl
from luofs.fs.escape import escape_name
from luofs.uapi import ioctl as nums, structs

pytestmark = pytest.mark.usefixtures("luofs_instance")


def create_arg(name: bytes, size=72) -> bytes:
    return structs.CreateSession.build(dict(size=size, fd=-1, name=name.ljust(64, b"\0")[:64]))


def raises_errno(code, fn, *args):
    with pytest.raises(OSError) as e:
        fn(*args)
    assert e.value.errno == code, f"expected {errno.errorcode[code]}, got {e.value}"
    return e.value


@pytest.fixture
def lu(luofs_instance):
    with luofs_instance.client() as lu:
        yield lu


@pytest.fixture
def memfd():
    fd = os.memfd_create("guest-ram")
    os.write(fd, b"x" * 8192)
    yield fd
    os.close(fd)


# ---- §5 open/close ---------------------------------------------------------------------


def test_second_open_is_ebusy_and_reopen_after_close_works(luofs_instance):
    lu = luofs_instance.client()
    raises_errno(errno.EBUSY, luofs_instance.client)
    lu.close()
    luofs_instance.client().close()


def test_closing_the_device_leaves_sessions(luofs_instance):
    lu = luofs_instance.client()
    s = lu.create_session("keep")
    lu.close()
    assert os.listdir(luofs_instance.path("sys/kernel/liveupdate/sessions/outgoing")) == ["keep"]
    assert s.get_name() == b"keep"
    s.close()


def test_device_is_root_only_regular_file(luofs_instance):
    st = os.stat(luofs_instance.path("dev/liveupdate"))
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0


def test_read_and_write_on_luo_files_are_einval(lu):
    raises_errno(errno.EINVAL, os.read, lu.fd, 1)
    raises_errno(errno.EINVAL, os.write, lu.fd, b"junk frame")
    with lu.create_session("rw") as s:
        raises_errno(errno.EINVAL, os.read, s.fd, 1)
        raises_errno(errno.EINVAL, os.write, s.fd, b"x")


# ---- §4 dispatch -----------------------------------------------------------------------


def test_out_of_table_nr_is_einval_on_both_kinds(luofs_instance, lu):
    root = luofs_instance.root
    raises_errno(errno.EINVAL, ioctl, root, lu.fd, nums.IO(0xBA, 0x02), create_arg(b"a"))
    raises_errno(errno.EINVAL, ioctl, root, lu.fd, nums.LIVEUPDATE_SESSION_GET_NAME, bytes(72))
    with lu.create_session("s") as s:
        raises_errno(errno.EINVAL, ioctl, root, s.fd, nums.IO(0xBA, 0x44), bytes(72))
        raises_errno(errno.EINVAL, ioctl, root, s.fd, nums.IO(0xBA, 0x3F), bytes(72))
        raises_errno(errno.EINVAL, ioctl, root, s.fd, nums.LIVEUPDATE_IOCTL_CREATE_SESSION,
                     create_arg(b"x"))


def test_wrong_encoding_of_valid_nr_is_enotty(luofs_instance, lu):
    raises_errno(errno.ENOTTY, ioctl, luofs_instance.root, lu.fd, nums.IOWR(0xBA, 0, 72),
                 create_arg(b"a"))
    with lu.create_session("s") as s:
        raises_errno(errno.ENOTTY, ioctl, luofs_instance.root, s.fd, nums.IOWR(0xBA, 0x43, 72),
                     structs.GetName.build(dict(size=72, reserved=0, name=bytes(64))))


def test_unreadable_argument_is_efault(luofs_instance, lu):
    with lu.create_session("s") as s:
        raises_errno(errno.EFAULT, ioctl, luofs_instance.root, s.fd, nums.LIVEUPDATE_SESSION_FINISH, b"")


@pytest.mark.parametrize("size", [0, 4, 71])
def test_size_below_struct_is_einval(luofs_instance, lu, size):
    raises_errno(errno.EINVAL, ioctl, luofs_instance.root, lu.fd,
                 nums.LIVEUPDATE_IOCTL_CREATE_SESSION, create_arg(b"a", size=size))


def test_nonzero_tail_is_e2big_and_zero_tail_is_accepted(luofs_instance, lu):
    root = luofs_instance.root
    big = create_arg(b"tail", size=80) + b"\0" * 7 + b"\1"
    raises_errno(errno.E2BIG, ioctl, root, lu.fd, nums.LIVEUPDATE_IOCTL_CREATE_SESSION, big)
    far = create_arg(b"tail", size=4096) + bytes(4000) + b"\1" + bytes(23)
    raises_errno(errno.E2BIG, ioctl, root, lu.fd, nums.LIVEUPDATE_IOCTL_CREATE_SESSION, far)
    ok = create_arg(b"tail", size=4096) + bytes(4096 - 72)
    reply, fd = ioctl(root, lu.fd, nums.LIVEUPDATE_IOCTL_CREATE_SESSION, ok)
    assert len(reply) == 72 and int.from_bytes(reply[4:8], "little", signed=True) == fd
    os.close(fd)


def test_copy_back_echoes_input_and_fills_outputs(luofs_instance, lu):
    with lu.create_session("echo") as s:
        arg = structs.GetName.build(dict(size=72, reserved=0, name=b"\xff" * 64))
        reply, _ = ioctl(luofs_instance.root, s.fd, nums.LIVEUPDATE_SESSION_GET_NAME, arg)
        assert reply[:8] == arg[:8]
        assert reply[8:13] == b"echo\0" and reply[13:] == b"\xff" * 59


def test_returned_session_fd_is_cloexec(lu):
    with lu.create_session("cloexec") as s:
        assert fcntl.fcntl(s.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC


# ---- §6 CREATE_SESSION --------------------------------------------------------------


def test_create_name_rules(luofs_instance, lu):
    root = luofs_instance.root
    raises_errno(errno.EINVAL, lu.create_session, b"")
    raises_errno(errno.EINVAL, ioctl, root, lu.fd, nums.LIVEUPDATE_IOCTL_CREATE_SESSION,
                 structs.CreateSession.build(dict(size=72, fd=0, name=b"n" * 64)))
    with lu.create_session(b"a" * 63) as s:
        assert s.get_name() == b"a" * 63
    _, fd = ioctl(root, lu.fd, nums.LIVEUPDATE_IOCTL_CREATE_SESSION,
                  create_arg(b"junk\0after-the-nul"))
    try:
        assert os.listdir(luofs_instance.path("sys/kernel/liveupdate/sessions/outgoing")) == ["junk"]
    finally:
        os.close(fd)


def test_duplicate_outgoing_name_is_eexist_until_closed(lu):
    s = lu.create_session("dup")
    raises_errno(errno.EEXIST, lu.create_session, "dup")
    s.close()
    lu.create_session("dup").close()


def test_full_fd_table_gives_emfile_before_name_checks_but_after_dispatch(luofs_instance, lu):
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    spare = []
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        while True:
            try:
                spare.append(os.dup(0))
            except OSError:
                break
        raises_errno(errno.EMFILE, lu.create_session, b"")  # bad name, but no fd first
        raises_errno(errno.EMFILE, lu.retrieve_session, "nope")
        raises_errno(errno.EINVAL, ioctl, luofs_instance.root, lu.fd,
                     nums.LIVEUPDATE_IOCTL_CREATE_SESSION, create_arg(b"a", size=8))
    finally:
        for fd in spare:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ---- §7 RETRIEVE_SESSION in a first boot ---------------------------------------------


def test_retrieve_session_in_first_boot_is_enoent(lu):
    raises_errno(errno.ENOENT, lu.retrieve_session, "anything")
    with lu.create_session("mine"):
        raises_errno(errno.ENOENT, lu.retrieve_session, "mine")
    raises_errno(errno.ENOENT, lu.retrieve_session, b"")


# ---- §9 PRESERVE_FD ------------------------------------------------------------------


def test_preserve_duplicate_token_is_eexist_even_with_bad_fd(lu, memfd):
    with lu.create_session("s") as s:
        s.preserve_fd(memfd, 0)
        raises_errno(errno.EEXIST, s.preserve_fd, 12345, 0)


def test_preserve_bad_fd_is_ebadf(lu):
    with lu.create_session("s") as s:
        raises_errno(errno.EBADF, s.preserve_fd, 12345, 1)
        raises_errno(errno.EBADF, s.preserve_fd, -1, 1)
        path_fd = os.open("/dev/shm", os.O_PATH)
        try:
            raises_errno(errno.EBADF, s.preserve_fd, path_fd, 1)
        finally:
            os.close(path_fd)


def test_preserve_o_path_fd_of_a_fuse_file_is_ebadf_not_enoent(lu, luofs_instance):
    """fdget refuses an O_PATH fd before any handler looks at the file: EBADF, even for a
    file no handler accepts (ours, which is ENOENT when opened for real)."""
    with lu.create_session("s") as s:
        for path in (luofs_instance.path("sys/kernel/liveupdate/state"),
                     luofs_instance.path("dev", "liveupdate")):
            path_fd = os.open(path, os.O_PATH)
            try:
                raises_errno(errno.EBADF, s.preserve_fd, path_fd, 1)
            finally:
                os.close(path_fd)


def test_preserve_o_path_fd_of_a_memfd_is_ebadf(lu, memfd):
    with lu.create_session("s") as s:
        path_fd = os.open(f"/proc/self/fd/{memfd}", os.O_PATH)
        try:
            raises_errno(errno.EBADF, s.preserve_fd, path_fd, 1)
        finally:
            os.close(path_fd)
        s.preserve_fd(memfd, 1)  # the refusal took nothing: the memfd itself is accepted


def test_preserve_non_memfd_is_enoent(lu, tmp_path):
    r, w = os.pipe()
    a, b = socket.socketpair()
    null = os.open("/dev/null", os.O_RDWR)
    regular = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        with lu.create_session("s") as s, lu.create_session("other") as other:
            for i, fd in enumerate([r, a.fileno(), null, regular, s.fd, other.fd, lu.fd]):
                raises_errno(errno.ENOENT, s.preserve_fd, fd, i)
    finally:
        for fd in (r, w, null, regular):
            os.close(fd)
        a.close()
        b.close()


def test_preserve_hugetlb_memfd_is_enoent(lu):
    try:
        fd = os.memfd_create("huge", os.MFD_HUGETLB)
    except OSError:
        pytest.skip("hugetlbfs memfds are not available on this machine")
    try:
        with lu.create_session("s") as s:
            raises_errno(errno.ENOENT, s.preserve_fd, fd, 1)
    finally:
        os.close(fd)


def test_preserve_same_memfd_twice_is_ebusy_any_fd_any_session(lu, memfd):
    with lu.create_session("a") as a, lu.create_session("b") as b:
        a.preserve_fd(memfd, 1)
        raises_errno(errno.EBUSY, a.preserve_fd, memfd, 2)
        dup = os.dup(memfd)
        reopened = os.open(f"/proc/self/fd/{memfd}", os.O_RDWR)
        try:
            raises_errno(errno.EBUSY, b.preserve_fd, dup, 1)
            raises_errno(errno.EBUSY, b.preserve_fd, reopened, 1)
        finally:
            os.close(dup)
            os.close(reopened)
    with lu.create_session("c") as c:
        c.preserve_fd(memfd, 1)  # closing the sessions released the file


def test_o_tmpfile_on_tmpfs_is_accepted_and_token_zero_ok(lu):
    fd = os.open("/dev/shm", os.O_TMPFILE | os.O_RDWR, 0o600)
    try:
        with lu.create_session("a") as a, lu.create_session("b") as b:
            a.preserve_fd(fd, 0)
            m = os.memfd_create("other")
            b.preserve_fd(m, 0)  # the same token in another session
            os.close(m)
    finally:
        os.close(fd)


def test_preserved_memfd_survives_closing_the_callers_fd_and_holes_are_filled(luofs_instance, lu):
    fd = os.memfd_create("sparse")
    os.ftruncate(fd, 1 << 20)
    assert os.fstat(fd).st_blocks == 0
    with lu.create_session("s") as s:
        s.preserve_fd(fd, 7)
        assert os.fstat(fd).st_blocks * 512 >= 1 << 20
        os.close(fd)
        files = luofs_instance.read("sys/kernel/liveupdate/sessions/outgoing/s/files")
        assert files == "0x7 memfd-v2\n"


# ---- §10, §11 on an outgoing session: direction rules ---------------------------------


def test_retrieve_fd_and_finish_on_outgoing_session_are_einval(lu):
    with lu.create_session("out") as s:
        raises_errno(errno.EINVAL, s.retrieve_fd, 1)
        raises_errno(errno.EINVAL, s.finish)


# ---- §12 GET_NAME ---------------------------------------------------------------------


def test_get_name_reserved_nonzero_is_einval(luofs_instance, lu):
    with lu.create_session("n") as s:
        arg = structs.GetName.build(dict(size=72, reserved=1, name=bytes(64)))
        raises_errno(errno.EINVAL, ioctl, luofs_instance.root, s.fd,
                     nums.LIVEUPDATE_SESSION_GET_NAME, arg)


def test_get_name_follows_the_file_behind_a_reused_fd_number(lu):
    # The client remembers request names by fd number and the kernel remembers replies by
    # file: a number that comes back for another session must answer for that one.
    first = lu.create_session("first")
    fd = first.fd
    assert first.get_name() == b"first"
    first.close()
    second = lu.create_session("second")
    if second.fd != fd:
        os.dup2(second.fd, fd)
        os.close(second.fd)
        second.fd = fd
    assert second.get_name() == b"second"
    copy = os.dup(second.fd)  # another fd, same file: the same answer
    reply, _ = ioctl(lu.root, copy, nums.LIVEUPDATE_SESSION_GET_NAME, bytes([72]) + bytes(71))
    assert reply[8:15] == b"second\0"
    os.close(copy)
    second.close()


# ---- §13 closing an outgoing session ----------------------------------------------------


def test_session_lives_until_last_close_of_its_open_file(luofs_instance, lu, memfd):
    outgoing = luofs_instance.path("sys/kernel/liveupdate/sessions/outgoing")
    s = lu.create_session("shared")
    s.preserve_fd(memfd, 1)
    dup = os.dup(s.fd)
    pid = os.fork()
    if pid == 0:
        os._exit(0)  # the child's copies close at exit; the session must stay
    os.waitpid(pid, 0)
    s.close()
    assert os.listdir(outgoing) == ["shared"]
    os.close(dup)
    assert os.listdir(outgoing) == []
    with lu.create_session("again") as again:
        again.preserve_fd(memfd, 1)  # EBUSY cleared


def test_session_names_cannot_escape_the_view(luofs_instance, lu):
    nasty = [b"..", b".", b"a/b", b"../../etc", b"\x01\x7f\xff", b"%2E", b"-"]
    sessions = [lu.create_session(n) for n in nasty]
    try:
        entries = sorted(os.listdir(luofs_instance.path("sys/kernel/liveupdate/sessions/outgoing")))
        assert entries == sorted(["%2E.", "%2E", "a%2Fb", "%2E.%2F..%2Fetc", "%01%7F%FF",
                                  "%252E", "-"])
        for n in nasty:
            path = luofs_instance.path("sys/kernel/liveupdate/sessions/outgoing",
                                       escape_name(n).decode(), "name")
            with open(path, "rb") as f:
                assert f.read() == n + b"\n"
    finally:
        for s in sessions:
            s.close()


def test_sysfs_files_read_with_cat_semantics(luofs_instance):
    assert luofs_instance.read("sys/kernel/liveupdate/state") == "normal\n"
    assert "liveupdate=on" in luofs_instance.read("proc/cmdline")
    raises_errno(errno.EACCES, os.open, luofs_instance.path("sys/kernel/liveupdate/state"),
                 os.O_WRONLY)


def test_view_follows_a_reused_name_to_the_new_session(luofs_instance, lu, memfd):
    files = luofs_instance.path("sys/kernel/liveupdate/sessions/outgoing/same/files")
    first = lu.create_session("same")
    first.preserve_fd(memfd, 1)
    fd = os.open(files, os.O_RDONLY)  # the kernel keeps this inode while the fd is open
    first.close()
    with lu.create_session("same") as second:
        second.preserve_fd(os.memfd_create("other"), 2)
        assert luofs_instance.read("sys/kernel/liveupdate/sessions/outgoing/same/files") == \
            "0x2 memfd-v2\n"
    os.close(fd)


def test_a_request_without_room_for_its_reply_is_erange_and_changes_nothing(lu, memfd):
    """FUSE checks the caller's getxattr buffer only after the daemon answered: a frame
    that does not say it has room is refused before it runs (issue 12 §9)."""
    import ctypes

    from luofs.uapi import frames

    s = lu.create_session("vm")
    arg = structs.PreserveFd.build(dict(size=16, fd=memfd, token=1))
    frame = frames.encode_request(nums.LIVEUPDATE_SESSION_PRESERVE_FD, arg,
                                  file_fd=s.fileno(), room_for_reply=False)
    libc = ctypes.CDLL(None, use_errno=True)
    value = ctypes.create_string_buffer(frames.REPLY_MAX)
    assert libc.fgetxattr(s.fileno(), frames.request_xattr_name(frame), value,
                          ctypes.c_size_t(len(value))) == -1
    assert ctypes.get_errno() == errno.ERANGE
    s.preserve_fd(memfd, 1)  # token 1 is free: the refused request preserved nothing
    s.close()

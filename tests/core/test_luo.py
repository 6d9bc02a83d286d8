"""luofs/core/luo.py: one test per rule of spec §5–§14, with exact errnos."""

import pytest

from luofs.core import Direction, Luo, LuoError, Rebooting, session_name
from luofs.uapi import errnos

from .fakes import (
    FakeCaller,
    FakeFile,
    FakeHandler,
    create,
    finish,
    first_boot,
    get_name,
    incoming,
    make_request,
    next_kernel,
    preserve,
    raises_errno,
    registry,
    retrieve_fd,
    retrieve_session,
)


def full():
    """A caller whose fd table is full."""
    return FakeCaller(full=True)


def mem_caller(**identities):
    """A caller whose fd N (given as fdN=identity) is a mem file of that identity."""
    return FakeCaller({int(k[2:]): FakeFile(v) for k, v in identities.items()})


def tokens(session):
    return list(session.files)


def names(luo, direction):
    return [s.name for s in luo.sessions if s.direction is direction]


# ---- §5 /dev/liveupdate open and close -----------------------------------------------------


def test_second_open_is_ebusy():
    luo = first_boot(FakeHandler())
    with raises_errno(errnos.EBUSY):
        luo.open_device()
    assert luo.device_open


def test_reopen_after_close_succeeds():
    luo = first_boot(FakeHandler())
    luo.close_device()
    assert not luo.device_open
    luo.open_device()
    assert luo.device_open


def test_closing_the_device_leaves_sessions_usable():
    luo = first_boot(FakeHandler())
    session = create(luo, b"s")
    luo.close_device()
    assert luo.sessions == [session]
    preserve(luo, session, mem_caller(fd3="m"), 3, 1)
    assert get_name(luo, session)[:2] == b"s\0" and tokens(session) == [1]


def test_incoming_sessions_load_once_at_the_first_open():
    calls = []
    luo = Luo(registry(FakeHandler()), load_incoming=lambda: calls.append(1) or [])
    assert calls == []  # not at construction
    luo.open_device()
    luo.close_device()
    luo.open_device()
    assert calls == [1]


def test_failed_incoming_load_makes_every_open_eio():
    calls = []

    def load():
        calls.append(1)
        raise LuoError(errnos.ENOENT, "no handler for a carried file")

    luo = Luo(registry(FakeHandler()), load_incoming=load)
    for _ in range(3):
        with raises_errno(errnos.EIO):
            luo.open_device()
        assert not luo.device_open  # a failed open leaves the device free
    assert calls == [1]  # the result is cached, not retried


def test_missing_handler_for_a_carried_file_makes_open_eio():
    old = first_boot(FakeHandler("other-v1"))
    s = create(old, b"s")
    preserve(old, s, mem_caller(fd3="m"), 3, 1)
    luo, _ = next_kernel(old.reboot())  # registers only "fake-v1"
    with raises_errno(errnos.EIO):
        luo.open_device()


# ---- §6 CREATE_SESSION ---------------------------------------------------------------------


@pytest.mark.parametrize("raw,name", [
    (b"a".ljust(64, b"\0"), b"a"), (b"x" * 63 + b"\0", b"x" * 63), (b"ab\0cd" + bytes(59), b"ab")])
def test_session_name_is_the_bytes_before_the_nul(raw, name):
    assert session_name(raw) == name


@pytest.mark.parametrize("raw", [bytes(64), b"\0" + b"x" * 63, b"x" * 64])
def test_session_name_rejects_empty_or_unterminated(raw):
    with raises_errno(errnos.EINVAL):
        session_name(raw)


def test_create_makes_an_open_outgoing_session():
    luo = first_boot(FakeHandler())
    session = create(luo, b"s")
    assert (session.name, session.direction, session.open) == (b"s", Direction.OUTGOING, True)
    assert session.files == {}


def test_create_empty_name_is_einval():
    luo = first_boot(FakeHandler())
    with raises_errno(errnos.EINVAL):
        create(luo, b"")
    with raises_errno(errnos.EINVAL):
        create(luo, b"\0junk")
    assert luo.sessions == []


def test_create_64_bytes_without_nul_is_einval():
    luo = first_boot(FakeHandler())
    with raises_errno(errnos.EINVAL):
        create(luo, b"x" * 64)
    assert luo.sessions == []


def test_create_63_char_name_is_valid():
    luo = first_boot(FakeHandler())
    session = create(luo, b"x" * 63)
    assert session.name == b"x" * 63


def test_create_ignores_bytes_after_the_nul():
    luo = first_boot(FakeHandler())
    session = create(luo, b"s\0junk")
    assert session.name == b"s"
    with raises_errno(errnos.EEXIST):
        create(luo, b"s\0other junk")


def test_create_duplicate_outgoing_name_is_eexist():
    luo = first_boot(FakeHandler())
    create(luo, b"s")
    with raises_errno(errnos.EEXIST):
        create(luo, b"s")
    assert names(luo, Direction.OUTGOING) == [b"s"]


def test_create_may_reuse_an_incoming_sessions_name():
    luo, _ = incoming({b"s": {}})
    session = create(luo, b"s")
    assert names(luo, Direction.INCOMING) == [b"s"]
    assert names(luo, Direction.OUTGOING) == [b"s"] and session.outgoing


def test_create_has_no_session_cap():
    luo = first_boot(FakeHandler())
    for i in range(900):  # G1 stopped at 819
        create(luo, b"s%d" % i)
    assert len(luo.sessions) == 900


# ---- fd allocation precedence (§4 note, checklist 11) ---------------------------------------


def test_create_with_full_fd_table_is_emfile():
    luo = first_boot(FakeHandler())
    with raises_errno(errnos.EMFILE):
        create(luo, b"s", full())
    assert luo.sessions == []


def test_emfile_beats_a_bad_name():
    luo = first_boot(FakeHandler())
    with raises_errno(errnos.EMFILE):
        create(luo, b"", full())
    with raises_errno(errnos.EMFILE):
        create(luo, b"x" * 64, full())


def test_emfile_beats_a_duplicate_name():
    luo = first_boot(FakeHandler())
    create(luo, b"s")
    with raises_errno(errnos.EMFILE):
        create(luo, b"s", full())


def test_emfile_beats_an_unknown_session_name():
    luo = first_boot(FakeHandler())
    with raises_errno(errnos.EMFILE):
        retrieve_session(luo, b"nope", full())


def test_emfile_beats_an_already_retrieved_session():
    luo, _ = incoming({b"in": {}})
    retrieve_session(luo, b"in")
    with raises_errno(errnos.EMFILE):
        retrieve_session(luo, b"in", full())


def test_emfile_beats_an_unknown_token():
    luo, _ = incoming({b"in": {}})
    session = retrieve_session(luo, b"in")
    with raises_errno(errnos.EMFILE):
        retrieve_fd(luo, session, 99, full())


def test_dispatch_errors_beat_emfile():
    luo = first_boot(FakeHandler())
    with raises_errno(errnos.EINVAL):
        luo.device_ioctl(make_request("CREATE_SESSION", name=b"s", size=8), full())
    with raises_errno(errnos.E2BIG):
        luo.device_ioctl(make_request("RETRIEVE_SESSION", name=b"s", size=73, tail=b"\1"), full())
    session = create(luo, b"s")
    with raises_errno(errnos.EINVAL):  # RETRIEVE_FD on an outgoing session
        retrieve_fd(luo, session, 1, full())


def test_commands_that_return_no_fd_ignore_a_full_fd_table():
    luo = first_boot(FakeHandler())
    session = create(luo, b"s")
    full = FakeCaller({3: FakeFile("m")}, full=True)
    preserve(luo, session, full, 3, 1)
    luo.session_ioctl(session, make_request("GET_NAME"), full)
    luo2, _ = incoming({b"in": {}})
    inc = retrieve_session(luo2, b"in")
    finish(luo2, inc, caller=full)


# ---- §7 RETRIEVE_SESSION -----------------------------------------------------------------


def test_retrieve_session_on_first_boot_is_enoent():
    luo = first_boot(FakeHandler())
    with raises_errno(errnos.ENOENT):
        retrieve_session(luo, b"s")


def test_retrieve_session_unknown_name_is_enoent():
    luo, _ = incoming({b"in": {}})
    with raises_errno(errnos.ENOENT):
        retrieve_session(luo, b"other")
    with raises_errno(errnos.ENOENT):
        retrieve_session(luo, b"i")  # no prefix match


def test_retrieve_session_does_not_validate_names():
    luo, _ = incoming({b"in": {}})
    with raises_errno(errnos.ENOENT):
        retrieve_session(luo, b"")
    with raises_errno(errnos.ENOENT):
        retrieve_session(luo, b"x" * 64)


def test_retrieve_session_of_a_name_created_this_boot_is_enoent():
    luo, _ = incoming({b"in": {}})
    create(luo, b"new")
    with raises_errno(errnos.ENOENT):
        retrieve_session(luo, b"new")


def test_retrieve_session_returns_the_incoming_session():
    luo, _ = incoming({b"in": {1: 0x10}})
    session = retrieve_session(luo, b"in")
    assert (session.name, session.direction) == (b"in", Direction.INCOMING)
    assert session.retrieved and session.open and tokens(session) == [1]


def test_retrieve_session_prefers_the_incoming_session_over_a_same_named_outgoing_one():
    luo, _ = incoming({b"s": {}})
    create(luo, b"s")
    assert retrieve_session(luo, b"s").direction is Direction.INCOMING


def test_retrieve_session_while_retrieved_and_open_is_einval():
    luo, _ = incoming({b"in": {}})
    retrieve_session(luo, b"in")
    with raises_errno(errnos.EINVAL):
        retrieve_session(luo, b"in")


def test_retrieve_session_after_its_clean_close_is_enoent():
    luo, _ = incoming({b"in": {1: 0x10}})
    session = retrieve_session(luo, b"in")
    luo.close_session(session)
    with raises_errno(errnos.ENOENT):
        retrieve_session(luo, b"in")


# ---- §9 PRESERVE_FD --------------------------------------------------------------------------


def test_preserve_keeps_its_own_reference():
    handler = FakeHandler()
    luo = first_boot(handler)
    session = create(luo, b"s")
    caller = mem_caller(fd3="m")
    preserve(luo, session, caller, 3, 7)
    (taken,) = caller.taken
    assert tokens(session) == [7]
    assert session.files[7].file is taken and not taken.closed
    assert handler.calls("preserve") == [("preserve", "m")]
    del caller.fds[3]  # the caller closes its fd: still preserved
    assert tokens(session) == [7] and not taken.closed


def test_preserve_duplicate_token_is_eexist():
    luo = first_boot(FakeHandler())
    session = create(luo, b"s")
    caller = mem_caller(fd3="a", fd4="b")
    preserve(luo, session, caller, 3, 1)
    with raises_errno(errnos.EEXIST):
        preserve(luo, session, caller, 4, 1)
    assert len(caller.taken) == 1 and session.files[1].file.identity == "a"


def test_preserve_duplicate_token_is_eexist_even_with_a_bad_fd():
    luo = first_boot(FakeHandler())
    session = create(luo, b"s")
    caller = mem_caller(fd3="a")
    preserve(luo, session, caller, 3, 1)
    with raises_errno(errnos.EEXIST):
        preserve(luo, session, caller, 99, 1)


def test_preserve_bad_fd_is_ebadf():
    luo = first_boot(FakeHandler())
    session = create(luo, b"s")
    with raises_errno(errnos.EBADF):
        preserve(luo, session, FakeCaller(), 3, 1)
    assert session.files == {}


def test_preserve_file_no_handler_accepts_is_enoent_and_the_taken_file_is_closed():
    handler = FakeHandler()
    luo = first_boot(handler)
    session = create(luo, b"s")
    caller = FakeCaller({3: FakeFile("p", kind="pipe")})
    with raises_errno(errnos.ENOENT):
        preserve(luo, session, caller, 3, 1)
    assert [f.closed for f in caller.taken] == [True]
    assert session.files == {} and handler.calls("preserve") == []


def test_preserve_same_file_twice_in_a_session_is_ebusy_and_the_taken_file_is_closed():
    luo = first_boot(FakeHandler())
    session = create(luo, b"s")
    caller = mem_caller(fd3="m")
    preserve(luo, session, caller, 3, 1)
    with raises_errno(errnos.EBUSY):
        preserve(luo, session, caller, 3, 2)
    first, second = caller.taken
    assert not first.closed and second.closed
    assert tokens(session) == [1]


def test_preserve_a_dup_of_a_preserved_file_in_another_session_is_ebusy():
    luo = first_boot(FakeHandler())
    s1, s2 = create(luo, b"s1"), create(luo, b"s2")
    caller = mem_caller(fd3="m", fd4="m")  # fd 4 is a dup of fd 3
    preserve(luo, s1, caller, 3, 1)
    with raises_errno(errnos.EBUSY):
        preserve(luo, s2, caller, 4, 1)
    assert caller.taken[1].closed and tokens(s2) == []


def test_preserve_token_zero_and_the_same_token_in_two_sessions():
    luo = first_boot(FakeHandler())
    s1, s2 = create(luo, b"s1"), create(luo, b"s2")
    caller = mem_caller(fd3="a", fd4="b")
    preserve(luo, s1, caller, 3, 0)
    preserve(luo, s2, caller, 4, 0)
    assert tokens(s1) == [0] and tokens(s2) == [0]


def test_preserve_accepts_any_u64_token():
    luo = first_boot(FakeHandler())
    session = create(luo, b"s")
    preserve(luo, session, mem_caller(fd3="m"), 3, 2**64 - 1)
    assert tokens(session) == [2**64 - 1]


def test_preserve_handler_error_propagates_and_changes_nothing():
    handler = FakeHandler()
    luo = first_boot(handler)
    session = create(luo, b"s")
    caller = mem_caller(fd3="m")
    handler.fail_preserve["m"] = errnos.EOPNOTSUPP
    with raises_errno(errnos.EOPNOTSUPP):
        preserve(luo, session, caller, 3, 1)
    assert caller.taken[0].closed and session.files == {}
    del handler.fail_preserve["m"]
    preserve(luo, session, caller, 3, 1)  # neither the token nor the file was taken
    assert tokens(session) == [1]


def test_preserve_asks_handlers_in_registration_order():
    first, second = FakeHandler("first-v1"), FakeHandler("second-v1")
    luo = first_boot(first, second)
    session = create(luo, b"s")
    preserve(luo, session, mem_caller(fd3="m"), 3, 1)
    assert session.files[1].handler is first and second.calls() == []


def test_preserve_falls_through_to_the_first_accepting_handler():
    pipes, mems = FakeHandler("pipe-v1", accepts="pipe"), FakeHandler("mem-v1")
    luo = first_boot(pipes, mems)
    session = create(luo, b"s")
    preserve(luo, session, mem_caller(fd3="m"), 3, 1)
    assert session.files[1].handler is mems


# ---- §13 closing an outgoing session -------------------------------------------------------


def test_close_outgoing_unpreserves_in_reverse_order():
    handler = FakeHandler()
    luo = first_boot(handler)
    session = create(luo, b"s")
    caller = mem_caller(fd3="a", fd4="b", fd5="c")
    for fd, token in ((3, 30), (4, 10), (5, 20)):
        preserve(luo, session, caller, fd, token)
    luo.close_session(session)
    assert handler.calls("unpreserve") == [("unpreserve", "c"), ("unpreserve", "b"),
                                           ("unpreserve", "a")]
    assert all(f.closed for f in caller.taken)
    assert luo.sessions == []


def test_close_outgoing_frees_the_name():
    luo = first_boot(FakeHandler())
    luo.close_session(create(luo, b"s"))
    assert create(luo, b"s").name == b"s"


def test_close_outgoing_frees_its_files_for_preservation():
    luo = first_boot(FakeHandler())
    caller = mem_caller(fd3="m")
    s1 = create(luo, b"s1")
    preserve(luo, s1, caller, 3, 1)
    luo.close_session(s1)
    s2 = create(luo, b"s2")
    preserve(luo, s2, caller, 3, 1)
    assert tokens(s2) == [1]


def test_closed_outgoing_session_is_not_carried():
    luo = first_boot(FakeHandler())
    create(luo, b"kept")
    luo.close_session(create(luo, b"closed"))
    assert [c.name for c in luo.reboot()] == [b"kept"]


# ---- §10 RETRIEVE_FD -------------------------------------------------------------------------


def test_retrieve_fd_unknown_token_is_enoent():
    luo, handler = incoming({b"in": {1: 0x10}})
    session = retrieve_session(luo, b"in")
    with raises_errno(errnos.ENOENT):
        retrieve_fd(luo, session, 2)
    assert handler.calls("retrieve") == []


def test_retrieve_fd_rebuilds_the_file_from_its_data_handle():
    luo, handler = incoming({b"in": {1: 0x10, 2: 0x20}})
    session = retrieve_session(luo, b"in")
    assert retrieve_fd(luo, session, 2).identity == "old-0x20"  # any order
    assert retrieve_fd(luo, session, 1).identity == "old-0x10"
    assert handler.calls("retrieve") == [("retrieve", 0x20), ("retrieve", 0x10)]


def test_retrieve_fd_failure_is_sticky():
    luo, handler = incoming({b"in": {1: 0x10}})
    session = retrieve_session(luo, b"in")
    handler.fail_retrieve[0x10] = errnos.ENOMEM
    with raises_errno(errnos.ENOMEM):
        retrieve_fd(luo, session, 1)
    del handler.fail_retrieve[0x10]  # a retry would succeed now; there is none
    with raises_errno(errnos.ENOMEM):
        retrieve_fd(luo, session, 1)
    assert handler.calls("retrieve") == [("retrieve", 0x10)]


def test_retrieve_fd_repeat_returns_the_same_open_file():
    luo, handler = incoming({b"in": {1: 0x10}})
    session = retrieve_session(luo, b"in")
    first = retrieve_fd(luo, session, 1)
    assert retrieve_fd(luo, session, 1) is first
    assert handler.calls("retrieve") == [("retrieve", 0x10)]


# ---- §11 FINISH ------------------------------------------------------------------------------


def test_finish_is_ebusy_if_any_file_cannot_finish_and_changes_nothing():
    luo, handler = incoming({b"in": {1: 0x10, 2: 0x20}})
    session = retrieve_session(luo, b"in")
    retrieved = retrieve_fd(luo, session, 1)
    handler.cannot_finish.add(0x20)
    with raises_errno(errnos.EBUSY):
        finish(luo, session)
    assert handler.calls("finish") == [] and tokens(session) == [1, 2]
    assert retrieve_fd(luo, session, 1) is retrieved and not retrieved.closed
    assert retrieve_fd(luo, session, 2).identity == "old-0x20"


def test_finish_finishes_in_reverse_order_with_retrieve_status():
    luo, handler = incoming({b"in": {1: 0x10, 2: 0x20, 3: 0x30}})
    session = retrieve_session(luo, b"in")
    retrieve_fd(luo, session, 2)
    finish(luo, session)
    assert handler.calls("finish") == [("finish", 0x30, False), ("finish", 0x20, True),
                                       ("finish", 0x10, False)]
    assert session.files == {}


def test_finish_discards_unretrieved_files():
    luo, handler = incoming({b"in": {1: 0x10}})
    session = retrieve_session(luo, b"in")
    finish(luo, session)
    with raises_errno(errnos.ENOENT):
        retrieve_fd(luo, session, 1)
    assert handler.calls("retrieve") == []


def test_retrieve_fd_after_finish_is_enoent():
    luo, _ = incoming({b"in": {1: 0x10}})
    session = retrieve_session(luo, b"in")
    retrieve_fd(luo, session, 1)
    finish(luo, session)
    with raises_errno(errnos.ENOENT):
        retrieve_fd(luo, session, 1)


def test_finish_again_succeeds_and_does_nothing():
    luo, handler = incoming({b"in": {1: 0x10}})
    session = retrieve_session(luo, b"in")
    finish(luo, session)
    before = list(handler.ops)
    finish(luo, session)
    assert handler.ops == before


def test_finish_accepts_nonzero_reserved():
    luo, handler = incoming({b"in": {1: 0x10}})
    session = retrieve_session(luo, b"in")
    finish(luo, session, reserved=0xFFFFFFFF)
    assert session.files == {}


def test_finish_leaves_the_session_retrieved():
    luo, _ = incoming({b"in": {}})
    session = retrieve_session(luo, b"in")
    finish(luo, session)
    assert luo.sessions == [session]
    with raises_errno(errnos.EINVAL):
        retrieve_session(luo, b"in")


def test_retrieved_unfinished_file_cannot_be_preserved_until_finish():
    luo, _ = incoming({b"in": {1: 0x10}})
    session = retrieve_session(luo, b"in")
    caller = FakeCaller({3: retrieve_fd(luo, session, 1)})  # installed as fd 3
    out = create(luo, b"out")
    with raises_errno(errnos.EBUSY):
        preserve(luo, out, caller, 3, 1)
    assert caller.taken[0].closed
    finish(luo, session)
    preserve(luo, out, caller, 3, 1)
    assert tokens(out) == [1]


def test_unretrieved_incoming_file_does_not_block_preservation():
    luo, _ = incoming({b"in": {1: 0x10}})
    out = create(luo, b"out")
    preserve(luo, out, FakeCaller({3: FakeFile("old-0x10")}), 3, 1)
    assert tokens(out) == [1]


# ---- §12 GET_NAME ----------------------------------------------------------------------------


def test_get_name_on_an_outgoing_session():
    luo = first_boot(FakeHandler())
    assert get_name(luo, create(luo, b"out")) == b"out".ljust(64, b"\0")


def test_get_name_on_an_incoming_session():
    luo, _ = incoming({b"in": {}})
    assert get_name(luo, retrieve_session(luo, b"in")) == b"in".ljust(64, b"\0")


def test_get_name_of_a_63_char_name():
    luo = first_boot(FakeHandler())
    assert get_name(luo, create(luo, b"x" * 63)) == b"x" * 63 + b"\0"


def test_get_name_nonzero_reserved_is_einval():
    luo = first_boot(FakeHandler())
    session = create(luo, b"s")
    with raises_errno(errnos.EINVAL):
        get_name(luo, session, reserved=1)


def test_get_name_echoes_the_callers_bytes_after_the_nul():
    luo = first_boot(FakeHandler())
    session = create(luo, b"abc")
    assert get_name(luo, session, name=b"\xff" * 64) == b"abc\0" + b"\xff" * 60


# ---- §13 closing a retrieved session --------------------------------------------------------


def test_close_retrieved_session_is_an_implicit_finish():
    luo, handler = incoming({b"in": {1: 0x10, 2: 0x20}})
    session = retrieve_session(luo, b"in")
    retrieve_fd(luo, session, 1)
    luo.close_session(session)
    assert handler.calls("finish") == [("finish", 0x20, False), ("finish", 0x10, True)]
    assert luo.sessions == []
    with raises_errno(errnos.ENOENT):
        retrieve_session(luo, b"in")


def test_close_retrieved_session_frees_retrieved_files_for_preservation():
    luo, _ = incoming({b"in": {1: 0x10}})
    session = retrieve_session(luo, b"in")
    caller = FakeCaller({3: retrieve_fd(luo, session, 1)})
    luo.close_session(session)
    out = create(luo, b"out")
    preserve(luo, out, caller, 3, 1)
    assert tokens(out) == [1]


def test_close_when_finish_fails_keeps_the_session_retrieved():
    luo, handler = incoming({b"in": {1: 0x10}})
    session = retrieve_session(luo, b"in")
    handler.cannot_finish.add(0x10)
    luo.close_session(session)  # close itself still succeeds
    assert luo.sessions == [session] and session.retrieved and not session.open
    assert handler.calls("finish") == [] and tokens(session) == [1]
    with raises_errno(errnos.EINVAL):
        retrieve_session(luo, b"in")


# ---- §14 reboot -------------------------------------------------------------------------------


def test_reboot_carries_outgoing_sessions_in_creation_order_with_files_in_order():
    luo, _ = incoming({b"old": {1: 0x10}})
    caller = FakeCaller({3: FakeFile("a"), 4: FakeFile("b"), 5: FakeFile("c")})
    b, a = create(luo, b"b"), create(luo, b"a")
    preserve(luo, a, caller, 3, 9)
    preserve(luo, a, caller, 4, 0)
    preserve(luo, b, caller, 5, 5)
    carried = luo.reboot()
    assert [(c.name, [(f.token, f.file.identity) for f in c.files]) for c in carried] == [
        (b"b", [(5, "c")]), (b"a", [(9, "a"), (0, "b")])]
    assert {f.compatible for c in carried for f in c.files} == {"fake-v1"}


def test_reboot_does_not_carry_incoming_sessions():
    luo, _ = incoming({b"unretrieved": {1: 0x10}, b"retrieved": {2: 0x20}})
    retrieve_session(luo, b"retrieved")
    assert luo.reboot() == []


def test_reboot_freezes_in_order_and_carries_the_frozen_handle():
    handler = FakeHandler()
    luo = first_boot(handler)
    caller = mem_caller(fd3="a", fd4="b")
    s1, s2 = create(luo, b"s1"), create(luo, b"s2")
    preserve(luo, s2, caller, 3, 1)
    preserve(luo, s1, caller, 4, 1)
    handler.freeze_data["a"] = 0xF00D
    carried = luo.reboot()
    assert handler.calls("freeze", "unfreeze") == [("freeze", "b"), ("freeze", "a")]
    assert [c.files[0].data for c in carried] == [s1.files[1].data, 0xF00D]


def test_reboot_freeze_failure_unfreezes_earlier_files_in_reverse_and_keeps_running():
    handler = FakeHandler()
    luo = first_boot(handler)
    caller = mem_caller(fd3="a", fd4="b", fd5="c", fd6="d")
    s1, s2 = create(luo, b"s1"), create(luo, b"s2")
    preserve(luo, s1, caller, 3, 1)
    preserve(luo, s1, caller, 4, 2)
    preserve(luo, s2, caller, 5, 1)
    preserve(luo, s2, caller, 6, 2)
    handler.fail_freeze["c"] = errnos.ENOMEM
    with raises_errno(errnos.ENOMEM):
        luo.reboot()
    assert handler.calls("freeze", "unfreeze") == [
        ("freeze", "a"), ("freeze", "b"), ("freeze", "c"), ("unfreeze", "b"), ("unfreeze", "a")]
    assert not luo.rebooting
    assert [tokens(s) for s in luo.sessions] == [[1, 2], [1, 2]]
    # everything still works, including another reboot
    s3 = create(luo, b"s3")
    preserve(luo, s3, mem_caller(fd7="e"), 7, 1)
    del handler.fail_freeze["c"]
    assert [c.name for c in luo.reboot()] == [b"s1", b"s2", b"s3"]


def test_after_a_successful_reboot_session_operations_raise_rebooting():
    luo = first_boot(FakeHandler())
    session = create(luo, b"s")
    luo.reboot()
    assert luo.rebooting
    with pytest.raises(Rebooting):
        create(luo, b"t")
    with pytest.raises(Rebooting):
        retrieve_session(luo, b"s")
    with pytest.raises(Rebooting):
        get_name(luo, session)
    with pytest.raises(Rebooting):
        luo.close_session(session)
    with pytest.raises(Rebooting):
        luo.reboot()
    assert luo.sessions == [session]


def test_reboot_with_no_sessions_carries_nothing():
    luo = first_boot(FakeHandler())
    assert luo.reboot() == []


def test_next_kernel_sees_the_carried_sessions_names_tokens_and_files():
    old = first_boot(FakeHandler())
    caller = mem_caller(fd3="a", fd4="b")
    s = create(old, b"s")
    preserve(old, s, caller, 3, 7)
    preserve(old, s, caller, 4, 0)
    create(old, b"empty")
    luo, handler = next_kernel(old.reboot(), rename=lambda i: i + "'")
    luo.open_device()
    assert names(luo, Direction.INCOMING) == [b"s", b"empty"]
    session = retrieve_session(luo, b"s")
    assert tokens(session) == [7, 0]
    assert retrieve_fd(luo, session, 0).identity == "b'"
    assert retrieve_fd(luo, session, 7).identity == "a'"

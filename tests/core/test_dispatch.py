"""luofs/core/dispatch.py: the command tables and the §4 dispatch rules, in order.

Rules (spec §4): 1 nr outside the table → EINVAL; 2 arg unreadable → EFAULT;
3 other encoding of the nr → ENOTTY; 4 session direction → EINVAL; 5 size below the
struct → EINVAL; 6 nonzero tail → E2BIG, copy fault → EFAULT; 7 copy back.
"""

import pytest

from luofs.core import MAINLINE_DEVICE, MAINLINE_SESSION, Direction, Request, check
from luofs.core.dispatch import ops_table
from luofs.uapi import errnos, ioctl, structs

from .fakes import (
    COMMANDS,
    FakeCaller,
    FakeFile,
    FakeHandler,
    create,
    first_boot,
    incoming,
    make_request,
    raises_errno,
    struct_bytes,
)

DEVICE_COMMANDS = ["CREATE_SESSION", "RETRIEVE_SESSION"]
SESSION_COMMANDS = ["PRESERVE_FD", "RETRIEVE_FD", "FINISH", "GET_NAME"]
ALL_COMMANDS = DEVICE_COMMANDS + SESSION_COMMANDS
TABLE = {**{c: MAINLINE_DEVICE for c in DEVICE_COMMANDS},
         **{c: MAINLINE_SESSION for c in SESSION_COMMANDS}}
SIZE = {"CREATE_SESSION": 72, "RETRIEVE_SESSION": 72, "PRESERVE_FD": 16, "RETRIEVE_FD": 16,
        "FINISH": 8, "GET_NAME": 72}
NR = {"CREATE_SESSION": 0x00, "RETRIEVE_SESSION": 0x01, "PRESERVE_FD": 0x40,
      "RETRIEVE_FD": 0x41, "FINISH": 0x42, "GET_NAME": 0x43}
# a session direction each command is allowed on (device commands take none)
GOOD_DIRECTION = {"CREATE_SESSION": None, "RETRIEVE_SESSION": None,
                  "PRESERVE_FD": Direction.OUTGOING, "RETRIEVE_FD": Direction.INCOMING,
                  "FINISH": Direction.INCOMING, "GET_NAME": Direction.OUTGOING}
WRONG_DIRECTION = {"PRESERVE_FD": Direction.INCOMING, "RETRIEVE_FD": Direction.OUTGOING,
                   "FINISH": Direction.OUTGOING}

every_command = pytest.mark.parametrize("command", ALL_COMMANDS)


def dispatch(command, req, direction="good"):
    direction = GOOD_DIRECTION[command] if direction == "good" else direction
    return check(TABLE[command], req, direction)


def wrong_encodings(command):
    nr, size = NR[command], SIZE[command]
    return [ioctl.IOWR(0xBA, nr, size), ioctl.IOR(0xBA, nr, size), ioctl.IOW(0xBA, nr, size),
            ioctl.IO(0xBB, nr), ioctl.IO(0x00, nr)]


# ---- the tables --------------------------------------------------------------------------


def test_device_table():
    assert MAINLINE_DEVICE.base == 0x00
    assert [(c.name, c.cmd, c.size) for c in MAINLINE_DEVICE.commands] == [
        ("CREATE_SESSION", 0xBA00, 72), ("RETRIEVE_SESSION", 0xBA01, 72)]


def test_session_table():
    assert MAINLINE_SESSION.base == 0x40
    assert [(c.name, c.cmd, c.size) for c in MAINLINE_SESSION.commands] == [
        ("PRESERVE_FD", 0xBA40, 16), ("RETRIEVE_FD", 0xBA41, 16), ("FINISH", 0xBA42, 8),
        ("GET_NAME", 0xBA43, 72)]


def test_session_command_directions():
    directions = {c.name: c.direction for c in MAINLINE_SESSION.commands}
    assert directions == {"PRESERVE_FD": Direction.OUTGOING, "RETRIEVE_FD": Direction.INCOMING,
                          "FINISH": Direction.INCOMING, "GET_NAME": None}


@every_command
def test_fd_out_offset_is_the_fd_field_of_fd_returning_commands(command):
    c = TABLE[command].by_nr(NR[command])
    expected = 4 if command in ("CREATE_SESSION", "RETRIEVE_SESSION", "RETRIEVE_FD") else None
    assert c.fd_out_offset == expected


# ---- rule 1: nr outside the table → EINVAL, before anything is read ----------------------


@pytest.mark.parametrize("nr", [0x02, 0x03, 0x3F, 0x40, 0x43, 0xFF])
@pytest.mark.parametrize("arg_fault", [False, True])
def test_device_nr_outside_table_is_einval(nr, arg_fault):
    req = Request(ioctl.IO(0xBA, nr), b"" if arg_fault else bytes(8), arg_fault=arg_fault)
    with raises_errno(errnos.EINVAL):
        check(MAINLINE_DEVICE, req)


@pytest.mark.parametrize("nr", [0x00, 0x01, 0x3F, 0x44, 0x45, 0xFF])
@pytest.mark.parametrize("arg_fault", [False, True])
@pytest.mark.parametrize("direction", list(Direction))
def test_session_nr_outside_table_is_einval(nr, arg_fault, direction):
    req = Request(ioctl.IO(0xBA, nr), b"" if arg_fault else bytes(8), arg_fault=arg_fault)
    with raises_errno(errnos.EINVAL):
        check(MAINLINE_SESSION, req, direction)


@pytest.mark.parametrize("cmd", [ioctl.IOWR(0xBA, 0x02, 72), ioctl.IO(0xBB, 0x44)])
def test_nr_outside_table_is_einval_whatever_the_encoding(cmd):
    with raises_errno(errnos.EINVAL):
        check(MAINLINE_DEVICE if ioctl.ioc_nr(cmd) < 0x40 else MAINLINE_SESSION,
              Request(cmd, b"", arg_fault=True))


# ---- rule 2: unreadable size → EFAULT -----------------------------------------------------


@every_command
def test_arg_fault_is_efault(command):
    with raises_errno(errnos.EFAULT):
        dispatch(command, make_request(command, arg_fault=True))


@every_command
def test_arg_fault_beats_wrong_encoding(command):
    with raises_errno(errnos.EFAULT):
        dispatch(command, make_request(command, cmd=wrong_encodings(command)[0], arg_fault=True))


@pytest.mark.parametrize("command", WRONG_DIRECTION)
def test_arg_fault_beats_wrong_direction(command):
    with raises_errno(errnos.EFAULT):
        dispatch(command, make_request(command, arg_fault=True), WRONG_DIRECTION[command])


# ---- rule 3: another encoding of a table nr → ENOTTY --------------------------------------


@every_command
@pytest.mark.parametrize("index", range(5))
def test_wrong_encoding_is_enotty(command, index):
    with raises_errno(errnos.ENOTTY):
        dispatch(command, make_request(command, cmd=wrong_encodings(command)[index]))


@pytest.mark.parametrize("command", WRONG_DIRECTION)
def test_wrong_encoding_beats_wrong_direction(command):
    req = make_request(command, cmd=wrong_encodings(command)[0])
    with raises_errno(errnos.ENOTTY):
        dispatch(command, req, WRONG_DIRECTION[command])


@every_command
@pytest.mark.parametrize("size", [0, 4])
def test_wrong_encoding_beats_short_size(command, size):
    with raises_errno(errnos.ENOTTY):
        dispatch(command, make_request(command, cmd=wrong_encodings(command)[0], size=size))


@every_command
def test_wrong_encoding_beats_nonzero_tail(command):
    req = make_request(command, cmd=wrong_encodings(command)[0], size=SIZE[command] + 1,
                       tail=b"\x01")
    with raises_errno(errnos.ENOTTY):
        dispatch(command, req)


# ---- rule 4: direction (G2, session fds) → EINVAL -------------------------------------------


@pytest.mark.parametrize("command", WRONG_DIRECTION)
def test_wrong_direction_is_einval(command):
    with raises_errno(errnos.EINVAL):
        dispatch(command, make_request(command), WRONG_DIRECTION[command])


@pytest.mark.parametrize("direction", list(Direction))
def test_get_name_works_on_both_directions(direction):
    command, parsed = dispatch("GET_NAME", make_request("GET_NAME"), direction)
    assert command.name == "GET_NAME"


@pytest.mark.parametrize("command", WRONG_DIRECTION)
def test_wrong_direction_beats_short_size(command):
    req = make_request(command, size=0)
    with raises_errno(errnos.EINVAL) as excinfo:
        dispatch(command, req, WRONG_DIRECTION[command])
    # both are EINVAL: the reason tells which rule fired
    assert GOOD_DIRECTION[command].value in excinfo.value.reason


@pytest.mark.parametrize("command", WRONG_DIRECTION)
def test_wrong_direction_beats_nonzero_tail(command):
    req = make_request(command, size=SIZE[command] + 1, tail=b"\x01")
    with raises_errno(errnos.EINVAL):
        dispatch(command, req, WRONG_DIRECTION[command])


@pytest.mark.parametrize("command", WRONG_DIRECTION)
def test_wrong_direction_beats_copy_fault(command):
    with raises_errno(errnos.EINVAL):
        dispatch(command, make_request(command, copy_fault=True), WRONG_DIRECTION[command])


# ---- rule 5: size below the struct → EINVAL --------------------------------------------------


@every_command
@pytest.mark.parametrize("shortfall", ["zero", "four", "one-less"])
def test_size_below_struct_is_einval(command, shortfall):
    size = {"zero": 0, "four": 4, "one-less": SIZE[command] - 1}[shortfall]
    with raises_errno(errnos.EINVAL):
        dispatch(command, make_request(command, size=size))


@every_command
def test_short_size_beats_copy_fault(command):
    with raises_errno(errnos.EINVAL):
        dispatch(command, make_request(command, size=SIZE[command] - 1, copy_fault=True))


# ---- rule 6: copy_struct_from_user → E2BIG / EFAULT ------------------------------------------


@every_command
def test_nonzero_byte_just_past_struct_is_e2big(command):
    with raises_errno(errnos.E2BIG):
        dispatch(command, make_request(command, size=SIZE[command] + 1, tail=b"\x01"))


@every_command
def test_nonzero_last_carried_byte_is_e2big(command):
    tail = bytes(95 - SIZE[command]) + b"\x80"
    with raises_errno(errnos.E2BIG):
        dispatch(command, make_request(command, size=96, tail=tail))


@every_command
@pytest.mark.parametrize("size", [97, 4096, 2**32 - 1])
def test_nonzero_byte_past_carried_bytes_is_e2big(command, size):
    with raises_errno(errnos.E2BIG):
        dispatch(command, make_request(command, size=size, tail_nonzero=True))


@every_command
@pytest.mark.parametrize("extra", [1, 8, 24, 4096, 2**32 - 1])
def test_zero_tail_is_accepted(command, extra):
    size = min(SIZE[command] + extra, 2**32 - 1)
    got, parsed = dispatch(command, make_request(command, size=size))
    assert got.name == command and parsed.size == size


@every_command
def test_tail_flag_is_ignored_when_size_is_exact(command):
    # bytes past `size` are not the kernel's business
    got, _ = dispatch(command, make_request(command, tail_nonzero=True))
    assert got.name == command


@every_command
@pytest.mark.parametrize("extra", [0, 8])
def test_copy_fault_is_efault(command, extra):
    with raises_errno(errnos.EFAULT):
        dispatch(command, make_request(command, size=SIZE[command] + extra, copy_fault=True))


@every_command
def test_nonzero_tail_read_before_the_fault_is_e2big(command):
    """copy_struct_from_user checks the tail (E2BIG) before it copies the struct (EFAULT).

    The client read the struct and a nonzero tail byte, then faulted further on: the
    kernel's check_zeroed_user stops at that byte and returns E2BIG.
    """
    size = SIZE[command] + 16
    full = make_request(command, size=size, tail=b"\x01")
    req = Request(full.cmd, full.arg[: SIZE[command] + 1], copy_fault=True)
    with raises_errno(errnos.E2BIG):
        dispatch(command, req)


# ---- success -------------------------------------------------------------------------------


def test_check_returns_the_command_and_the_parsed_struct():
    command, parsed = dispatch("PRESERVE_FD", make_request("PRESERVE_FD", fd=-7, token=2**64 - 1))
    assert command.name == "PRESERVE_FD"
    assert (parsed.size, parsed.fd, parsed.token) == (16, -7, 2**64 - 1)


def test_check_parses_only_the_struct_of_a_larger_size():
    command, parsed = dispatch("CREATE_SESSION", make_request("CREATE_SESSION", size=96,
                                                              name=b"x" * 64))
    assert parsed.size == 96 and parsed.name == b"x" * 64


# ---- through Luo: tables by fd kind, copy back, no side effects on failure -----------------


def test_session_ioctl_on_device_is_einval():
    luo = first_boot(FakeHandler())
    with raises_errno(errnos.EINVAL):
        luo.device_ioctl(make_request("GET_NAME"), FakeCaller())


def test_device_ioctl_on_session_is_einval():
    luo = first_boot(FakeHandler())
    session = create(luo, b"s")
    with raises_errno(errnos.EINVAL):
        luo.session_ioctl(session, make_request("CREATE_SESSION", name=b"t"), FakeCaller())


def test_luo_applies_the_sessions_own_direction():
    luo = first_boot(FakeHandler())
    session = create(luo, b"s")
    with raises_errno(errnos.EINVAL):
        luo.session_ioctl(session, make_request("RETRIEVE_FD", token=1), FakeCaller())
    with raises_errno(errnos.EINVAL):
        luo.session_ioctl(session, make_request("FINISH"), FakeCaller())


def test_luo_rejects_preserve_on_a_retrieved_session():
    luo, _ = incoming({b"in": {1: 0x10}})
    session = luo.device_ioctl(make_request("RETRIEVE_SESSION", name=b"in"), FakeCaller()).session
    caller = FakeCaller({3: FakeFile("m")})
    with raises_errno(errnos.EINVAL):
        luo.session_ioctl(session, make_request("PRESERVE_FD", fd=3, token=2), caller)
    assert caller.taken == []


def test_dispatch_failure_has_no_side_effects():
    luo = first_boot(FakeHandler())
    caller = FakeCaller()
    with raises_errno(errnos.E2BIG):
        luo.device_ioctl(make_request("CREATE_SESSION", name=b"s", size=73, tail=b"\x01"), caller)
    assert caller.reserved == 0 and luo.sessions == []


@pytest.mark.parametrize("size", [72, 80, 4096])
def test_create_copies_back_the_struct_with_inputs_echoed(size):
    luo = first_boot(FakeHandler())
    req = make_request("CREATE_SESSION", size=size, fd=1234, name=b"s\0junk")
    out = luo.device_ioctl(req, FakeCaller())
    assert out.copy_back == struct_bytes(structs.CreateSession, size=size, fd=1234,
                                         name=b"s\0junk")
    assert len(out.copy_back) == 72  # min(size, struct size)
    assert out.command.name == "CREATE_SESSION" and out.session.name == b"s"


def test_preserve_copies_back_its_input():
    luo = first_boot(FakeHandler())
    session = create(luo, b"s")
    req = make_request("PRESERVE_FD", size=24, fd=3, token=0xDEADBEEF)
    out = luo.session_ioctl(session, req, FakeCaller({3: FakeFile("m")}))
    assert out.copy_back == req.arg[:16]


def test_get_name_copies_back_size_and_reserved_with_the_name_filled_in():
    luo = first_boot(FakeHandler())
    session = create(luo, b"abc")
    out = luo.session_ioctl(session, make_request("GET_NAME", size=80), FakeCaller())
    assert out.copy_back == struct_bytes(structs.GetName, size=80, name=b"abc")


def test_retrieve_fd_copies_back_its_input_and_hands_out_the_file():
    luo, _ = incoming({b"in": {7: 0x10}})
    session = luo.device_ioctl(make_request("RETRIEVE_SESSION", name=b"in"), FakeCaller()).session
    req = make_request("RETRIEVE_FD", fd=-1, token=7)
    out = luo.session_ioctl(session, req, FakeCaller())
    assert out.copy_back == req.arg and out.file.identity == "old-0x10"


def test_finish_copies_back_reserved():
    luo, _ = incoming({b"in": {}})
    session = luo.device_ioctl(make_request("RETRIEVE_SESSION", name=b"in"), FakeCaller()).session
    out = luo.session_ioctl(session, make_request("FINISH", reserved=0xFFFFFFFF), FakeCaller())
    assert out.copy_back == struct_bytes(structs.Finish, reserved=0xFFFFFFFF)


def test_fake_commands_match_the_tables():
    # the test helpers build requests with the tables' own numbers and structs
    for name, (cmd, struct) in COMMANDS.items():
        c = TABLE[name].by_nr(ioctl.ioc_nr(cmd))
        assert (c.name, c.cmd, c.struct) == (name, cmd, struct)


# ---- ops tables ----------------------------------------------------------------------------


def test_an_ops_table_names_an_op_for_every_command_and_nothing_else():
    def op():
        pass

    assert ops_table(MAINLINE_DEVICE.commands, CREATE_SESSION=op, RETRIEVE_SESSION=None) == {
        "CREATE_SESSION": op, "RETRIEVE_SESSION": None}
    with pytest.raises(ValueError, match=r"no op for \['RETRIEVE_SESSION'\], no command for \[\]"):
        ops_table(MAINLINE_DEVICE.commands, CREATE_SESSION=op)
    with pytest.raises(ValueError, match=r"no op for \[\], no command for \['FINISH'\]"):
        ops_table(MAINLINE_DEVICE.commands, CREATE_SESSION=op, RETRIEVE_SESSION=op, FINISH=op)

"""luofs.protocol: every message type round-trips through its one encoder and decoder, and
every kind of bad message is rejected with ProtocolError, its fds closed."""

import dataclasses
import json
import os
import socket
import types

import pytest
from hypothesis import given, settings, strategies as st

from luofs import protocol, protocol_keeper, protocol_vmm, wire
from luofs.protocol import (FILES, KEEPERS, RAM, Error, HandOver, KhoDumpRequest, ParkedRun,
                            ProtocolError, decode, encode)
from luofs.protocol_kernel import KernelBoot, KernelConfig

assert protocol_keeper.Records and protocol_vmm.Spawn  # every channel's types registered

MESSAGES = sorted(protocol._TYPES.values(), key=lambda cls: cls.TAG)
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.text(),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)
SPECIAL = {KhoDumpRequest: st.builds(KhoDumpRequest, st.sampled_from(["in", "out"]),
                                     st.sampled_from(["json", "dts"])),
           protocol_vmm.Spawn: st.builds(protocol_vmm.Spawn,
                                         st.lists(st.text(), min_size=1, max_size=3).map(tuple),
                                         st.dictionaries(st.text(max_size=5), st.text(),
                                                         max_size=2),
                                         st.sampled_from(protocol_vmm.WHERE))}


def values(tp):
    """A hypothesis strategy for a field of type `tp`."""
    if isinstance(tp, types.UnionType):
        return st.one_of(*[st.none() if t is type(None) else values(t) for t in tp.__args__])
    origin = getattr(tp, "__origin__", None)
    if origin is tuple:
        args = tp.__args__
        if len(args) == 2 and args[1] is Ellipsis:
            return st.lists(values(args[0]), max_size=4).map(tuple)
        return st.tuples(*map(values, args))
    if origin is dict:
        return st.dictionaries(values(tp.__args__[0]), values(tp.__args__[1]), max_size=3)
    if isinstance(tp, type) and issubclass(tp, tuple):  # NamedTuple
        return st.builds(tp, *map(values, tp.__annotations__.values()))
    if dataclasses.is_dataclass(tp):
        return message_values(tp)
    return {int: st.integers(-2**63, 2**63),
            float: st.floats(allow_nan=False, allow_infinity=False), str: st.text(), bool: st.booleans(), bytes: st.binary(max_size=64),
            dict: st.dictionaries(st.text(max_size=5), JSON, max_size=3)}[tp]


def message_values(cls):
    if cls in SPECIAL:
        return SPECIAL[cls]
    return st.builds(cls, **{f.name: values(f.type) for f in dataclasses.fields(cls)})


def pipe_fds(n: int) -> list[int]:
    fds = []
    for _ in range(n):
        r, w = os.pipe()
        os.close(w)
        fds.append(r)
    return fds


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_every_message_type_is_covered_and_tags_are_unique():
    assert len({cls.TAG for cls in MESSAGES}) == len(MESSAGES) >= 30
    assert {HandOver, KernelBoot, Error, protocol_keeper.Records} <= set(MESSAGES)


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda cls: cls.TAG)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_round_trip(cls, data):
    msg = data.draw(message_values(cls))
    encoded, fds = encode(msg)
    assert fds == []
    assert decode(encoded, []) == (msg, {})


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda cls: cls.TAG)
@settings(max_examples=5, deadline=None)
@given(data=st.data())
def test_unknown_fields_and_missing_ones_are_rejected(cls, data):
    sample = data.draw(message_values(cls))
    body = json.loads(encode(sample)[0])
    with pytest.raises(ProtocolError, match="unexpected field"):
        decode(json.dumps({**body, "surprise": 1}).encode(), [])
    for field in dataclasses.fields(cls):
        if field.default is dataclasses.MISSING:
            partial = {k: v for k, v in body.items() if k != field.name}
            with pytest.raises(ProtocolError, match=f"missing field '{field.name}'"):
                decode(json.dumps(partial).encode(), [])


WRONG = {int: "1", float: "1.5", str: 1, bool: 1, bytes: "not hex", dict: [1]}


def wrong_value(tp):
    """A JSON value that is not a `tp`."""
    if isinstance(tp, types.UnionType):
        return wrong_value(next(t for t in tp.__args__ if t is not type(None)))
    if getattr(tp, "__origin__", None) is tuple or (isinstance(tp, type) and issubclass(tp, tuple)):
        return "not a list"
    if getattr(tp, "__origin__", None) is dict or dataclasses.is_dataclass(tp):
        return ["not an object"]
    return WRONG[tp]


@pytest.mark.parametrize("cls", [c for c in MESSAGES if dataclasses.fields(c)],
                         ids=lambda cls: cls.TAG)
@settings(max_examples=5, deadline=None)
@given(data=st.data())
def test_ill_typed_fields_are_rejected(cls, data):
    body = json.loads(encode(data.draw(message_values(cls)))[0])
    for field in dataclasses.fields(cls):
        bad = {**body, field.name: wrong_value(field.type)}
        with pytest.raises(ProtocolError, match=f"{cls.TAG}.{field.name}"):
            decode(json.dumps(bad).encode(), [])


def test_booleans_are_no_integers_and_integers_no_booleans():
    with pytest.raises(ProtocolError, match="handover.root_phys: expected int, got bool"):
        decode(b'{"type":"handover","root_phys":true,"root_size":1,"liveupdate_number":0}', [])
    with pytest.raises(ProtocolError, match="boot.hold_mount: expected bool, got int"):
        decode(b'{"type":"boot","config":{},"hold_mount":1}', [])


def test_nested_values_are_checked_all_the_way_down():
    with pytest.raises(ProtocolError, match=r"handover.parked\[0\]: expected 4 items, got 3"):
        decode(b'{"type":"handover","root_phys":1,"root_size":1,"liveupdate_number":0,'
               b'"parked":[[1,2,3]]}', [])
    with pytest.raises(ProtocolError, match=r"boot.config.faults\[0\]\[1\]: expected int"):
        decode(b'{"type":"boot","config":{"faults":[["kho.finalize","EIO"]]}}', [])


def test_values_are_checked_when_built_too():
    with pytest.raises(ProtocolError, match="handover.root_size: expected int, got str"):
        HandOver(1, "2", 3)
    with pytest.raises(ProtocolError, match="kho-dump: which 'sideways'"):
        KhoDumpRequest("sideways")
    assert HandOver(1, 2, 3, parked=[[0, 0, 0, 1]]).parked == (ParkedRun(0, 0, 0, 1),)


@pytest.mark.parametrize("data, why", [
    (b"garbage-not-json", "not JSON"),
    (b"[1]", "a JSON list, not an object"),
    (b'{"op":"status"}', "unknown message type None"),
    (b'{"type":"cold-boot-please"}', "unknown message type 'cold-boot-please'"),
    (b'{"type":7}', "unknown message type 7"),
    (b'{"type":"status","fds":"many"}', "status.fds: expected an object"),
    (b"[" * 100000 + b"]" * 100000, "not JSON"),
])
def test_what_is_no_message_is_rejected(data, why):
    fds = pipe_fds(1)
    with pytest.raises(ProtocolError, match=why):
        decode(data, fds)
    assert not is_open(fds[0])


def test_oversized_messages_are_rejected_and_their_fds_closed():
    fds = pipe_fds(2)
    data, _ = encode(Error("x" * 5000))
    with pytest.raises(ProtocolError, match="more than 4096"):
        decode(data, fds, limit=4096)
    assert not any(map(is_open, fds))


def test_fds_must_match_the_groups_the_message_declares():
    ok, _ = encode(HandOver(1, 2, 3), {FILES: [10, 11], KEEPERS: [12]})
    assert json.loads(ok)["fds"] == {FILES: 2, KEEPERS: 1}
    for data, count in ((ok, 2),  # fewer fds than announced
                        (ok, 4),  # more
                        (encode(Error("x"))[0], 1),  # fds with a message that carries none
                        (b'{"type":"error","error":"x","fds":{"files":1}}', 1),  # a foreign group
                        (b'{"type":"park","fds":{"files":-1,"x":2}}', 1)):
        fds = pipe_fds(count)
        with pytest.raises(ProtocolError, match="fd groups"):
            decode(data, fds)
        assert not any(map(is_open, fds))


def test_the_encoder_refuses_a_group_the_type_does_not_carry():
    with pytest.raises(ProtocolError, match="error carries no fd group files"):
        encode(Error("x"), {FILES: [1]})


def test_fd_groups_travel_by_name_over_a_socket():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    files, keepers, ram = pipe_fds(300), pipe_fds(2), pipe_fds(1)  # > one datagram's fds
    handover = HandOver(1, 2, 3, files=300)
    try:
        protocol.send(a, KernelBoot(KernelConfig(), handover),
                      {RAM: ram, FILES: files, KEEPERS: keepers})
        msg, groups = protocol.recv(b)
        assert msg == KernelBoot(KernelConfig(), handover)
        assert [len(groups[g]) for g in (RAM, FILES, KEEPERS)] == [1, 300, 2]
        for sent, got in zip(ram + files + keepers, groups[RAM] + groups[FILES] + groups[KEEPERS]):
            assert os.fstat(sent).st_ino == os.fstat(got).st_ino
        protocol.close_fds(groups)
        a.close()
        assert protocol.recv(b) == (None, {})
    finally:
        for fd in files + keepers + ram:
            os.close(fd)
        a.close()
        b.close()


def test_a_multipart_header_promising_too_much_is_refused_before_reading():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        a.send(b'{"_parts": 1000, "_fd_parts": 0}')
        b.settimeout(1)  # reading the parts would wait for them: it must not even try
        with pytest.raises(ProtocolError, match="more than the 4096 bytes allowed"):
            protocol.recv(b, limit=4096)
        a.send(b'{"_parts": "x", "_fd_parts": 0}')
        with pytest.raises(ProtocolError, match="malformed multi-part header"):
            protocol.recv(b)
        wire.send_bytes(a, b"y" * (wire.MAX_DATAGRAM + 10))  # two parts: read whole
        with pytest.raises(ProtocolError, match="not JSON"):
            protocol.recv(b)


def test_messages_are_frozen_dataclasses():
    handover = HandOver(1, 2, 3)
    assert dataclasses.is_dataclass(handover)
    with pytest.raises(dataclasses.FrozenInstanceError):
        handover.files = 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        del handover.files
    assert dataclasses.replace(handover, files=4) == HandOver(1, 2, 3, files=4)
    assert dataclasses.asdict(handover)["parked"] == ()
    assert hash(handover) == hash(HandOver(1, 2, 3)) and handover != HandOver(1, 2, 4)
    assert repr(Error("x")) == "Error(error='x', errno=0)"
    with pytest.raises(TypeError, match="missing 'liveupdate_number'"):
        HandOver(1, 2)
    fields = len(dataclasses.fields(HandOver))
    with pytest.raises(TypeError, match=f"takes {fields} values, {fields + 1} given"):
        HandOver(*range(fields + 1))
    with pytest.raises(TypeError, match="unexpected or repeated 'root_phys'"):
        HandOver(1, 2, 3, root_phys=1)
    with pytest.raises(ValueError, match="message type 'ok' registered twice"):
        type("Again", (protocol.Message,), {}, tag="ok")


def test_handover_next_number_and_kernel_config_disarm():
    assert HandOver(0, 0, 4).next_number == 5
    config = KernelConfig(faults=(("crash.reload", 5), ("memfd.freeze", 16)))
    assert config.without_fault("crash.reload").faults == (("memfd.freeze", 16),)

"""luofs/core/session.py: sessions and preserved files."""

from luofs.core import Direction, PreservedFile, Session

from .fakes import FakeFile, FakeHandler


def test_direction_values():
    assert Direction.OUTGOING.value == "outgoing" and Direction.INCOMING.value == "incoming"


def test_new_session_defaults():
    s = Session(b"s", Direction.INCOMING)
    assert (s.files, s.retrieved, s.open, s.outgoing) == ({}, False, False, False)
    assert Session(b"t", Direction.OUTGOING).outgoing


def test_sessions_do_not_share_their_file_tables():
    a, b = Session(b"a", Direction.OUTGOING), Session(b"b", Direction.OUTGOING)
    a.files[1] = PreservedFile(1, FakeHandler(), 0)
    assert b.files == {}


def test_sessions_compare_by_identity():
    assert Session(b"s", Direction.OUTGOING) != Session(b"s", Direction.OUTGOING)


def test_preserved_file_is_retrieved_once_it_has_a_file():
    pf = PreservedFile(1, FakeHandler(), 0x10)
    assert not pf.retrieved and pf.retrieve_errno is None
    pf.file = FakeFile("m")
    assert pf.retrieved

"""luofs/core/handler.py: the handler registry (spec §14, file handler callbacks)."""

from luofs.core import HandlerRegistry, LuoError
from luofs.core.handler import freeze_all
from luofs.uapi import errnos

from .fakes import FakeFile, FakeHandler, raises_errno


def test_register_keeps_registration_order():
    reg = HandlerRegistry()
    a, b = FakeHandler("a-v1"), FakeHandler("b-v1")
    reg.register(a, sessions_exist=False)
    reg.register(b, sessions_exist=False)
    assert list(reg) == [a, b]


def test_register_duplicate_compatible_is_eexist():
    reg = HandlerRegistry()
    reg.register(FakeHandler("x-v1"), sessions_exist=False)
    with raises_errno(errnos.EEXIST):
        reg.register(FakeHandler("x-v1"), sessions_exist=False)
    assert len(list(reg)) == 1


def test_register_while_sessions_exist_is_ebusy():
    reg = HandlerRegistry()
    with raises_errno(errnos.EBUSY):
        reg.register(FakeHandler(), sessions_exist=True)
    assert list(reg) == []


def test_unregister_while_sessions_exist_is_ebusy():
    reg = HandlerRegistry()
    h = FakeHandler()
    reg.register(h, sessions_exist=False)
    with raises_errno(errnos.EBUSY):
        reg.unregister(h, sessions_exist=True)
    assert list(reg) == [h]


def test_unregister_unknown_handler_is_enoent():
    reg = HandlerRegistry()
    reg.register(FakeHandler("a-v1"), sessions_exist=False)
    with raises_errno(errnos.ENOENT):
        reg.unregister(FakeHandler("a-v1"), sessions_exist=False)  # same name, other handler


def test_unregister_then_register_again():
    reg = HandlerRegistry()
    h = FakeHandler()
    reg.register(h, sessions_exist=False)
    reg.unregister(h, sessions_exist=False)
    assert list(reg) == [] and reg.by_compatible(h.compatible) is None
    reg.register(h, sessions_exist=False)
    assert list(reg) == [h]


def test_compatible_fits_in_char48():
    reg = HandlerRegistry()
    reg.register(FakeHandler("c" * 47), sessions_exist=False)
    with raises_errno(errnos.EINVAL):
        reg.register(FakeHandler("d" * 48), sessions_exist=False)


def test_find_for_returns_the_first_accepting_handler():
    reg = HandlerRegistry()
    pipes, mem1, mem2 = FakeHandler("p-v1", accepts="pipe"), FakeHandler("m1"), FakeHandler("m2")
    for h in (pipes, mem1, mem2):
        reg.register(h, sessions_exist=False)
    assert reg.find_for(FakeFile("x", "mem")) is mem1
    assert reg.find_for(FakeFile("x", "pipe")) is pipes
    assert reg.find_for(FakeFile("x", "socket")) is None
    assert mem2.calls() == [("can_preserve", "x")]  # asked only for the socket


def test_by_compatible():
    reg = HandlerRegistry()
    h = FakeHandler("memfd-v2")
    reg.register(h, sessions_exist=False)
    assert reg.by_compatible("memfd-v2") is h
    assert reg.by_compatible("memfd-v1") is None


# ---- freeze_all: runs of one handler, all or nothing ------------------------------------


class _Entry:
    def __init__(self, handler, identity, data=0):
        self.handler, self.file, self.data = handler, FakeFile(identity), data


class _BatchHandler(FakeHandler):
    """A FakeHandler with freeze_many, which records each batch it is given."""

    def freeze_many(self, entries):
        self.ops.append(("freeze_many", [e.file.identity for e in entries]))
        failing = [e for e in entries if e.file.identity in self.fail_freeze]
        if failing:
            raise LuoError(self.fail_freeze[failing[0].file.identity], "fake batch fails")
        return [self.freeze_data.get(e.file.identity, e.data + 1) for e in entries]


def test_freeze_all_gives_each_run_of_one_handler_to_its_freeze_many():
    batch, single = _BatchHandler("batch-v1"), FakeHandler("single-v1")
    entries = [_Entry(batch, "a", 10), _Entry(batch, "b", 20), _Entry(single, "c", 30),
               _Entry(batch, "d", 40)]
    freeze_all(entries)
    assert batch.calls("freeze_many") == [("freeze_many", ["a", "b"]), ("freeze_many", ["d"])]
    assert single.calls("freeze") == [("freeze", "c")]
    assert [e.data for e in entries] == [11, 21, 30, 41]


def test_freeze_all_failure_unfreezes_every_earlier_entry_in_reverse():
    batch, single = _BatchHandler("batch-v1"), FakeHandler("single-v1")
    batch.ops = single.ops  # one log: the order across handlers counts
    entries = [_Entry(single, "a"), _Entry(batch, "b"), _Entry(batch, "c"), _Entry(single, "d"),
               _Entry(batch, "e")]
    batch.fail_freeze["e"] = errnos.EBUSY
    with raises_errno(errnos.EBUSY):
        freeze_all(entries)
    assert single.calls("unfreeze") == [("unfreeze", x) for x in "dcba"]


def test_freeze_all_failure_inside_a_single_run_unfreezes_only_the_frozen():
    single = FakeHandler("single-v1")
    entries = [_Entry(single, x) for x in "abc"]
    single.fail_freeze["b"] = errnos.ENOMEM
    with raises_errno(errnos.ENOMEM):
        freeze_all(entries)
    assert single.calls("unfreeze") == [("unfreeze", "a")]

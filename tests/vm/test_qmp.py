"""luofs/vm/qmp.py against a scripted monitor (no QEMU)."""

import json
import socket

import pytest

from luofs.vm.qmp import Qmp, QmpError, setup_commands


def monitor(*lines):
    """A Qmp whose peer has already written `lines` (dicts) and nothing more."""
    ours, theirs = socket.socketpair()
    theirs.sendall(b"".join(json.dumps(line).encode() + b"\n" for line in lines))
    theirs.shutdown(socket.SHUT_WR)  # it still takes commands
    q = Qmp(ours, timeout=2)
    q.peer = theirs
    return q


def migration(status):
    return {"event": "MIGRATION", "data": {"status": status}}


def test_pipelined_replies_come_back_in_order_past_the_greeting_and_events():
    q = monitor({"QMP": {}}, {"return": {}}, migration("setup"), {"return": {"fd": 3}})
    assert q.pipeline([("qmp_capabilities", {}), ("add-fd", {})]) == [{}, {"fd": 3}]
    assert q.events == [migration("setup")]


def test_a_stale_completed_is_not_this_migrations_end():
    # A former migration target saw "completed" once: only one after "setup" counts.
    q = monitor(migration("completed"), migration("setup"), migration("active"),
                migration("completed"))
    q.wait_migration("migrate", 2)
    with pytest.raises(QmpError, match="^QEMU closed its monitor$"):
        q.execute("query-status")  # everything was consumed: the last "completed" ended it


def test_a_failed_migration_and_a_failed_command_raise_with_their_reason():
    q = monitor(migration("active"), migration("failed"))
    with pytest.raises(QmpError, match="^migrate-incoming: migration failed$"):
        q.wait_migration("migrate-incoming", 2)
    q = monitor({"error": {"class": "GenericError", "desc": "no such fd"}})
    with pytest.raises(QmpError, match="^getfd: GenericError: no such fd$"):
        q.execute("getfd", fdname="x")


def test_silence_is_a_timeout():
    ours, theirs = socket.socketpair()
    try:
        with pytest.raises(QmpError, match="^QEMU did not answer on its monitor in time$"):
            Qmp(ours, timeout=0.05).execute("stop")
    finally:
        theirs.close()
        ours.close()


def test_the_destination_sets_no_bandwidth_and_naive_keeps_ram():
    names = [c for c, _ in setup_commands(source=False)]
    assert names == ["qmp_capabilities", "migrate-set-capabilities"]
    caps = dict(setup_commands(ignore_shared=False))["migrate-set-capabilities"]["capabilities"]
    assert {"capability": "x-ignore-shared", "state": False} in caps


def test_a_monitor_that_is_gone_before_a_command():
    ours, theirs = socket.socketpair()
    theirs.close()
    with pytest.raises(QmpError, match="^QEMU closed its monitor$"):
        Qmp(ours, timeout=1).execute("stop")
    ours.close()

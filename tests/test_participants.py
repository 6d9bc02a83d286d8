"""Update participants (luofs/participants.py) through a real machine, with fake
participants in threads: no QEMU needed."""

import errno
import os
import socket
import threading

from luofs import cli, participants, protocol
from luofs.testing import booted


class Fake:
    """A participant that records what it is asked and answers `answers.get(op, ok)`
    (or what calling it returns)."""

    def __init__(self, state_dir, name, answers=None, successor=False):
        self.listener = participants.Listener(state_dir, name, successor)
        self.answers = answers or {}
        self.ops = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                op = self.listener.serve_one(self._answer)
            except OSError:
                return
            if op == "shutdown":
                return

    def _answer(self, op):
        self.ops.append(op)
        answer = self.answers.get(op, {"ok": True})
        return answer(op) if callable(answer) else answer

    def close(self):
        self.listener.close()


def kexec(root, capsys):
    code = cli.main(["kexec", "--root", root])
    return code, capsys.readouterr().err


def test_participants_prepare_before_and_successors_resume_after_an_update(capsys):
    with booted() as inst:
        a, b = Fake(inst.state_dir, "a"), Fake(inst.state_dir, "b")
        next_a = Fake(inst.state_dir, "a", successor=True)
        assert kexec(inst.root, capsys)[0] == 0
        assert a.ops == b.ops == ["prepare"]  # (they end with the old userspace)
        assert next_a.ops == ["resume"]
    for fake in (a, b, next_a):
        fake.thread.join(5)  # the machine powered off: every participant was told
        assert fake.ops[-1] == "shutdown"


def test_under_the_rfc_profiles_the_machine_asks_only_successors(capsys):
    with booted(["--abi", "rfc-v2"]) as inst:
        a, next_a = Fake(inst.state_dir, "a"), Fake(inst.state_dir, "a", successor=True)
        assert kexec(inst.root, capsys)[0] == 0
        assert a.ops == [] and next_a.ops == ["resume"]  # the kernel's subsystems prepare
        a.close()
        next_a.close()


def test_a_refusal_cancels_the_prepared_and_refuses_the_update(capsys):
    with booted() as inst:
        a = Fake(inst.state_dir, "a")
        b = Fake(inst.state_dir, "b", {"prepare": {"ok": False, "errno": errno.EAGAIN,
                                                   "error": "guest busy"}})
        code, err = kexec(inst.root, capsys)
        assert code == errno.EAGAIN
        assert "luofs kexec: update participant 'b' refused: guest busy\n" in err
        assert a.ops == ["prepare", "cancel"] and b.ops == ["prepare"]
        assert inst.status()["kernel"]["liveupdate_number"] == 0  # nothing changed
        b.answers.clear()
        assert kexec(inst.root, capsys)[0] == 0
        assert inst.status()["kernel"]["liveupdate_number"] == 1
        assert b.ops == ["prepare", "prepare"]
        a.close()
        b.close()


def test_a_refusal_without_an_errno_is_eio(capsys):
    with booted() as inst:
        Fake(inst.state_dir, "a", {"prepare": {"ok": False, "error": "no"}})
        code, err = kexec(inst.root, capsys)
        assert code == errno.EIO
        assert "update participant 'a' refused: no" in err


def test_a_refused_freeze_cancels_every_participant(capsys):
    with booted(["--fault", "memfd.freeze:ENOSPC"]) as inst:
        a = Fake(inst.state_dir, "a")
        with inst.client() as lu:
            s = lu.create_session("held")
        fd = os.memfd_create("x")
        s.preserve_fd(fd, 1)  # the kernel's freeze now runs the failing handler
        code, _err = kexec(inst.root, capsys)
        assert code == errno.ENOSPC
        assert a.ops == ["prepare", "cancel"]
        s.close()
        os.close(fd)


def test_a_dead_participants_socket_is_removed_and_skipped(capsys):
    with booted() as inst:
        os.makedirs(participants.directory(inst.state_dir), exist_ok=True)
        path = participants.socket_path(inst.state_dir, "dead")
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
            s.bind(path)  # bound, never listening, then gone: as a killed participant's
        assert kexec(inst.root, capsys)[0] == 0
        assert not os.path.exists(path)


def test_a_participant_that_fails_answers_with_its_errno(capsys):
    with booted() as inst:
        def broken(op):
            raise OSError(errno.ENOSPC, "no room for the state")

        fake = Fake(inst.state_dir, "a", {"prepare": broken})
        code, err = kexec(inst.root, capsys)
        assert code == errno.ENOSPC
        assert "update participant 'a' refused: [Errno 28] no room for the state" in err
        fake.close()


def test_a_reply_that_is_not_a_reply_refuses_the_update(capsys):
    with booted() as inst:
        os.makedirs(participants.directory(inst.state_dir), exist_ok=True)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        server.bind(participants.socket_path(inst.state_dir, "odd"))
        server.listen(1)

        def babble():
            conn, _ = server.accept()
            with conn:
                conn.recv(4096)
                conn.send(b"not json")

        thread = threading.Thread(target=babble, daemon=True)
        thread.start()
        code, err = kexec(inst.root, capsys)
        assert code == errno.EPROTO
        assert "update participant 'odd' refused: sent a malformed reply (message is not JSON)" in err
        thread.join(5)
        server.close()


def test_a_request_that_is_not_one_is_answered_with_an_error():
    with booted() as inst:
        fake = Fake(inst.state_dir, "a")
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
            s.connect(fake.listener.path)
            s.send(b'{"type": "ok"}')
            reply, _fds = protocol.recv(s)
        assert isinstance(reply, protocol.Error) and reply.errno == errno.EPROTO
        assert reply.error == "not a participant's request: Ok()"
        assert fake.ops == []
        fake.close()

"""The machine's control socket (issue 11, issue 12 §1): every message is typed and
bounded; a bad one gets an Error reply and is logged, and the machine — with every
preserved session — serves on."""

import errno
import os
import socket

import pytest

from luofs import protocol, wire
from luofs.client import kexec, status
from luofs.control import NoMachine
from luofs.protocol import Error, StatusRequest
from luofs.protocol_kernel import Reboot
from luofs.testing import booted

BAD = [
    (b"garbage-not-json", "not JSON"),
    (b"[1]", "a JSON list, not an object"),
    (b'{"op":"cold-boot"}', "unknown message type None"),
    (b'{"type":"cold-boot","please":1}', "unexpected field(s) please"),
    (b'{"type":"kho-dump","which":"sideways"}', "which 'sideways'"),
    (b'{"type":"kho-dump","which":3}', "kho-dump.which: expected str, got int"),
    (b'{"type":"no-such-thing"}', "unknown message type 'no-such-thing'"),
    (b'{"type":"status","pad":"' + b"x" * protocol.MAX_REQUEST + b'"}', "more than 4096"),
    (b'{"_parts": 64, "_fd_parts": 0}', "more than the 4096 bytes allowed"),
    (b'{"_parts": 1, "_fd_parts": 0}', "more than the 4096 bytes allowed"),  # never waited for
    (protocol.encode(Reboot())[0], "reboot is not a request the machine takes"),
]


def raw_request(root: str, data: bytes, fds=()):
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        sock.settimeout(30)
        wire.connect_unix(sock, wire.control_path(root))
        wire.send_bytes(sock, data, fds)
        return protocol.recv(sock)


def test_bad_messages_get_an_error_and_the_machine_serves_on(luofs_instance):
    root = luofs_instance.root
    with luofs_instance.client() as lu, lu.create_session("kept") as session:
        memfd = os.memfd_create("kept")
        os.write(memfd, b"still here")
        session.preserve_fd(memfd, 1)
        for data, why in BAD:
            reply, fds = raw_request(root, data)
            assert fds == {}
            assert isinstance(reply, Error) and why in reply.error, (data[:40], reply)
        # fds sent with a request are closed by the machine, never kept
        r, w = os.pipe()
        reply, _ = raw_request(root, protocol.encode(StatusRequest())[0], [r])
        assert isinstance(reply, Error) and "fd groups" in reply.error
        os.close(r)
        with pytest.raises(BrokenPipeError):  # no reader is left: the machine closed its copy
            os.write(w, b"x")
        os.close(w)
        info = status(root)
        assert [s["name"] for s in info["kernel"]["sessions"]] == ["kept"]
        os.close(memfd)
    assert kexec(root)["liveupdate_number"] == 1  # the machine still does its job
    with open(os.path.join(luofs_instance.state_dir, "machine.log")) as log:
        assert log.read().count("control socket: rejected a message") >= len(BAD) - 1


def test_a_client_that_disconnects_at_once_costs_nothing(luofs_instance):
    for _ in range(5):
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
            wire.connect_unix(sock, wire.control_path(luofs_instance.root))
    assert status(luofs_instance.root)["kernel"]["liveupdate_number"] == 0


def test_client_kexec_and_status_for_orchestrators(tmp_path):
    """luofs.client.kexec/status: a refused freeze raises OSError with its errno (the old
    kernel serves on); no machine raises NoMachine; a done kexec reports what it carried."""
    with pytest.raises(NoMachine, match="no luofs kernel serves"):
        status(str(tmp_path))
    with pytest.raises(NoMachine):
        kexec(str(tmp_path))
    with booted(["--fault", "memfd.freeze:EBUSY"]) as inst:
        with inst.client() as lu, lu.create_session("s") as session:
            memfd = os.memfd_create("m")
            session.preserve_fd(memfd, 7)
            os.close(memfd)
            with pytest.raises(OSError) as refused:
                kexec(inst.root)
            assert refused.value.errno == errno.EBUSY
            assert "memfd.freeze" in refused.value.strerror
            info = status(inst.root)
            assert info["kernel"]["liveupdate_number"] == 0
            assert [s["name"] for s in info["kernel"]["sessions"]] == ["s"]
    with booted() as inst:
        done = kexec(inst.root)
        assert done["liveupdate_number"] == 1 and done["sessions"] == 0
        assert set(done) == {"liveupdate_number", "sessions", "files", "blackout_ms",
                             "freeze_ms", "start_ms", "blackout_records", "dropped", "lost"}
        assert done["dropped"] == 0 and done["lost"] is None


def test_the_machine_serves_on_after_a_panic_whatever_fd_its_clients_get():
    """A kernel that panicked leaves the machine without a kernel: its socket must leave
    the machine's selector, or the next client given that fd number ended the machine."""
    with booted(["--fault", "handover.corrupt"]) as inst:
        with pytest.raises(OSError, match="kernel panic"):
            kexec(inst.root)
        for _ in range(20):
            assert "kernel panic" in status(inst.root)["machine"]["panic"]

"""Issue 12 §1, §2, §9 (permissions): only root and the user who booted an instance may
talk to its machine; `luofs shutdown` acts on paths it derives, never on a peer's word;
state dirs and logs are private."""

import errno
import json
import os
import socket
import stat
import subprocess
import sys
import time

from luofs import protocol, wire
from luofs.client import status
from luofs.protocol import ColdBoot, Error, KexecRequest, Shutdown, StatusRequest

NOBODY = 65534


def as_nobody(fn):
    """fn() in a forked child running as user nobody; its JSON-able result (or the
    exception it raised, as 'Name: message')."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (child)
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            result = fn()
        except BaseException as e:
            result = f"{type(e).__name__}: {e}"
        os.write(w, json.dumps(result).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def ask_raw(address, message) -> str:
    """Connect to `address` (a path, or an abstract name), send `message`: what came back."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        sock.settimeout(20)
        if isinstance(address, bytes):
            sock.connect(address)
        else:
            wire.connect_unix(sock, address)
        try:
            protocol.send(sock, message)
        except BrokenPipeError:
            pass  # refused at accept: the answer waits to be read
        reply, _fds = protocol.recv(sock)
    return repr(reply)


def test_other_users_cannot_reach_the_machine_at_all(luofs_instance):
    root = luofs_instance.root
    path = wire.control_path(root)
    abstract = b"\0luofs/" + wire._digest(root).encode()  # where main listened, for anyone
    with luofs_instance.client() as lu, lu.create_session("precious"):
        for message in (ColdBoot(), Shutdown(), KexecRequest()):
            assert as_nobody(lambda: ask_raw(path, message)).startswith("PermissionError")
            assert as_nobody(lambda: ask_raw(abstract, message)).startswith(
                "ConnectionRefusedError")
        # nor can they put a socket of theirs where the CLI looks
        assert as_nobody(lambda: socket.socket(socket.AF_UNIX).bind(path)).startswith(
            "PermissionError")
        sessions = status(root)["kernel"]["sessions"]
        assert [s["name"] for s in sessions] == ["precious"]


def test_the_machine_checks_its_peers_credentials(luofs_instance):
    """Even where the socket is reachable (modes opened up by hand), a peer of another
    user gets EACCES, and nothing changes."""
    root = luofs_instance.root
    path = wire.control_path(root)
    state = os.path.dirname(path)
    os.chmod(state, 0o711)
    os.chmod(path, 0o666)
    try:
        with luofs_instance.client() as lu, lu.create_session("precious"):
            for message in (ColdBoot(), Shutdown(), KexecRequest(), StatusRequest()):
                reply = as_nobody(lambda: ask_raw(path, message))
                assert reply == repr(Error("permission denied: only root and the user who "
                                           "booted this instance may control it",
                                           errno.EACCES))
            info = status(root)
            assert [s["name"] for s in info["kernel"]["sessions"]] == ["precious"]
            assert info["machine"]["kexecs"] == 0
    finally:
        os.chmod(state, 0o700)
        os.chmod(path, 0o600)
    with open(os.path.join(state, "machine.log")) as log:
        assert "refused pid" in log.read()


def test_the_luofs_command_as_another_user_says_permission_denied(luofs_instance):
    from luofs import cli

    def run():
        import contextlib
        import io

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            codes = [cli.main([c, "--root", luofs_instance.root])
                     for c in ("status", "kexec", "shutdown")]
        return codes, err.getvalue()

    codes, err = as_nobody(run)
    assert codes == [1, 1, 1]
    assert err.count("permission denied: only root and the user who booted the instance") == 3
    assert "Traceback" not in err


FAKE_MACHINE = """
import os, socket, sys
from luofs import protocol, wire
from luofs.protocol import MachineStatus, Ok, Shutdown, StatusRequest
path, victim = sys.argv[1], sys.argv[2]
listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
wire.bind_unix(listener, path)
listener.listen(4)
print("listening", flush=True)
while True:
    conn, _ = listener.accept()
    request, _ = protocol.recv(conn)
    if isinstance(request, StatusRequest):  # lies: another state dir, another pid
        protocol.send(conn, MachineStatus(machine={"state_dir": victim, "pid": 1,
                                                   "panic": None}))
    else:
        protocol.send(conn, Ok())
        os.unlink(path)
        sys.exit(0)
"""


def test_shutdown_never_removes_a_path_a_peer_names(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep-me").write_text("root's own file")
    state = wire.state_dir(str(root), create=True)
    fake = subprocess.Popen([sys.executable, "-c", FAKE_MACHINE, os.path.join(state, "control"),
                             str(victim)], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert fake.stdout.readline() == "listening\n"
        result = subprocess.run([sys.executable, "-m", "luofs", "shutdown", "--root", str(root)],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert fake.wait(10) == 0
    finally:
        if fake.poll() is None:
            fake.kill()
            fake.wait()
    assert (victim / "keep-me").read_text() == "root's own file"
    assert not os.path.exists(state)  # the derived one went: it held only luofs's files


def test_shutdown_keeps_a_state_dir_that_holds_something_else(tmp_path):
    from luofs import teardown

    root = tmp_path / "root"
    root.mkdir()
    state = wire.state_dir(str(root), create=True)
    with open(os.path.join(state, "machine.log"), "w"), open(os.path.join(state, "x"), "w"):
        pass
    assert teardown.remove_state(str(root)) == (
        f"{state} holds files luofs did not put there: x")
    os.unlink(os.path.join(state, "x"))
    os.chmod(state, 0o755)
    assert "is not a private directory" in teardown.remove_state(str(root))
    os.chmod(state, 0o700)
    assert teardown.remove_state(str(root)) is None and not os.path.exists(state)


def test_state_dir_and_logs_are_private(luofs_instance):
    state = luofs_instance.state_dir
    assert state == wire.state_dir(luofs_instance.root)
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    for name in ("machine.log", "kernel.log", "control", "machine.lock"):
        assert stat.S_IMODE(os.stat(os.path.join(state, name)).st_mode) == 0o600, name


def test_an_idle_or_slow_client_blocks_nobody(luofs_instance):
    root = luofs_instance.root
    path = wire.control_path(root)
    idle = []
    for _ in range(3):  # connect and say nothing
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        wire.connect_unix(sock, path)
        idle.append(sock)
    slow = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    wire.connect_unix(slow, path)
    slow.send(b'{"type":')  # half a message: rejected, not waited for
    t0 = time.monotonic()
    for _ in range(3):
        assert status(root)["kernel"]["liveupdate_number"] == 0
    assert time.monotonic() - t0 < 5
    reply, _ = protocol.recv(slow)
    assert isinstance(reply, Error) and "not JSON" in reply.error
    idle[0].settimeout(30)
    reply, _ = protocol.recv(idle[0])  # after CLIENT_TIMEOUT the machine lets go
    assert isinstance(reply, Error) and "no request within" in reply.error
    for sock in idle + [slow]:
        sock.close()


def test_shutdown_removes_what_vms_and_participants_left_in_the_state_dir(tmp_path):
    from luofs import teardown

    root = tmp_path / "root"
    root.mkdir()
    state = wire.state_dir(str(root), create=True)
    os.makedirs(os.path.join(state, "vm", "vm0"))
    os.mkdir(os.path.join(state, "participants"))
    for name in ("machine.log", "vm-vm0.log", "vm/vm0/serial.log", "participants/vm0.sock"):
        open(os.path.join(state, name), "w").close()
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep-me").write_text("x")
    os.symlink(victim, os.path.join(state, "vm", "link"))  # never followed
    assert teardown.remove_state(str(root)) is None and not os.path.exists(state)
    assert (victim / "keep-me").read_text() == "x"

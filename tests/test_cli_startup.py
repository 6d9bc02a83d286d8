"""Issue 11: the `luofs` command imports only what its subcommand needs, so `luofs kexec`
and `luofs status` (run by orchestrators in a live update's pause) start in milliseconds."""

import os
import socket
import subprocess
import sys
import threading

import pytest

from luofs import protocol, wire

HEAVY = ("devices", "kho", "construct", "luofs.core", "luofs.fs", "luofs.handover", "pyfuse3",
         "trio", "subprocess", "shutil", "hashlib", "typing", "luofs.mounts",
         "luofs.protocol_kernel", "luofs.protocol_keeper")

PROBE = """
import sys
from luofs import cli
code = cli.main(sys.argv[1:])
heavy = sorted(m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in %r))
print(code, " ".join(heavy))
""" % (HEAVY,)


@pytest.fixture
def fake_machine(tmp_path, monkeypatch):
    """A control socket for tmp_path/root that answers every request with Error."""
    monkeypatch.setenv("LUOFS_STATE_DIR", str(tmp_path / "state"))
    root = tmp_path / "root"
    root.mkdir()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    wire.bind_unix(listener, os.path.join(wire.state_dir(str(root), create=True), "control"))
    listener.listen(4)

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                protocol.recv(conn)
                protocol.send(conn, protocol.Error("a fake machine"))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield str(root)
    listener.shutdown(socket.SHUT_RDWR)
    listener.close()
    thread.join(5)


@pytest.mark.parametrize("command", ["kexec", "status"])
def test_talking_to_the_machine_imports_nothing_heavy(fake_machine, command):
    result = subprocess.run([sys.executable, "-c", PROBE, command, "--root", fake_machine],
                            capture_output=True, text=True)
    code, _, heavy = result.stdout.strip().partition(" ")
    assert code == "1" and f"luofs {command}: a fake machine" in result.stderr, result.stderr
    assert heavy == "", f"luofs {command} imported {heavy}"


def test_luofs_package_itself_is_import_free():
    result = subprocess.run([sys.executable, "-c", "import sys; before = set(sys.modules); "
                             "import luofs; print(sorted(set(sys.modules) - before))"],
                            capture_output=True, text=True)
    assert result.stdout.strip() == "['luofs']"


def test_a_reader_that_stops_early_gets_no_error_message(tmp_path):
    """`luofs status | head -1`: a reader gone before the output is written is no error."""
    import os
    import subprocess
    import sys

    from luofs.testing import booted

    with booted() as inst:
        r, w = os.pipe()
        os.close(r)  # the reader has gone already: every write is EPIPE
        out = subprocess.run([sys.executable, "-m", "luofs", "status", "--root", inst.root],
                             stdout=w, stderr=subprocess.PIPE, text=True)
        os.close(w)
    assert (out.returncode, out.stderr) == (141, "")

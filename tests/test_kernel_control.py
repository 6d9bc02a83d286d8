"""A kernel process answers a message it cannot read with Error (issue 11): before its
boot it then exits (it serves nothing yet); the machine reads why."""

import os
import socket
import subprocess
import sys

from luofs import protocol, wire
from luofs.protocol import Error
from luofs.protocol_kernel import Loaded


def test_a_bad_boot_message_is_answered_and_the_kernel_exits(tmp_path):
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    root_fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    proc = subprocess.Popen([sys.executable, "-m", "luofs.kernel", "--root", str(tmp_path),
                             "--root-fd", str(root_fd), "--control-fd", str(theirs.fileno())],
                            pass_fds=[theirs.fileno(), root_fd], stderr=subprocess.PIPE,
                            text=True)
    theirs.close()
    os.close(root_fd)
    with ours:
        ours.settimeout(60)
        loaded, _ = protocol.recv(ours)
        assert loaded == Loaded(proc.pid)
        r, w = os.pipe()
        wire.send_bytes(ours, b'{"type":"boot","config":{"abi":7},"fds":{"ram":1}}', [r])
        reply, _ = protocol.recv(ours)
        assert reply == Error("bad boot message: boot.config.abi: expected str, got int")
        os.close(r)
    assert proc.wait(30) == 1
    assert "the machine sent a bad message before the boot" in proc.stderr.read()
    os.close(w)

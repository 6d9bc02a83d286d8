"""The CLI's manners at its edges: Ctrl-C and a closed pipe never print a traceback, and
every exit status is the documented one (`luofs --help` lists them)."""

import os
import signal
import subprocess
import sys
import threading
import time

from luofs import cli
from luofs.mounts import mount_entry
from luofs.testing import booted
from luofs.wire import state_dir

from .test_participants import Fake

LUOFS = [sys.executable, "-m", "luofs"]


def test_help_documents_every_exit_status():
    out = subprocess.run([*LUOFS, "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for code in ("0 ", "1 ", "ERRNO", "64 ", "130 ", "141 "):
        assert f"\n  {code}" in out.stdout, code
    sub = subprocess.run([*LUOFS, "kexec", "--help"], capture_output=True, text=True)
    assert "exit status: see `luofs --help`" in sub.stdout


def test_a_usage_error_exits_64():
    out = subprocess.run([*LUOFS, "status", "--no-such-option"], capture_output=True, text=True)
    assert out.returncode == cli.EXIT_USAGE == 64
    assert "Traceback" not in out.stderr


def test_every_printing_command_takes_a_closed_pipe_quietly():
    with booted() as inst:
        for command in (["kho", "dump"], ["kho", "dump", "--dts"], ["status", "--json"]):
            r, w = os.pipe()
            os.close(r)  # the reader has gone before the first write: EPIPE
            out = subprocess.run([*LUOFS, *command, "--root", inst.root], stdout=w,
                                 stderr=subprocess.PIPE, text=True)
            os.close(w)
            assert (out.returncode, out.stderr) == (cli.EXIT_CLOSED_PIPE, ""), command


def blocking_participant(state: str):
    """A participant whose prepare waits until the test sets the returned `go` event."""
    asked, go = threading.Event(), threading.Event()

    def prepare(op):
        asked.set()
        go.wait(30)
        return {"ok": True}

    return Fake(state, "slow", {"prepare": prepare}), asked, go


def test_ctrl_c_in_kexec_says_the_update_goes_on_and_it_does():
    with booted() as inst:
        slow, asked, go = blocking_participant(inst.state_dir)
        try:
            proc = subprocess.Popen([*LUOFS, "kexec", "--root", inst.root],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            assert asked.wait(30), "the machine never asked the participant"
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=30)
            assert proc.returncode == cli.EXIT_INTERRUPTED
            assert "Traceback" not in err
            assert "interrupted; the machine carries the live update through" in err
        finally:
            go.set()
        deadline = time.monotonic() + 30
        while inst.status()["machine"]["kexecs"] < 1:  # the update ends without the CLI
            assert time.monotonic() < deadline, "the update did not finish"
            time.sleep(0.05)
        slow.close()


def _processes_naming(text: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


def test_ctrl_c_in_boot_leaves_no_machine_mount_or_state(tmp_path):
    root = str(tmp_path / "root")
    os.mkdir(root)
    state = state_dir(os.path.realpath(root))
    proc = subprocess.Popen([*LUOFS, "boot", "--root", root], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not _processes_naming(state):  # the machine has started: interrupt its wait
        assert proc.poll() is None and time.monotonic() < deadline, "boot ended first"
        time.sleep(0.002)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    try:
        if proc.returncode == 0:  # the machine won the race: it served before the signal
            subprocess.run([*LUOFS, "shutdown", "--root", root], capture_output=True)
            return
        assert proc.returncode == cli.EXIT_INTERRUPTED, err
        assert err.strip().endswith("interrupted; the machine it was starting was stopped")
        assert "Traceback" not in err
        assert mount_entry(root) is None
        assert not os.path.exists(state), (err, os.listdir(state))
        assert _processes_naming(state) == []
    finally:
        for pid in _processes_naming(state):  # only the machine this test started
            os.kill(pid, signal.SIGKILL)

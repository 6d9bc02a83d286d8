"""A live update's trace (issue 16): every process records its phases, `luofs trace`
writes them for Perfetto and as a PNG, `luofs kexec` prints the main ones and shows
progress on a terminal only. Real boots, real kexecs."""

import errno
import json
import os
import pty
import re
import select
import shutil
import stat
import subprocess
import sys
import time

import pytest

from luofs import cli, client, trace_view
from luofs.testing import booted

from ..trace_format import check, png_size

DEVICES = "bridge0;dma0@bridge0:rate=5000"
DMA0 = "pci0000:00/0000:00:01.0/0000:01:00.0"
FIRST_LINE = re.compile(r"luofs: live update done: kernel #1 serves \S+; carried 1 session\(s\), "
                        r"1 file\(s\); blackout [\d.]+ ms \(freeze \+ hand-over [\d.]+, next "
                        r"kernel up [\d.]+\)$")


def luofs(*args, env=None):
    return subprocess.run([sys.executable, "-m", "luofs", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})})


def hold_a_session(inst, name="vm", files=1):
    """A session with `files` memfds, kept open so the update carries it."""
    with inst.client() as lu:
        session = lu.create_session(name)
    for token in range(files):
        fd = os.memfd_create("m")
        os.write(fd, b"x")
        session.preserve_fd(fd, token)
        os.close(fd)
    return session


def events_of(inst, update, wanted=None, timeout=5.0):
    """The update's events, once `wanted` (proc kind, name) are all in (late ones too)."""
    deadline = time.monotonic() + timeout
    while True:
        _n, events = trace_view.read(inst.state_dir, update)
        have = {(kind(e["proc"]), e["name"]) for e in events}
        if not wanted or wanted <= have or time.monotonic() > deadline:
            return events
        time.sleep(0.05)


def kind(proc):
    return "kernel" if proc.startswith("kernel #") else proc.split(",")[0]


def test_every_process_records_its_part_and_perfetto_can_open_it(tmp_path):
    with booted(["--devices", DEVICES]) as inst:
        with open(inst.path("sys/devices", DMA0, "liveupdate", "requested"), "w") as f:
            f.write("1")
        session = hold_a_session(inst)
        reply = client.kexec(inst.root)
        session.close()
        with inst.client() as lu:  # the first open decodes what came in (mainline)
            lu.retrieve_session("vm").finish()
        wanted = {("machine", "blackout"), ("kernel", "freeze"), ("kernel", "freeze files"),
                  ("kernel", "freeze memfd-v2 files"), ("kernel", "freeze devices"),
                  ("kernel", "finalize KHO"), ("kernel", "send the hand-over"),
                  ("kernel", "unmount"), ("kernel", "boot from the hand-over"),
                  ("kernel", "re-attach dma0"), ("kernel", "service what latched"),
                  ("kernel", "mount"), ("kernel", "serving"), ("kernel", "first request served"),
                  ("kernel", "first interrupt"), ("machine", "devices: interrupts latch"),
                  ("kernel", "decode incoming sessions (first open)"),
                  ("machine", "start the next userspace")}
        events = events_of(inst, 1, wanted)
        have = {(kind(e["proc"]), e["name"]) for e in events}
        assert wanted <= have, wanted - have
        procs = {e["proc"] for e in events}
        assert {"machine", "kernel #0", "kernel #1"} <= procs
        assert len({e["pid"] for e in events if e["proc"] in ("kernel #0", "kernel #1")}) == 2
        assert next(e for e in events if e["name"] == "freeze")["proc"] == "kernel #0"
        [blackout] = [e for e in events if e["name"] == "blackout"]
        assert blackout["dur"] / 1e6 == pytest.approx(reply["blackout_ms"], abs=0.01)
        attach = next(e for e in events if e["name"] == "re-attach dma0")
        assert attach["proc"] == "kernel #1" and "latched_irqs" in attach["args"]
        mode = os.stat(os.path.join(inst.state_dir, "trace", "update-1.jsonl")).st_mode
        assert stat.S_IMODE(mode) == 0o600

        counts = check(trace_view.chrome(events, 1))
        assert counts["X"] >= 20 and counts["i"] >= 3 and counts["M"] >= 6
        out, png = tmp_path / "u.json", tmp_path / "u.png"
        result = luofs("trace", "--root", inst.root, "-o", str(out), "--png", str(png))
        assert result.returncode == 0, result.stderr
        document = json.loads(out.read_text())
        check(document)
        names = {e["args"]["name"].split(" (pid")[0] for e in document["traceEvents"]
                 if e["name"] == "process_name"}
        assert {"machine", "kernel #0", "kernel #1"} <= names
        width, height = png_size(png)
        assert width >= 800 and height >= 300 and png.stat().st_size > 20_000


def test_luofs_kexec_keeps_its_line_and_adds_the_phases_without_progress_on_a_pipe(capsys):
    with booted() as inst:
        session = hold_a_session(inst)
        capsys.readouterr()  # (the boot's line)
        assert cli.main(["kexec", "--root", inst.root]) == 0
        session.close()
        out, err = capsys.readouterr()
        lines = out.splitlines()
        assert FIRST_LINE.match(lines[0]), lines[0]
        table = "\n".join(lines[1:])
        for phase in ("freeze", "send the hand-over", "unmount", "boot from the hand-over",
                      "mount", "blackout"):
            assert re.search(rf"\b{phase}\s+-?[\d.]+", table), (phase, table)
        assert "\r" not in err and "freezing" not in err


def test_a_long_update_shows_progress_on_a_terminal_and_never_on_a_pipe():
    with booted() as inst:
        session = hold_a_session(inst, files=2500)
        env = {"LUOFS_PROGRESS_MS": "0"}  # every report: this update is not long
        pid, master = pty.fork()
        if pid == 0:
            os.execve(sys.executable, [sys.executable, "-m", "luofs", "kexec", "--root",
                                       inst.root], {**os.environ, **env})
        seen = b""
        while True:
            if select.select([master], [], [], 60)[0]:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
        _, status = os.waitpid(pid, 0)
        os.close(master)
        assert os.waitstatus_to_exitcode(status) == 0, seen
        text = seen.decode()
        assert re.search(r"\r\x1b\[Kluofs kexec: freezing files: [\d,]+/2,500 …", text), text
        assert "\r\x1b[Kluofs: live update done" in text  # the line is cleared first
        session.close()
        session = hold_a_session(inst, "again", files=2500)
        result = luofs("kexec", "--root", inst.root, env=env)
        session.close()
        assert result.returncode == 0 and "\r" not in result.stderr + result.stdout


def test_parked_files_show_their_keepers_work(monkeypatch):
    monkeypatch.setenv("LUOFS_DIRECT_FILES", "3")
    with booted() as inst:
        session = hold_a_session(inst, files=12)
        keepers = inst.status()["kernel"]["keepers"]
        client.kexec(inst.root)
        session.close()
        events = events_of(inst, 1)
        reads = [e for e in events if e["name"] == "read records"]
        assert reads and {e["proc"] for e in reads} == {"file keeper 0"}
        assert {e["pid"] for e in reads} == {keepers[0]["pid"]}
        check(trace_view.chrome(events, 1))


def test_a_refused_update_is_traced_and_the_next_attempt_replaces_it(capsys):
    with booted(["--fault", "memfd.freeze:16"]) as inst:
        session = hold_a_session(inst)
        assert cli.main(["kexec", "--root", inst.root]) == errno.EBUSY
        events = events_of(inst, 1)
        freeze = next(e for e in events if e["name"] == "freeze")
        assert freeze["proc"] == "kernel #0" and "LuoError" in freeze["args"]["error"]
        assert any(e["name"] == "refused" and e["proc"] == "machine" for e in events)
        assert not any(e["name"] == "blackout" for e in events)
        check(trace_view.chrome(events, 1))
        session.close()  # nothing to freeze now: the update goes through
        assert cli.main(["kexec", "--root", inst.root]) == 0
        events = events_of(inst, 1)
        assert not any(e["name"] == "refused" for e in events)
        assert sum(e["name"] == "blackout" for e in events) == 1


def test_participants_are_told_the_update_and_traced():
    from ..test_participants import Fake

    with booted() as inst:
        fake, successor = Fake(inst.state_dir, "a"), Fake(inst.state_dir, "a", successor=True)
        client.kexec(inst.root)
        assert fake.listener.update == successor.listener.update == 1
        names = {e["name"] for e in events_of(inst, 1)}
        assert {"participants prepare", "prepare a", "participants resume", "resume a"} <= names
        fake.close()
        successor.close()


def test_no_trace_without_recording_and_luofs_trace_says_why(capsys, monkeypatch):
    monkeypatch.setenv("LUOFS_TRACE", "0")
    with booted() as inst:
        assert cli.main(["trace", "--root", inst.root]) == 1
        assert "no live update is recorded" in capsys.readouterr().err
        assert cli.main(["kexec", "--root", inst.root]) == 0
        assert len(capsys.readouterr().out.splitlines()) == 1  # the line, no table
        assert not os.path.exists(os.path.join(inst.state_dir, "trace"))


def test_luofs_trace_errors(tmp_path, capsys):
    from luofs.testing import Instance

    os.mkdir(tmp_path / "root")
    inst = Instance(str(tmp_path / "root")).boot()
    try:
        root = inst.root
        assert cli.main(["trace", "--root", root]) == 1
        assert "no live update is recorded" in capsys.readouterr().err
        assert cli.main(["kexec", "--root", root]) == 0
        capsys.readouterr()
        assert cli.main(["trace", "--root", root, "--update", "7"]) == 1
        assert "no trace of update 7 (kept: 1)" in capsys.readouterr().err
        for bad in ("0", "x", "-1"):
            with pytest.raises(SystemExit) as exit_:
                cli.main(["trace", "--root", root, "--update", bad])
            assert exit_.value.code == cli.EXIT_USAGE
        assert cli.main(["trace", "--root", root, "-o", str(tmp_path / "no" / "t.json")]) == 1
        assert "No such file or directory" in capsys.readouterr().err
        assert cli.main(["trace", "--root", root, "--update", "1"]) == 0
        check(json.loads(capsys.readouterr().out))  # stdout by default
        shadow = tmp_path / "shadow" / "matplotlib"
        shadow.mkdir(parents=True)
        (shadow / "__init__.py").write_text("raise ImportError('not here')\n")
        out, png = tmp_path / "t.json", tmp_path / "t.png"
        result = luofs("trace", "--root", root, "-o", str(out), "--png", str(png),
                       env={"PYTHONPATH": str(shadow.parent)})
        assert result.returncode == 1
        assert "the PNG needs matplotlib: pip install 'luofs[png]'" in result.stderr
        assert not out.exists() and not png.exists()  # nothing half done
        assert cli.main(["shutdown", "--root", root, "--keep-logs"]) == 0
        assert cli.main(["trace", "--root", root, "--update", "last", "-o", str(out)]) == 0
        check(json.loads(out.read_text()))  # the logs kept: the trace with them
    finally:
        if os.path.exists(inst.state_dir + "/control"):
            inst.shutdown()
        shutil.rmtree(inst.state_dir, ignore_errors=True)


def test_shutdown_removes_the_traces_with_the_state_dir(tmp_path, capsys):
    from luofs.testing import Instance

    os.mkdir(tmp_path / "root")
    inst = Instance(str(tmp_path / "root")).boot()
    try:
        assert cli.main(["kexec", "--root", inst.root]) == 0
        assert os.listdir(os.path.join(inst.state_dir, "trace")) == ["update-1.jsonl"]
        assert cli.main(["shutdown", "--root", inst.root]) == 0
        assert "kept the state dir" not in capsys.readouterr().err
        assert not os.path.exists(inst.state_dir)
    finally:
        if os.path.exists(os.path.join(inst.state_dir, "control")):
            inst.shutdown()


def test_a_kexec_refused_while_successors_take_over_leaves_the_update_its_trace():
    """A second `luofs kexec` while the first one's successors take over is EBUSY, and
    begins no trace of its own: the first update's file keeps every part, resume included."""
    import threading

    from ..test_participants import Fake

    with booted() as inst:
        resuming, go = threading.Event(), threading.Event()

        def resume(op):
            resuming.set()
            go.wait(30)
            return {"ok": True}

        successor = Fake(inst.state_dir, "a", {"resume": resume}, successor=True)
        first = threading.Thread(target=client.kexec, args=(inst.root,))
        first.start()
        try:
            assert resuming.wait(30)
            assert cli.main(["kexec", "--root", inst.root]) == errno.EBUSY
        finally:
            go.set()
            first.join(60)
        assert trace_view.updates(inst.state_dir) == [1]
        names = {e["name"] for e in events_of(inst, 1)}
        assert {"live update", "participants resume", "resume a"} <= names
        successor.close()

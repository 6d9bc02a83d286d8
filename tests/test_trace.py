"""luofs.trace (recording), luofs.trace_view (reading back) and the format checker the
system tests use, without a mount."""

import json
import logging
import os
import stat
import threading

import pytest
import trio

from luofs import trace, trace_view

from .trace_format import Invalid, check


@pytest.fixture
def recorder(tmp_path):
    old = trace.recorder()
    rec = trace.setup(str(tmp_path), "kernel #3")
    yield rec
    trace._recorder = old


def lines(tmp_path, update):
    with open(tmp_path / trace.file_name(update)) as f:
        return [json.loads(line) for line in f]


def test_nothing_is_recorded_outside_a_window(recorder, tmp_path):
    with trace.span("freeze", "kernel") as s:
        s.set(files=1)
    trace.instant("serving")
    trace.complete("x", "kernel", 1, 2)
    recorder.flush()
    assert os.listdir(tmp_path) == []


def test_a_window_is_written_at_flush_in_one_file_of_its_own(recorder, tmp_path):
    recorder.begin(4)
    with trace.span("freeze", "kernel", sessions=2) as s:
        trace.instant("inside", "kernel")
        s.set(files=3)
    with pytest.raises(ValueError), trace.span("refused", "kernel"):
        raise ValueError("no")
    assert os.listdir(tmp_path) == []  # nothing written while the update runs
    recorder.flush()
    events = lines(tmp_path, 4)
    assert [e["name"] for e in events] == ["inside", "freeze", "refused"]
    freeze = events[1]
    assert freeze["args"] == {"sessions": 2, "files": 3} and freeze["dur"] >= 0
    assert freeze["proc"] == "kernel #3" and freeze["pid"] == os.getpid()
    assert freeze["thread"] == threading.current_thread().name
    assert events[2]["args"]["error"] == "ValueError: no"
    assert stat.S_IMODE(os.stat(tmp_path / "update-4.jsonl").st_mode) == 0o600
    trace.instant("after", "kernel")  # the window is closed
    assert len(lines(tmp_path, 4)) == 3


def test_late_events_follow_their_update_and_a_new_window_flushes_the_old(recorder, tmp_path):
    late = trace.Late(4)
    recorder.begin(4)
    late.instant("first interrupt", "device")  # the window is open: buffered
    recorder.begin(5)  # the next update: 4's lines go out first
    assert [e["name"] for e in lines(tmp_path, 4)] == ["first interrupt"]
    with late.span("freeze devices", "device"):  # a window is open: it is that one's
        pass
    recorder.flush()
    late.instant("first request served", "kernel")  # none open: straight into 4's file
    assert [e["name"] for e in lines(tmp_path, 4)] == ["first interrupt", "first request served"]
    assert [e["name"] for e in lines(tmp_path, 5)] == ["freeze devices"]
    trace.Late(9).instant("never written")  # an update this process never wrote
    assert not os.path.exists(tmp_path / "update-9.jsonl")


def test_events_beyond_the_limit_are_counted(recorder, tmp_path, monkeypatch):
    monkeypatch.setattr(trace, "MAX_EVENTS", 3)
    recorder.begin(1)
    for i in range(5):
        trace.instant(f"e{i}")
    recorder.flush()
    assert [e["name"] for e in lines(tmp_path, 1)] == ["e0", "e1", "e2", "2 events not kept"]


def test_a_file_that_cannot_be_written_is_logged_once_and_skipped(tmp_path, caplog):
    rec = trace.Recorder(str(tmp_path / "missing"), "machine")
    with caplog.at_level(logging.WARNING, "luofs.trace"):
        for update in (1, 2):
            rec.begin(update)
            rec.add("i", "x", "", trace.clock())
            rec.flush()
    assert [r.message for r in caplog.records] == [
        f"cannot write the trace of update 1: [Errno 2] No such file or directory: "
        f"'{tmp_path / 'missing' / 'update-1.jsonl'}'"]


def test_start_file_truncates_and_keeps_the_last_few(tmp_path, monkeypatch):
    monkeypatch.setattr(trace, "KEEP", 3)
    directory = str(tmp_path / "trace")
    for n in range(1, 6):
        trace.start_file(directory, n)
        trace.append(os.path.join(directory, trace.file_name(n)), "{}\n")
        trace.append(os.path.join(directory, "notes"), "")  # not ours to remove
    trace.start_file(directory, 5)
    assert sorted(os.listdir(directory)) == ["notes", "update-3.jsonl", "update-4.jsonl",
                                             "update-5.jsonl"]
    assert os.path.getsize(os.path.join(directory, "update-5.jsonl")) == 0
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    assert trace_view.updates(str(tmp_path)) == [3, 4, 5]


def test_throttle_waits_its_interval_first_then_lets_each_new_phase_through(monkeypatch):
    now = [0]
    monkeypatch.setattr(trace, "clock", lambda: now[0])
    throttle = trace.Throttle(100)
    assert not throttle.due("freezing")  # an update shorter than 100 ms shows nothing
    now[0] = 100_000_000
    assert throttle.due("freezing") and not throttle.due("freezing")
    assert throttle.due("handing over")  # a new phase at once
    now[0] = 200_000_000
    assert throttle.due("handing over")
    every = trace.Throttle(0)
    assert every.due("a") and every.due("a")


def test_progress_goes_to_the_hook_while_one_is_set():
    seen = []
    trace.progress("freezing files", 1, 2)
    trace.watch(lambda *a: seen.append(a))
    try:
        trace.progress("freezing files", 1, 2)
    finally:
        trace.watch(None)
    trace.progress("writing")
    assert seen == [("freezing files", 1, 2)]


def event(name, ts, dur=None, pid=10, tid=10, proc="machine", **extra):
    e = {"ph": "X" if dur is not None else "i", "name": name, "cat": "machine", "ts": ts,
         "pid": pid, "tid": tid, "proc": proc, **extra}
    if dur is not None:
        e["dur"] = dur
    return e


def test_read_skips_torn_and_foreign_lines_and_says_what_is_missing(tmp_path):
    state = str(tmp_path)
    with pytest.raises(trace_view.TraceMissing, match="no live update is recorded"):
        trace_view.read(state)
    trace.start_file(os.path.join(state, "trace"), 2)
    path = os.path.join(state, "trace", "update-2.jsonl")
    with pytest.raises(trace_view.TraceMissing, match="the trace of update 2 is empty"):
        trace_view.read(state)
    good = event("blackout", 1_000, 5_000)
    with open(path, "w") as f:
        f.write(json.dumps(good) + "\n" + json.dumps({**good, "dur": -1}) + "\n"
                + json.dumps({**good, "ts": "1"}) + "\n[1]\n" + '{"ph":"X","na')
    assert trace_view.read(state) == (2, [good])
    with pytest.raises(trace_view.TraceMissing, match=r"no trace of update 1 \(kept: 2\)"):
        trace_view.read(state, 1)


def test_chrome_output_orders_processes_and_is_relative_to_the_first_event():
    events = [event("unmount", 3_000, 1_000, pid=2, tid=2, proc="kernel #0", thread="Main"),
              event("boot", 5_000, 2_500, pid=3, tid=3, proc="kernel #1"),
              event("blackout", 2_000, 7_000),
              event("read records", 2_500, 500, pid=9, tid=9, proc="file keeper 0"),
              event("first interrupt", 8_000, pid=3, tid=4, proc="kernel #1",
                    thread="device-irq")]
    document = trace_view.chrome(events, 1)
    assert check(document) == {"M": 10, "X": 4, "i": 1}
    named = [e["args"]["name"] for e in document["traceEvents"] if e["name"] == "process_name"]
    assert named == ["machine (pid 10)", "kernel #0 (pid 2)", "kernel #1 (pid 3)",
                     "file keeper 0 (pid 9)"]
    blackout = next(e for e in document["traceEvents"] if e["name"] == "blackout")
    assert (blackout["ts"], blackout["dur"]) == (0.0, 7.0)  # µs from the first event


def test_the_table_shows_the_main_phases_and_the_freezes_parts_that_take_time():
    ms = 1_000_000
    kernel0 = {"pid": 2, "tid": 2, "proc": "kernel #0"}
    rows = trace_view.breakdown([
        event("live update", -5 * ms, 30 * ms), event("blackout", 0, 12 * ms),
        event("freeze", 1 * ms, 3 * ms, **kernel0),
        event("finalize KHO", 2 * ms, 1 * ms, **kernel0),
        event("prepare files", 3 * ms, ms // 100, **kernel0),  # too short to show
        event("store records", 2 * ms + ms // 10, ms // 2, **kernel0),  # a part of a part
        event("unmount", 5 * ms, 1 * ms, **kernel0),
        event("serving", 11 * ms, pid=3, tid=3, proc="kernel #1")])
    assert rows == [("machine", "blackout", 0.0, 12.0, 0), ("kernel #0", "freeze", 1.0, 3.0, 0),
                    ("kernel #0", "finalize KHO", 2.0, 1.0, 1),
                    ("kernel #0", "unmount", 5.0, 1.0, 0), ("kernel #1", "serving", 11.0, None, 0)]
    text = trace_view.table(rows)
    assert "kernel #0   freeze" in text and "    finalize KHO" in text


@pytest.mark.parametrize("broken, why", [
    ({"traceEvents": {}}, "traceEvents list"),
    ({"traceEvents": [{"ph": "Q", "name": "a", "pid": 1, "tid": 1, "ts": 0}]}, "unknown ph"),
    ({"traceEvents": [{"ph": "X", "name": "a", "pid": 1, "tid": 1, "ts": 0}]}, "dur must be"),
    ({"traceEvents": [{"ph": "X", "name": "a", "pid": 1, "tid": 1, "ts": 0, "dur": -1}]},
     "dur must be"),
    ({"traceEvents": [{"ph": "i", "name": "a", "pid": "1", "tid": 1, "ts": 0}]}, "pid must"),
    ({"traceEvents": [{"ph": "i", "name": "a", "pid": 1, "tid": 1, "ts": "0"}]}, "ts must"),
    ({"traceEvents": [{"ph": "M", "name": "process_name", "pid": 1, "tid": 0, "args": {}}]},
     "metadata needs"),
    ({"traceEvents": [{"ph": "X", "name": "a", "pid": 1, "tid": 1, "ts": 0, "dur": 5},
                      {"ph": "X", "name": "b", "pid": 1, "tid": 1, "ts": 3, "dur": 5}]},
     "without nesting"),
    ({"traceEvents": [{"ph": "B", "name": "a", "pid": 1, "tid": 1, "ts": 0}]}, "never ends"),
    ({"traceEvents": [{"ph": "E", "name": "a", "pid": 1, "tid": 1, "ts": 0}]}, "without a B"),
])
def test_the_checker_catches_what_perfetto_would_not_open(broken, why):
    with pytest.raises(Invalid, match=why):
        check(broken)


def test_the_first_request_is_reported_once_and_then_costs_nothing():
    from luofs.fs.nodes import InodeTable, TextFile
    from luofs.fs.ops import KernelFS

    fs = KernelFS(InodeTable(), {b"x": TextFile(lambda: b"1\n")})
    seen = []
    fs.on_first_request(seen.append)
    assert "getattr" in fs.__dict__

    async def two_requests():
        await fs.getattr(1)
        await fs.statfs(None)

    trio.run(two_requests)
    assert seen == ["getattr"]
    assert not {"getattr", "statfs", "lookup"} & set(fs.__dict__)


def test_an_old_kernels_events_are_written_by_the_machine_with_its_own(tmp_path, caplog):
    kernel = trace.Recorder(None, "kernel #0")  # it writes nothing itself
    kernel.directory = "(unused)"
    kernel.begin(1)
    kernel.add("X", "freeze", "kernel", 100, 50, {"files": 2}, pid=77, tid=78)
    exported = kernel.export()
    assert kernel.update == 0 and kernel.export() == ""  # the window is closed
    machine = trace.Recorder(str(tmp_path), "machine")
    machine.adopt(exported)  # no window open: dropped
    machine.begin(1)
    machine.add("X", "blackout", "machine", 90, 100)
    machine.adopt(exported)
    with caplog.at_level(logging.WARNING, "luofs.trace"):
        machine.adopt('["kernel #0", 1, {}, [[1, 2]]]')
        machine.flush()
    got = [(e["proc"], e["name"], e["pid"], e.get("args")) for e in lines(tmp_path, 1)]
    assert got == [("machine", "blackout", os.getpid(), None),
                   ("kernel #0", "freeze", 77, {"files": 2})]
    assert "a trace export that does not read" in caplog.text

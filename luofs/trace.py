"""Recording what each process does in a live update, on one clock, cheaply.

DOC: Every process that takes part in a live update records its phases as events:
spans (a start and a duration) and instants, stamped with CLOCK_MONOTONIC
(`time.monotonic_ns`), which is one clock for all processes of a host, so the
machine's, the kernels', the keepers' and the VMMs' events line up. While an update
is in flight recording is a tuple appended to a list; the lines are written after,
each process appending its own in one write(2) to the update's file in the
instance's state dir (luofs/trace_view.py reads them back):

    STATE/trace/update-N.jsonl   (0600; N is the number of the kernel the update starts)
    {"ph":"X","name":"freeze","cat":"kernel","ts":NS,"dur":NS,"pid":P,"tid":T,
     "proc":"kernel #0","thread":"MainThread","args":{...}}      one object per line;
                                                                 ph "i" has no dur

A process records only inside a window, `begin(N)` … `flush()`: outside one, span()
and instant() cost one check, and nothing accumulates while a kernel just serves.
The old kernel, which the machine kills once it has unmounted, does not write: it
hands its events to the machine (`export()`, one encode, in the Unmounted message),
which writes them with its own after the update (`adopt()`).
An event recorded later for an update whose lines are written already (the next
kernel's first request, its first interrupt) is appended to the file at once.
Progress of a long update (files frozen / total) goes to a hook the kernel sets.

The machine starts each update's file (`start_file`) and turns recording off for a
whole instance when LUOFS_TRACE=0. Unhappy paths: a file that cannot be written is
logged once per process and skipped (the update goes on); more than MAX_EVENTS in one
window are counted, not kept.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time

log = logging.getLogger("luofs.trace")

clock = time.monotonic_ns
DIRECTORY = "trace"  # under the instance's state dir


def directory(state_dir: str) -> str:
    """Where an instance's update traces are: STATE/trace."""
    return os.path.join(state_dir, DIRECTORY)
KEEP = 32  # update files kept per instance; older ones are removed
MAX_EVENTS = 20_000


_ENCODE = json.JSONEncoder(separators=(",", ":"), default=str).encode  # built once: fast


def file_name(update: int) -> str:
    return f"update-{update}.jsonl"


def enabled_by_env() -> bool:
    return os.environ.get("LUOFS_TRACE", "1") != "0"


class Recorder:
    """One process's events. Thread-safe: interrupt and keeper threads record too."""

    def __init__(self, directory: str | None, process: str):
        self.directory = directory  # None: record nothing
        self.process = process  # the name its lines carry ("machine", "kernel #3")
        self.pid = os.getpid()
        self.update = 0  # the open window's update; 0 when none is open
        self._events: list[tuple] = []
        self._written: list[int] = []  # updates whose lines are out: later events follow
        self._adopted: list[str] = []  # other processes' exports, written with ours
        self._lock = threading.Lock()
        self._failed = False
        self.dropped = 0

    def begin(self, update: int) -> None:
        """Open `update`'s window (writing the one still open first)."""
        if self.update:
            self.flush()
        with self._lock:
            self.update = update if self.directory else 0
            self._events, self.dropped = [], 0

    def add(self, ph: str, name: str, cat: str, ts: int, dur: int = 0, args=None,
            update: int = 0, pid: int = 0, tid: int = 0, proc: str | None = None) -> None:
        update = update or self.update
        if not update:
            return
        event = (ph, name, cat, ts, dur, pid or self.pid, tid or threading.get_native_id(),
                 proc, args)
        with self._lock:
            if update == self.update:
                if len(self._events) < MAX_EVENTS:
                    self._events.append(event)
                else:
                    self.dropped += 1
                return
            late = update in self._written
        if late:
            self._write(update, [event])

    def _close(self) -> tuple[int, list[tuple]]:
        """Close the open window: (its update, its events); (0, []) if none was open."""
        with self._lock:
            update, events, self.update, self._events = self.update, self._events, 0, []
            if not update:
                return 0, []
            self._written = (self._written + [update])[-2:]
        if self.dropped:
            events.append(("i", f"{self.dropped} events not kept", "trace", clock(), 0,
                           self.pid, threading.get_native_id(), None, None))
        return update, events

    def flush(self) -> None:
        """Write the open window's events and close it."""
        update, events = self._close()
        if update:
            self._write(update, events)

    def export(self) -> str:
        """Close the open window and give its events to whoever writes them (the machine,
        for an old kernel: one encode is a fraction of formatting each line, and this is
        in the blackout). `adopt()` takes it."""
        update, events = self._close()
        if not update:
            return ""
        return _ENCODE([self.process, self.pid, _thread_names(), events])

    def adopt(self, exported: str) -> None:
        """Another process's `export()`, into the open window; written with ours."""
        if exported and self.update:
            with self._lock:
                self._adopted.append(exported)

    def _write(self, update: int, events: list[tuple]) -> None:
        lines = _lines(events, self.process, self.pid, _thread_names())
        with self._lock:
            adopted, self._adopted = self._adopted, []
        for exported in adopted:
            try:
                lines += _lines(*_unpack(exported))
            except (ValueError, TypeError) as e:
                log.warning("a trace export that does not read: %s", e)
        try:
            append(os.path.join(self.directory, file_name(update)), "\n".join(lines) + "\n")
        except OSError as e:
            if not self._failed:
                log.warning("cannot write the trace of update %d: %s", update, e)
            self._failed = True


def _thread_names() -> dict[int, str]:
    return {t.native_id: t.name for t in threading.enumerate()}


def _unpack(exported: str) -> tuple[list[tuple], str, int, dict[int, str]]:
    process, pid, threads, events = json.loads(exported)
    if not (isinstance(process, str) and type(pid) is int and isinstance(threads, dict)
            and all(isinstance(e, list) and len(e) == 9 for e in events)):
        raise ValueError("not an export of luofs.trace")
    return events, process, pid, {int(tid): name for tid, name in threads.items()}


def _lines(events, process: str, own_pid: int, threads: dict[int, str]) -> list[str]:
    lines = []
    for ph, name, cat, ts, dur, pid, tid, proc, args in events:
        line = {"ph": ph, "name": name, "cat": cat, "ts": ts}
        if ph == "X":
            line["dur"] = dur
        line.update(pid=pid, tid=tid, proc=proc or process)
        if pid == own_pid and tid in threads:
            line["thread"] = threads[tid]
        if args:
            line["args"] = args
        lines.append(_ENCODE(line))
    return lines


def append(path: str, text: str) -> None:
    """One write with O_APPEND: the lines of processes writing at once never interleave."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                 0o600)
    try:
        data = text.encode()
        while data:
            data = data[os.write(fd, data):]
    finally:
        os.close(fd)


def start_file(directory: str, update: int) -> None:
    """A fresh file for `update` (a refused attempt's lines are replaced by the next
    attempt's); the oldest files beyond KEEP go."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = os.path.join(directory, file_name(update))
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW,
                     0o600))
    numbers = sorted(int(n[7:-6]) for n in os.listdir(directory)
                     if n.startswith("update-") and n.endswith(".jsonl") and n[7:-6].isdigit())
    for old in numbers[:-KEEP]:
        try:
            os.unlink(os.path.join(directory, file_name(old)))
        except FileNotFoundError:
            pass


# ---- the process's recorder, and the calls code makes ----------------------------------

_recorder: Recorder | None = None
_progress = None  # (what, done, total) -> None, while someone watches an update


def setup(directory: str | None, process: str) -> Recorder:
    global _recorder
    _recorder = Recorder(directory, process)
    return _recorder


def recorder() -> Recorder | None:
    return _recorder


class _Span:
    """`with span(...) as s:` records [enter, exit); `s.set(k=v)` adds what is known
    only at the end; an exception leaving it is named in its args."""

    __slots__ = ("rec", "name", "cat", "args", "update", "start")

    def __init__(self, rec: Recorder, name: str, cat: str, args: dict, update: int):
        self.rec, self.name, self.cat, self.args, self.update = rec, name, cat, args, update

    def __enter__(self):
        self.start = clock()
        return self

    def __exit__(self, kind, value, _tb):
        end = clock()
        if kind is not None:
            self.args["error"] = f"{kind.__name__}: {value}"[:200]
        self.rec.add("X", self.name, self.cat, self.start, end - self.start, self.args,
                     self.update)
        return False

    def set(self, **args) -> None:
        self.args.update(args)


class _NoSpan:
    __slots__ = ()

    def __enter__(self):
        return self

    def __exit__(self, *_exc):
        return False

    def set(self, **_args) -> None:
        pass


NO_SPAN = _NoSpan()


def span(name: str, cat: str = "", update: int = 0, **args):
    rec = _recorder
    if rec is None or not (update or rec.update):
        return NO_SPAN
    return _Span(rec, name, cat, args, update)


def instant(name: str, cat: str = "", update: int = 0, **args) -> None:
    rec = _recorder
    if rec is not None:
        rec.add("i", name, cat, clock(), 0, args, update)


def complete(name: str, cat: str, start: int, end: int, update: int = 0, pid: int = 0,
             tid: int = 0, proc: str | None = None, **args) -> None:
    """A span whose ends were measured elsewhere (another process, a message's stamps)."""
    rec = _recorder
    if rec is not None:
        rec.add("X", name, cat, start, max(0, end - start), args, update, pid, tid, proc)


class Late:
    """span()/instant() into the window open when they are called, or, when none is,
    into `update`'s lines (appended at once): for what happens after a kernel's lines
    are written — its first request, its first interrupt — and for drivers whose
    callbacks run in later updates too."""

    def __init__(self, update: int):
        self.update = update

    def _target(self) -> int:
        rec = _recorder
        return 0 if rec is None else rec.update or self.update

    def span(self, name: str, cat: str = "", **args):
        update = self._target()
        return span(name, cat, update, **args) if update else NO_SPAN

    def instant(self, name: str, cat: str = "", **args) -> None:
        update = self._target()
        if update:
            instant(name, cat, update, **args)


# ---- progress of a long update ---------------------------------------------------------

def watch(hook) -> None:
    """Progress goes to `hook(what, done, total)` (None: nobody watches)."""
    global _progress
    _progress = hook


def progress(what: str, done: int = 0, total: int = 0) -> None:
    hook = _progress
    if hook is not None:
        hook(what, done, total)


class Throttle:
    """Not before `every_ms` have passed (short updates show no progress at all); then
    at each new `what`, and otherwise at most once per `every_ms`."""

    def __init__(self, every_ms: int):
        self.every = every_ms * 1_000_000
        self.start = self.last = clock()
        self.what = None

    def due(self, what: str | None = None) -> bool:
        now = clock()
        if now - self.start < self.every:
            return False
        if what == self.what and now - self.last < self.every:
            return False
        self.last, self.what = now, what
        return True

"""Reading a live update's trace back (the lines luofs/trace.py writes): as Chrome's
Trace Event Format for ui.perfetto.dev and chrome://tracing, and as the short table of
main phases `luofs kexec` prints. luofs/trace_png.py draws it.

DOC: `read(state_dir, update)` gives the update's events (lines a killed process left
half-written are skipped); `chrome(events)` the JSON object: "traceEvents" with one
"M" process_name (and sort index) per process, thread_name per named thread, "X"
spans and "i" instants, ts and dur in microseconds from the update's first event;
`breakdown(events)` the main phases, in milliseconds from the start of the blackout.
Unhappy paths: no trace directory, no such update, or an empty file: TraceMissing,
saying why.
"""

from __future__ import annotations

import json
import os

from .trace import directory, file_name


class TraceMissing(Exception):
    pass


def updates(state_dir: str) -> list[int]:
    """The updates whose traces are kept, oldest first."""
    try:
        names = os.listdir(directory(state_dir))
    except FileNotFoundError:
        return []
    return sorted(int(n[7:-6]) for n in names
                  if n.startswith("update-") and n.endswith(".jsonl") and n[7:-6].isdigit())


def read(state_dir: str, update: int | None = None) -> tuple[int, list[dict]]:
    """(update, its events); the last update when `update` is None."""
    kept = updates(state_dir)
    if update is None:
        if not kept:
            raise TraceMissing(f"no live update is recorded in {directory(state_dir)}")
        update = kept[-1]
    path = os.path.join(directory(state_dir), file_name(update))
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        have = f" (kept: {', '.join(map(str, kept))})" if kept else ""
        raise TraceMissing(f"no trace of update {update}{have}") from None
    events = []
    for line in data.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and _well_formed(event):
            events.append(event)
    if not events:
        raise TraceMissing(f"the trace of update {update} is empty ({path})")
    return update, events


def _well_formed(e: dict) -> bool:
    return (e.get("ph") in ("X", "i") and isinstance(e.get("name"), str)
            and type(e.get("ts")) is int and type(e.get("pid")) is int
            and (e["ph"] != "X" or (type(e.get("dur")) is int and e["dur"] >= 0)))


def _order(proc: str) -> tuple:
    """Processes top to bottom: the machine, the kernels by number, keepers, the rest."""
    if proc == "machine":
        return (0, 0, proc)
    if proc.startswith("kernel #") and proc[8:].isdigit():
        return (1, int(proc[8:]), proc)
    if proc.startswith("file keeper"):
        return (2, 0, proc)
    return (3, 0, proc)


def processes(events: list[dict]) -> dict[int, str]:
    """pid -> name, in display order."""
    names: dict[int, str] = {}
    for e in events:
        names.setdefault(e["pid"], e.get("proc") or f"pid {e['pid']}")
    return dict(sorted(names.items(), key=lambda item: _order(item[1])))


def chrome(events: list[dict], update: int | None = None) -> dict:
    t0 = min(e["ts"] for e in events)
    out: list[dict] = []
    for index, (pid, name) in enumerate(processes(events).items()):
        out.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0,
                    "args": {"name": f"{name} (pid {pid})"}})
        out.append({"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0,
                    "args": {"sort_index": index}})
    threads = {(e["pid"], e.get("tid", e["pid"])): e["thread"] for e in events if "thread" in e}
    for (pid, tid), name in sorted(threads.items()):
        out.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid,
                    "args": {"name": name}})
    for e in sorted(events, key=lambda e: (e["ts"], -e.get("dur", 0))):
        event = {"ph": e["ph"], "name": e["name"], "cat": e.get("cat") or "luofs",
                 "ts": (e["ts"] - t0) / 1000, "pid": e["pid"], "tid": e.get("tid", e["pid"]),
                 "args": e.get("args") or {}}
        if e["ph"] == "X":
            event["dur"] = e["dur"] / 1000
        else:
            event["s"] = "t"
        out.append(event)
    return {"traceEvents": out, "displayTimeUnit": "ms",
            "otherData": {"producer": "luofs", "update": update, "clock": "CLOCK_MONOTONIC",
                          "t0_ns": t0}}


# ---- the table `luofs kexec` prints --------------------------------------------------------

# (the process it is recorded by, name): the main phases, in the order of an update.
MAIN = {("machine", "participants prepare"), ("kernel", "let pending releases land"),
        ("kernel", "freeze"), ("kernel", "send the hand-over"), ("kernel", "shut devices down"),
        ("kernel", "unmount"), ("machine", "old kernel is killed"),
        ("kernel", "boot from the hand-over"), ("kernel", "wait for the mount point"),
        ("kernel", "mount"), ("kernel", "serving"), ("machine", "blackout"),
        ("machine", "participants resume"), ("machine", "start the next userspace"),
        ("kernel", "first request served")}
DETAILED = {"freeze", "boot from the hand-over"}  # their direct parts are shown too
SMALL_NS = 50_000  # parts shorter than this are left out of the table


def _kind(proc: str) -> str:
    return "kernel" if proc.startswith("kernel #") else proc


def _children(parent: dict, events: list[dict]) -> list[dict]:
    """The spans directly inside `parent` (same thread)."""
    end = parent["ts"] + parent["dur"]
    inside = [e for e in events if e is not parent and e["ph"] == "X"
              and (e["pid"], e.get("tid")) == (parent["pid"], parent.get("tid"))
              and parent["ts"] <= e["ts"] and e["ts"] + e["dur"] <= end]
    return [e for e in inside if not any(o is not e and o["ts"] <= e["ts"]
                                         and e["ts"] + e["dur"] <= o["ts"] + o["dur"]
                                         for o in inside)]


def breakdown(events: list[dict]) -> list[tuple[str, str, float, float | None, int]]:
    """(process, phase, at ms from the blackout's start, took ms or None, depth)."""
    blackout = next((e for e in events if e["name"] == "blackout" and e.get("proc") == "machine"),
                    None)
    zero = blackout["ts"] if blackout else min(e["ts"] for e in events)
    rows = []
    for e in sorted(events, key=lambda e: e["ts"]):
        proc = e.get("proc", "")
        if (_kind(proc), e["name"]) not in MAIN:
            continue
        if e["name"].startswith("participants ") and not _children(e, events):
            continue  # nobody registered
        took = e["dur"] / 1e6 if e["ph"] == "X" else None
        rows.append((proc, e["name"], (e["ts"] - zero) / 1e6, took, 0))
        if e["name"] in DETAILED:  # its parts that take time
            rows += [(proc, c["name"], (c["ts"] - zero) / 1e6, c["dur"] / 1e6, 1)
                     for c in sorted(_children(e, events), key=lambda c: c["ts"])
                     if c["dur"] >= SMALL_NS]
    return rows


def table(rows) -> str:
    lines = [f"  {'process':12}{'phase':44}{'at ms':>8}{'took ms':>9}"]
    for proc, name, at, took, depth in rows:
        label = ("  " * depth + name)[:43]
        lines.append(f"  {proc if not depth else '':12}{label:44}{at:8.1f}"
                     + (f"{took:9.1f}" if took is not None else ""))
    return "\n".join(lines)

"""A checker for Chrome's Trace Event Format (what ui.perfetto.dev and chrome://tracing
open), written from the format's documentation, for the tests of `luofs trace`: the
keys each phase type needs, numeric timestamps, durations ≥ 0, and sane nesting (on
one thread, complete events nest or are disjoint; B/E pair up)."""

from __future__ import annotations

import json
import math
import struct

PHASES = {"X", "B", "E", "i", "I", "M", "C", "b", "e", "n", "s", "t", "f", "P", "O", "N", "D"}
METADATA = {"process_name": str, "process_sort_index": int, "process_labels": str,
            "thread_name": str, "thread_sort_index": int}
EPSILON = 1e-3  # µs: ts and dur are ns/1000, exact to the thousandth


class Invalid(AssertionError):
    pass


def _number(value) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def check(document) -> dict:
    """Raise Invalid naming the first problem; else counts per phase type."""
    text = json.dumps(document, allow_nan=False)  # JSON proper: no NaN, no Infinity
    document = json.loads(text)
    if not isinstance(document, dict) or not isinstance(document.get("traceEvents"), list):
        raise Invalid("the object format needs a traceEvents list")
    if document.get("displayTimeUnit", "ms") not in ("ms", "ns"):
        raise Invalid(f"displayTimeUnit {document['displayTimeUnit']!r}")
    counts: dict[str, int] = {}
    complete: dict[tuple, list] = {}
    open_b: dict[tuple, list] = {}
    for i, e in enumerate(document["traceEvents"]):
        where = f"event {i} ({e!r:.120})"
        if not isinstance(e, dict):
            raise Invalid(f"{where}: not an object")
        ph = e.get("ph")
        if ph not in PHASES:
            raise Invalid(f"{where}: unknown ph {ph!r}")
        counts[ph] = counts.get(ph, 0) + 1
        for key, kind in (("name", str), ("pid", int), ("tid", int)):
            if type(e.get(key)) is not kind:
                raise Invalid(f"{where}: {key} must be a {kind.__name__}")
        if "args" in e and not isinstance(e["args"], dict):
            raise Invalid(f"{where}: args must be an object")
        if ph == "M":
            kind = METADATA.get(e["name"])
            if kind is None:
                raise Invalid(f"{where}: unknown metadata {e['name']!r}")
            key = "sort_index" if kind is int else ("labels" if e["name"] == "process_labels"
                                                    else "name")
            if type(e.get("args", {}).get(key)) is not kind:
                raise Invalid(f"{where}: metadata needs args.{key} ({kind.__name__})")
            continue
        if not _number(e.get("ts")):
            raise Invalid(f"{where}: ts must be a number")
        thread = (e["pid"], e["tid"])
        if ph == "X":
            if not _number(e.get("dur")) or e["dur"] < 0:
                raise Invalid(f"{where}: dur must be a number ≥ 0")
            complete.setdefault(thread, []).append((e["ts"], e["ts"] + e["dur"], e["name"]))
        elif ph == "B":
            open_b.setdefault(thread, []).append((e["ts"], e["name"]))
        elif ph == "E":
            if not open_b.get(thread):
                raise Invalid(f"{where}: E without a B on its thread")
            start, _name = open_b[thread].pop()
            if e["ts"] + EPSILON < start:
                raise Invalid(f"{where}: E before its B")
        elif ph in ("i", "I") and e.get("s", "t") not in ("t", "p", "g"):
            raise Invalid(f"{where}: instant scope {e.get('s')!r}")
    for thread, stack in open_b.items():
        if stack:
            raise Invalid(f"thread {thread}: B {stack[-1][1]!r} never ends")
    for thread, spans in complete.items():
        _nested(thread, spans)
    return counts


def _nested(thread, spans) -> None:
    stack: list[tuple] = []
    for start, end, name in sorted(spans, key=lambda s: (s[0], -s[1])):
        while stack and stack[-1][1] <= start + EPSILON:
            stack.pop()
        if stack and end > stack[-1][1] + EPSILON:
            raise Invalid(f"thread {thread}: {name!r} [{start}, {end}] overlaps "
                          f"{stack[-1][2]!r} [{stack[-1][0]}, {stack[-1][1]}] without nesting")
        stack.append((start, end, name))


def png_size(path) -> tuple[int, int]:
    """(width, height) of a PNG, checking its signature and IHDR chunk."""
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise Invalid(f"{path} is not a PNG")
    return struct.unpack(">II", head[16:24])

"""The seccomp supervisor (issue 14): a LUO ioctl's round trip through it beside the
shim's and the one-request FUSE floor, in interleaved blocks of one process (target ≤
1.5× the shim); and what its filter costs a program's unrelated system calls (a pipe's
FIONREAD, an openat + close of another file), runs with and without it alternating
(target ≤ 1.05×), beside a filter that allows everything (the floor of any filter)."""

from __future__ import annotations

import os
import statistics
import subprocess

from .common import Row, summarize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NATIVE = os.path.join(ROOT, "native", "build")
BENCH = os.path.join(NATIVE, "notify_bench")
SUPERVISOR = os.path.join(NATIVE, "luofs-supervise")
SHIM = os.path.join(NATIVE, "libluofs-shim.so")
TRIES = 7


def _run(argv: list[str]) -> list[float]:
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=300).stdout
    # "floor 27.2 us, shim 30.1 us, supervisor 64.7 us" / "fionread 135.5 ns, openat 662.9 ns"
    return [float(word) for word in out.replace(",", " ").split()[1::3]]


def _ratio(name: str, ratios: list[float], target: str = "") -> Row:
    return Row(name, "×", round(statistics.median(ratios), 3), round(min(ratios), 3),
               round(max(ratios), 3), len(ratios), target=target)


def run(instance) -> list[Row]:
    if not (os.path.exists(BENCH) and os.path.exists(SUPERVISOR)):
        return []
    # The shim serves its own ioctl() calls (LUOFS_SUPERVISED unset) and the raw
    # syscalls of the same process go to the supervisor.
    roundtrip = [SUPERVISOR, "--root", instance.root, "--shim", SHIM, "--",
                 "env", "-u", "LUOFS_SUPERVISED", BENCH, "roundtrip", instance.root]
    floor, shim, supervised = [], [], []
    plain_ops, filtered_ops, allow_all_ops = [], [], []
    for _ in range(TRIES):
        f, s, v = _run(roundtrip)
        floor.append(f), shim.append(s), supervised.append(v)
        plain_ops.append(_run([BENCH, "unrelated"]))
        filtered_ops.append(_run([SUPERVISOR, "--root", instance.root, "--", BENCH, "unrelated"]))
        allow_all_ops.append(_run([BENCH, "allow-all"]))
    floor_median = statistics.median(floor)
    return [
        summarize("GET_NAME through the supervisor (raw syscall)", supervised, floor_median),
        summarize("GET_NAME through the shim (same process)", shim, floor_median),
        summarize("one-request floor (same process)", floor),
        _ratio("supervisor / shim round trip (same process)",
               [v / s for v, s in zip(supervised, shim)], "≤ 1.5"),
        _ratio("pipe FIONREAD under the filter / without",
               [f[0] / p[0] for f, p in zip(filtered_ops, plain_ops)], "≤ 1.05"),
        _ratio("openat+close under the filter / without",
               [f[1] / p[1] for f, p in zip(filtered_ops, plain_ops)], "≤ 1.05"),
        # What seccomp itself costs: the kernel's slow syscall path for any filtered task.
        _ratio("pipe FIONREAD under an allow-all filter / without",
               [a[0] / p[0] for a, p in zip(allow_all_ops, plain_ops)]),
        _ratio("openat+close under an allow-all filter / without",
               [a[1] / p[1] for a, p in zip(allow_all_ops, plain_ops)]),
    ]

"""The LD_PRELOAD shim (issue 4): a LUO ioctl's round trip through it, beside the one-request
FUSE floor measured in the same instance, and its added cost on an ioctl it does not
emulate (a pipe's FIONREAD), against plain libc: target within 5%."""

from __future__ import annotations

import os
import statistics
import subprocess

from .common import Row, summarize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "native", "build", "ioctl_bench")
SHIM = os.path.join(ROOT, "native", "build", "libluofs-shim.so")
TRIES = 5


def _run(instance, mode: str) -> str:
    env = dict(os.environ, LD_PRELOAD=SHIM, LUOFS_ROOT=instance.root)
    return subprocess.run([BENCH, mode], env=env, capture_output=True, text=True, check=True,
                          timeout=300).stdout.strip()


def run(instance, floor_us: float | None) -> list[Row]:
    if not os.path.exists(BENCH):
        return []
    ratios, shim_ns, libc_ns, session_us = [], [], [], []
    for _ in range(TRIES):
        # "ioctl 184.16 ns, libc 182.55 ns, interposed yes, ratio 1.0088"
        fields = _run(instance, "pipe").replace(",", "").split()
        if fields[fields.index("interposed") + 1] != "yes":
            raise RuntimeError("the shim did not interpose ioctl()")
        shim_ns.append(float(fields[1]))
        libc_ns.append(float(fields[4]))
        ratios.append(float(fields[-1]))
        session_us.append(float(_run(instance, "session")))
    return [
        summarize("GET_NAME through the C shim (best round of 15, per try)", session_us,
                  floor_us),
        summarize("pipe FIONREAD through the shim's fast path", shim_ns, unit="ns"),
        summarize("pipe FIONREAD through libc directly", libc_ns, unit="ns"),
        Row("shim fast path / libc (same process, alternating)", "×",
            round(statistics.median(ratios), 4), round(min(ratios), 4), round(max(ratios), 4),
            len(ratios), target="≤ 1.05"),
    ]

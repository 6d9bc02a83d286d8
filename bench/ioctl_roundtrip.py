"""Round trip of each ioctl through the Python client, beside a one-request FUSE floor
measured on the same mount in the same run (issue: status-only ioctls ≤ 1.2× floor)."""

from __future__ import annotations

import errno
import os
import statistics
import time

from luofs.client import LiveUpdate

from .common import Row, summarize

ITERATIONS = 3000


def _time(fn, n=ITERATIONS) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / 1000.0)
    return samples


def run(instance) -> list[Row]:
    state = os.open(instance.path("sys/kernel/liveupdate/state"), os.O_RDONLY)

    def floor():
        try:
            os.getxattr(state, "user.none")
        except OSError as e:
            assert e.errno == errno.ENODATA

    rows = []
    with LiveUpdate(instance.root) as lu:
        session = lu.create_session("bench")
        memfds = [os.memfd_create("b") for _ in range(ITERATIONS)]
        tokens = iter(range(ITERATIONS))

        def get_name():
            session.get_name()

        def preserve():
            i = next(tokens)
            session.preserve_fd(memfds[i], i)

        def create_close():
            lu.create_session("churn").close()

        floor_samples = _time(floor)
        floor_med = statistics.median(floor_samples)
        rows.append(summarize("FUSE floor: getxattr → ENODATA (1 request)", floor_samples, floor_med))
        rows.append(summarize("GET_NAME (status-only)", _time(get_name), floor_med))
        rows.append(summarize("PRESERVE_FD (memfd, pidfd_getfd)", _time(preserve), floor_med))
        rows.append(summarize("CREATE_SESSION + close", _time(create_close, 1000), floor_med))
        session.close()
        for fd in memfds:
            os.close(fd)
    os.close(state)
    return rows

"""Round trip of each ioctl through the Python client, beside a one-request FUSE floor
measured on the same mount in the same run, each ioctl alternating with a floor request
(issue: status-only ioctls ≤ 1.2× floor). Every ratio is against the floor requests that
alternated with that ioctl."""

from __future__ import annotations

import errno
import os
import statistics
import time

from luofs.client import LiveUpdate, ioctl
from luofs.uapi import ioctl as nums, structs

from .common import Row, summarize

ITERATIONS = 3000


def _paired(floor, fn, n=ITERATIONS) -> tuple[list[float], list[float]]:
    """Alternate one floor request and one `fn` call, so that both see the same machine:
    on 2 shared cores a block of requests can land on one core or across two, which moves
    a round trip by 2× between blocks."""
    floor_samples, samples = [], []
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        floor()
        t1 = clock()
        fn()
        t2 = clock()
        floor_samples.append((t1 - t0) / 1000.0)
        samples.append((t2 - t1) / 1000.0)
    return floor_samples, samples


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

        # Caller bytes past the name make every request new: no memo on either side, so
        # this is the whole path (frame encode, decode, dispatch rules, reply).
        fresh_args = iter([structs.GetName.build(dict(size=72, reserved=0,
                                                      name=bytes(8) + i.to_bytes(8, "little")
                                                      + bytes(48)))
                           for i in range(ITERATIONS)])

        def get_name_fresh():
            ioctl(instance.root, session.fd, nums.LIVEUPDATE_SESSION_GET_NAME, next(fresh_args))

        def preserve():
            i = next(tokens)
            session.preserve_fd(memfds[i], i)

        def create_close():
            lu.create_session("churn").close()

        for _ in range(300):  # warm both paths up before anything is kept
            floor()
            get_name()
        floor_samples, samples = _paired(floor, get_name)
        floor_med = statistics.median(floor_samples)
        rows.append(summarize("FUSE floor: getxattr → ENODATA (1 request)", floor_samples))
        rows.append(summarize("GET_NAME (status-only)", samples, floor_med, target="≤ 1.2"))
        for label, fn, n in (("GET_NAME, every request new (no memo)", get_name_fresh,
                              ITERATIONS),
                             ("PRESERVE_FD (memfd, pidfd_getfd)", preserve, ITERATIONS),
                             ("CREATE_SESSION + close", create_close, 1000)):
            floor_samples, samples = _paired(floor, fn, n)
            rows.append(summarize(label, samples, statistics.median(floor_samples)))
        session.close()
        for fd in memfds:
            os.close(fd)
    os.close(state)
    return rows

"""Round trip of each ioctl through the Python client, against a one-request FUSE floor
measured on the same mount, in interleaved blocks (bench/common.py): per round, 50
floor requests, then 50 of each ioctl; 20 rounds. Every ratio is the median over
rounds of the ioctl's median against the floor's median of the same round. Target
(issue 16): at most 1.5× the floor per FUSE request the ioctl needs, without the memo;
the requests are counted, not assumed.

The floor is a getxattr of a name that is no request (the daemon answers ENODATA at
once): the same opcode, the same client call (os.getxattr) and the same pyfuse3
dispatch as a getxattr ioctl, with no work of its own. How many FUSE requests each
call really sends is counted by the kernel's fuse_request_send tracepoint
(bench/fuse_requests.py) and shown beside the row.

The memo: a repeated pure request (GET_NAME with the same bytes on the same session)
is answered from the daemon's per-session reply memo (luofs/fs/transport.py), and its
name from the client's frame cache. "every request new" puts other caller bytes in
the name buffer each time (GET_NAME's name is an out field: the kernel echoes the
bytes past the NUL), which defeats both: the whole path, as a first request pays it.
PRESERVE_FD takes a new empty memfd and token each time; RETRIEVE_FD a new token each
time in the next kernel (a first retrieve of each file); CREATE_SESSION + close
recreates one session name. None of them is memoized.
"""

from __future__ import annotations

import errno
import os

from luofs.client import LiveUpdate, ioctl
from luofs.uapi import ioctl as nums, structs

from . import fuse_requests
from .common import Row, interleaved_blocks, summarize_rounds

ROUNDS = 20
BLOCK = 50
WARM_UP = 50  # calls of each case before anything is measured or counted
COUNTED = 20  # calls of each case whose FUSE requests are counted (not timed)
SESSION = "bench"

PER_REQUEST = 1.5  # the target: at most this many floors per FUSE request the call sends
# (case, row name, target; None: PER_REQUEST × the requests counted); the floor is the
# reference of every other row.
OUTGOING = (
    ("floor", "FUSE floor: getxattr → ENODATA", ""),
    ("get_name_memo", "GET_NAME, repeated (reply memo)", "≤ 1.2"),
    ("get_name_new", "GET_NAME, every request new (no memo)", None),
    ("preserve_fd", "PRESERVE_FD, a new memfd each", None),
    ("create_close", "CREATE_SESSION + close", None),
)
INCOMING = (
    ("floor", "FUSE floor, next kernel", ""),
    ("retrieve_fd", "RETRIEVE_FD, a new token each (next kernel)", None),
)


class Floor:
    """The one-request floor on an instance's mount (reopened after a live update)."""

    def __init__(self, instance):
        self.fd = os.open(instance.path("sys/kernel/liveupdate/state"), os.O_RDONLY)

    def __call__(self) -> None:
        try:
            os.getxattr(self.fd, "user.none")
        except OSError as e:
            if e.errno != errno.ENODATA:
                raise

    def close(self) -> None:
        os.close(self.fd)


class Outgoing:
    """The cases before the live update, on one open device and session; preserves
    enough memfds that the next kernel has a new token for every RETRIEVE_FD."""

    def __init__(self, instance, calls: int):
        self.instance = instance
        self.floor = Floor(instance)
        self.lu = LiveUpdate(instance.root)
        self.session = self.lu.create_session(SESSION)
        self.memfds: list[int] = []
        self.preserved = 0  # tokens 0 .. preserved-1 are in the session
        # Fresh caller bytes for every GET_NAME: built before, so not timed.
        self._fresh = iter([structs.GetName.build(dict(
            size=72, reserved=0, name=bytes(8) + i.to_bytes(8, "little") + bytes(48)))
            for i in range(calls)])
        self._fresh_memfds = iter(())

    def cases(self) -> dict:
        return {"floor": self.floor, "get_name_memo": self.get_name_memo,
                "get_name_new": self.get_name_new, "preserve_fd": self.preserve_fd,
                "create_close": self.create_close}

    def prepare(self) -> dict:
        return {"preserve_fd": self.new_memfds}

    def new_memfds(self, n: int) -> None:
        """Memfds for the next `n` PRESERVE_FDs, made untimed; the last ones are closed (LUO
        holds its own reference), so that this process never holds 1,000 fds at once
        (select() in the tools it calls then fails)."""
        for fd in self.memfds:
            os.close(fd)
        self.memfds = []
        self._fresh_memfds = iter([os.memfd_create("bench") for _ in range(n)])

    def get_name_memo(self) -> None:
        self.session.get_name()

    def get_name_new(self) -> None:
        ioctl(self.instance.root, self.session.fd, nums.LIVEUPDATE_SESSION_GET_NAME,
              next(self._fresh))

    def preserve_fd(self) -> None:
        fd = next(self._fresh_memfds)
        self.session.preserve_fd(fd, self.preserved)
        self.preserved += 1
        self.memfds.append(fd)

    def create_close(self) -> None:
        self.lu.create_session("churn").close()

    def leave(self) -> None:
        """Close everything but the session (and the device): the live update carries it."""
        self.floor.close()
        self.new_memfds(0)


class Incoming:
    """The cases after the live update: the session retrieved, each token retrieved once."""

    def __init__(self, instance, tokens: int):
        self.floor = Floor(instance)
        self.lu = LiveUpdate(instance.root)
        self.session = self.lu.retrieve_session(SESSION)
        self._tokens = iter(range(tokens))
        self.fds: list[int] = []

    def cases(self) -> dict:
        return {"floor": self.floor, "retrieve_fd": self.retrieve_fd}

    def retrieve_fd(self) -> None:
        self.fds.append(self.session.retrieve_fd(next(self._tokens)))

    def prepare(self) -> dict:
        return {"retrieve_fd": self.close_fds}

    def close_fds(self, _n: int = 0) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []

    def close(self) -> None:
        self.close_fds()
        self.session.close()
        self.lu.close()
        self.floor.close()


def _measure(instance, phase, layout, rounds: int, block: int) -> list[Row]:
    cases, prepare = phase.cases(), phase.prepare()
    counts, targets = {}, {}
    for name, fn in cases.items():
        if name in prepare:
            prepare[name](WARM_UP)
        for _ in range(WARM_UP):
            fn()
        if name in prepare:
            prepare[name](COUNTED)
        counted = fuse_requests.per_call(instance.root, fn, COUNTED)
        counts[name] = fuse_requests.describe(counted)
        requests = fuse_requests.total(counted)
        targets[name] = f"≤ {PER_REQUEST * requests:g}" if requests else "?"
    samples = interleaved_blocks(cases, rounds, block, prepare)
    floor = samples["floor"]
    return [summarize_rounds(label, samples[name], None if name == "floor" else floor,
                             target=targets[name] if target is None else target,
                             requests=counts[name])
            for name, label, target in layout]


def run(instance, rounds: int = ROUNDS, block: int = BLOCK) -> list[Row]:
    calls = WARM_UP + COUNTED + rounds * block
    outgoing = Outgoing(instance, calls)
    rows = _measure(instance, outgoing, OUTGOING, rounds, block)
    outgoing.leave()
    instance.kexec()
    outgoing.session.close()  # files of the kernel that is gone: closing them is all
    outgoing.lu.close()
    incoming = Incoming(instance, outgoing.preserved)
    try:
        rows += _measure(instance, incoming, INCOMING, rounds, block)
    finally:
        incoming.close()
    return rows


if __name__ == "__main__":  # python -m bench.ioctl_roundtrip [--quick]
    import sys

    from luofs.testing import booted

    from .common import table

    with booted() as instance:
        print(table(run(instance, rounds=5 if "--quick" in sys.argv[1:] else ROUNDS)))

"""Where a kernel keeps preserved files beyond what its own fd table should hold.

Below `direct_limit` files the kernel keeps them open itself (the fast path). Beyond,
it parks them in keeper processes (luofs/keeper.py), each holding up to `per_keeper`
files. A parked file is an OwnedFile whose `parked` names (keeper, slot) instead of an
fd; freezing reads positions, sizes and seals in one request per keeper, and a live
update hands over each keeper's socket, not its files.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys

from . import limits, wire
from .keeper import RECORD

DEFAULT_DIRECT_LIMIT = 8000


def _split(raw: bytes, size: int):
    return iter([raw[i:i + size] for i in range(0, len(raw), size)])


class KeeperError(OSError):
    pass


class Keeper:
    def __init__(self, sock: socket.socket, count: int = 0, proc=None):
        self.sock = sock
        self.count = count  # files parked here and not dropped
        self.proc = proc  # set in the kernel that started it

    @classmethod
    def spawn(cls) -> "Keeper":
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # A process of its own: it outlives the kernel that started it, for as long as a
        # kernel (or the machine, during a hand-over) holds its socket.
        proc = subprocess.Popen(
            [sys.executable, "-m", "luofs.keeper", "--fd", str(theirs.fileno())],
            pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        theirs.close()
        return cls(ours, proc=proc)

    def ask(self, message: dict, fds=()) -> tuple[dict, list[int]]:
        wire.send(self.sock, message, fds)
        reply, got = wire.recv(self.sock)
        if reply is None or not reply.get("ok"):
            for fd in got:
                os.close(fd)
            raise KeeperError(5, f"file keeper: {(reply or {}).get('error', 'gone')}")
        return reply, got


class Vault:
    def __init__(self, direct_limit: int | None = None, per_keeper: int | None = None,
                 keepers: list[Keeper] | None = None):
        env = os.environ.get("LUOFS_DIRECT_FILES")
        self.direct_limit = direct_limit if direct_limit is not None else (
            int(env) if env else DEFAULT_DIRECT_LIMIT)
        self.per_keeper = per_keeper or max(1, limits.fd_limit() - 64)
        self.keepers: list[Keeper] = list(keepers or [])
        self.direct = 0  # files this kernel holds open itself

    def full(self) -> bool:
        return self.direct >= self.direct_limit

    def park(self, fd: int) -> tuple[int, int]:
        """Move an fd into a keeper (the fd is closed here); returns (keeper, slot)."""
        if not self.keepers or self.keepers[-1].count >= self.per_keeper:
            self.keepers.append(Keeper.spawn())
        index = len(self.keepers) - 1
        keeper = self.keepers[index]
        reply, _ = keeper.ask({"op": "park"}, [fd])
        os.close(fd)
        keeper.count += 1
        return index, reply["slots"][0]

    def fetch(self, ref: tuple[int, int]) -> int:
        _reply, fds = self.keepers[ref[0]].ask({"op": "fetch", "slots": [ref[1]]})
        return fds[0]

    def drop(self, ref: tuple[int, int]) -> None:
        keeper = self.keepers[ref[0]]
        try:
            keeper.ask({"op": "drop", "slots": [ref[1]]})
        except (KeeperError, OSError):
            return  # a keeper that is gone holds nothing
        keeper.count -= 1

    def records(self, refs: list[tuple[int, int]]) -> list[bytes]:
        """Position, size and seals of parked files (keeper.RECORD, packed), in the order of
        `refs`: one request per keeper, all sent before any reply is read, so the keepers
        work side by side."""
        by_keeper: dict[int, list[int]] = {}
        for k, slot in refs:
            by_keeper.setdefault(k, []).append(slot)
        asked, answers, failure = [], {}, None
        try:
            for k, slots in by_keeper.items():
                wire.send(self.keepers[k].sock, {"op": "records", "slots": slots})
                asked.append(k)
        except OSError as e:
            failure = f"file keeper {k} is gone: {e}"
        for k in asked:  # every request sent gets its reply read: no socket is left askew
            reply, fds = wire.recv(self.keepers[k].sock)
            for fd in fds:
                os.close(fd)
            if reply is None or not reply.get("ok"):
                failure = failure or f"file keeper {k}: {(reply or {}).get('error', 'gone')}"
            else:
                answers[k] = _split(bytes.fromhex(reply["records"]), RECORD.size)
        if failure:
            raise KeeperError(errno.EIO, failure)
        return [next(answers[k]) for k, _slot in refs]

    def record(self, ref: tuple[int, int]) -> tuple[int, int, int]:
        """(position, size, seals) of one parked file."""
        return RECORD.unpack(self.records([ref])[0])

    def sockets(self) -> list[int]:
        return [k.sock.fileno() for k in self.keepers]

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

from . import limits, protocol, trace
from .keeper import RECORD
from .protocol import FILES, Error
from .protocol_keeper import Drop, Fetch, Park, Records, RecordsReply

DEFAULT_DIRECT_LIMIT = 8000


class KeeperError(OSError):
    pass


class Keeper:
    def __init__(self, sock: socket.socket, count: int = 0, proc=None):
        self.sock = sock
        self.count = count  # files parked here and not dropped
        self.proc = proc  # set in the kernel that started it
        self.pid: int | None = proc.pid if proc is not None else None

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

    def ask(self, message, fds: dict | None = None):
        """(reply, fd groups) of one request; KeeperError (EIO) if refused or gone."""
        protocol.send(self.sock, message, fds)
        return self.answer()

    def answer(self):
        try:
            reply, got = protocol.recv(self.sock)
        except protocol.ProtocolError as e:
            raise KeeperError(errno.EIO, f"file keeper: {e}") from None
        if reply is None or isinstance(reply, Error):
            protocol.close_fds(got)
            raise KeeperError(errno.EIO,
                              f"file keeper: {reply.error if reply is not None else 'gone'}")
        return reply, got

    def ask_records(self, runs: list[list[int]], pad: bytes) -> None:
        """Send a Records request (its answer is read by records_reply())."""
        protocol.send(self.sock, Records(runs=tuple(map(tuple, runs)), pad=pad))

    def records_reply(self) -> RecordsReply:
        reply, got = self.answer()
        protocol.close_fds(got)
        if not isinstance(reply, RecordsReply):
            raise KeeperError(errno.EIO, f"file keeper answered records with {reply.TAG}")
        return reply


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
        reply, _ = keeper.ask(Park(), {FILES: [fd]})
        os.close(fd)
        keeper.count += 1
        return index, reply.slots[0]

    def fetch(self, ref: tuple[int, int]) -> int:
        _reply, fds = self.keepers[ref[0]].ask(Fetch((ref[1],)))
        return fds[FILES][0]

    def drop(self, ref: tuple[int, int]) -> None:
        keeper = self.keepers[ref[0]]
        try:
            keeper.ask(Drop((ref[1],)))
        except (KeeperError, OSError):
            return  # a keeper that is gone holds nothing
        keeper.count -= 1

    def drop_many(self, refs: list[tuple[int, int]]) -> None:
        """drop() for many files: one request per keeper."""
        by_keeper: dict[int, list[int]] = {}
        for k, slot in refs:
            by_keeper.setdefault(k, []).append(slot)
        for k, slots in by_keeper.items():
            keeper = self.keepers[k]
            try:
                keeper.ask(Drop(tuple(slots)))
            except (KeeperError, OSError):
                continue  # a keeper that is gone holds nothing
            keeper.count -= len(slots)

    def records(self, runs: list[list[int]], pad: bytes = b"", meanwhile=None,
                answered=None) -> list[bytes]:
        """For runs [keeper, first slot, count] of parked files, one bytes each: every file's
        position, size and seals (keeper.RECORD), each followed by `pad`.

        One request per keeper, all sent before any reply is read, so the keepers work
        side by side — and `meanwhile()`, if given, runs here while they do;
        `answered(files)` hears of each keeper's answer (a long freeze's progress)."""
        by_keeper: dict[int, list[list[int]]] = {}
        for k, slot, count in runs:
            by_keeper.setdefault(k, []).append([slot, count])
        asked, failure = [], None
        try:
            for k, slots in by_keeper.items():
                self.keepers[k].ask_records(slots, pad)
                asked.append(k)
        except OSError as e:
            failure = f"file keeper {k} is gone: {e}"
        try:
            if meanwhile is not None and not failure:
                meanwhile()
        finally:  # every request sent gets its reply read: no socket is left askew
            with trace.span("collect the keepers' records", "keeper", keepers=len(asked)):
                answers, errors = self._collect(asked, by_keeper, answered)
        failure = failure or next((f"file keeper {k}: {why}" for k, why in errors.items()), None)
        size = RECORD.size + len(pad)
        for k, slots in by_keeper.items():
            if not failure and len(answers[k]) != size * sum(count for _slot, count in slots):
                failure = f"file keeper {k} answered {len(answers[k])} bytes of records"
        if failure:
            raise KeeperError(errno.EIO, failure)
        at = dict.fromkeys(by_keeper, 0)
        out = []
        for k, _slot, count in runs:
            out.append(answers[k][at[k]:at[k] + count * size])
            at[k] += count * size
        return out

    def _collect(self, asked: list[int], by_keeper: dict, answered=None
                 ) -> tuple[dict[int, bytes], dict[int, str]]:
        answers, errors = {}, {}
        for k in asked:
            keeper = self.keepers[k]
            try:
                reply = keeper.records_reply()
                answers[k] = reply.records
                if answered is not None:
                    answered(sum(count for _slot, count in by_keeper[k]))
                if keeper.pid:
                    trace.complete("read records", "keeper", reply.started, reply.ended,
                                   pid=keeper.pid, tid=keeper.pid, proc=f"file keeper {k}",
                                   bytes=len(reply.records))
            except KeeperError as e:
                errors[k] = e.strerror.removeprefix("file keeper: ")
            except OSError as e:  # it died with our request unread
                errors[k] = str(e)
        return answers, errors

    def record(self, ref: tuple[int, int]) -> tuple[int, int, int]:
        """(position, size, seals) of one parked file."""
        return RECORD.unpack(self.records([[ref[0], ref[1], 1]])[0])

    def sockets(self) -> list[int]:
        return [k.sock.fileno() for k in self.keepers]

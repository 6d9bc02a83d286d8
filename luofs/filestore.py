"""Where a kernel's preserved files live: held open here, or parked in keeper processes.

DOC: Every preserved file is an OwnedFile. Below the store's direct limit (8,000 by
default, LUOFS_DIRECT_FILES) the kernel holds the file's fd itself; beyond, `hold()`
parks it in a keeper (luofs/vault.py) and the OwnedFile names (keeper, slot) instead.
Handlers never ask which: they call `hold()` at preserve, `unpark()` before giving a
file back to user space, and read positions, sizes and seals through `records()`.

A live update hands over the held fds and the keepers' sockets, never each parked
file: `split()` turns the carried files into the fds held here plus runs of
consecutive parked slots (files are parked in the order they are preserved, so
100,000 make a handful of runs); the next kernel's `adopt()` reverses it.

Unhappy paths: a keeper that cannot be started or reached makes `hold()` fail with
ENOMEM (PRESERVE_FD then fails, nothing changed); a hand-over whose runs overlap or
outrun the fds is a ValueError for the caller to turn into a panic, and every fd it
brought is closed; files nobody used are given back with `release()` (fds closed,
parked files dropped with one request per keeper).
"""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
from typing import Iterable

from .fdutil import OwnedFile
from .protocol import ParkedRun
from .vault import Keeper, Vault


class FileStore(Vault):
    # ---- this kernel ---------------------------------------------------------------

    def hold(self, file: OwnedFile) -> None:
        """Take a newly preserved file: keep its fd, or park it once this kernel holds
        its share. OSError(ENOMEM) if it can be neither."""
        if self.full():
            try:
                file.parked = self.park(file.fd)
            except OSError as e:
                raise OSError(errno.ENOMEM, f"cannot park the file: {e}") from None
            file.fd = -1
        else:
            self.direct += 1
        file.vault = self

    def unpark(self, file: OwnedFile) -> None:
        """Hold a parked file here again (to hand an fd of it to user space)."""
        if file.parked is None:
            return
        fd = self.fetch(file.parked)
        self.drop(file.parked)
        file.parked, file.fd = None, fd
        self.direct += 1

    # ---- a live update -------------------------------------------------------------

    @staticmethod
    def split(files: Iterable[OwnedFile]) -> tuple[list[int], list[ParkedRun]]:
        """The fds of files held here, and the parked ones as runs (image positions)."""
        fds: list[int] = []
        runs: list[ParkedRun] = []
        first = keeper = slot = -2
        count = 0
        for i, file in enumerate(files):
            ref = file.parked
            if ref is None:
                fds.append(file.fd)
            elif first + count == i and keeper == ref[0] and slot + count == ref[1]:
                count += 1
            else:
                if count:
                    runs.append(ParkedRun(first, keeper, slot, count))
                first, (keeper, slot), count = i, ref, 1
        if count:
            runs.append(ParkedRun(first, keeper, slot, count))
        return fds, runs

    @classmethod
    def adopt(cls, direct: list[int], runs: Iterable, keeper_fds: list[int],
              keeper_pids: Iterable[int | None] = ()) -> tuple["FileStore", list]:
        """The next kernel's store, with the previous kernel's keepers, and the handed-over
        files as sources in image order. ValueError (every fd closed) if the runs do not
        fit the fds."""
        pids = list(keeper_pids) + [None] * len(keeper_fds)
        store = cls(keepers=[Keeper(socket.socket(fileno=fd)) for fd in keeper_fds])
        for keeper, pid in zip(store.keepers, pids):
            keeper.pid = pid
        sources: list = []
        taken = 0
        try:
            for first, k, slot, count in runs:
                if first < len(sources) or first - len(sources) > len(direct) - taken:
                    raise ValueError(f"parked files at {first} overlap or outrun the direct ones")
                fill = first - len(sources)
                sources += direct[taken:taken + fill]
                taken += fill
                store.keepers[k].count += count
                sources += [(k, s) for s in range(slot, slot + count)]
        except (IndexError, TypeError, ValueError) as e:
            for fd in direct:
                os.close(fd)
            raise ValueError(f"malformed parked-file runs: {e}") from None
        sources += direct[taken:]
        store.direct = len(direct)
        return store, sources

    def owned(self, sources: list) -> list[OwnedFile]:
        return [OwnedFile(src, vault=self) if src.__class__ is int
                else OwnedFile(-1, parked=src, vault=self) for src in sources]

    def release(self, sources: list) -> None:
        """Let go of handed-over files nobody will use: fds closed, parked ones dropped."""
        for src in sources:
            if src.__class__ is int:
                os.close(src)
        self.drop_many([src for src in sources if src.__class__ is not int])
        self.direct = 0

    # ---- keepers that died -----------------------------------------------------------

    def dead_keepers(self) -> set[int]:
        """Indexes of keepers whose process is gone: their socket hung up (no round trip,
        so a freeze can ask before it starts)."""
        if not self.keepers:
            return set()
        poller = select.poll()
        for keeper in self.keepers:
            poller.register(keeper.sock, select.POLLIN)
        hung = {fd for fd, events in poller.poll(0) if events & (select.POLLHUP | select.POLLERR)}
        return {k for k, keeper in enumerate(self.keepers) if keeper.sock.fileno() in hung}

    def lost(self, named: Iterable[tuple[object, OwnedFile]]) -> dict[object, int]:
        """How many of the `(owner, file)` pairs are parked in a dead keeper, by owner."""
        dead = self.dead_keepers()
        counts: dict[object, int] = {}
        if dead:
            for owner, file in named:
                if file.parked is not None and file.parked[0] in dead:
                    counts[owner] = counts.get(owner, 0) + 1
        return counts

    def keeper_status(self) -> list[dict]:
        """Each keeper's process id, the files parked there, and whether it lives."""
        dead = self.dead_keepers()
        return [{"pid": pid, "files": keeper.count, "alive": k not in dead}
                for k, (keeper, pid) in enumerate(zip(self.keepers, self.keeper_pids()))]

    def kill_keeper(self, k: int, timeout: float = 5.0) -> None:
        """SIGKILL keeper `k` and wait until its socket hangs up (fault injection)."""
        keeper = self.keepers[k]
        os.kill(keeper.pid, signal.SIGKILL)
        poller = select.poll()
        poller.register(keeper.sock, select.POLLIN)
        poller.poll(int(timeout * 1000))

    def keeper_pids(self) -> list[int | None]:
        return [k.pid for k in self.keepers]

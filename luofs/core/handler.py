"""File handlers: the per-file-kind ops table of spec/uapi.md §14, their registry, and
freezing many preserved files at once.

A handler decides whether it can preserve a file and carries it across a reboot.
The core only calls the ops in the kernel's order; what a "file" is (a file
descriptor the daemon took from the caller, in practice) is the handler's business.

Happy path: handlers register while no session exists; PRESERVE_FD takes the first
handler whose can_preserve() accepts the file; the reboot path freezes every
preserved file with `freeze_all`, giving each run of one handler's files to its
freeze_many() in one call.

Unhappy paths: (un)registering while sessions exist → EBUSY; a compatible of 48
bytes or more → EINVAL; a second handler with a registered compatible → EEXIST;
unregistering one that is not registered → ENOENT. A failed freeze unfreezes every
file frozen before it, last first, and its LuoError refuses the reboot.
"""

from __future__ import annotations

from itertools import groupby
from operator import attrgetter
from typing import Any, Hashable, Protocol

from ..uapi import errnos
from .. import trace
from ..unwind import do_all
from .errors import LuoError


class FileHandler(Protocol):
    compatible: str  # at most 47 bytes: it is stored in a char[48]

    def can_preserve(self, file: Any) -> bool: ...

    def get_id(self, file: Any) -> Hashable:
        """Identity for the global table that forbids preserving one file twice."""

    def preserve(self, file: Any) -> int:
        """Pin the file for hand-over; returns the u64 serialized-data handle."""

    def unpreserve(self, file: Any, data: int) -> None: ...

    def freeze(self, file: Any, data: int) -> int:
        """Last chance before reboot to refresh the handle; may fail and veto the reboot.

        A handler may also offer freeze_many(entries) -> handles, for many files at once
        (each entry has `file` and `data`): all of them, or none (it undoes its own part
        on failure)."""

    def unfreeze(self, file: Any, data: int) -> None: ...

    def retrieve(self, data: int, private: Any) -> Any:
        """New kernel: rebuild the file from its handle and `private`, the file's runtime
        slot (what the previous kernel handed over for it)."""

    def can_finish(self, file: Any, data: int) -> bool: ...

    def finish(self, file: Any, data: int, retrieved: bool, private: Any) -> None:
        """The session is finished: a file never retrieved lets go of `private`."""


class HandlerRegistry:
    """Handlers in registration order; the first that accepts a file wins (§14)."""

    def __init__(self):
        self._handlers: list[FileHandler] = []

    def register(self, handler: FileHandler, *, sessions_exist: bool) -> None:
        if sessions_exist:
            raise LuoError(errnos.EBUSY, "file handlers change only while no session exists")
        if len(handler.compatible.encode()) >= 48:
            raise LuoError(errnos.EINVAL, f"compatible {handler.compatible!r} exceeds 47 bytes")
        if any(h.compatible == handler.compatible for h in self._handlers):
            raise LuoError(errnos.EEXIST, f"a handler {handler.compatible!r} is registered")
        self._handlers.append(handler)

    def unregister(self, handler: FileHandler, *, sessions_exist: bool) -> None:
        if sessions_exist:
            raise LuoError(errnos.EBUSY, "file handlers change only while no session exists")
        if handler not in self._handlers:
            raise LuoError(errnos.ENOENT, f"handler {handler.compatible!r} is not registered")
        self._handlers.remove(handler)

    def find_for(self, file: Any) -> FileHandler | None:
        return next((h for h in self._handlers if h.can_preserve(file)), None)

    def by_compatible(self, compatible: str) -> FileHandler | None:
        return next((h for h in self._handlers if h.compatible == compatible), None)

    def __iter__(self):
        return iter(self._handlers)


def freeze_all(entries: list) -> None:
    """Freeze entries (anything with `handler`, `file` and `data`) in order: all, or none
    and every one frozen so far unfrozen in reverse, the error (a LuoError) propagating.

    A run of consecutive entries of one handler goes to its freeze_many() when it has
    one: a live update freezes 10^5 files, and one call each was most of its blackout.
    """
    do_all(_runs(entries), _freeze_run, _unfreeze_run)


def _runs(entries: list) -> list[list]:
    if len({entry.handler for entry in entries}) == 1:  # the usual case, without a scan
        return [entries]
    return [list(run) for _handler, run in groupby(entries, key=attrgetter("handler"))]


def _freeze_run(run: list) -> None:
    """One handler's run: freeze_many() does all or none; else one by one, the frozen
    ones unfrozen again if one fails."""
    handler = run[0].handler
    many = getattr(handler, "freeze_many", None)
    with trace.span(f"freeze {handler.compatible} files", "luo", files=len(run)):
        if many is None:
            do_all(run, _freeze_one, _unfreeze_one)
            return
        for entry, data in zip(run, many(run), strict=True):
            entry.data = data


def _unfreeze_run(run: list, _result) -> None:
    for entry in reversed(run):
        _unfreeze_one(entry)


def _freeze_one(entry) -> None:
    entry.data = entry.handler.freeze(entry.file, entry.data)


def _unfreeze_one(entry, _result=None) -> None:
    entry.handler.unfreeze(entry.file, entry.data)

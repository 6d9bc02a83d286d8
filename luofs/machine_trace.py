"""The machine's side of each live update's trace and progress (luofs/trace.py).

DOC: `begin()` when `luofs kexec` asks: the update's file starts, the machine's window
opens, and a client that watches (a terminal) gets Progress from here on; `phase()`
as the update moves on, `forward()` for what the freezing kernel reports; `end()`:
the whole update's span, the next kernel asked for its lines (TraceFlush), then the
machine's own, with the old kernel's that came with its Unmounted.
Unhappy paths: a file that cannot be started means no trace of that update (logged);
a next kernel that does not answer TraceFlush keeps its lines (logged); progress a
client's socket has no room for is dropped.
"""

from __future__ import annotations

import logging

from . import protocol, trace
from .control_server import ProgressRelay
from .kernel_process import KernelError
from .protocol_kernel import TraceFlush

log = logging.getLogger("luofs.machine")

FLUSH_TIMEOUT = 5.0


class UpdateTrace:
    def __init__(self, state_dir: str):
        self.directory = (trace.directory(state_dir) if trace.enabled_by_env()
                          else None)  # None: LUOFS_TRACE=0, nothing is recorded
        trace.setup(self.directory, "machine")
        self.watcher: ProgressRelay | None = None
        self.number = 0  # the update being traced (0: none)
        self.started = 0

    def begin(self, number: int, client, progress_ms: int | None) -> int:
        """Open update `number`'s trace (0 when none is recorded) and, for a `client`
        that watches, its progress; returns the number traced."""
        self.started = trace.clock()
        if client is not None and progress_ms is not None:
            self.watcher = ProgressRelay(client, progress_ms)
        if self.directory is None or not number:
            return 0
        try:
            trace.start_file(self.directory, number)
        except OSError as e:
            log.warning("no trace of update %d: %s", number, e)
            return 0
        trace.recorder().begin(number)
        self.number = number
        return number

    @property
    def progress_ms(self) -> int | None:
        """What a freezing kernel is asked for (None: nobody watches)."""
        return self.watcher.every_ms if self.watcher is not None else None

    def phase(self, what: str) -> None:
        if self.watcher is not None:
            self.watcher.phase(what)

    def forward(self, message: protocol.Progress) -> None:
        if self.watcher is not None:
            self.watcher.send(message)

    def end(self, kernel) -> None:
        """The update is over; `kernel`: the next kernel if it serves, else None."""
        number, self.number, self.watcher = self.number, 0, None
        if not number:
            return
        trace.complete("live update", "machine", self.started, trace.clock(), number=number)
        if kernel is not None:
            try:
                _reply, fds = kernel.ask(TraceFlush(), timeout=FLUSH_TIMEOUT)
                protocol.close_fds(fds)
            except (OSError, KernelError) as e:
                log.warning("kernel #%d kept its trace: %s", kernel.number, e)
        trace.recorder().flush()

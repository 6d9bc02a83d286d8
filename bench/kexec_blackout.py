"""Live-update blackout (freeze start → next kernel serving) against preserved bytes, and
for 10,000 sessions × 10 memfds; resident memory of the kernel and machine processes.
Targets (issue 3): 4 GiB ≤ 1.1× 4 KiB; median ≤ 50 ms at small sizes; 10k × 10 ≤ 500 ms
with RSS ≤ 150 MB. Where each blackout went comes from the update's trace (the same
one `luofs trace` shows); what recording it costs is measured here too (issue 16)."""

from __future__ import annotations

import os
import resource
import statistics
import time

from luofs import trace_view
from luofs.client import LiveUpdate, kexec
from luofs.testing import booted

from .common import Row, summarize

SIZES = [("4 KiB", 4 << 10), ("64 MiB", 64 << 20), ("1 GiB", 1 << 30), ("4 GiB", 4 << 30)]
ROUNDS = 15
SETTLE_S = 0.6


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


# The machine's three parts of a blackout, end to end (they add up to it): the old kernel
# freezes and sends the hand-over; it unmounts (and, with devices, is killed); the next
# kernel rebuilds, mounts and says it serves.
PARTS = ("ask the old kernel to freeze", "hand over", "next kernel comes up")


def _kexec(instance, parts: list | None = None) -> float:
    # The machine loads the next kernel right after each update (Python imports: ~0.3 s
    # of CPU); on 2 cores that would land in whichever blackout comes next. Let it settle.
    time.sleep(SETTLE_S)
    reply = kexec(instance.root, timeout=600)
    if parts is not None:
        parts.append(blackout_parts(instance, reply["liveupdate_number"]))
    return reply["blackout_ms"]


def blackout_parts(instance, number: int) -> dict[str, float]:
    """The PARTS of update `number`, in ms, from its trace."""
    _n, events = trace_view.read(instance.state_dir, number)
    return {e["name"]: e["dur"] / 1e6 for e in events
            if e.get("proc") == "machine" and e["name"] in PARTS}


def _carry_forward(instance, tokens: int) -> None:
    """Retrieve what the last kernel carried and preserve it again for the next round."""
    with LiveUpdate(instance.root) as lu:
        old = lu.retrieve_session("bench")
        fds = [old.retrieve_fd(t) for t in range(tokens)]
        old.finish()
        old.close()
        session = lu.create_session("bench")
        for t, fd in enumerate(fds):
            session.preserve_fd(fd, t)
            os.close(fd)
    return session


def blackout_by_size(progress, rounds: int = ROUNDS, parts: dict | None = None) -> list[Row]:
    """All sizes booted side by side and live-updated in turn, round after round, so
    the machine's drift and noise fall on every size alike. `parts`, if given, gets
    each size's PARTS per update (for bench/plot.py)."""
    from contextlib import ExitStack

    samples: dict[str, list[float]] = {label: [] for label, _ in SIZES}
    parts = {} if parts is None else parts
    for label, _size in SIZES:
        parts[label] = []
    with ExitStack() as stack:
        instances = {}
        for label, size in SIZES:
            # The machine must hold what is preserved (its memory is sparse: only the
            # kernel's own pages are ever touched).
            memory = max(256 << 20, 2 * size)
            instance = stack.enter_context(booted(["--memory", str(memory)]))
            fd = os.memfd_create("bench")
            os.ftruncate(fd, size)
            with LiveUpdate(instance.root) as lu:
                session = lu.create_session("bench")
                session.preserve_fd(fd, 0)  # populates every page: really `size` bytes
            os.close(fd)
            instances[label] = [instance, session]
        for r in range(rounds):
            order = list(instances.items())
            order = order[r % len(order):] + order[: r % len(order)]
            for label, held in order:
                samples[label].append(_kexec(held[0], parts[label]))
                held[1].close()
                held[1] = _carry_forward(held[0], 1)
        for _instance, session in instances.values():
            session.close()
    rows, reference = [], None
    for label, size in SIZES:
        row = summarize(f"kexec blackout, {label} preserved", samples[label], reference,
                        unit="ms", target="≤ 50 ms" if size <= 64 << 20 else "≤ 1.1× 4 KiB")
        reference = reference or row.median
        rows.append(row)
        progress(row)
    return rows


def many_sessions(progress, sessions=10_000, files=10, samples=1) -> list[Row]:
    """Beyond 8,000 files a kernel parks preserved files in keeper processes
    (luofs/vault.py), so the shape is not bounded by this process's fd limit either way:
    the bench holds only the session fds. Each sample builds the whole shape anew (about
    a minute for 10,000 × 10), so the blackout is a median of `samples` live updates."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    blackouts, kernel_rss, new_kernel_rss, machine_rss, keeper_rss = [], [], [], [], []
    for _ in range(samples):
        with booted(["--memory", "1G"]) as instance:
            held = []
            with LiveUpdate(instance.root) as lu:
                for i in range(sessions):
                    s = lu.create_session(f"s{i}")
                    for t in range(files):
                        fd = os.memfd_create("m")
                        s.preserve_fd(fd, t)
                        os.close(fd)
                    held.append(s)
            status = instance.status()
            kernel_rss.append(rss_mb(status["kernel"]["pid"]))
            machine_rss.append(rss_mb(status["machine"]["pid"]))
            keeper_rss.append(sum(rss_mb(pid) for pid in _keepers(status["kernel"]["pid"])))
            blackouts.append(_kexec(instance))
            status = instance.status()
            for s in held:
                s.close()
            new_kernel_rss.append(rss_mb(status["kernel"]["pid"]))
        progress(summarize(f"  sample: blackout, {sessions} × {files}", blackouts[-1:], unit="ms"))
    rows = [
        summarize(f"kexec blackout, {sessions} sessions × {files} memfds", blackouts,
                  unit="ms", target="≤ 500 ms"),
        summarize("RSS of the kernel holding them", kernel_rss, unit="MB", target="≤ 150 MB"),
        summarize("RSS of the next kernel after the hand-over", new_kernel_rss, unit="MB",
                  target="≤ 150 MB"),
        summarize("RSS of the machine", machine_rss, unit="MB"),
        summarize("RSS of the file keepers, all together", keeper_rss, unit="MB"),
    ]
    for row in rows:
        progress(row)
    return rows


def _keepers(kernel_pid: int) -> list[int]:
    """The file keepers a kernel started (luofs/keeper.py): they hold its parked files."""
    try:
        with open(f"/proc/{kernel_pid}/task/{kernel_pid}/children") as f:
            children = [int(pid) for pid in f.read().split()]
    except OSError:
        return []
    mine = []
    for pid in children:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"luofs.keeper" in f.read():
                    mine.append(pid)
        except OSError:
            pass
    return mine


def recording_cost(progress, rounds: int = ROUNDS) -> list[Row]:
    """The blackout with the trace recorded and with LUOFS_TRACE=0, booted side by side
    and live-updated in turn (a session with one memfd each): without devices, where
    the old kernel writes its lines while the next one rebuilds, and with them, where
    the machine waits for those lines before it can kill the old kernel."""
    from contextlib import ExitStack

    rows = []
    for shape, args in (("no devices", []), ("devices", ["--devices"])):
        samples: dict[bool, list[float]] = {True: [], False: []}
        with ExitStack() as stack:
            held = {}
            for recorded in (True, False):
                os.environ["LUOFS_TRACE"] = "1" if recorded else "0"
                try:
                    instance = stack.enter_context(booted(args))
                finally:
                    del os.environ["LUOFS_TRACE"]
                with LiveUpdate(instance.root) as lu:
                    session = lu.create_session("bench")
                fd = os.memfd_create("bench")
                session.preserve_fd(fd, 0)
                os.close(fd)
                held[recorded] = [instance, session]
            for r in range(rounds):
                for recorded in ((True, False) if r % 2 else (False, True)):
                    samples[recorded].append(_kexec(held[recorded][0]))
                    held[recorded][1].close()
                    held[recorded][1] = _carry_forward(held[recorded][0], 1)
            for _instance, session in held.values():
                session.close()
        off = summarize(f"kexec blackout, trace not recorded ({shape})", samples[False],
                        unit="ms")
        on = summarize(f"kexec blackout, trace recorded ({shape})", samples[True], off.median,
                       unit="ms")
        # Each round's two updates ran back to back: their ratio sees the same machine.
        ratios = [a / b for a, b in zip(samples[True], samples[False])]
        paired = Row(f"  recorded / not recorded, per round ({shape})", "×",
                     round(statistics.median(ratios), 3), round(min(ratios), 3),
                     round(max(ratios), 3), len(ratios), target="≤ 1.02")
        rows += [off, on, paired]
        for row in (off, on, paired):
            progress(row)
    return rows

"""Issue 7 §5: consecutive live updates carrying data across memfds in several sessions,
checksummed every time: 0 bytes lost, no growth of fds or memory in the machine.
Default: 8 updates × 64 MiB; `-m slow` (make fuzz): 100 updates × 1 GiB."""

import hashlib
import os

import pytest

from luofs.client import kexec
from luofs.client import LiveUpdate
from luofs.testing import booted

SESSIONS = 4
FILES = 2


def sha(fd: int) -> str:
    h, off = hashlib.sha256(), 0
    while chunk := os.pread(fd, 1 << 22, off):
        h.update(chunk)
        off += len(chunk)
    return h.hexdigest()


def machine_usage(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return len(os.listdir(f"/proc/{pid}/fd")), rss


def carry(total_bytes: int, updates: int):
    per_file = total_bytes // (SESSIONS * FILES)
    with booted(["--memory", str(max(256 << 20, 2 * total_bytes))]) as inst:
        want, held = {}, []
        with LiveUpdate(inst.root) as lu:
            for s in range(SESSIONS):
                session = lu.create_session(f"vm{s}")
                for t in range(FILES):
                    fd = os.memfd_create("ram")
                    os.ftruncate(fd, per_file)
                    os.pwrite(fd, os.urandom(4096), (s * 7 + t) * 4096 % per_file)
                    os.pwrite(fd, f"{s}/{t}".encode(), per_file - 16)
                    session.preserve_fd(fd, t)
                    want[(s, t)] = sha(fd)
                    os.close(fd)
                held.append(session)
        machine = inst.status()["machine"]["pid"]
        baseline = None
        for update in range(updates):
            reply = kexec(inst.root, timeout=300)
            assert reply["files"] >= 0, reply
            for session in held:
                session.close()
            held = []
            with LiveUpdate(inst.root) as lu:
                for s in range(SESSIONS):
                    old = lu.retrieve_session(f"vm{s}")
                    fds = [old.retrieve_fd(t) for t in range(FILES)]
                    for t, fd in enumerate(fds):
                        assert sha(fd) == want[(s, t)], f"update {update}: vm{s}/{t} changed"
                    old.finish()
                    old.close()
                    session = lu.create_session(f"vm{s}")
                    for t, fd in enumerate(fds):
                        session.preserve_fd(fd, t)
                        os.close(fd)
                    held.append(session)
            usage = machine_usage(machine)
            if update == 1:
                baseline = usage
            elif baseline is not None:
                assert usage[0] <= baseline[0], f"machine fds grew: {baseline[0]} → {usage[0]}"
                assert usage[1] <= baseline[1] + 8 * 1024, f"machine RSS grew: {baseline} → {usage}"
        for session in held:
            session.close()


def test_endurance_short():
    carry(64 << 20, 8)


@pytest.mark.slow
def test_endurance_hundred_updates_one_gib():
    carry(1 << 30, 100)

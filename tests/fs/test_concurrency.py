"""Issue 7 §7: 8 client processes × 10,000 ioctls at once, all answered, no deadlock."""

import os
import subprocess
import sys

PROCESSES = 8
IOCTLS = 10_000

WORKER = """
import os, sys
from luofs.client import Session
fd, name, n = int(sys.argv[1]), sys.argv[2].encode(), int(sys.argv[3])
s = Session(sys.argv[4], fd, name)
wrong = 0
for i in range(n):
    if i % 100 == 0:
        m = os.memfd_create("w")
        s.preserve_fd(m, i)
        os.close(m)
    elif s.get_name() != name:
        wrong += 1
print(wrong)
"""


def test_eight_processes_ten_thousand_ioctls_each(luofs_instance):
    with luofs_instance.client() as lu:
        sessions = [lu.create_session(f"worker-{i}") for i in range(PROCESSES)]
    workers = []
    for i, s in enumerate(sessions):
        os.set_inheritable(s.fd, True)
        workers.append(subprocess.Popen(
            [sys.executable, "-c", WORKER, str(s.fd), s.name, str(IOCTLS), luofs_instance.root],
            pass_fds=[s.fd], stdout=subprocess.PIPE, text=True))
    try:
        results = [w.communicate(timeout=300)[0].strip() for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    assert [w.returncode for w in workers] == [0] * PROCESSES
    assert results == ["0"] * PROCESSES
    files = luofs_instance.read("sys/kernel/liveupdate/sessions/outgoing/worker-3/files")
    assert len(files.splitlines()) == IOCTLS // 100
    for s in sessions:
        s.close()

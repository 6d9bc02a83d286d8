"""A toy VMM for the demo: stage 1 preserves "guest RAM" and holds its session across the
live update; stage 2 (a new process, as after a real reboot) retrieves and checks it."""

import argparse
import hashlib
import os
import sys

from luofs.client import LiveUpdate

RAM_SIZE = 64 << 20


def pattern(i: int) -> bytes:
    return hashlib.sha256(i.to_bytes(8, "little")).digest() * 128  # 4 KiB per page


def stage1(root: str, ready_fifo: str) -> None:
    ram = os.memfd_create("guest-ram")
    os.ftruncate(ram, RAM_SIZE)
    for page in range(0, RAM_SIZE // 4096, 64):  # touch every 64th page: sparse guest RAM
        os.pwrite(ram, pattern(page), page * 4096)
    state = os.memfd_create("vmm-state")
    os.write(state, b"stage=1 vcpus=2 ram=64M\n")
    with LiveUpdate(root) as lu:
        session = lu.create_session("vm-42")
        session.preserve_fd(ram, 1)
        session.preserve_fd(state, 2)
    os.close(ram)  # LUO holds its own reference now
    os.close(state)
    print(f"vmm[{os.getpid()}]: preserved 64 MiB guest RAM (token 1) and VMM state (token 2) "
          f"in session 'vm-42'; holding it open", flush=True)
    with open(ready_fifo, "w") as f:
        f.write("ready\n")
    os.read(0, 1)  # keep the session fd open until told to go (stdin closes)


def stage2(root: str) -> int:
    with LiveUpdate(root) as lu, lu.retrieve_session("vm-42") as session:
        ram = session.retrieve_fd(1)
        state = session.retrieve_fd(2)
        bad = [page for page in range(0, RAM_SIZE // 4096, 64)
               if os.pread(ram, 4096, page * 4096) != pattern(page)]
        record = os.pread(state, 100, 0).decode().strip()
        session.finish()
    ok = not bad and os.fstat(ram).st_size == RAM_SIZE
    print(f"vmm[{os.getpid()}]: retrieved guest RAM: {'every page intact' if ok else bad[:5]}; "
          f"state record: {record!r}; session finished")
    return 0 if ok else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("stage", choices=["stage1", "stage2"])
    p.add_argument("--root", required=True)
    p.add_argument("--ready", help="stage1: a fifo to write 'ready' to")
    args = p.parse_args()
    if args.stage == "stage1":
        stage1(args.root, args.ready)
        return 0
    return stage2(args.root)


if __name__ == "__main__":
    sys.exit(main())

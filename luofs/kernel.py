"""The kernel process: LUO core + handlers + FUSE front end, driven by the machine.

Started by the machine process (never by hand). It mounts ROOT, says "ready" on
its control socket, and obeys the machine: status, shutdown (and, with the KHO
issue, reboot). A kernel process is replaced at every live update; the machine
outlives it.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys

import pyfuse3
import trio

from . import wire
from .core import HandlerRegistry, Luo
from .fs.escape import escape_name
from .fs.ops import KernelFS
from .fs.server import Mount
from .handlers import MemfdHandler

log = logging.getLogger("luofs.kernel")


def build_luo(number: int) -> Luo:
    handlers = HandlerRegistry()
    handlers.register(MemfdHandler(), sessions_exist=False)
    return Luo(handlers, liveupdate_number=number)


def status(fs: KernelFS) -> dict:
    luo = fs.luo
    return {
        "pid": os.getpid(),
        "liveupdate_number": luo.liveupdate_number,
        "device_open": luo.device_open,
        "sessions": [
            {"name": escape_name(s.name).decode(), "direction": s.direction.value,
             "retrieved": s.retrieved, "files": len(s.files)}
            for s in luo.sessions
        ],
    }


async def control_loop(sock: socket.socket, fs: KernelFS, cancel: trio.CancelScope) -> None:
    while True:
        await trio.lowlevel.wait_readable(sock)
        try:
            message, fds = wire.recv(sock)
        except BlockingIOError:
            continue
        for fd in fds:
            os.close(fd)
        if message is None:  # the machine is gone: a kernel without a machine stops
            log.warning("machine went away; shutting down")
            cancel.cancel()
            return
        op = message.get("op")
        if op == "status":
            wire.send(sock, {"ok": True, "kernel": status(fs)})
        elif op == "shutdown":
            wire.send(sock, {"ok": True})
            cancel.cancel()
            return
        else:
            wire.send(sock, {"ok": False, "error": f"unknown op {op!r}"})


async def run(fs: KernelFS, root: str, sock: socket.socket) -> None:
    with Mount(fs, root):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pyfuse3.main)
            wire.send(sock, {"event": "ready", "pid": os.getpid(), "mnt_id": fs.mnt_id})
            await control_loop(sock, fs, nursery.cancel_scope)
    log.info("unmounted %s", root)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="luofs-kernel", description=__doc__)
    p.add_argument("--root", required=True)
    p.add_argument("--control-fd", type=int, required=True)
    p.add_argument("--number", type=int, default=0)
    p.add_argument("--cmdline", default="liveupdate=on kho=on")
    p.add_argument("--log-level", default=os.environ.get("LUOFS_LOG", "INFO"))
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format=f"%(asctime)s kernel[{os.getpid()}] %(name)s %(levelname)s %(message)s")
    sock = socket.socket(fileno=args.control_fd)
    sock.setblocking(False)
    fs = KernelFS(build_luo(args.number), cmdline=args.cmdline)
    try:
        trio.run(run, fs, args.root, sock)
    except Exception as e:
        log.exception("kernel failed")
        try:
            sock.setblocking(True)
            wire.send(sock, {"event": "failed", "error": str(e)})
        except OSError:
            pass
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

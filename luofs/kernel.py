"""The kernel process: LUO core + handlers + KHO + FUSE front end, driven by the machine.

Started by the machine (never by hand), ahead of time, as `kexec -l` loads an image:
it imports everything, says "loaded" and waits. The machine then sends "boot" with
the emulated RAM and, after a live update, the hand-over (root address and the
preserved files' fds). It mounts ROOT and says "ready" — or "panic" if the
hand-over cannot be trusted. Later commands: status, reboot (the live update's
old-kernel half), shutdown.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time

import pyfuse3
import trio

import kho

from . import device_adapter, limits, personalities, wire
from .core import LuoError
from .core.faults import Faults
from .fs.debugfs import kho_debugfs
from .fs.device_sysfs import device_sysfs
from .fs.nodes import Dir, InodeTable, TextFile
from .fs.ops import KernelFS
from .fs.server import Mount
from .personalities.base import Panic, Personality
from .personalities.boot import cold_boot, handover_boot
from .protocol import FILES, KEEPERS, HandOver, ParkedRun

log = logging.getLogger("luofs.kernel")

BARRIER_XATTR = "user.luofs-barrier"  # not a request name: answered ENODATA


def build_fs(personality: Personality, cmdline: str, debugfs: bool) -> KernelFS:
    """The tree this kernel serves: its personality's sysfs, KHO's debugfs if asked,
    the devices' sysfs, proc/cmdline; and its device."""
    table = InodeTable()
    kernel = {b"liveupdate": Dir(0o755, personality.liveupdate_nodes(table.intern))}
    if debugfs:
        parts = personality.parts
        kernel[b"debug"] = kho_debugfs(parts.memory, parts.handover, parts.incoming, table.intern)
    devices = (device_sysfs(device_adapter.sysfs_tree(personality.devices))
               if personality.devices else {})
    fs = KernelFS(table, {
        b"sys": Dir(0o755, {b"kernel": Dir(0o755, kernel), **devices}),
        b"proc": Dir(0o555, {b"cmdline": TextFile(lambda: cmdline.encode() + b"\n")}),
    }, personality.device)
    personality.state.subscribe(fs.wake_pollers)
    return fs


class Kernel:
    def __init__(self, sock: socket.socket, root: str, cmdline: str, faults: Faults,
                 debugfs: bool = False, abi: str = "mainline", device_fd: int | None = None):
        self.sock = sock
        self.device_fd = device_fd
        self.abi = abi
        self.debugfs = debugfs
        self.faults = faults
        self.root = root
        self.cmdline = cmdline
        self.personality: Personality | None = None
        self.fs: KernelFS | None = None
        self.handed_over = False

    def receive_boot(self) -> bool:
        """Block until the machine says boot; False after a panic (reported, not served)."""
        self.faults.on_crash = lambda point: self._send({"event": "crashing", "point": point})
        wire.send(self.sock, {"event": "loaded", "pid": os.getpid()})
        message, fds = wire.recv(self.sock)
        if message is None or message.get("op") != "boot":
            for fd in fds:
                os.close(fd)
            raise SystemExit("the machine went away before boot")
        ram_fd, file_fds = fds[0], fds[1:]
        t0 = time.perf_counter()
        try:
            if "root_phys" in message:
                split = len(file_fds) - message.get("keepers", 0)
                handover = HandOver(message["root_phys"], message["root_size"],
                                    message.get("number", 1) - 1,
                                    parked=tuple(ParkedRun(*r) for r in message.get("parked", [])),
                                    keeper_pids=tuple(message.get("keeper_pids", [])))
                self.personality = handover_boot(
                    self.abi, ram_fd, handover, {FILES: file_fds[:split], KEEPERS: file_fds[split:]},
                    self.faults, self.device_fd)
            else:
                self.personality = cold_boot(self.abi, ram_fd, self.faults, self.device_fd)
        except Panic as e:
            log.critical("panic: %s", e)
            wire.send(self.sock, {"event": "panic", "error": str(e)})
            return False
        if "root_phys" in message:
            log.info("rebuilt from the hand-over in %.1f ms (%d fds)",
                     (time.perf_counter() - t0) * 1000, len(file_fds))
            self.faults.check("crash.reload")
        self.fs = build_fs(self.personality, self.cmdline, self.debugfs)
        if message.get("hold_mount"):  # the previous kernel may still be unmounting
            go, stray = wire.recv(self.sock)
            for fd in stray:
                os.close(fd)
            if go is None or go.get("op") != "mount":
                raise SystemExit("the machine went away before the mount")
        return True

    async def serve(self) -> None:
        self.sock.setblocking(False)
        with Mount(self.fs, self.root) as mount:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pyfuse3.main)
                self._send({"event": "ready", "pid": os.getpid(), "mnt_id": self.fs.mnt_id,
                            "liveupdate_number": self.personality.parts.liveupdate_number,
                            "lost": self.personality.lost_at_boot})
                await self.control_loop(nursery.cancel_scope)
            mount.unmount()
        if self.handed_over:
            self._send({"event": "unmounted"})
        log.info("unmounted %s", self.root)

    def _send(self, message: dict, fds=()) -> None:
        blocking = self.sock.getblocking()
        self.sock.setblocking(True)
        try:
            wire.send(self.sock, message, fds)
        finally:
            self.sock.setblocking(blocking)

    def kho_dump(self, which: str, fmt: str) -> dict:
        parts = self.personality.parts
        if which == "in":
            if parts.incoming is None:
                return {"ok": False, "error": "this kernel booted cold: there is no incoming KHO"}
            blob, preserved = parts.incoming.root_blob, parts.incoming.preserved
        else:
            blob, preserved = parts.handover.root_blob, parts.handover.preserved
        try:
            if fmt == "dts":
                return {"ok": True, "text": kho.dump_dts(blob)}
            return {"ok": True, "json": kho.dump_json(blob, parts.memory, preserved)}
        except kho.KhoFormatError as e:
            return {"ok": False, "error": str(e)}

    async def control_loop(self, cancel: trio.CancelScope) -> None:
        while True:
            await trio.lowlevel.wait_readable(self.sock)
            try:
                message, fds = wire.recv(self.sock)
            except BlockingIOError:
                continue
            for fd in fds:
                os.close(fd)
            if message is None:  # a kernel without a machine stops
                log.warning("machine went away; shutting down")
                cancel.cancel()
                return
            if message.get("op") == "reboot":
                await self.settle_releases()
            try:
                if self.obey(message, cancel):
                    return
            except OSError as e:  # a reply that could not be sent must not stop the kernel
                log.error("control message %r: %s", message.get("op"), e)

    async def settle_releases(self) -> None:
        """Let every close(2) that returned before the live update was asked for take
        effect first. FUSE sends RELEASE in the background after close returns; a request
        of our own to the mount, queued behind them, comes back only once they are read
        and (their handlers never wait) done. From a thread: the loop must answer it."""
        try:
            await trio.to_thread.run_sync(os.getxattr, self.root, BARRIER_XATTR)
        except OSError:  # ENODATA, as every non-request name answers
            pass

    def obey(self, message: dict, cancel: trio.CancelScope) -> bool:
        """Carry out one command of the machine; True when the kernel is done serving."""
        op = message.get("op")
        if op == "status":
            self._send({"ok": True, "kernel": {"pid": os.getpid(), **self.personality.status()}})
        elif op == "kho-dump":
            self._send(self.kho_dump(message.get("which", "out"), message.get("format")))
        elif op == "shutdown":
            self.personality.close()  # devices run on in the machine
            self._send({"ok": True})
            cancel.cancel()
            return True
        elif op == "reboot":
            t0 = time.perf_counter()
            try:
                handover, groups = self.personality.freeze()
            except LuoError as e:
                log.warning("live update refused: %s", e)
                self._send({"ok": False, "errno": e.errno, "error": str(e)})
                return False
            t1 = time.perf_counter()
            fds = groups[FILES] + groups[KEEPERS]
            reply = {"root_phys": handover.root_phys, "root_size": handover.root_size,
                     "liveupdate_number": handover.liveupdate_number,
                     "sessions": handover.sessions, "files": handover.files,
                     "parked": [list(r) for r in handover.parked],
                     "keepers": len(groups[KEEPERS]), "devices": list(handover.devices),
                     "keeper_pids": list(handover.keeper_pids), "dropped": handover.dropped}
            try:
                self._send({"ok": True, **reply}, fds)
            except OSError:
                self.personality.undo_freeze()
                raise
            log.info("handed over %d file(s) (%d fds): freeze %.1f ms, send %.1f ms",
                     reply["files"], len(fds), (t1 - t0) * 1000,
                     (time.perf_counter() - t1) * 1000)
            self.personality.after_handover()
            if "keeper.die" in self.faults and self.personality.parts.store.keepers:
                self.personality.parts.store.kill_keeper(0)
            self.faults.check("crash.handed-over")
            self.handed_over = True
            cancel.cancel()
            return True
        else:
            self._send({"ok": False, "error": f"unknown op {op!r}"})
        return False


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="luofs-kernel", description=__doc__)
    p.add_argument("--root", required=True)
    p.add_argument("--control-fd", type=int, required=True)
    p.add_argument("--cmdline", default="liveupdate=on kho=on")
    p.add_argument("--log-level", default=os.environ.get("LUOFS_LOG", "INFO"))
    p.add_argument("--fault", action="append", default=[])
    p.add_argument("--debugfs", action="store_true")
    p.add_argument("--abi", choices=personalities.names(), default=personalities.DEFAULT)
    p.add_argument("--device-fd", type=int)
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format=f"%(asctime)s kernel[{os.getpid()}] %(name)s %(levelname)s %(message)s")
    limits.raise_fd_limit()
    kernel = Kernel(socket.socket(fileno=args.control_fd), os.path.realpath(args.root),
                    args.cmdline, Faults.from_env(",".join(args.fault)), args.debugfs, args.abi,
                    args.device_fd)
    if not kernel.receive_boot():
        return 1
    try:
        trio.run(kernel.serve)
    except Exception as e:
        log.exception("kernel failed")
        try:
            kernel._send({"event": "failed", "error": str(e)})
        except OSError:
            pass
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

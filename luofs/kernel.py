"""The kernel process: LUO core + handlers + KHO + FUSE front end, driven by the machine.

Started by the machine (never by hand), ahead of time, as `kexec -l` loads an image:
it imports everything, says Loaded and waits. The machine then sends KernelBoot with
the instance's KernelConfig (ABI, cmdline, faults), the emulated RAM and, after a live
update, the HandOver with the preserved files' fds in named groups. It mounts ROOT and
says Ready — or Panicked if the hand-over cannot be trusted. Later requests (all in
luofs.protocol): status, kho-dump, Reboot (the live update's old-kernel half),
TraceFlush, shutdown; a message it cannot read is answered with Error and logged.
It records its part of each live update (luofs/trace.py): as the next kernel from the
boot message until the machine's TraceFlush (then it writes its lines), as the old one
from Reboot until it has unmounted (its events go to the machine with Unmounted).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import socket
import sys
import threading
import time

import pyfuse3
import trio

import kho

from . import device_adapter, limits, personalities, protocol, trace
from .core import LuoError
from .core.faults import Faults
from .fs.debugfs import kho_debugfs
from .fs.device_sysfs import device_sysfs
from .fs.nodes import Dir, InodeTable, TextFile
from .fs.ops import KernelFS
from .fs.server import Mount
from .personalities.base import Panic, Personality
from .personalities.boot import cold_boot, handover_boot
from .protocol import (FILES, KEEPERS, RAM, Error, KhoDumpReply, KhoDumpRequest, Ok, Progress,
                       Shutdown, StatusRequest)
from .protocol_kernel import (Crashing, Failed, KernelBoot, KernelConfig, KernelStatus, Loaded,
                              MountRoot, Panicked, Ready, Reboot, TraceFlush, Unmounted)
from .protocol_vmm import KvmRegister, KvmRetrieve
from .uapi import errnos

log = logging.getLogger("luofs.kernel")

BARRIER_XATTR = "user.luofs-barrier"  # not a request name: answered ENODATA


class ReleaseBarrier:
    """A thread of this kernel's own that makes one request to the mount when asked:
    it comes back only once every request FUSE queued before it was read. The thread
    is started while the kernel serves, so a live update does not pay for starting one
    (it must not be the loop's own request: the loop has to answer it)."""

    def __init__(self, root: str):
        self.root = root
        self._ask_r, self._ask_w = os.pipe2(os.O_CLOEXEC)
        self._done_r, self._done_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        threading.Thread(target=self._run, name="release-barrier", daemon=True).start()

    def _run(self) -> None:
        while os.read(self._ask_r, 1):
            try:
                os.getxattr(self.root, BARRIER_XATTR)
            except OSError:  # ENODATA, as every non-request name answers
                pass
            os.write(self._done_w, b".")

    async def wait(self) -> None:
        os.write(self._ask_w, b".")
        while True:
            await trio.lowlevel.wait_readable(self._done_r)
            try:
                os.read(self._done_r, 1)
                return
            except BlockingIOError:
                continue


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
    def __init__(self, sock: socket.socket, root: str, device_fd: int | None = None,
                 root_fd: int | None = None):
        self.sock = sock
        self.device_fd = device_fd
        self.root = root  # as the machine resolved it once; the mount goes onto root_fd
        self.root_fd = root_fd
        self.faults = Faults()
        self.config: KernelConfig | None = None  # with the boot message
        self.personality: Personality | None = None
        self.fs: KernelFS | None = None
        self.handed_over = False
        self.barrier: ReleaseBarrier | None = None  # once serving

    def receive_boot(self) -> bool:
        """Block until the machine says boot; False after a panic (reported, not served)."""
        self.faults.on_crash = lambda point: self._send(Crashing(point))
        protocol.send(self.sock, Loaded(os.getpid()))
        message, groups = self._recv_from_machine(KernelBoot, "boot")
        self.config = config = message.config
        self.abi, self.debugfs, self.cmdline = config.abi, config.debugfs, config.cmdline
        self.faults.armed = dict(config.faults)
        if config.log_level:
            logging.getLogger().setLevel(config.log_level.upper())
        ram_fd, handover = groups[RAM][0], message.handover
        files = {FILES: groups.get(FILES, []), KEEPERS: groups.get(KEEPERS, [])}
        number = handover.next_number if handover is not None else 0
        recorder = trace.recorder()
        if recorder is not None:
            recorder.process = f"kernel #{number}"
            if handover is not None:
                recorder.begin(number)
        fd_count = sum(map(len, files.values()))
        t0 = time.perf_counter()
        try:
            if handover is not None:
                with trace.span("boot from the hand-over", "kernel", files=handover.files,
                                fds=fd_count):
                    self.personality = handover_boot(self.abi, ram_fd, handover, files,
                                                     self.faults, self.device_fd)
            else:
                self.personality = cold_boot(self.abi, ram_fd, self.faults, self.device_fd)
        except Panic as e:
            log.critical("panic: %s", e)
            trace.instant("panic", "kernel", error=str(e))
            if recorder is not None:
                recorder.flush()
            protocol.send(self.sock, Panicked(str(e)))
            return False
        if handover is not None:
            log.info("rebuilt from the hand-over in %.1f ms (%d fds)",
                     (time.perf_counter() - t0) * 1000, fd_count)
            self.faults.check("crash.reload")
        with trace.span("build the file system", "kernel"):
            self.fs = build_fs(self.personality, self.cmdline, self.debugfs)
        if handover is not None:
            late = trace.Late(number)
            self.fs.on_first_request(
                lambda op: late.instant("first request served", "kernel", op=op))
        if message.hold_mount:  # the previous kernel may still be unmounting
            with trace.span("wait for the mount point", "kernel"):
                self._recv_from_machine(MountRoot, "mount")
        return True

    def _recv_from_machine(self, kind: type, what: str):
        """The machine's next message, which must be a `kind`; SystemExit otherwise (this
        kernel has not served yet: nothing is lost)."""
        try:
            message, groups = protocol.recv(self.sock)
        except protocol.ProtocolError as e:
            log.error("the machine sent a bad message before the %s: %s", what, e)
            protocol.send(self.sock, Error(f"bad {what} message: {e}"))
            raise SystemExit(1) from None
        if not isinstance(message, kind):
            protocol.close_fds(groups)
            raise SystemExit(f"the machine went away before the {what}" if message is None else
                             f"the machine sent {message.TAG} before the {what}")
        return message, groups

    async def serve(self) -> None:
        self.sock.setblocking(False)
        t_mount = trace.clock()
        with Mount(self.fs, self.root, self.root_fd) as mount:
            trace.complete("mount", "kernel", t_mount, trace.clock())
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pyfuse3.main)
                self._send(Ready(pid=os.getpid(), mnt_id=self.fs.mnt_id,
                                 liveupdate_number=self.personality.parts.liveupdate_number,
                                 lost=self.personality.lost_at_boot))
                trace.instant("serving", "kernel")
                # After Ready: its thread's start is not in the blackout. Before any await:
                # no freeze can be asked for before it exists.
                self.barrier = ReleaseBarrier(self.root)
                await self.control_loop(nursery.cancel_scope)
            with trace.span("unmount", "kernel"):
                mount.unmount()
        if self.handed_over:  # (the machine may kill us once it has this)
            recorder = trace.recorder()
            self._send(Unmounted(recorder.export() if recorder is not None else ""))
        log.info("unmounted %s", self.root)

    def _send(self, message, fds: dict | None = None) -> None:
        blocking = self.sock.getblocking()
        self.sock.setblocking(True)
        try:
            protocol.send(self.sock, message, fds)
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
                message, fds = protocol.recv(self.sock)
            except BlockingIOError:
                continue
            except protocol.ProtocolError as e:  # answered, logged, and served on
                log.error("control message rejected: %s", e)
                self._send(Error(f"bad request: {e}"))
                continue
            if message is None:  # a kernel without a machine stops
                log.warning("machine went away; shutting down")
                cancel.cancel()
                return
            if isinstance(message, Reboot):
                self._watch_update(message)
                with trace.span("let pending releases land", "kernel"):
                    await self.settle_releases()
            try:
                if self.obey(message, cancel, fds):
                    return
            except OSError as e:  # a reply that could not be sent must not stop the kernel
                log.error("control message %s: %s", message.TAG, e)
            finally:
                trace.watch(None)
                protocol.close_fds(fds)  # what a request kept, it copied

    def _watch_update(self, message: Reboot) -> None:
        """Open the update's trace window; send progress if someone watches it."""
        recorder = trace.recorder()
        if recorder is not None:
            recorder.begin(self.personality.parts.liveupdate_number + 1)
        if message.progress_ms is not None:
            throttle = trace.Throttle(message.progress_ms)

            def report(what: str, done: int, total: int) -> None:
                if throttle.due(what):
                    self._send(Progress(what, done, total))

            trace.watch(report)

    async def settle_releases(self) -> None:
        """Let every close(2) that returned before the live update was asked for take
        effect first. FUSE sends RELEASE in the background after close returns; a request
        of our own to the mount, queued behind them, comes back only once they are read
        and (their handlers never wait) done."""
        if self.barrier is not None:
            await self.barrier.wait()

    def obey(self, message, cancel: trio.CancelScope, fds: dict | None = None) -> bool:
        """Carry out one command of the machine; True when the kernel is done serving."""
        if isinstance(message, StatusRequest):
            self._send(KernelStatus({"pid": os.getpid(), **self.personality.status()}))
        elif isinstance(message, KhoDumpRequest):
            dump = self.kho_dump(message.which, message.format)
            self._send(KhoDumpReply(text=dump.get("text", ""), tree=dump.get("json"))
                       if dump["ok"] else Error(dump["error"]))
        elif isinstance(message, Shutdown):
            self.personality.close()  # devices run on in the machine
            self._send(Ok())
            cancel.cancel()
            return True
        elif isinstance(message, Reboot):
            return self.reboot(cancel)
        elif isinstance(message, TraceFlush):
            recorder = trace.recorder()
            if recorder is not None:
                recorder.flush()
            self._send(Ok())
        elif isinstance(message, (KvmRegister, KvmRetrieve)):
            self.kvm_request(message, fds or {})
        else:
            self._send(Error(f"{message.TAG} is not a request a kernel takes"))
        return False

    def kvm_request(self, message, fds: dict) -> None:
        """A VMM's request to the kvm subsystem (RFC profiles), forwarded by the machine."""
        handler = getattr(self.personality, "kvm_request", None)
        if handler is None:
            self._send(Error(f"{self.personality.name} has no kvm subsystem (the subsystem "
                             "API is the RFCs'; mainline VMMs preserve their VMs in sessions)",
                             errnos.EOPNOTSUPP))
            return
        try:
            reply, reply_fds = handler(message, fds)
        except LuoError as e:
            self._send(Error(e.reason, e.errno))
            return
        try:
            self._send(reply, reply_fds)
        finally:
            protocol.close_fds(reply_fds)

    def reboot(self, cancel: trio.CancelScope) -> bool:
        """The old kernel's half of a live update: freeze, hand over, stop serving."""
        t0 = time.perf_counter()
        try:
            with trace.span("freeze", "kernel"):
                handover, fds = self.personality.freeze()
        except LuoError as e:
            log.warning("live update refused: %s", e)
            recorder = trace.recorder()
            if recorder is not None:
                recorder.flush()
            self._send(Error(str(e), e.errno))
            return False
        t1 = time.perf_counter()
        if "keeper.die" in self.faults and self.personality.parts.store.keepers:
            # In the blackout: after the freeze read its records, before the next kernel
            # looks at its keepers.
            self.personality.parts.store.kill_keeper(0)
        fd_count = sum(map(len, fds.values()))
        try:
            with trace.span("send the hand-over", "kernel", files=handover.files, fds=fd_count):
                self._send(handover, fds)
        except OSError:
            self.personality.undo_freeze()
            raise
        log.info("handed over %d file(s) (%d fds): freeze %.1f ms, send %.1f ms",
                 handover.files, fd_count, (t1 - t0) * 1000,
                 (time.perf_counter() - t1) * 1000)
        with trace.span("shut devices down", "kernel"):
            self.personality.after_handover()
        self.faults.check("crash.handed-over")
        self.handed_over = True
        cancel.cancel()
        return True


def preload() -> None:
    """Import now what the boot would import lazily: a next kernel is loaded ahead of
    time so that nothing is imported in the blackout (its ABI comes with the boot)."""
    for name in personalities.names():
        personalities.load(name)
    gc.collect()
    gc.freeze()  # what was imported stays out of the collector's sight


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="luofs-kernel", description=__doc__)
    p.add_argument("--root", required=True)
    p.add_argument("--root-fd", type=int, required=True)
    p.add_argument("--control-fd", type=int, required=True)
    p.add_argument("--device-fd", type=int)
    p.add_argument("--trace-dir", help="where live-update traces go (none: not recorded)")
    args = p.parse_args(argv)
    logging.basicConfig(level=os.environ.get("LUOFS_LOG", "INFO").upper(), stream=sys.stderr,
                        format=f"%(asctime)s kernel[{os.getpid()}] %(name)s %(levelname)s %(message)s")
    limits.raise_fd_limit()
    trace.setup(args.trace_dir, "kernel")
    preload()
    kernel = Kernel(socket.socket(fileno=args.control_fd), args.root, args.device_fd,
                    args.root_fd)
    if not kernel.receive_boot():
        return 1
    try:
        trio.run(kernel.serve)
    except Exception as e:
        log.exception("kernel failed")
        try:
            kernel._send(Failed(str(e)))
        except OSError:
            pass
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The next VMM: started before the freeze in the next kernel's userspace, it takes the
guest over once the next kernel serves.

Its predecessor (agent.py) starts it through the machine (luofs/spawn.py) with one
end of a socket pair as fd 3. It imports everything, says SuccessorLoaded, and
registers as a successor (participants/next/NAME.sock). It learns when the guest
stopped (VmSaved), that an update was cancelled (Unsaved), or that it is not needed
(StandDown: it ends). When the machine says Resume (the next kernel serves, and this
userspace is bound to it), it takes the VM — from its LUO session (mainline) or from
the kvm subsystem that the previous kernel's node told about it (RFC) — starts
QEMU with -incoming defer, loads the state over the very same RAM, continues the
guest, answers the machine, tells a predecessor that lives on (TookOver), and
becomes the VMM: registered, with a successor of its own.

Unhappy paths: nothing was carried (a kexec that was not prepared, a predecessor
that died), QEMU cannot start or refuses the state: the VM is lost; the status says
why, the machine gets the error, and nothing of it is left.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import select
import socket
import sys
import time

from .. import participants, protocol, trace, wire
from ..protocol_vmm import StandDown, SuccessorLoaded, TookOver, Unsaved, VmSaved
from . import carry, qemu, vm_dir
from .agent import SAVE_TIMEOUT, Agent, _ms, write_status

log = logging.getLogger("luofs.vm")


def incoming(root: str, name: str, abi: str, generation: int, peer: socket.socket | None) -> int:
    listener = participants.Listener(wire.state_dir(root), name, successor=True)
    protocol.send(peer, SuccessorLoaded())
    saved: VmSaved | None = None
    agent = None
    while agent is None:
        ready = select.select([s for s in (listener, peer) if s is not None], [], [])[0]
        if peer is not None and peer in ready:
            try:
                message, fds = protocol.recv(peer)
                protocol.close_fds(fds)
            except (protocol.ProtocolError, ConnectionError):
                message = None
            if isinstance(message, VmSaved):
                saved = message
            elif isinstance(message, Unsaved):
                saved = None
            elif isinstance(message, StandDown):
                listener.close()
                return 0
            elif message is None:  # it ended: with its userspace at a kexec, or it died
                peer.close()
                peer = None
        if listener in ready:
            outcome = {}
            op = listener.serve_one(lambda op: _resume(op, root, name, abi, generation, saved,
                                                       outcome, listener))
            if op == "shutdown":
                listener.close()
                return 0
            if op == "resume":
                agent = outcome.get("agent")
                if agent is None:
                    listener.close()
                    return 1
    listener.close()
    if peer is not None:  # a predecessor that lives on ends now
        try:
            protocol.send(peer, TookOver())
        except OSError:
            pass
        peer.close()
    agent.start_successor()  # (its pid goes into the status once it runs)
    agent.serve()
    return 0


def _resume(op: str, root: str, name: str, abi: str, generation: int,
            saved: VmSaved | None, outcome: dict, listener: participants.Listener) -> dict:
    if op != "resume":
        return {"ok": op == "shutdown"}
    t_go = time.monotonic()
    try:
        agent, t = _take_over(root, name, abi, generation)
    except Exception as e:  # the VM is lost: say why, to the machine and in the status
        log.exception("VM %s could not resume", name)
        error = f"VM {name} did not resume: {getattr(e, 'strerror', None) or e}"
        _mark_lost(root, name, error)
        return {"ok": False, "errno": getattr(e, "errno", None) or errno.EIO, "error": error}
    parts = {"retrieve": _ms(t["retrieved"] - t_go), "qemu_start": _ms(t["started"] - t["retrieved"]),
             "load": _ms(t["loaded"] - t["started"]), "cont": _ms(t["cont"] - t["loaded"])}
    agent.last_update = {"pause_ms": None, "accel": agent.machine.accel, "ram": agent.machine.ram,
                         "state_bytes": saved.state_bytes if saved else None, "parts_ms": parts}
    if saved is not None:  # the predecessor said when the guest stopped
        agent.last_update["pause_ms"] = _ms(t["cont"] - saved.t_stop)
        agent.last_update["parts_ms"] = {
            "stop_and_save": _ms(saved.t_saved - saved.t_stop),
            "preserve_state": _ms(saved.t_prepared - saved.t_saved),
            "update_until_go": _ms(t_go - saved.t_prepared), **parts}
    try:  # (the guest runs: off its pause) before the update is done, so the next one has it
        agent.register()
    except (OSError, ValueError) as e:
        log.error("VM %s runs but is not registered: %s", name, e)
        agent.error = f"not registered for the next update: {getattr(e, 'strerror', None) or e}"
    agent.write_status("running", agent.error)  # what the update cost, before anyone is told
    if listener.update and saved is not None:  # before the answer: the trace waits for it
        _trace(root, agent, saved, t_go, t, listener.update, listener.pid)
    outcome["agent"] = agent
    return {"ok": True}


def _trace(root: str, agent: Agent, saved: VmSaved, t_go: float, t: dict, update: int,
           pid: int) -> None:
    """This VM's part of update `update`'s trace (luofs/trace.py): the previous VMM's stop
    and save, then ours, and the guest's whole pause (time.monotonic is the trace's clock).
    Pids are the machine's view (ours in this userspace would collide: both VMMs are
    pid 3 or so in theirs); the previous VMM's is 0 where the machine did not prepare it
    (RFC profiles), and its row then shares ours."""
    name = agent.machine.name
    rec = trace.Recorder(trace.directory(wire.state_dir(root)),
                         f"VMM {name}, generation {agent.generation}")
    rec.begin(update)
    ours = {"pid": pid, "tid": pid} if pid else {}
    old = {"pid": saved.pid, "tid": saved.pid,
           "proc": f"VMM {name}, generation {agent.generation - 1}"} if saved.pid else ours

    def span(what: str, start: float, end: float, **where) -> None:
        rec.add("X", what, "vmm", round(start * 1e9), round((end - start) * 1e9), **where)

    span("stop the guest and save it", saved.t_stop, saved.t_saved, **old)
    span("preserve its state", saved.t_saved, saved.t_prepared, **old)
    span("guest paused", saved.t_stop, t["cont"], **ours)
    span("wait for the update", saved.t_prepared, t_go, **ours)
    span("retrieve the VM", t_go, t["retrieved"], **ours)
    span("start QEMU", t["retrieved"], t["started"], **ours)
    span("load the state", t["started"], t["loaded"], **ours)
    span("continue the guest", t["loaded"], t["cont"], **ours)
    rec.flush()


def _take_over(root: str, name: str, abi: str, generation: int) -> tuple[Agent, dict]:
    vm, finish = carry.carrier(abi, root).retrieve(root, name)
    t = {"retrieved": time.monotonic()}
    try:
        machine = qemu.Machine(name, vm.ram, vm.accel, vm_dir(root, name), vm.qemu_args)
        agent = Agent(root, machine, vm.ram_fd, generation, abi)
        os.lseek(vm.state_fd, 0, os.SEEK_SET)
        agent.proc, agent.qmp = qemu.start(machine, vm.ram_fd, incoming_fd=vm.state_fd,
                                           log=agent.log_file)
        t["started"] = time.monotonic()  # (its monitor has answered: loading has begun)
        try:
            agent.qmp.wait_migration("migrate-incoming", SAVE_TIMEOUT)
            t["loaded"] = time.monotonic()
            agent.qmp.execute("cont")
            t["cont"] = time.monotonic()
        except BaseException:
            qemu.stop(agent.proc)
            raise
        finish()
    except BaseException:
        os.close(vm.ram_fd)
        raise
    finally:
        os.close(vm.state_fd)
    return agent, t


def _mark_lost(root: str, name: str, error: str) -> None:
    directory = vm_dir(root, name)
    try:
        with open(os.path.join(directory, "status.json")) as f:
            status = json.load(f)
    except (OSError, ValueError):
        status = {"name": name}
    status.update(state="lost", error=error, qemu_pid=None, successor_pid=None)
    write_status(directory, status)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="luofs-vm-successor", description=__doc__)
    p.add_argument("--root", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--abi", default="mainline")
    p.add_argument("--generation", type=int, required=True)
    p.add_argument("--peer-fd", type=int, required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=os.environ.get("LUOFS_LOG", "INFO").upper(), stream=sys.stderr,
                        format=f"%(asctime)s vm-successor[{os.getpid()}] %(levelname)s %(message)s")
    return incoming(args.root, args.name, args.abi, args.generation,
                    socket.socket(fileno=args.peer_fd))


if __name__ == "__main__":
    sys.exit(main())

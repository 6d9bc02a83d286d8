"""The VMM of one luofs VM: it keeps a guest running through every live update.

Fresh start: guest RAM is a memfd preserved as TOKEN_RAM of session "vm-NAME" (with the
VM's description as TOKEN_CONFIG), QEMU maps it shared, the agent registers as an
update participant (luofs/participants.py) and starts its successor — the next VMM,
imported and waiting, as the next kernel is.

    prepare  stop the guest; save vCPU and device state with x-ignore-shared (RAM is
             not sent) into a memfd; preserve it as TOKEN_STATE
    cancel   the update was refused: resume the guest, preserve afresh
    resume   the next kernel serves: tell the successor to go; once the guest runs
             there, answer the machine, then end this QEMU (its teardown is no
             longer in anybody's way)

The successor retrieves the session, starts QEMU with -incoming defer, loads the state
over the preserved RAM, resumes the guest and FINISHes; then it is the agent, with a
successor of its own. Unhappy paths: QEMU dies (the agent ends and unregisters);
prepare fails (the guest is resumed and the update refused with the errno); the
successor cannot resume (the VM is lost: its status and log say why).
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import select
import socket
import subprocess
import sys
import time

from .. import participants, trace, wire
from ..client import LiveUpdate, Session
from . import qemu, vm_dir
from .qmp import QmpError

log = logging.getLogger("luofs.vm")

TOKEN_RAM, TOKEN_STATE, TOKEN_CONFIG = 1, 2, 3
LOADED = b"loaded"
SAVE_TIMEOUT = 60.0
DEVICE_BUSY_WAIT = 10.0  # /dev/liveupdate has one opener at a time


def session_name(name: str) -> str:
    return f"vm-{name}"


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def _device(root: str) -> LiveUpdate:
    deadline = time.monotonic() + DEVICE_BUSY_WAIT
    while True:
        try:
            return LiveUpdate(root)
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.005)


class Agent:
    def __init__(self, root: str, machine: qemu.Machine, ram: int, generation: int):
        self.root = root
        self.machine = machine
        self.ram = ram
        self.generation = generation
        self.session: Session | None = None
        self.proc: subprocess.Popen | None = None
        self.qmp = None
        self.successor: subprocess.Popen | None = None
        self.successor_sock: socket.socket | None = None
        self.listener: participants.Listener | None = None
        self.prepared: dict | None = None  # timestamps of a prepared update
        self.last_update: dict | None = None
        self.error: str | None = None  # why it stopped, when it was not asked to
        self.handed_over = False  # the successor was told to go: the VM is its now
        self.log_file = open(os.path.join(machine.directory, "agent.log"), "ab")

    # -- life in this kernel --------------------------------------------------------------
    def preserve(self) -> None:
        config = {"name": self.machine.name, "ram": self.machine.ram, "accel": self.machine.accel,
                  "extra": list(self.machine.extra), "generation": self.generation}
        with _device(self.root) as lu:
            session = lu.create_session(session_name(self.machine.name))
        try:
            session.preserve_fd(self.ram, TOKEN_RAM)
            session.preserve_bytes(TOKEN_CONFIG, json.dumps(config).encode())
        except BaseException:
            session.close()
            raise
        self.session = session

    def spawn_successor(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.successor = subprocess.Popen(
            [sys.executable, "-m", "luofs.vm.agent", "--root", self.root, "--name",
             self.machine.name, "--incoming", "--go-fd", str(theirs.fileno())],
            pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=self.log_file,
            stderr=self.log_file)
        theirs.close()
        self.successor_sock = ours
        self.successor_ready = False

    def successor_loaded(self, timeout: float) -> None:
        """Respawn a successor that died, and wait until it has imported everything."""
        if self.successor is None or self.successor.poll() is not None:
            if self.successor is not None:
                self.successor.wait()
                self.successor_sock.close()
            self.spawn_successor()
        if self.successor_ready:
            return
        self.successor_sock.settimeout(timeout)
        try:
            if self.successor_sock.recv(16) != LOADED:
                raise OSError(errno.EIO, "the next VMM died while loading")
        finally:
            self.successor_sock.settimeout(None)
        self.successor_ready = True

    def write_status(self, state: str, error: str | None = None) -> None:
        status = {"name": self.machine.name, "state": state, "error": error,
                  "generation": self.generation, "accel": self.machine.accel,
                  "ram": self.machine.ram, "agent_pid": os.getpid(),
                  "qemu_pid": self.proc.pid if self.proc else None,
                  "successor_pid": self.successor.pid if self.successor else None,
                  "serial_log": self.machine.serial_log,
                  "serial_socket": self.machine.serial_socket,
                  "last_update": self.last_update}
        path = os.path.join(self.machine.directory, "status.json")
        with open(path + ".tmp", "w") as f:
            json.dump(status, f, indent=1)
        os.replace(path + ".tmp", path)

    # -- the participant's answers --------------------------------------------------------
    def handle(self, op: str) -> dict:
        if op == "prepare":
            return self.prepare()
        if op == "cancel":
            return self.cancel()
        if op == "resume":
            return self.resume()
        if op == "shutdown":
            self.running = False
            return {"ok": True}
        return {"ok": False, "errno": errno.EINVAL, "error": f"unknown request {op!r}"}

    def prepare(self) -> dict:
        if self.prepared is not None:
            return {"ok": True}
        self.successor_loaded(60.0)  # before the guest stops: not in its pause
        t_stop = time.monotonic()
        self.qmp.execute("stop")
        state = os.memfd_create(f"luofs-vm-state:{self.machine.name}", os.MFD_CLOEXEC)
        try:
            try:
                self.qmp.execute("getfd", fds=[state], fdname="luofs-state")
                self.qmp.migrate("migrate", SAVE_TIMEOUT, uri="fd:luofs-state")
                t_saved = time.monotonic()
                self.session.preserve_fd(state, TOKEN_STATE)
            except (OSError, QmpError) as e:
                self.qmp.execute("cont")
                return {"ok": False, "errno": getattr(e, "errno", None) or errno.EIO,
                        "error": f"VM {self.machine.name}: {e}"}
            self.prepared = {"t_stop": t_stop, "t_saved": t_saved,
                             "t_prepared": time.monotonic(), "state_bytes": os.fstat(state).st_size,
                             "update": self.listener.update, "pid": os.getpid(),
                             "generation": self.generation}
        finally:
            os.close(state)
        return {"ok": True}

    def cancel(self) -> dict:
        if self.prepared is None:
            return {"ok": True}
        self.qmp.execute("cont")  # the guest first; the session can be rebuilt while it runs
        self.prepared = None
        self.session.close()  # (unpreserves the state) and preserve afresh
        self.session = None
        self.preserve()
        self.write_status("running")
        return {"ok": True}

    def resume(self) -> dict:
        if self.prepared is None:
            return {"ok": False, "errno": errno.EINVAL, "error": "resume without prepare"}
        self.listener.close()  # the successor registers under the same name
        self.listener = None
        wire.send(self.successor_sock, {"op": "go", "times": self.prepared})
        self.handed_over = True
        self.successor_sock.settimeout(participants.RESUME_TIMEOUT)
        try:
            reply, _fds = wire.recv(self.successor_sock)
        except OSError as e:
            reply = {"ok": False, "error": f"the next VMM did not answer: {e}"}
        reply = reply or {"ok": False, "error": "the next VMM died"}
        if not reply.get("ok"):  # the guest is lost: its RAM is the next kernel's now
            self.write_status("lost", reply.get("error"))
        self.running = False  # this agent's life ends with this kernel's userspace
        return reply

    def after_resume(self) -> None:
        """The guest runs: make it ready for the next update (off the pause)."""
        self.preserve()
        self.spawn_successor()
        self.listener = participants.Listener(wire.state_dir(self.root), self.machine.name)
        self.write_status("running")

    # -- the loop ---------------------------------------------------------------------------
    def serve(self) -> None:
        self.running = True
        qemu_exit = os.pidfd_open(self.proc.pid)
        try:
            while self.running:
                ready = select.select([self.listener, qemu_exit], [], [], 5.0)[0]
                if qemu_exit in ready:
                    self.error = f"QEMU exited with status {self.proc.wait()}"
                    log.error("VM %s: %s", self.machine.name, self.error)
                    return
                if self.listener in ready:
                    self.listener.serve_one(self.handle)
        finally:
            os.close(qemu_exit)
            self.end()

    def end(self) -> None:
        """Everything this agent started, by pid; its session fd (dead after a kexec)."""
        if self.listener is not None:
            self.listener.close()
        if self.successor is not None and not self.handed_over:
            qemu.stop(self.successor)  # it was never told to go
        t = time.monotonic()
        if self.proc is not None:
            qemu.stop(self.proc)
        teardown = _ms(time.monotonic() - t)
        if self.session is not None:
            try:
                self.session.close()
            except OSError:
                pass
        if not self.handed_over:  # (after that, the status is the successor's)
            self.write_status("stopped", self.error)
        log.info("VM %s: this VMM ends; its QEMU's teardown took %.1f ms", self.machine.name,
                 teardown)


# -- the successor: the VMM of the next kernel ------------------------------------------------
def incoming(root: str, name: str, go: socket.socket) -> int:
    go.send(LOADED)
    message, _fds = wire.recv(go)
    if message is None or message.get("op") != "go":
        return 0  # its predecessor ended without an update: nothing to take over
    t_go = time.monotonic()
    times = message["times"]
    try:
        agent, parts = _take_over(root, name)
    except Exception as e:  # the VM is lost: say why, to the old agent and in the status
        log.exception("VM %s could not resume", name)
        wire.send(go, {"ok": False, "errno": getattr(e, "errno", None) or errno.EIO,
                       "error": f"VM {name} did not resume: {e}"})
        return 1
    t = parts.pop("t")
    agent.last_update = {
        "pause_ms": _ms(t["cont"] - times["t_stop"]), "accel": agent.machine.accel,
        "ram": agent.machine.ram, "state_bytes": times["state_bytes"],
        "parts_ms": {"stop_and_save": _ms(times["t_saved"] - times["t_stop"]),
                     "preserve_state": _ms(times["t_prepared"] - times["t_saved"]),
                     "update_until_go": _ms(t_go - times["t_prepared"]),
                     "retrieve": _ms(t["retrieved"] - t_go),
                     "qemu_start": _ms(t["started"] - t["retrieved"]),
                     "load": _ms(t["loaded"] - t["started"]),
                     "cont": _ms(t["cont"] - t["loaded"])}}
    agent.write_status("running")  # what this update cost, before anyone is told it is done
    _trace(root, agent, times, t_go, t)  # before the answer: the update waits for it
    wire.send(go, {"ok": True, **agent.last_update})
    go.close()
    agent.after_resume()
    agent.serve()
    return 0


def _trace(root: str, agent: Agent, times: dict, t_go: float, t: dict) -> None:
    """This VM's part of the update's trace (luofs/trace.py): the previous VMM's stop and
    save, then ours, and the guest's whole pause (time.monotonic is the trace's clock)."""
    if not times.get("update"):
        return
    name = agent.machine.name
    rec = trace.Recorder(os.path.join(wire.state_dir(root), trace.DIRECTORY), f"VMM {name}, "
                         f"generation {agent.generation}")
    rec.begin(times["update"])
    old = {"pid": times["pid"], "tid": times["pid"],
           "proc": f"VMM {name}, generation {times['generation']}"}

    def span(what: str, start: float, end: float, **where) -> None:
        rec.add("X", what, "vmm", round(start * 1e9), round((end - start) * 1e9), **where)

    span("stop the guest and save it", times["t_stop"], times["t_saved"], **old)
    span("preserve its state", times["t_saved"], times["t_prepared"], **old)
    span("guest paused", times["t_stop"], t["cont"])
    span("wait for the update", times["t_prepared"], t_go)
    span("retrieve the session", t_go, t["retrieved"])
    span("start QEMU", t["retrieved"], t["started"])
    span("load the state", t["started"], t["loaded"])
    span("continue the guest", t["loaded"], t["cont"])
    rec.flush()


def _take_over(root: str, name: str) -> tuple[Agent, dict]:
    # /dev/liveupdate closes once the guest runs: closing a FUSE file waits for its flush
    with _device(root) as lu, lu.retrieve_session(session_name(name)) as session:
        ram = session.retrieve_fd(TOKEN_RAM)
        state = session.retrieve_fd(TOKEN_STATE)
        config = json.loads(session.retrieve_bytes(TOKEN_CONFIG))
        t = {"retrieved": time.monotonic()}
        machine = qemu.Machine(name, config["ram"], config["accel"], vm_dir(root, name),
                               tuple(config["extra"]))
        agent = Agent(root, machine, ram, config["generation"] + 1)
        os.lseek(state, 0, os.SEEK_SET)
        agent.proc, agent.qmp = qemu.start(machine, ram, incoming_fd=state, log=agent.log_file)
        t["started"] = time.monotonic()  # (its monitor has answered: loading has begun)
        try:
            agent.qmp.wait_migration("migrate-incoming", SAVE_TIMEOUT)
            t["loaded"] = time.monotonic()
            agent.qmp.execute("cont")
            t["cont"] = time.monotonic()
        except BaseException:
            qemu.stop(agent.proc)
            raise
        finally:
            os.close(state)
        session.finish()
    return agent, {"t": t}


# -- a fresh VM ---------------------------------------------------------------------------------
def fresh(root: str, machine: qemu.Machine) -> Agent:
    """A new VM, running and registered; its RAM preserved from the start."""
    probe = participants.socket_path(wire.state_dir(root), machine.name)
    if os.path.exists(probe):
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
            try:
                s.connect(probe)
                raise FileExistsError(errno.EEXIST, f"VM {machine.name!r} already runs on {root}")
            except (ConnectionRefusedError, FileNotFoundError):
                pass  # a dead one's: Listener replaces it
    os.makedirs(machine.directory, exist_ok=True)
    open(machine.serial_log, "w").close()  # a new VM's log starts empty
    ram = os.memfd_create(f"luofs-vm-ram:{machine.name}", os.MFD_CLOEXEC)
    os.ftruncate(ram, machine.ram)
    agent = Agent(root, machine, ram, 0)
    try:
        agent.preserve()
        agent.proc, agent.qmp = qemu.start(machine, ram, log=agent.log_file)
        agent.spawn_successor()
        agent.listener = participants.Listener(wire.state_dir(root), machine.name)
        agent.write_status("running")
    except BaseException:
        agent.end()
        raise
    return agent


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="luofs-vm-agent", description=__doc__)
    p.add_argument("--root", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--ram", type=int)
    p.add_argument("--accel", choices=["kvm", "tcg"])
    p.add_argument("--ready-fd", type=int)
    p.add_argument("--incoming", action="store_true")
    p.add_argument("--go-fd", type=int)
    p.add_argument("extra", nargs="*")
    args = p.parse_args(argv)
    logging.basicConfig(level=os.environ.get("LUOFS_LOG", "INFO").upper(), stream=sys.stderr,
                        format=f"%(asctime)s vm-agent[{os.getpid()}] %(levelname)s %(message)s")
    if args.incoming:
        return incoming(args.root, args.name, socket.socket(fileno=args.go_fd))
    ready = os.fdopen(args.ready_fd, "w")
    try:
        machine = qemu.Machine(args.name, args.ram, args.accel, vm_dir(args.root, args.name),
                               tuple(args.extra))
        agent = fresh(args.root, machine)
    except (OSError, QmpError, qemu.QemuMissing) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        ready.write(f"error: {reason}\n")  # (the client's strerror names the call)
        return 1
    ready.write(f"ready {os.getpid()}\n")
    ready.close()
    agent.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Each kernel's userspace: its namespaces and PID 1 (machine side), and joining it (`luofs run`).

After a kernel serves ROOT the machine starts luofs-userspace (luofs/native.py), which
makes a PID namespace and a mount namespace where the kernel's files appear at their
real paths (/dev/liveupdate, /proc/cmdline, /sys/kernel/liveupdate, the KHO debugfs),
both owned by a user namespace that maps every id to itself (root for files, but not
for the host's file systems or its reboot), and runs PID 1: the `--init` program, or
a reaper. `luofs run` joins that userspace (setns on PID 1's pidfd) and runs a
program there with the shim. A kexec ends the
old userspace right after the freeze, as a reboot does: the machine kills PID 1 and
the kernel kills every process of the namespace; once the next kernel serves, the
old userspace is waited for (no process of it is left) and the next one starts, with
the next `--init`. `luofs kexec --keep-userspace` opts out (a harness that drives the
update from inside): the userspace lives on and its emulated files are bound again
to the next kernel's mount (a deviation: on a machine nothing survives a kexec).

When `--init` exits the userspace is over (a real kernel would panic): the kernel
keeps serving so its state can be inspected, `luofs status` shows how init ended,
and `luofs run` refuses with that reason until the next kexec starts a new one.

Unhappy paths: without root, or without the launcher built, there is no userspace
(status says why; `luofs run` warns and runs its program as a plain process, `luofs
boot --init` refuses); a launcher that fails reports "error: ..."
and nothing of it is left; one that does not end within USERSPACE_STOP_TIMEOUT of
its PID 1's SIGKILL is killed itself (its death signal takes PID 1's namespace).
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import subprocess
import sys

from . import freezer, native, trace
from .freezer import Cgroup
from .waitfd import readable

log = logging.getLogger("luofs.userspace")
_SERIAL = itertools.count()  # cgroup names: one per userspace the machine makes

USERSPACE_START_TIMEOUT = 10.0
USERSPACE_STOP_TIMEOUT = 10.0
CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000


def launcher_path() -> str:
    return native.path(native.USERSPACE)


class Userspace:
    """The machine's handle on the current kernel's userspace (one at a time)."""

    def __init__(self, root: str, state_dir: str, init: list[str] | None = None,
                 env: dict[str, str] | None = None):
        self.root = root
        self.log_path = os.path.join(state_dir, "userspace.log")
        self.init = list(init) if init else None
        self.env = dict(env or {})
        self.proc: subprocess.Popen | None = None
        self.pid1: int | None = None
        self.held = False  # made ahead of time: PID 1 waits for release()
        self.cgroup: Cgroup | None = None  # frozen at a kexec, so its end can wait
        self._frozen = False
        self._pidfd: int | None = None
        self.kernel: int | None = None
        self.ended: str | None = None  # how the last userspace ended, once it has
        self._killed_for: str | None = None
        self.keep_next = False  # `luofs kexec --keep-userspace`: the next kexec spares it

    # ---- life cycle -------------------------------------------------------------

    def start(self, kernel: int, debugfs: bool = False, hold: bool = False) -> None:
        """Start kernel #`kernel`'s userspace; on failure there is none (status says why).
        `hold`: made ahead of time for the next kernel; PID 1 waits for release()."""
        self.kernel, self.pid1, self.ended, self._killed_for = kernel, None, None, None
        self.held = False
        launcher = launcher_path()
        if os.geteuid() != 0:
            self.ended = "none: namespaces need root"
            return
        if not os.path.exists(launcher):
            self.ended = f"none: {launcher} is not built ({native.how_to_build()})"
            return
        self.cgroup = Cgroup.make(f"{freezer.PREFIX}{os.getpid()}-{next(_SERIAL)}")
        argv = [launcher, self.root, *(["--debugfs"] if debugfs else []),
                *(["--hold"] if hold else []),
                *(["--cgroup", self.cgroup.path] if self.cgroup else [])]
        for name, value in self.env.items():
            argv += ["--setenv", f"{name}={value}"]
        argv += ["--", *self.init] if self.init else []
        with open(self.log_path, "ab") as log_file:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=log_file)
        word = self._line(USERSPACE_START_TIMEOUT)
        if not word.startswith("pid "):
            self._collect(word or "error: the launcher said nothing")
            log.error("kernel #%d has no userspace: %s", kernel, self.ended)
            return
        self.pid1 = int(word.split()[1])
        self._pidfd = os.pidfd_open(self.pid1)  # a zombie at worst: its parent waits for...
        if hold:
            self.held = True
        else:
            self.proc.stdin.close()  # ...this, before it reaps PID 1
        log.info("kernel #%d's userspace: PID 1 is %d (%s)", kernel, self.pid1,
                 " ".join(self.init) if self.init else "reaper")

    def release(self, kernel: int, debugfs: bool) -> None:
        """A userspace made ahead of time becomes kernel #`kernel`'s: its files are bound
        to that kernel's mount, and a held PID 1 goes on (becomes init or the reaper)."""
        if not self.running():
            return
        self.kernel = kernel
        _rebind(self.pid1, self.root, debugfs)
        if self.held:
            self.held = False
            try:
                self.proc.stdin.write(b"g")
                self.proc.stdin.close()
            except OSError:
                pass  # it ended meanwhile: running() will say how
        log.info("kernel #%d's userspace (made ahead of time): PID 1 is %d", kernel, self.pid1)

    def end(self, why: str = "live update") -> None:
        """No process of it runs from now on: at a live update its cgroup is frozen (and
        killed by wait(), when the machine can spare the CPU), else PID 1 is killed (the
        kernel then kills the whole namespace). Returns at once."""
        if self.keep_next and why == "live update":
            return
        if self._pidfd is not None and self.running():
            self._killed_for = why
            if why == "live update" and self.cgroup is not None and self.cgroup.freeze():
                self._frozen = True
            else:
                self._kill()
        if self.held:  # its launcher waits for the word to release PID 1: never now
            self.held = False
            self.proc.stdin.close()

    def _kill(self) -> None:
        try:
            signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def wait(self) -> None:
        """Until every process of the ended userspace is gone."""
        if self.proc is None:
            return
        if self._frozen and self._pidfd is not None:
            self._frozen = False
            self._kill()
        try:
            self.proc.wait(USERSPACE_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.error("userspace of kernel #%s did not end; killing its launcher", self.kernel)
            self.proc.kill()
            self.proc.wait()
        self._collect(self._line(1.0))

    def stop(self, why: str) -> None:
        self.keep_next = False
        self.end(why)
        self.wait()

    def after_kexec(self, kernel: int, debugfs: bool) -> None:
        """The next kernel serves: the old userspace is gone (or kept), start the next."""
        if self.keep_next and self.running():
            self.keep_next = False
            self.kernel = kernel
            _rebind(self.pid1, self.root, debugfs)
            return
        self.keep_next = False
        with trace.span("old userspace ends", "machine"):
            self.wait()
        with trace.span("start the next userspace", "machine"):
            self.start(kernel, debugfs)

    # ---- state ---------------------------------------------------------------------

    def running(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            self._collect(self._line(0.5))
        return self.proc is not None and self.pid1 is not None

    def status(self) -> dict:
        running = self.running()
        return {"kernel": self.kernel, "pid": self.pid1 if running else None,
                "init": self.init, "running": running, "ended": self.ended,
                "log": self.log_path}

    def _line(self, timeout: float) -> str:
        out = self.proc.stdout
        if not readable(out, timeout):
            return ""
        return out.readline().decode(errors="replace").strip()

    def _collect(self, word: str) -> None:
        """The launcher is done (or must be): record how its PID 1 ended."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
        if proc.stdin is not None:
            proc.stdin.close()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        if self.cgroup is not None:
            self.cgroup.remove()
            self.cgroup = None
        self.pid1 = None
        what = "init" if self.init else "PID 1"
        if word.startswith("exit "):
            self.ended = f"{what} exited with status {word.split()[1]}"
        elif word.startswith("signal "):
            sig = int(word.split()[1])
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else sig
            self.ended = f"{what} was killed by {name}"
        else:
            self.ended = word.removeprefix("error: ") or f"the launcher ended ({proc.returncode})"
        if self._killed_for is not None:
            self.ended += f" (ended by the {self._killed_for})"
        log.info("userspace of kernel #%s ended: %s", self.kernel, self.ended)


def _rebind(pid1: int, root: str, debugfs: bool) -> None:
    argv = [launcher_path(), "--rebind", str(pid1), root]
    result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if result.returncode != 0:
        log.error("cannot carry the userspace to the next kernel: %s", result.stdout.strip())


# ---- `luofs run`: join the current userspace ----------------------------------------

def join(pid1: int) -> int:
    """Enter PID 1's user and mount namespaces and, for our children, its PID namespace;
    returns a pidfd of PID 1 (it tells run_joined whether the userspace ended)."""
    import ctypes  # here: the machine imports this module and never needs it

    cwd = os.getcwd()
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid1)
    if libc.setns(pidfd, CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID) != 0:
        e = ctypes.get_errno()
        os.close(pidfd)
        raise OSError(e, os.strerror(e))
    try:
        os.chdir(cwd)  # setns took us to the namespace's root; the host's paths are all here
    except OSError:
        os.chdir("/")
    return pidfd


def run_joined(argv: list[str], env: dict[str, str], pid1_fd: int, name: str,
               cgroup: str | None = None) -> int:
    """Fork a child (it is born in the joined PID namespace, and joins `cgroup`: the
    userspace's, so a kexec freezes it with the rest), exec argv (which runs program
    `name`) there, relay signals, and return its status as a shell reports it (128 +
    signal)."""
    pid = os.fork()
    if pid == 0:
        try:
            freezer.join(cgroup)
            os.execvpe(argv[0], argv, env)
        except OSError as e:
            print(f"luofs run: {argv[0]}: {e.strerror}", file=sys.stderr)
            os._exit(127)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, lambda s, _f: os.kill(pid, s))
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except ChildProcessError:
            return 1
        except InterruptedError:
            continue
    if not os.WIFSIGNALED(status):
        return os.WEXITSTATUS(status)
    # PID 1 waits for us to reap its namespace's last process before it ends itself.
    if os.WTERMSIG(status) == signal.SIGKILL and readable(pid1_fd, 2.0):
        print(f"luofs run: {name} ended with its userspace (a live update, a shutdown, "
              "or its init exiting)", file=sys.stderr)
    return 128 + os.WTERMSIG(status)


# ---- the machine's control requests that involve the userspace ----------------------

def kexec(machine, request):
    """KexecRequest: the live update with the loaded (or given) command line; the old
    userspace ends after the freeze, the next one starts once the next kernel serves. A
    refused freeze changes nothing."""
    from . import machine_kexec
    from .protocol import KexecDone

    refused = machine_kexec.refusal(machine)
    if refused is not None:  # before a trace is begun: the update under way keeps its own
        return refused
    machine.updates.begin(machine.kernel.number + 1, machine.client, request.progress_ms)
    reply = None
    try:
        reply = _kexec(machine, request)
    finally:
        if not isinstance(reply, KexecDone):
            machine.updates.end(None)
        # else the successors' part belongs to this update: it ends in Machine._updated
    return reply


def _kexec(machine, request):
    import dataclasses

    from .kexec_image import ImageError
    from .protocol import Error, KexecDone

    running = machine.kernel_config.cmdline
    try:
        machine.kernel_config = machine.image.next_config(machine.kernel_config, request.cmdline)
    except ImageError as e:
        return Error(str(e), e.errno)
    machine.userspace.keep_next = request.keep_userspace
    try:
        reply = machine.kexec(request)
    except BaseException:  # the next kernel did not load: nothing was frozen
        machine.kernel_config = dataclasses.replace(machine.kernel_config, cmdline=running)
        machine.userspace.keep_next = False
        raise
    if not isinstance(reply, KexecDone):
        machine.userspace.keep_next = False
        if machine.kernel is not None:  # the freeze refused: the old kernel keeps serving
            machine.kernel_config = dataclasses.replace(machine.kernel_config, cmdline=running)
        else:  # no kernel: nothing may live on in a userspace of a dead one
            stop_all(machine, "kernel panic")
        return reply
    machine.image.unload()  # a kexec consumes the loaded image
    machine.updates.phase("starting the next userspace")
    if machine.old_userspace is None:  # none was made ahead of time: start it now
        machine.userspace.after_kexec(machine.kernel.number, machine.kernel_config.debugfs)
    machine.reply_gate = machine.resuming.gate  # answered once the successors took over
    return reply


def next_userspace(machine) -> Userspace:
    """The next kernel's userspace, made now (PID 1 held) unless it exists: programs
    that must start before the freeze, as the next kernel is loaded before it, start
    there (luofs/spawn.py). It sees the running kernel's files until adopt_next()."""
    nxt = machine.next_userspace
    if nxt is None or not nxt.running():
        current = machine.userspace
        nxt = Userspace(machine.root, machine.state, current.init, current.env)
        number = (machine.kernel.number if machine.kernel is not None else 0) + 1
        nxt.start(number, machine.kernel_config.debugfs, hold=True)
        machine.next_userspace = nxt
    return nxt


def adopt_next(machine) -> None:
    """The next kernel serves: a userspace made for it ahead of time gets its files
    and its PID 1 goes on; it becomes the current one (the old one ended at the
    freeze; kexec() collects it). With --keep-userspace the old one stays current and
    the made one stays the next (bound to this kernel too)."""
    nxt = machine.next_userspace
    if nxt is None or not nxt.running():
        machine.next_userspace = None
        return
    nxt.release(machine.kernel.number, machine.kernel_config.debugfs)
    if machine.userspace.keep_next:
        return
    machine.old_userspace, machine.userspace = machine.userspace, nxt
    machine.next_userspace = None


def collect_old(machine) -> None:
    """The old userspace, ended at the freeze, is gone (off the pause: its processes'
    end, the old QEMU's teardown say, overlaps the successors' start)."""
    old, machine.old_userspace = machine.old_userspace, None
    if old is not None:
        old.wait()


def stop_all(machine, why: str) -> None:
    """Every userspace of the machine ends: the current one, one made ahead of time."""
    for us in (machine.userspace, machine.next_userspace, machine.old_userspace):
        if us is not None:
            us.stop(why)
    machine.next_userspace = machine.old_userspace = None


def kexec_load(machine, request):
    """KexecLoad: `luofs kexec --load [--cmdline C]` / `--unload` (kexec_file_load)."""
    from .kexec_image import ImageError
    from .protocol import Error, Ok

    try:
        if request.unload:
            machine.image.unload()
        else:
            machine.image.load(request.cmdline)
    except ImageError as e:
        return Error(str(e), e.errno)
    return Ok()

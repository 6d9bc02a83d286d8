"""`luofs shutdown`'s work: stop an instance whatever state it is in, leave nothing behind.

The happy path asks the machine to shut down (it stops its kernel and unmounts) and
waits for it to exit. The machine is known by its pid as the kernel reports the
control socket's peer, never by what it says; its kernels and keepers share its process
group (it leads its own session). If it does not answer (stopped with SIGSTOP, hung) or
does not exit in time, shutdown escalates: SIGTERM and SIGCONT to the group, then
SIGKILL after a grace period, then the mount is detached. The state dir removed at the
end is the one derived from the root (luofs.wire.state_dir), and only if it is a
private directory of its owner holding nothing but what an instance puts there.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat

from . import control, wire
from .waitfd import readable
from .protocol import Error, Shutdown, StatusRequest

EXIT_WAIT = 15.0  # for the machine to exit once it accepted Shutdown
GRACE = 5.0  # between SIGTERM and SIGKILL
STATE_FILES = {"control", "machine.lock", "machine.log", "kernel.log",
               "userspace.log"}  # luofs/userspace.py: what init and PID 1 print
# Directories luofs makes there: update participants' sockets (luofs/participants.py),
# each VM's files (luofs/vm), live-update traces (luofs/trace.py); and each VM's log,
# vm-NAME.log.
STATE_DIRS = {"participants", "vm", "trace"}


def _ours(name: str) -> bool:
    return name in STATE_FILES or name in STATE_DIRS or (
        name.startswith("vm-") and name.endswith(".log"))


class TeardownError(Exception):
    pass


def shutdown(root: str, say=print) -> bool:
    """Stop the instance serving ROOT; True if it had to be forced or a kernel had died
    (its logs are then worth keeping). NoMachine if none serves ROOT."""
    try:
        status, pid = control.exchange(root, StatusRequest(), timeout=10)
    except control.MachineTimeout as e:
        say(f"{e}; stopping it by force")
        stop_group(e.pid, asked=False)
        return True
    panic = bool(getattr(status, "machine", {}).get("panic"))
    try:
        reply, pid = control.exchange(root, Shutdown(), timeout=60)
        asked = not isinstance(reply, Error)
        if not asked:
            say(f"the machine refused to shut down ({reply.error}); stopping it by force")
    except (control.MachineTimeout, control.MachineGone) as e:
        say(f"{e}; stopping it by force")
        asked = False
    clean = stop_group(pid, asked)
    return panic or not clean


def stop_group(pid: int, asked: bool) -> bool:
    """Wait for the machine `pid` to exit (if `asked` to), else escalate; then end what is
    left of its process group. True if it exited of its own accord."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        pgid = None
    group = pgid == pid and pgid != os.getpgrp()  # the machine leads its own group
    kill = (lambda sig: os.killpg(pid, sig)) if group else (lambda sig: os.kill(pid, sig))
    try:
        if asked and _exited(pidfd, EXIT_WAIT):
            clean = True
        else:
            clean = False
            for sig, wait in ((signal.SIGTERM, GRACE), (signal.SIGKILL, EXIT_WAIT)):
                _signal(kill, sig)
                _signal(kill, signal.SIGCONT)  # a stopped process acts on nothing but KILL
                if _exited(pidfd, wait):
                    break
            else:
                raise TeardownError(f"the machine (pid {pid}) outlived SIGKILL")
    finally:
        os.close(pidfd)
    if group:  # its kernel and keepers, if the machine could not stop them
        _signal(lambda sig: os.killpg(pid, sig), signal.SIGKILL)
    return clean


def _exited(pidfd: int, timeout: float) -> bool:
    return readable(pidfd, timeout)


def _signal(kill, sig) -> None:
    try:
        kill(sig)
    except ProcessLookupError:
        pass


def remove_state(root: str) -> str | None:
    """Remove ROOT's state dir (derived, checked); None when done, else why it was kept."""
    path = wire.state_dir(root)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"{path} is not a plain directory ({e.strerror})"
    try:
        owner = os.fstat(fd).st_uid
        if owner != os.geteuid() and os.geteuid() != 0:
            return f"{path} belongs to uid {owner}"
        try:
            wire.check_private_dir(path, owner)
        except PermissionError as e:
            return e.strerror
        names = set(os.listdir(fd))
        strays = sorted(name for name in names if not _ours(name))
        if strays:
            return f"{path} holds files luofs did not put there: {', '.join(strays)}"
        for name in names:
            if name in STATE_DIRS and stat.S_ISDIR(os.lstat(name, dir_fd=fd).st_mode):
                shutil.rmtree(name, dir_fd=fd)  # fd-relative, never following a link
            else:
                os.unlink(name, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(path)
    return None

"""Programs the machine starts inside a kernel's userspace for others (a VMM, its successor).

A program in the old kernel's userspace cannot start one in the next kernel's: that
PID namespace is not below its own, and joining a user namespace takes privilege in
it. The machine can (it made both), so a `Spawn` request asks it: "current" runs the
program in the running kernel's userspace, "next" in the next kernel's, which the
machine makes ahead of time for it (luofs/userspace.py, next_userspace()) and binds
to the next kernel's files at the kexec. native/build/luofs-spawn joins PID 1's
namespaces, forks and execs; the program's parent is then that userspace's PID 1,
and it ends with that userspace, as any of its programs. Without a userspace (no
root, the launcher not built) the program runs as a plain process, as `luofs run`'s do.

Pids: the machine answers with the program's pid as the host sees it. A program
knows its own pid (and its children's) in its namespace only; `host_pid()` finds
the host's name for such a pid, by the namespace's inode, from /proc.

Unhappy paths (Error, nothing started): a userspace that has ended (init exited),
luofs-spawn not built, a program that cannot be executed (the errno's text), a
helper that says nothing in time.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess

from . import native
from .protocol import Error, close_fds
from .protocol_vmm import Spawn, Spawned
from .userspace import next_userspace

log = logging.getLogger("luofs.machine")

SPAWN_TIMEOUT = 10.0


def serve(machine, request: Spawn, fds: dict):
    """The machine's answer to a Spawn: Spawned, or Error."""
    us = machine.userspace if request.where == "current" else next_userspace(machine)
    stdio = (fds.get("stdio") or [None])[0]
    passed = list(fds.get("fds", []))
    if us.pid1 is None and not str(us.ended).startswith("none:"):
        return Error(f"kernel #{us.kernel} has no userspace: {us.ended}")
    helper = native.path(native.SPAWN)
    if not os.path.exists(helper):
        return Error(native.missing(native.SPAWN))
    # Without namespaces (no root), a plain process, as `luofs run` starts then.
    argv = [helper, str(us.pid1 or "-"), *(a for fd in passed for a in ("--fd", str(fd))),
            *(["--cgroup", us.cgroup.path] if us.cgroup else []), "--", *request.argv]
    try:
        proc = subprocess.Popen(argv, env=dict(request.env), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=stdio, pass_fds=passed)
    except OSError as e:
        return Error(f"cannot start {helper}: {e.strerror}", e.errno)
    try:
        out, _ = proc.communicate(timeout=SPAWN_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return Error(f"{request.argv[0]}: the spawn helper said nothing within "
                     f"{SPAWN_TIMEOUT:.0f} s")
    word = out.decode(errors="replace").strip()
    if not word.startswith("pid "):
        return Error(f"{request.argv[0]}: {word.removeprefix('error: ') or 'not started'}")
    log.info("started %s in kernel #%s's userspace (%s): pid %s", request.argv[0], us.kernel,
             request.where, word[4:])
    return Spawned(int(word[4:]), us.pid1)


# ---- the requester's side -------------------------------------------------------------

def spawn(root: str, argv: list[str], where: str = "current", fds=(), stdio: int | None = None,
          env: dict | None = None, timeout: float = 30.0) -> Spawned:
    """Ask the machine serving ROOT to start `argv` in a userspace (see Spawn); `fds`
    become 3, 4, ... OSError with the machine's reason if it cannot."""
    from .control import request_fds

    message = Spawn(tuple(argv), passed_env() if env is None else dict(env), where)
    groups = {"fds": list(fds), **({"stdio": [stdio]} if stdio is not None else {})}
    reply, reply_fds = request_fds(root, message, groups, timeout)
    close_fds(reply_fds)
    if isinstance(reply, Error):
        raise OSError(reply.errno or errno.EIO, reply.error)
    if not isinstance(reply, Spawned):
        raise OSError(errno.EPROTO, f"the machine answered spawn with {reply.TAG}")
    return reply


def passed_env() -> dict[str, str]:
    """What of our environment a program started for us gets: luofs's settings, where
    to find programs and modules (not all of it: a request is at most 4 KiB)."""
    keep = ("PATH", "PYTHONPATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
    return {k: v for k, v in os.environ.items() if k.startswith("LUOFS_") or k in keep}


def pid_namespace(pid: int | str = "self") -> int:
    """The inode that names `pid`'s PID namespace."""
    return os.stat(f"/proc/{pid}/ns/pid").st_ino


def host_pid(namespace: int, pid: int | None) -> int | None:
    """The pid in our namespace of process `pid` of PID namespace `namespace` (None if
    it is gone, or not below ours)."""
    if pid is None or namespace == pid_namespace():
        return pid
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry.name}/ns/pid").st_ino != namespace:
                continue
            with open(f"/proc/{entry.name}/status") as f:
                ns_pids = next(line for line in f if line.startswith("NSpid:")).split()[1:]
        except (OSError, StopIteration):
            continue
        if ns_pids and int(ns_pids[-1]) == pid:
            return int(entry.name)
    return None

"""Start-up figures (issue 11): how long `luofs kexec` / `luofs status` take from process
start to the first byte they send to the machine, and what the machine process imports.

A fake machine listens where the command connects (a temp root of its own, so no
instance is disturbed) and notes when the request arrives; the floor is a bare Python
that connects and sends one byte, run in turn with the command. Children run with
bytecode caching on (in a temp pycache prefix), as an installed luofs does — this
checkout's environment may set PYTHONDONTWRITEBYTECODE, which would time the compiler.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from luofs import protocol, wire
from luofs.client import status

from .common import Row, summarize

FLOOR = ("import socket, sys\n"
         "s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n"
         "s.connect(sys.argv[1]); s.send(b'x'); s.recv(1)\n")


def _env(cache: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = cache
    return env


def _luofs() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "luofs")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "luofs"]


def _first_byte_ms(listener: socket.socket, argv: list[str], env: dict) -> float:
    """From spawning `argv` to its first datagram arriving at `listener`."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    conn, _ = listener.accept()
    with conn:
        conn.recv(wire.MAX_DATAGRAM)
        elapsed = time.perf_counter() - t0
        protocol.send(conn, protocol.Error("the bench's fake machine"))
    proc.wait(30)
    return elapsed * 1000


def first_byte(rounds: int = 30) -> list[Row]:
    tmp = tempfile.mkdtemp(prefix="luofs-bench-")
    env = _env(os.path.join(tmp, "pycache"))
    # a state dir of its own, so the fake machine disturbs no instance
    os.environ["LUOFS_STATE_DIR"] = env["LUOFS_STATE_DIR"] = os.path.join(tmp, "state")
    root = os.path.join(tmp, "root")
    os.mkdir(root)
    address = os.path.join(wire.state_dir(root, create=True), "control")
    samples: dict[str, list[float]] = {"kexec": [], "status": [], "floor": []}
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as listener:
            wire.bind_unix(listener, address)
            listener.listen(4)
            commands = {name: _luofs() + [name, "--root", root] for name in ("kexec", "status")}
            commands["floor"] = [sys.executable, "-c", FLOOR, address]
            for i in range(rounds + 2):  # two warm-up rounds fill the bytecode cache
                for name, argv in commands.items():  # in turn: a drift hits all alike
                    ms = _first_byte_ms(listener, argv, env)
                    if i >= 2:
                        samples[name].append(ms)
    finally:
        del os.environ["LUOFS_STATE_DIR"]
        shutil.rmtree(tmp, ignore_errors=True)
    floor = summarize("python: start, connect, send 1 byte (floor)", samples["floor"], unit="ms")
    return [summarize(f"luofs {name}: start to first byte sent", samples[name],
                      floor.median, unit="ms", target="≤ 40 ms")
            for name in ("kexec", "status")] + [floor]


def status_process(instance, rounds: int = 20) -> list[Row]:
    """Whole-process `luofs status` against a running instance, beside `python -c pass`."""
    tmp = tempfile.mkdtemp(prefix="luofs-bench-")
    env = _env(os.path.join(tmp, "pycache"))
    runs = {"status": _luofs() + ["status", "--root", instance.root],
            "pass": [sys.executable, "-c", "pass"]}
    samples: dict[str, list[float]] = {name: [] for name in runs}
    try:
        for i in range(rounds + 2):
            for name, argv in runs.items():
                t0 = time.perf_counter()
                subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, check=True)
                if i >= 2:
                    samples[name].append((time.perf_counter() - t0) * 1000)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    floor = summarize("python -c pass (whole process)", samples["pass"], unit="ms")
    return [summarize("luofs status (whole process, running instance)", samples["status"],
                      floor.median, unit="ms"), floor]


MACHINE_IMPORTS = ("import sys, time\n"
                   "before = set(sys.modules); t = time.perf_counter()\n"
                   "import luofs.machine\n"
                   "print((time.perf_counter() - t) * 1000, len(set(sys.modules) - before),\n"
                   "      sorted(m for m in sys.modules if m.split('.')[0] in ('pyfuse3', 'trio')\n"
                   "             or m.startswith(('luofs.core', 'luofs.fs'))))\n")


def machine_imports(rounds: int = 10) -> list[Row]:
    """What the machine process imports: module count and time (it must stay small)."""
    tmp = tempfile.mkdtemp(prefix="luofs-bench-")
    env = _env(os.path.join(tmp, "pycache"))
    times, counts = [], []
    try:
        for i in range(rounds + 1):
            out = subprocess.run([sys.executable, "-c", MACHINE_IMPORTS], env=env, check=True,
                                 capture_output=True, text=True).stdout.split(maxsplit=2)
            if i:
                times.append(float(out[0]))
                counts.append(float(out[1]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    kernel_modules = out[2].strip()
    return [summarize("machine process: import luofs.machine", times, unit="ms"),
            summarize("machine process: modules imported", counts, unit="",
                      target=f"kernel modules: {kernel_modules}")]


def run(instance, progress, quick: bool = False) -> list[Row]:
    rows = first_byte(10 if quick else 30)
    rows += status_process(instance, 8 if quick else 20)
    rows += machine_imports(5 if quick else 10)
    assert status(instance.root)["kernel"] is not None  # the instance was served throughout
    for row in rows:
        progress(row)
    return rows

"""The real split: the device host in this process (the machine), each kernel a process of
its own, joined by a device socket; RAM, registers and interrupts cross as fds."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from devices.host import DeviceHost
from devices.ram import RamView
from devices.testing import wait_until
from devices.transport import start_server
from kho import PhysicalMemory

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def run_kernel(host, ram_fd, options) -> dict:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server = start_server(host, ours)
    with theirs:
        result = subprocess.run(
            [sys.executable, str(HERE / "kernel_process.py"), str(ram_fd),
             str(theirs.fileno()), json.dumps(options)],
            pass_fds=[ram_fd, theirs.fileno()], cwd=REPO, capture_output=True, text=True,
            timeout=60, check=False)
    server.join(10)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_live_updates_between_kernel_processes():
    with PhysicalMemory(32 << 20) as ram:
        host = DeviceHost(RamView(os.dup(ram.fd)),
                          "bridge0;dma0@bridge0:rate=20000,ring=1024;dma1@bridge0:rate=2000")
        try:
            dma0 = host.engine("dma0")
            a = run_kernel(host, ram.fd, {"root": None, "run": 0.2, "request": ["dma0"],
                                          "final": False})
            host.kexec(a["preserved"])
            # the blackout: no kernel at all, the device goes on and its interrupts latch
            wait_until(lambda: dma0.counters["irq_pending"] > 0)
            b = run_kernel(host, ram.fd, {"root": a["root"], "run": 0.2, "request": [],
                                          "final": False})
            host.kexec(b["preserved"])
            c = run_kernel(host, ram.fd, {"root": b["root"], "run": 0.1, "request": [],
                                          "final": True})
        finally:
            host.close()
            host.ram.close()
    for kernel in (a, b, c):
        assert kernel["contiguous"]
    key = f"dma0/{dma0.epoch}"
    assert b["report"]["reclaimed"] == c["report"]["reclaimed"] == [
        "pci0000:00/0000:00:01.0", "pci0000:00/0000:00:01.0/0000:01:00.0"]
    # each kernel takes over exactly where the previous one stopped
    assert a["seen"][key][0] == 0
    assert b["seen"][key][0] == a["seen"][key][1] + 1
    assert c["seen"][key][0] == b["seen"][key][1] + 1
    assert c["seen"][key][1] + 1 == dma0.counters["records_written"]
    assert sum(k["seen"][key][2] for k in (a, b, c)) == dma0.counters["records_written"]
    assert c["irq_consumed"]["dma0"] == dma0.counters["irq_raised"]  # lifetime, via KHO

"""Which accelerator QEMU should use: KVM when /dev/kvm can run a guest, TCG otherwise.

Opening /dev/kvm is not enough: on some nested hosts KVM creates VMs and runs
real-mode code, yet an ordinary guest never gets through its firmware. So the probe
boots the test guest itself under KVM and waits for its boot line (a few hundred
ms where KVM works); silence within PROBE_TIMEOUT, or any error, means TCG. The
answer is kept per host boot in CACHE (a probe costs seconds where KVM fails) and
$LUOFS_VM_ACCEL overrides it.
"""

from __future__ import annotations

import os
import select
import subprocess
import time

from . import guest

PROBE_TIMEOUT = 3.0
ENV = "LUOFS_VM_ACCEL"
CACHE = "/run/luofs/vm-accel" if os.access("/run", os.W_OK) else f"/tmp/luofs-vm-accel-{os.getuid()}"


def kvm_runs_guests(qemu: str, timeout: float = PROBE_TIMEOUT) -> bool:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    proc = subprocess.Popen([qemu, "-nodefaults", "-no-user-config", "-display", "none",
                             "-machine", "pc,accel=kvm", "-m", "16M", "-kernel", guest.image(),
                             "-serial", "stdio"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        out, deadline = b"", time.monotonic() + timeout
        while guest.BOOT_MARK not in out and time.monotonic() < deadline:
            if select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))[0]:
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                out += chunk
        return guest.BOOT_MARK in out
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def _boot_id() -> str:
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


def choose(qemu: str) -> str:
    """"kvm" or "tcg"."""
    chosen = os.environ.get(ENV)
    if chosen:
        if chosen not in ("kvm", "tcg"):
            raise ValueError(f"${ENV} must be kvm or tcg, not {chosen!r}")
        return chosen
    boot = _boot_id()
    try:
        with open(CACHE) as f:
            cached_boot, chosen = f.read().split()
        if cached_boot == boot:
            return chosen
    except (OSError, ValueError):
        pass
    chosen = "kvm" if kvm_runs_guests(qemu) else "tcg"
    os.makedirs(os.path.dirname(CACHE), exist_ok=True)
    with open(CACHE + ".tmp", "w") as f:
        f.write(f"{boot} {chosen}\n")
    os.replace(CACHE + ".tmp", CACHE)
    return chosen

"""luofs vm: a real QEMU guest lives through live updates (issue 15).

The guest (native/guest) counts ticks, writes a seeded pattern over its RAM and
re-checks it on demand; these tests read its serial log and sample its RAM from the
host through the memfd the next kernel handed back. Skipped without QEMU.
"""

import errno
import os
import random
import re
import shutil
import time
from contextlib import contextmanager

import pytest

from luofs import cli, trace_view, vm
from luofs.testing import booted
from luofs.vm import accel, guest, qemu
from luofs.vm.qmp import QmpError

from ..trace_format import check

MiB = 1 << 20
QEMU = os.environ.get("LUOFS_QEMU") or shutil.which("qemu-system-x86_64")
pytestmark = [
    pytest.mark.skipif(not QEMU, reason="QEMU is not installed: Debian's qemu-system-x86 "
                                        "(`make test` installs it)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="mount tests need root"),
]


def wait_for(predicate, timeout=30.0, what="the guest"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not get there within {timeout:.0f} s")
        time.sleep(0.02)


class Tracked:
    """A VM's status, remembering every pid it ever had, to clean up and to check."""

    def __init__(self, root):
        self.root = root
        self.pids = set()

    def status(self):
        info = vm.status(self.root)
        self.pids |= {info[k] for k in ("agent_pid", "qemu_pid", "successor_pid") if info[k]}
        return info

    def serial(self):
        return vm.serial(self.root)


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@contextmanager
def running_vm(boot_args=(), ram=64 * MiB):
    with booted(boot_args) as inst:
        t = Tracked(inst.root)
        try:
            vm.start(inst.root, ram)
            t.status()
            wait_for(lambda: t.serial().last_tick >= 20)
            yield inst, t
        finally:
            try:
                t.status()
                vm.stop(inst.root)
            except (vm.VmError, OSError):
                pass
            for pid in t.pids:  # whatever did not end, by the pids it had
                if alive(pid):
                    os.kill(pid, 9)
    wait_for(lambda: not any(alive(p) for p in t.pids), 10, "the VM's processes' end")


def sample_guest_ram(qemu_pid, seed, lo, hi, count=512):
    """(inode, wrong words, heartbeat, seed word) of the guest RAM that QEMU maps."""
    with open(f"/proc/{qemu_pid}/cmdline", "rb") as f:
        fd = re.search(rb"mem-path=/proc/self/fd/(\d+)", f.read()).group(1).decode()
    ram = os.open(f"/proc/{qemu_pid}/fd/{fd}", os.O_RDONLY)
    try:
        word = lambda a: int.from_bytes(os.pread(ram, 4, a), "little")  # noqa: E731
        rng = random.Random(seed)
        bad = [a for a in (rng.randrange(lo, hi, 4) for _ in range(count))
               if word(a) != guest.pattern(seed, a)]
        return os.fstat(ram).st_ino, bad, word(guest.HEARTBEAT), word(guest.HEARTBEAT + 4)
    finally:
        os.close(ram)


def test_a_guest_lives_through_two_chained_updates():
    with running_vm() as (inst, t):
        [(seed, lo, hi)] = t.serial().boots
        inode = sample_guest_ram(t.status()["qemu_pid"], seed, lo, hi)[0]
        assert lo == guest.PATTERN_BASE and 63 * MiB < hi <= 64 * MiB  # RAM per multiboot
        for number in (1, 2):
            before = t.serial().last_tick
            inst.kexec()
            info = t.status()
            assert info["generation"] == number and info["state"] == "running"
            update = info["last_update"]
            assert update["accel"] == accel.choose(QEMU)
            assert 0 < update["state_bytes"] < MiB  # RAM was not in the stream
            assert 0 < update["pause_ms"] < 10_000
            wait_for(lambda: t.serial().last_tick >= before + 30)
            log = t.serial()
            ticks = [tick for tick, _ in log.ticks]
            assert ticks == list(range(10, 10 * len(ticks) + 1, 10))  # no restart, no gap
            assert {s for _, s in log.ticks} == {seed} and len(log.boots) == 1
            assert not log.faulted
            ino, bad, heartbeat, seed_word = sample_guest_ram(info["qemu_pid"], seed, lo, hi)
            assert ino == inode  # the very memfd, handed over (never a copy)
            assert bad == [] and seed_word == seed and heartbeat >= before
        result = vm.check(inst.root)
        assert result["errors"] == 0 and result["words"] == (hi - lo) // 4
        _n, events = trace_view.read(inst.state_dir, 2)  # the VMMs' part of the last update
        vmm = {e["name"]: e for e in events if e["cat"] == "vmm"}
        assert vmm["guest paused"]["dur"] / 1e6 == pytest.approx(update["pause_ms"], abs=0.01)
        assert vmm["stop the guest and save it"]["proc"] == "VMM vm0, generation 1"
        assert vmm["start QEMU"]["proc"] == "VMM vm0, generation 2"
        # Each VMM on its own row, under its pid as the host sees it (in their userspaces
        # both have the same small pid): the running one is the one the status names.
        assert vmm["start QEMU"]["pid"] == info["agent_pid"] != vmm["stop the guest and save it"]["pid"]
        check(trace_view.chrome(events, 2))


def test_the_saved_state_loads_only_over_the_guests_own_ram(tmp_path):
    """The negative control: over a fresh memfd QEMU refuses the state, so the test
    above cannot pass unless the preserved RAM itself came back."""
    machine = qemu.Machine("control", 64 * MiB, accel.choose(QEMU), str(tmp_path))
    ram, state, fresh = (os.memfd_create(n) for n in ("ram", "state", "fresh"))
    os.ftruncate(ram, 64 * MiB)
    os.ftruncate(fresh, 64 * MiB)
    procs = []
    try:
        proc, mon = qemu.start(machine, ram)
        procs.append(proc)
        wait_for(lambda: guest.SerialLog.read(machine.serial_log).last_tick >= 10)
        mon.execute("stop")
        mon.execute("getfd", fds=[state], fdname="s")
        mon.migrate("migrate", 30, uri="fd:s")
        for target, loads in ((fresh, False), (ram, True)):
            os.lseek(state, 0, os.SEEK_SET)
            proc, mon = qemu.start(machine, target, incoming_fd=state)
            procs.append(proc)
            if not loads:
                with pytest.raises(QmpError, match="^migrate-incoming: migration failed$"):
                    mon.wait_migration("migrate-incoming", 30)
                continue
            mon.wait_migration("migrate-incoming", 30)
            mon.execute("cont")
            last = guest.SerialLog.read(machine.serial_log).last_tick
            wait_for(lambda: guest.SerialLog.read(machine.serial_log).last_tick >= last + 20)
    finally:
        for proc in procs:
            qemu.stop(proc)
        for fd in (ram, state, fresh):
            os.close(fd)


def test_a_refused_update_leaves_the_guest_running(capsys):
    with running_vm(["--fault", "memfd.freeze"]) as (inst, t):
        first = t.status()
        [(seed, _lo, _hi)] = t.serial().boots
        for _attempt in range(2):  # the session is rebuilt after a refusal: it can refuse again
            before = t.serial().last_tick
            assert cli.main(["kexec", "--root", inst.root]) == errno.EIO
            assert "the running kernel keeps serving" in capsys.readouterr().err
            info = t.status()
            assert (info["generation"], info["state"], info["qemu_pid"]) == (
                0, "running", first["qemu_pid"])
            wait_for(lambda: t.serial().last_tick >= before + 30)
        assert {s for _, s in t.serial().ticks} == {seed} and len(t.serial().boots) == 1
        sessions = inst.status()["kernel"]["sessions"]
        assert [(s["name"], s["files"]) for s in sessions] == [("vm-vm0", 2)]  # RAM, config
        with pytest.raises(vm.VmError, match=f"VM 'vm0' already runs on {inst.root}"):
            vm.start(inst.root, 64 * MiB)


def test_guest_ram_must_fit_in_the_machines_memory():
    with booted(["--memory", "32M"]) as inst:
        with pytest.raises(vm.VmError, match=r"^PRESERVE_FD fd \d+ token 0x1 on session 'vm-vm0': "
                                             r"Cannot allocate memory$"):
            vm.start(inst.root, 64 * MiB)
        assert vm.status(inst.root)["state"] == "stopped"  # and nothing of it runs
        info = vm.status(inst.root)
        assert info["qemu_pid"] is None  # QEMU never started
        wait_for(lambda: not alive(info["agent_pid"]), 10, "the VMM's end")


def test_start_refuses_bad_sizes_and_a_missing_qemu(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="guest RAM must be a multiple of 1 MiB, at least 8 MiB"):
        vm.start(str(tmp_path), 4 * MiB)
    monkeypatch.setenv("LUOFS_QEMU", "")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(vm.VmError, match="QEMU is missing: install Debian's qemu-system-x86"):
        vm.start(str(tmp_path), 64 * MiB)


def test_start_needs_a_kernel(tmp_path):
    with pytest.raises(vm.VmError, match=f"^no luofs kernel serves {tmp_path} "):
        vm.start(str(tmp_path), 64 * MiB)


def test_the_command(capsys):
    def luofs(*args):
        code = cli.main(list(args))
        out = capsys.readouterr()
        return code, out.out + out.err

    with booted() as inst:
        capsys.readouterr()  # what the boot said
        t = Tracked(inst.root)
        try:
            assert luofs("vm", "start", "--root", inst.root) == (
                1, "luofs vm: --ram SIZE is required (e.g. --ram 256M)\n")
            code, out = luofs("vm", "start", "--root", inst.root, "--ram", "16M", "--name", "c",
                              "--", "-rtc", "base=utc")
            assert code == 0 and re.match(r"luofs vm: c runs: 16 MiB of guest RAM in a preserved "
                                          r"memfd, (TCG|KVM); QEMU pid \d+", out)
            info = vm.status(inst.root, "c")
            t.pids |= {info["agent_pid"], info["qemu_pid"], info["successor_pid"]}
            with open(f"/proc/{info['qemu_pid']}/cmdline", "rb") as f:
                assert f.read().endswith(b"-rtc\0base=utc\0")  # the extra arguments
            wait_for(lambda: vm.serial(inst.root, "c").last_tick >= 20)
            assert luofs("kexec", "--root", inst.root)[0] == 0
            code, out = luofs("vm", "status", "--root", inst.root, "--name", "c")
            assert code == 0 and "live updates lived through 1" in out
            assert re.search(r"last update: guest-visible pause [\d.]+ ms \((TCG|KVM), 16 MiB, "
                             r"state \d+ KiB\): stop and save [\d.]+, .* cont [\d.]+\n", out)
            t.pids.add(vm.status(inst.root, "c")["qemu_pid"])
            code, out = luofs("vm", "check", "--root", inst.root, "--name", "c")
            assert code == 0 and re.fullmatch(r"luofs vm: the guest re-checked \d+ RAM words: "
                                              r"0 wrong\n", out)
            assert luofs("vm", "status", "--root", inst.root, "--name", "nope") == (
                1, f"luofs vm: no VM 'nope' on {inst.root}\n")
            assert luofs("vm", "stop", "--root", inst.root, "--name", "c") == (
                0, "luofs vm: c stopped\n")
            assert vm.status(inst.root, "c")["state"] == "stopped"
        finally:
            for pid in t.pids:
                if pid and alive(pid):
                    os.kill(pid, 9)
    wait_for(lambda: not any(alive(p) for p in t.pids if p), 10, "the VM's processes' end")


def test_a_vm_whose_qemu_dies_stops_and_leaves_the_updates(capsys):
    with running_vm(ram=16 * MiB) as (inst, t):
        info = t.status()
        os.kill(info["qemu_pid"], 9)
        wait_for(lambda: vm.status(inst.root)["state"] == "stopped", 10, "the VMM")
        assert vm.status(inst.root)["error"] == "QEMU exited with status -9"
        wait_for(lambda: not alive(info["agent_pid"]) and not alive(info["successor_pid"]), 10,
                 "the VMM and its successor's end")
        assert cli.main(["kexec", "--root", inst.root]) == 0  # no participant left to ask


def test_a_guest_that_cannot_resume_is_reported_lost(tmp_path, monkeypatch):
    """The next kernel's QEMU does not start: the update itself happened, the guest is
    lost, and the status says why; nothing is left running."""
    mark = tmp_path / "fail"
    wrapper = tmp_path / "qemu"
    wrapper.write_text(f"#!/bin/sh\n[ -e {mark} ] && exit 3\nexec {QEMU} \"$@\"\n")
    wrapper.chmod(0o755)
    monkeypatch.setenv("LUOFS_QEMU", str(wrapper))  # the VMMs inherit it
    with running_vm(ram=16 * MiB) as (inst, t):
        mark.touch()
        inst.kexec()
        info = t.status()
        assert (info["state"], info["generation"]) == ("lost", 0)
        assert info["error"] == "VM vm0 did not resume: QEMU closed its monitor"
        wait_for(lambda: not any(alive(p) for p in t.pids), 10, "the VM's processes' end")


def namespaces(pid) -> dict:
    return {ns: os.readlink(f"/proc/{pid}/ns/{ns}") for ns in ("pid", "mnt", "user")}


def test_the_vmm_lives_in_its_kernels_userspace():
    """The VMM and its QEMU are programs of the running kernel's userspace; the next VMM
    waits in the next kernel's, made before the freeze, and is the VMM after it."""
    with running_vm(ram=16 * MiB) as (inst, t):
        info, machine = t.status(), inst.status()["machine"]
        us, nxt = machine["userspace"], machine["next_userspace"]
        assert namespaces(info["agent_pid"]) == namespaces(info["qemu_pid"]) == \
            namespaces(us["pid"]) != namespaces("self")
        assert namespaces(info["successor_pid"]) == namespaces(nxt["pid"]) != \
            namespaces(us["pid"])
        inst.kexec()
        after, machine = t.status(), inst.status()["machine"]
        assert (machine["userspace"]["pid"], machine["userspace"]["kernel"]) == (nxt["pid"], 1)
        assert after["agent_pid"] == info["successor_pid"]
        assert namespaces(after["agent_pid"]) == namespaces(after["qemu_pid"]) == \
            namespaces(nxt["pid"])
        for pid in (info["agent_pid"], info["qemu_pid"], us["pid"]):
            assert not alive(pid)  # the old VMM ended with the old kernel's userspace

"""luofs vm with a real Linux guest: Debian's cloud kernel and a busybox /init
(native/linux-guest, `make linux-guest`) live through two chained updates.

The guest prints a tick, its uptime and an md5 check of a pattern in its RAM every
~100 ms; the host also finds that pattern's pages in the guest RAM memfd after each
update, and at the end damages one of them there to see the guest notice (so the
guest's check, and the test, can fail). Skipped without QEMU or without the guest.
"""

import os
import re
import time

import pytest

from luofs import cli, client, vm
from luofs.testing import booted
from luofs.vm import linux_guest, qemu
from luofs.vm.linux_guest import SerialLog, pattern_blocks, problems

from .test_vm import alive, pytestmark, wait_for  # noqa: F401 (pytestmark: skips without QEMU)

MiB = 1 << 20


def images():
    try:
        return linux_guest.images()
    except FileNotFoundError as e:
        pytest.skip(str(e))


def guest_ram(qemu_pid, flags=os.O_RDONLY):
    """The guest RAM memfd that QEMU maps, opened through /proc."""
    with open(f"/proc/{qemu_pid}/cmdline", "rb") as f:
        fd = re.search(rb"mem-path=/proc/self/fd/(\d+)", f.read()).group(1).decode()
    return os.open(f"/proc/{qemu_pid}/fd/{fd}", flags)


def test_a_linux_guest_lives_through_two_chained_updates(capsys):
    kernel, initrd = images()
    with booted() as inst:
        pids = set()

        def status():
            info = vm.status(inst.root, "linux")
            pids.update(info[k] for k in ("agent_pid", "qemu_pid", "successor_pid") if info[k])
            return info

        def serial():
            return SerialLog.read(status()["serial_log"])

        def registered():
            """The VMM answers the next update (or a stop): once it has a successor, it
            has registered; before, an update would go on without it."""
            wait_for(lambda: status()["successor_pid"], what="the VMM's registration")

        try:
            t0 = time.monotonic()
            assert cli.main(["vm", "start", "--root", inst.root, "--name", "linux", "--ram",
                             f"{linux_guest.RAM >> 20}M", "--kernel", kernel, "--initrd", initrd,
                             "--append", linux_guest.APPEND, "--", *linux_guest.QEMU_ARGS]) == 0
            wait_for(lambda: serial().boots, 60, "the Linux guest's boot")
            boot_s = time.monotonic() - t0
            wait_for(lambda: serial().last_tick >= 5, 60, "the Linux guest's ticks")
            [(seed, blocks, _md5)] = serial().patterns
            ram = guest_ram(status()["qemu_pid"])
            inode = os.fstat(ram).st_ino
            assert pattern_blocks(ram, seed) == set(range(blocks))
            os.close(ram)
            pauses = []
            for generation in (1, 2):
                registered()
                before = serial().last_tick
                client.kexec(inst.root)  # (in process, as an orchestrator would)
                info = status()
                assert (info["state"], info["generation"]) == ("running", generation)
                assert 0 < info["last_update"]["state_bytes"] < MiB  # RAM is not in the stream
                pauses.append(info["last_update"]["pause_ms"])
                wait_for(lambda: serial().last_tick >= before + 5)
                log = serial()
                assert problems(log) == [] and len(log.patterns) == 1  # one life, RAM intact
                ram = guest_ram(info["qemu_pid"])
                try:  # the very memfd came back, the pattern's pages in it
                    assert os.fstat(ram).st_ino == inode
                    assert pattern_blocks(ram, seed) == set(range(blocks))
                finally:
                    os.close(ram)
            ram = guest_ram(status()["qemu_pid"], os.O_RDWR)
            try:  # the guest's RAM is that memfd: damage reaches the guest, which says so
                seven = [page for page in range(0, linux_guest.RAM, linux_guest.PAGE)
                         if os.pread(ram, linux_guest.PAGE, page) == linux_guest.block(seed, 7)]
                for page in seven:  # (the file's page, and any stale copy)
                    os.pwrite(ram, b"#", page + 100)
                damaged = serial().last_tick + 1  # (its check may have read the page before)
                wait_for(lambda: serial().last_tick > damaged)
                assert f"pattern MISMATCH at tick {damaged + 1}" in problems(serial())
                assert pattern_blocks(ram, seed) == set(range(blocks)) - {7}
            finally:
                os.close(ram)
            registered()
            with capsys.disabled():
                print(f"\nLinux guest ({status()['accel'].upper()}, {linux_guest.RAM >> 20} MiB): "
                      f"boot banner {boot_s:.1f} s after `luofs vm start`; guest-visible pauses "
                      f"{', '.join(f'{p:.0f}' for p in pauses)} ms")
        finally:
            try:
                status()
                vm.stop(inst.root, "linux")
            except (vm.VmError, OSError):
                pass
            for pid in pids:  # whatever did not end, by the pids it had
                if alive(pid):
                    os.kill(pid, 9)
    wait_for(lambda: not any(alive(p) for p in pids), 10, "the VM's processes' end")


def test_the_linux_guests_checks_catch_a_broken_life():
    """problems() is what the test above relies on: each way a guest can fail to live
    through an update is reported (a restart, a lost tick, a clock that went back,
    damaged RAM)."""
    boot = "luofs-linux boot kernel=6.1.0-57-cloud-amd64 uptime=1.40\r\n"
    tick = "luofs-linux tick={} uptime={} pattern={}\r\n".format
    good = boot + tick(1, "2.80", "ok") + tick(2, "2.98", "ok")
    assert problems(SerialLog(good)) == []
    assert problems(SerialLog(good + boot + tick(1, "2.81", "ok"))) == [
        "2 boot banners", "tick 1 after tick 2", "uptime 2.81 at tick 1 after 2.98"]
    assert problems(SerialLog(good + tick(4, "3.30", "ok"))) == ["tick 4 after tick 2"]
    assert problems(SerialLog(good + tick(3, "2.90", "ok"))) == [
        "uptime 2.9 at tick 3 after 2.98"]
    assert problems(SerialLog(good + tick(3, "3.20", "MISMATCH md5=00"))) == [
        "pattern MISMATCH at tick 3"]
    assert problems(SerialLog("")) == ["0 boot banners"]


def test_the_pattern_is_found_in_ram_only_whole_and_where_it_belongs():
    ram = os.memfd_create("ram")
    try:
        os.ftruncate(ram, 2 * MiB)
        for page, number in ((3, 0), (9, 1), (17, 1)):
            os.pwrite(ram, linux_guest.block("0badcafe", number), page * linux_guest.PAGE)
        os.pwrite(ram, linux_guest.block("0badcafe", 2)[:-1] + b"!", 30 * linux_guest.PAGE)
        os.pwrite(ram, linux_guest.block("0badcafe", 3), 40 * linux_guest.PAGE + 8)  # unaligned
        assert pattern_blocks(ram, "0badcafe", chunk=64 << 10) == {0, 1}
        assert pattern_blocks(ram, "12345678") == set()
    finally:
        os.close(ram)


def test_start_with_a_kernel_checks_its_files(tmp_path, capsys):
    def start(*args):
        code = cli.main(["vm", "start", "--root", str(tmp_path), "--ram", "128M", *args])
        return code, capsys.readouterr().err

    assert start("--initrd", "x") == (1, "luofs vm: --initrd and --append need --kernel\n")
    assert start("--append", "quiet") == (1, "luofs vm: --initrd and --append need --kernel\n")
    assert start("--kernel", str(tmp_path / "no")) == (1, f"luofs vm: no kernel at {tmp_path}/no\n")
    (tmp_path / "k").write_bytes(b"")
    assert start("--kernel", str(tmp_path / "k"), "--initrd", "no") == (
        1, "luofs vm: no initramfs at no\n")


def test_a_kernel_of_ones_own_replaces_the_test_guest(tmp_path, monkeypatch):
    (tmp_path / "k").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    extra = qemu.linux_boot("k", append="console=ttyS0")
    assert extra == ("-kernel", f"{tmp_path}/k", "-append", "console=ttyS0")  # absolute
    command = qemu.Machine("m", 128 * MiB, "tcg", str(tmp_path), extra).command("qemu", 5, 6, True)
    assert command.count("-kernel") == 1 and command[-4:] == list(extra)
    assert "-kernel" in qemu.Machine("m", 128 * MiB, "tcg", str(tmp_path)).command("qemu", 5, 6,
                                                                                   False)

"""How `luofs run` starts a program so that its LUO calls reach the emulator.

Every program runs under the seccomp supervisor (luofs-supervise, luofs/native.py): a
narrow filter sends its ioctls of type 0xBA, reboot, kexec_load/kexec_file_load and
the readlink/statfs calls that tell a session fd apart to the supervisor, which
answers them on the program's behalf. That reaches any binary: static (glibc, musl,
nolibc), Go, raw syscalls. A dynamically linked program gets the LD_PRELOAD shim as
well: it redirects the path "/dev/liveupdate" (until programs run inside the
kernel's own mount namespace, where the device is at that path), and serves its
libc ioctl() calls itself, one hop where the supervisor needs two (`make bench`:
the supervisor's round trip is about 1.3× the shim's). reboot, readlink and statfs go
to the supervisor in both cases, so every program sees the same answers; a
successful reboot(LINUX_REBOOT_CMD_KEXEC) never returns.

Unhappy paths: a supervisor or shim that is not built is a CliError saying how to
build it; a static program gets no path redirection, so it must open
ROOT/dev/liveupdate itself until the per-kernel userspace gives it /dev/liveupdate.
"""

from __future__ import annotations

import os
import shutil
import struct

from . import native


class NotBuilt(Exception):
    """A native helper is missing; the message says how to build it."""


def _built(piece: native.Piece) -> str:
    path = native.path(piece)
    if not os.path.exists(path):
        raise NotBuilt(native.missing(piece))
    return path


def shim_path() -> str:
    """The LD_PRELOAD shim: $LUOFS_SHIM, else the package's, else the checkout's."""
    return _built(native.SHIM)


def supervisor_path() -> str:
    """The seccomp supervisor: $LUOFS_SUPERVISOR, else the package's, else the checkout's."""
    return _built(native.SUPERVISOR)


def statically_linked(path: str) -> bool:
    """An ELF executable without a PT_INTERP header: LD_PRELOAD never reaches it."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2:  # not a 64-bit ELF: a script, or other
                return False
            phoff, = struct.unpack_from("<Q", head, 0x20)
            phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except (OSError, struct.error):
        return False
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3  # PT_INTERP
               for i in range(phnum))


def command(root: str, argv: list[str], environ: dict[str, str],
            luofs_bin: str) -> tuple[list[str], dict[str, str]]:
    """The argv and environment that run `argv` against the kernel at `root`."""
    env = dict(environ)
    env["LUOFS_ROOT"] = root
    # reboot(LINUX_REBOOT_CMD_KEXEC) in the program runs this very `luofs`.
    env.setdefault("LUOFS_BIN", luofs_bin)
    program = shutil.which(argv[0], path=env.get("PATH"))
    # Scripts and dynamic programs (and the dynamic programs a script starts) get the
    # shim, preloaded by the supervisor into them (never into itself).
    shim = [] if program and statically_linked(program) else ["--shim", shim_path()]
    return [supervisor_path(), "--root", root, *shim, "--", *argv], env

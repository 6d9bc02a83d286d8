"""`luofs doctor`: what this machine lacks for luofs, and how to get it.

Each check probes the real thing (opens /dev/fuse, asks the kernel for seccomp user
notification, makes the namespaces the userspace launcher makes, boots the test guest
under KVM) and gives one line: ok, or missing with the fix. Required checks are what
`luofs boot`, `run` and `kexec` need; the others serve `luofs vm` and `kho dump --dts`.
Exit status: 0 when every required check passes, 1 otherwise.

`preflight()` is the part `luofs boot` runs first: the hard requirements whose probes
cost microseconds (no imports, no processes).
"""

from __future__ import annotations

import os
import sys

from . import native

EXIT_MISSING = 1
DEBIAN = "Debian/Ubuntu: apt-get install"
SECCOMP_RET_USER_NOTIF = 0x7FC00000
SECCOMP_GET_ACTION_AVAIL = 2
SYS_SECCOMP = {"x86_64": 317, "aarch64": 277, "riscv64": 277}.get(os.uname().machine)
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID = 0x00020000, 0x10000000, 0x20000000


class Check:
    """One line of the report: `fix` is set when the check failed."""

    def __init__(self, name: str, required: bool, ok: bool, detail: str, fix: str = ""):
        self.name, self.required, self.ok, self.detail, self.fix = name, required, ok, detail, fix

    def line(self) -> str:
        status = "ok" if self.ok else "MISSING" if self.required else "optional"
        text = f"{status:<9}{self.name:<22}{self.detail}"
        return f"{text}; fix: {self.fix}" if self.fix else text

    def as_dict(self) -> dict:
        return {"name": self.name, "required": self.required, "ok": self.ok,
                "detail": self.detail, "fix": self.fix}


# ---- the cheap hard requirements (also `luofs boot`'s preflight) ----------------

def fuse_device() -> Check:
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC))
    except OSError as e:
        return Check("/dev/fuse", True, False, f"cannot open /dev/fuse: {e.strerror}",
                     "modprobe fuse (" + DEBIAN + " fuse3); in a container, pass the device "
                     "(docker run --device /dev/fuse --cap-add SYS_ADMIN)")
    return Check("/dev/fuse", True, True, "opens read-write")


def pidfd_thread() -> Check:
    """The FUSE front end and the supervisor name a caller by its thread (Linux 6.9)."""
    try:
        os.close(os.pidfd_open(os.getpid(), os.O_EXCL))  # O_EXCL is PIDFD_THREAD
    except OSError as e:
        return Check("pidfd of a thread", True, False,
                     f"pidfd_open(PIDFD_THREAD) fails ({e.strerror}) on Linux "
                     f"{os.uname().release}", "luofs needs Linux 6.9 or later")
    return Check("pidfd of a thread", True, True, f"Linux {os.uname().release}")


def preflight() -> str | None:
    """Why `luofs boot` cannot work here, in doctor's words; None when it can."""
    for check in (fuse_device(), pidfd_thread()):
        if not check.ok:
            return (f"{check.name}: {check.detail}; fix: {check.fix} "
                    "(luofs doctor checks the rest)")
    return None


# ---- the rest -------------------------------------------------------------------

def root() -> Check:
    if os.geteuid() == 0:
        return Check("root", True, True, "running as root")
    return Check("root", True, False, f"running as uid {os.geteuid()}",
                 "run luofs as root (sudo), as CI does: its FUSE mount lets every user in "
                 "(allow_other), it takes fds from calling processes (pidfd_getfd) and "
                 "makes each kernel's namespaces")


def fuse_library() -> Check:
    try:
        import pyfuse3
    except ImportError as e:
        return Check("libfuse3 (pyfuse3)", True, False, f"import pyfuse3 fails: {e}",
                     f"{DEBIAN} libfuse3-3 (building pyfuse3 needs libfuse3-dev "
                     "pkg-config), then pip install --force-reinstall pyfuse3")
    return Check("libfuse3 (pyfuse3)", True, True, f"pyfuse3 {pyfuse3.__version__}")


def fusermount() -> Check:
    import shutil

    found = shutil.which("fusermount3")
    if found or os.geteuid() == 0:
        return Check("fusermount3", False, True, found or "not needed as root")
    return Check("fusermount3", True, False, "not on PATH (a user's mount needs it)",
                 f"{DEBIAN} fuse3, and user_allow_other in /etc/fuse.conf")


def _libc():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return ctypes, libc


def seccomp_notify() -> Check:
    name = "seccomp notification"
    if SYS_SECCOMP is None:
        return Check(name, True, False, f"not probed on {os.uname().machine}",
                     "luofs run is built and tested on x86_64")
    ctypes, libc = _libc()
    action = ctypes.c_uint32(SECCOMP_RET_USER_NOTIF)
    if libc.syscall(SYS_SECCOMP, SECCOMP_GET_ACTION_AVAIL, 0, ctypes.byref(action)) == 0:
        return Check(name, True, True, "SECCOMP_RET_USER_NOTIF is available")
    err = ctypes.get_errno()
    return Check(name, True, False, f"SECCOMP_RET_USER_NOTIF is not available "
                 f"({os.strerror(err)})",
                 "luofs run needs a kernel with CONFIG_SECCOMP_FILTER (5.0 or later) and, "
                 "in a container, a seccomp profile that allows seccomp(2) "
                 "(docker run --security-opt seccomp=unconfined)")


def _sysctl(name: str) -> str | None:
    try:
        with open(f"/proc/sys/{name.replace('.', '/')}") as f:
            return f.read().strip()
    except OSError:
        return None


def namespaces() -> Check:
    """What luofs-userspace does first: a user, a mount and a PID namespace."""
    name = "user+mount+PID ns"
    ctypes, libc = _libc()
    pid = os.fork()
    if pid == 0:  # the probe's namespaces end with this child; its status is the errno
        try:
            failed = libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID) != 0
            os._exit(min(ctypes.get_errno(), 255) or 1 if failed else 0)
        finally:
            os._exit(255)
    _, status = os.waitpid(pid, 0)
    err = os.waitstatus_to_exitcode(status)
    if err == 0:
        return Check(name, True, True, "unshare(CLONE_NEWUSER|CLONE_NEWNS|CLONE_NEWPID) works")
    fix = "in a container: docker run --privileged (or a seccomp profile allowing unshare)"
    if _sysctl("user.max_user_namespaces") == "0":
        fix = "sysctl -w user.max_user_namespaces=15000"
    elif os.geteuid() != 0 and _sysctl("kernel.unprivileged_userns_clone") == "0":
        fix = "run as root, or sysctl -w kernel.unprivileged_userns_clone=1"
    elif os.geteuid() != 0 and _sysctl("kernel.apparmor_restrict_unprivileged_userns") == "1":
        fix = "run as root, or sysctl -w kernel.apparmor_restrict_unprivileged_userns=0"
    return Check(name, True, False, f"unshare fails ({os.strerror(err)}): `luofs run` and "
                 "`boot --init` need each kernel's userspace", fix)


def memfd() -> Check:
    import fcntl

    try:
        fd = os.memfd_create("luofs-doctor", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    except OSError as e:
        fix = "CONFIG_MEMFD_CREATE"
        if _sysctl("vm.memfd_noexec") == "2":
            fix = "sysctl -w vm.memfd_noexec=0 (2 refuses executable memfds, as luofs makes)"
        return Check("memfd", True, False, f"memfd_create fails ({e.strerror})", fix)
    try:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_GROW)
    except OSError as e:
        return Check("memfd", True, False, f"sealing fails ({e.strerror})",
                     "a kernel with memfd sealing (3.17 or later)")
    finally:
        os.close(fd)
    return Check("memfd", True, True, "memfd_create and seals work")


NEEDED = (native.SHIM, native.SUPERVISOR, native.USERSPACE)  # the others are optional
PROGRAMS = (native.SUPERVISOR, native.USERSPACE, native.LUOCTL)


def native_piece(piece: native.Piece) -> Check:
    path, where = native.locate(piece)
    required = piece in NEEDED
    if not os.path.exists(path):
        fix = (f"${piece.env} names it: point it at a built one, or unset it"
               if where.startswith("$") else f"{native.how_to_build()} (or set {piece.env})")
        return Check(piece.name, required, False, f"{piece.what}: {path} is missing", fix)
    if piece in PROGRAMS and not os.access(path, os.X_OK):
        return Check(piece.name, required, False, f"{path} is not executable",
                     f"chmod +x {path}")
    return Check(piece.name, required, True, f"{path} ({where})")


def header() -> Check:
    directory = native.header_dir()
    if directory is None:
        return Check("linux/liveupdate.h", False, False, "not found", native.how_to_build())
    return Check("linux/liveupdate.h", False, True, f"cc -I{directory}")


def dtc() -> Check:
    import shutil

    found = shutil.which("dtc")
    if found:
        return Check("dtc", False, True, found)
    return Check("dtc", False, False, "not on PATH (luofs kho dump --dts needs it)",
                 f"{DEBIAN} device-tree-compiler")


def qemu_and_kvm() -> list[Check]:
    from .vm import accel, qemu

    try:
        binary = qemu.binary()
    except qemu.QemuMissing:
        return [Check("qemu", False, False, "qemu-system-x86_64 not found (luofs vm needs it)",
                      f"{DEBIAN} qemu-system-x86, or set $LUOFS_QEMU")]
    if not os.access(binary, os.X_OK):
        return [Check("qemu", False, False, f"{binary} is not an executable",
                      f"{DEBIAN} qemu-system-x86, or set $LUOFS_QEMU to QEMU")]
    checks = [Check("qemu", False, True, binary)]
    forced = os.environ.get(accel.ENV)
    if forced:
        checks.append(Check("kvm", False, True, f"not probed: ${accel.ENV} chooses {forced}"))
    elif not os.path.exists("/dev/kvm"):
        checks.append(Check("kvm", False, False, "/dev/kvm is absent: luofs vm runs guests "
                            "under TCG (slower)", "enable virtualization (VT-x/AMD-V, nested "
                            "on a VM) and modprobe kvm_intel or kvm_amd"))
    elif native.locate(native.GUEST)[1] == "missing":
        checks.append(Check("kvm", False, False, "not probed: the test guest is missing",
                            native.how_to_build()))
    elif accel.choose(binary) != "kvm":  # boots the guest under KVM once per host boot
        checks.append(Check("kvm", False, False, "/dev/kvm is there but the test guest does "
                            "not boot under it (a nested host?): luofs vm uses TCG (slower)",
                            f"enable nested virtualization, or set ${accel.ENV}=tcg to skip "
                            "this probe"))
    else:
        checks.append(Check("kvm", False, True, "/dev/kvm runs guests"))
    return checks


def checks() -> list[Check]:
    found = [root(), fuse_device(), fuse_library(), fusermount(), pidfd_thread(),
             seccomp_notify(), namespaces(), memfd()]
    found += [native_piece(piece) for piece in native.PIECES]
    return found + [header(), dtc(), *qemu_and_kvm()]


def run(as_json: bool = False) -> int:
    found = checks()
    missing = [c.name for c in found if c.required and not c.ok]
    if as_json:
        import json

        print(json.dumps({"ok": not missing, "checks": [c.as_dict() for c in found]}, indent=2))
    else:
        for check in found:
            print(check.line())
        if missing:
            print(f"luofs doctor: missing {', '.join(missing)}: luofs boot, run or kexec "
                  "will fail", file=sys.stderr)
        else:
            print("luofs doctor: everything luofs boot, run and kexec need is here")
    return EXIT_MISSING if missing else 0

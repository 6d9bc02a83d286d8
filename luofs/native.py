"""Where luofs finds its native pieces: the shim, the supervisor, the userspace launcher.

Each piece is looked up in order: its environment variable ($LUOFS_SHIM, …), then the
installed package's own copy (luofs/_native, built when the wheel is built: setup.py),
then a checkout's native/build (`make native`; editable installs use it too). The
test-only C programs never leave native/build.

Unhappy paths: a piece found nowhere has a path all the same (where it would be), and
`missing()` says how to get it: `make native` in a checkout, a reinstall elsewhere.
"""

from __future__ import annotations

import os

_HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE_DIR = os.path.join(_HERE, "_native")
CHECKOUT = os.path.dirname(_HERE)
CHECKOUT_DIR = os.path.join(CHECKOUT, "native", "build")


class Piece:
    """One native file: its name in _native/ and native/build/, the variable that
    overrides where it is, and what needs it (for `luofs doctor`)."""

    __slots__ = ("name", "env", "what")

    def __init__(self, name: str, env: str, what: str):
        self.name, self.env, self.what = name, env, what


SHIM = Piece("libluofs-shim.so", "LUOFS_SHIM", "the LD_PRELOAD shim of luofs run and --init")
SUPERVISOR = Piece("luofs-supervise", "LUOFS_SUPERVISOR", "the seccomp supervisor of luofs run")
USERSPACE = Piece("luofs-userspace", "LUOFS_USERSPACE",
                  "the launcher of each kernel's userspace (namespaces, PID 1)")
RECORDS = Piece("libluofs-records.so", "LUOFS_RECORDS_LIB",
                "the file keepers' records helper (without it they read in Python)")
LUOCTL = Piece("luoctl", "LUOFS_LUOCTL", "a shell client of /dev/liveupdate")
SPAWN = Piece("luofs-spawn", "LUOFS_SPAWN",
              "starts a VMM's successor in a kernel's userspace (luofs vm)")
GUEST = Piece("luofs-guest.elf", "LUOFS_GUEST", "the test guest of luofs vm")
PIECES = (SHIM, SUPERVISOR, USERSPACE, RECORDS, LUOCTL, SPAWN, GUEST)
HEADER = os.path.join("include", "linux", "liveupdate.h")  # shipped beside them


def in_checkout() -> bool:
    """True when this luofs runs from a source tree (which `make native` builds into)."""
    return os.path.exists(os.path.join(CHECKOUT, "native", "Makefile"))


def locate(piece: Piece) -> tuple[str, str]:
    """(path, where it came from: "$VAR", "package", "checkout" or "missing")."""
    chosen = os.environ.get(piece.env)
    if chosen:
        return chosen, f"${piece.env}"
    for where, directory in (("package", PACKAGE_DIR), ("checkout", CHECKOUT_DIR)):
        path = os.path.join(directory, piece.name)
        if os.path.exists(path):
            return path, where
    return os.path.join(CHECKOUT_DIR if in_checkout() else PACKAGE_DIR, piece.name), "missing"


def path(piece: Piece) -> str:
    """Where `piece` is (or would be: callers check, and say `missing(piece)`)."""
    return locate(piece)[0]


def how_to_build() -> str:
    if in_checkout():
        return "run `make native`"
    return ("reinstall luofs where gcc and make are installed (pip builds the native "
            "pieces); `luofs doctor` says what is missing")


def missing(piece: Piece) -> str:
    return f"{path(piece)} is not built: {how_to_build()} (or set {piece.env})"


def header_dir() -> str | None:
    """The include directory holding linux/liveupdate.h, for C programs built against it."""
    for directory in (PACKAGE_DIR, os.path.join(CHECKOUT, "native")):
        if os.path.exists(os.path.join(directory, HEADER)):
            return os.path.join(directory, "include")
    return None

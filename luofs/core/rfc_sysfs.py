"""The RFC sysfs interface, /sys/kernel/liveupdate/ (spec/rfc.md §2), as pure functions.

RFC v1 has three files: ``state`` (0444) prints the state and a newline;
``prepare`` (0200) takes 1 (PREPARE, needs NORMAL) or 0 (CANCEL, needs PREPARED);
``finish`` (0200) takes 1 (FINISH, needs UPDATED). A written value is an integer in
any base, as the kernel's kstrto*(buf, 0) reads it; anything else, or any other
integer, is EINVAL. The "needs" are the state machine's (rfc-v1 profile): a wrong
state is EINVAL too, a failing callback gives its own errno.
RFC v2 keeps only ``state`` (normal|prepared|frozen|updated); mainline has none
(luofs shows ``state`` under every ABI, see DESIGN.md).

What sysfs itself does before the store callback is modelled here too: an empty
write is a no-op that succeeds (sysfs_kf_write returns 0 without calling it), and
the buffer is a C string, so a NUL byte ends it.
"""

from __future__ import annotations

import errno as _errno

from ..uapi import errnos
from .errors import LuoError
from .state import Event, State, GlobalState

ERANGE = _errno.ERANGE  # not in luofs.uapi.errnos: no store below lets it out

_INT_MIN, _INT_MAX = -(1 << 31), (1 << 31) - 1
_U64_MAX = (1 << 64) - 1


def _fixup_radix(s: bytes, base: int) -> tuple[bytes, int]:
    """lib/kstrtox.c _parse_integer_fixup_radix(). (The kernel also wants a hex digit
    after "0x" before it picks base 16; without one the string is EINVAL either way.)"""
    if base == 0:
        base = (16 if s[1:2] in (b"x", b"X") else 8) if s[:1] == b"0" else 10
    if base == 16 and s[:1] == b"0" and s[1:2] in (b"x", b"X"):
        s = s[2:]
    return s, base


def _kstrtoull(s: bytes, base: int) -> int:
    """lib/kstrtox.c _kstrtoull(): digits, then at most one newline, then the end;
    ERANGE past 2^64 - 1 (the digits are still counted, not accumulated)."""
    s, base = _fixup_radix(s, base)
    value = count = 0
    overflow = False
    for c in s:
        if 0x30 <= c <= 0x39:
            digit = c - 0x30
        elif 0x61 <= (c | 0x20) <= 0x66:
            digit = (c | 0x20) - 0x61 + 10
        else:
            break
        if digit >= base:
            break
        if not overflow:  # past u64 only the digits are counted, as the kernel does
            value = value * base + digit
            overflow = value > _U64_MAX
        count += 1
    if count == 0:
        raise LuoError(errnos.EINVAL, f"{s[:16]!r} has no digits in base {base}")
    rest = s[count:]
    if rest[:1] == b"\n":
        rest = rest[1:]
    if rest:
        raise LuoError(errnos.EINVAL, f"{rest[:16]!r} follows the number")
    if overflow:
        raise LuoError(ERANGE, f"a number of {count} digits does not fit 64 bits")
    return value


def kstrtoint(raw: bytes, base: int = 0) -> int:
    """The kernel's kstrtoint(): optional sign, `0x`/`0` prefixes for base 0, one
    optional trailing newline. LuoError(EINVAL) for a malformed string, (ERANGE)
    for a number outside int."""
    if base not in (0, 8, 10, 16):
        raise ValueError(f"unsupported base {base}")
    s = bytes(raw).split(b"\0", 1)[0]  # a C string
    if s[:1] == b"-":
        value = -_kstrtoull(s[1:], base)
    else:
        value = _kstrtoull(s[1:] if s[:1] == b"+" else s, base)
    if not _INT_MIN <= value <= _INT_MAX:
        raise LuoError(ERANGE, f"{value} does not fit an int")
    return value


def _value(name: str, raw: bytes) -> int | None:
    if not raw:
        return None
    try:
        return kstrtoint(raw)
    except LuoError as e:  # the stores report every parse failure as EINVAL
        raise LuoError(errnos.EINVAL, f"{name}: {e.reason}") from None


def parse_prepare(raw: bytes) -> Event | None:
    """A write to ``prepare``: 1 → PREPARE, 0 → CANCEL; None for an empty write."""
    value = _value("prepare", raw)
    if value is None:
        return None
    if value == 1:
        return Event.PREPARE
    if value == 0:
        return Event.CANCEL
    raise LuoError(errnos.EINVAL, f"prepare: {value} is neither 0 nor 1")


def parse_finish(raw: bytes) -> Event | None:
    """A write to ``finish``: 1 → FINISH; None for an empty write."""
    value = _value("finish", raw)
    if value is None:
        return None
    if value == 1:
        return Event.FINISH
    raise LuoError(errnos.EINVAL, f"finish: {value} is not 1")


_PARSERS = {"prepare": parse_prepare, "finish": parse_finish}


def store(state: GlobalState, name: str, raw: bytes) -> None:
    """A whole write to control file `name` ("prepare" or "finish"): parse, then run it.

    On success the writer is told all its bytes were taken.
    """
    event = _PARSERS[name](raw)
    if event is not None:
        state.handle(event)


def render_state(state: State) -> bytes:
    """What reading ``state`` returns: b"normal\\n" and so on."""
    return state.value.encode() + b"\n"

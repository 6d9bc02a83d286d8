"""luofs/core/rfc_sysfs.py: the RFC sysfs files (spec/rfc.md §2) and kstrtoint(…, 0)."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given, strategies as st

from luofs.core.errors import LuoError
from luofs.core.rfc_sysfs import (kstrtoint, parse_finish, parse_prepare,
                                  render_state, store)
from luofs.core.state import Event, State, GlobalState
from luofs.uapi import errnos

from .fakes import raises_errno

ERANGE = errno.ERANGE

# What lib/kstrtox.c makes of a string with base 0.
PARSED = [
    (b"1", 1), (b"1\n", 1), (b"0", 0), (b"00", 0), (b"+1", 1), (b"-1", -1), (b"-0", 0),
    (b"0x1", 1), (b"0X1", 1), (b"0x1f\n", 31), (b"0XaB", 171), (b"010", 8), (b"0777", 511),
    (b"-0x10", -16), (b"+0x10", 16), (b"2147483647", 2**31 - 1), (b"-2147483648", -2**31),
    (b"0x7fffffff", 2**31 - 1), (b"1\x00junk", 1), (b"1\n\x00", 1),
]
MALFORMED = [
    b"", b"\n", b"+", b"-", b"+-1", b"-+1", b"--1", b"++1", b" 1", b"1 ", b"\t1", b"1\n\n",
    b"1\r\n", b"0x", b"0xg", b"0x\n", b"08", b"09", b"1x", b"1.0", b"one", b"\x001", b"0b1",
    b"1_000", b"\xff",
]
OUT_OF_RANGE = [b"2147483648", b"-2147483649", b"0x80000000", b"18446744073709551615",
                b"18446744073709551616", b"99999999999999999999999", b"-0x8000000000000000"]


@pytest.mark.parametrize("raw,value", PARSED)
def test_kstrtoint_accepts(raw, value):
    assert kstrtoint(raw) == value


@pytest.mark.parametrize("raw", MALFORMED)
def test_kstrtoint_rejects_with_einval(raw):
    with raises_errno(errnos.EINVAL):
        kstrtoint(raw)


@pytest.mark.parametrize("raw", OUT_OF_RANGE)
def test_kstrtoint_overflow_is_erange(raw):
    with raises_errno(ERANGE):
        kstrtoint(raw)


@pytest.mark.parametrize("digits", [21, 4301, 100_000])
def test_a_number_past_64_bits_is_erange_without_building_it(digits):
    import time

    t0 = time.monotonic()
    with raises_errno(ERANGE):
        kstrtoint(b"9" * digits + b"\n")
    with raises_errno(errnos.EINVAL):  # what follows the digits still counts
        kstrtoint(b"9" * digits + b"x")
    assert time.monotonic() - t0 < 0.5


def test_explicit_bases():
    assert kstrtoint(b"10", 16) == 16
    assert kstrtoint(b"0x10", 16) == 16
    assert kstrtoint(b"10", 8) == 8
    assert kstrtoint(b"010", 10) == 10
    with raises_errno(errnos.EINVAL):
        kstrtoint(b"0x10", 10)
    with pytest.raises(ValueError):
        kstrtoint(b"1", 2)


@given(value=st.integers(-2**31, 2**31 - 1),
       style=st.sampled_from(["{}", "{:#x}", "{:#X}", "0{:o}"]),  # 0XABC: either case
       plus=st.booleans(), newline=st.booleans())
def test_kstrtoint_reads_what_printf_writes(value, style, plus, newline):
    text = ("-" if value < 0 else "+" if plus else "") + style.format(abs(value))
    raw = text.encode() + (b"\n" if newline else b"")
    assert kstrtoint(raw) == value


@given(raw=st.binary(max_size=12))
def test_kstrtoint_never_fails_otherwise(raw):
    try:
        value = kstrtoint(raw)
    except LuoError as e:
        assert e.errno in (errnos.EINVAL, ERANGE)
    else:
        assert -2**31 <= value < 2**31


# ---- the control files ------------------------------------------------------------------------


@pytest.mark.parametrize("raw,event", [(b"1", Event.PREPARE), (b"1\n", Event.PREPARE),
                                       (b"0x1", Event.PREPARE), (b"01", Event.PREPARE),
                                       (b"0", Event.CANCEL), (b"0\n", Event.CANCEL),
                                       (b"-0", Event.CANCEL), (b"0x0", Event.CANCEL)])
def test_prepare_values(raw, event):
    assert parse_prepare(raw) is event


@pytest.mark.parametrize("raw", [b"2", b"-1", b"yes", b"1 ", b"0x", b"99999999999", b"\n"])
def test_prepare_anything_else_is_einval(raw):
    with raises_errno(errnos.EINVAL):  # ERANGE too: the store reports every parse error so
        parse_prepare(raw)


@pytest.mark.parametrize("raw", [b"1", b"1\n", b"0x1", b"+1"])
def test_finish_one(raw):
    assert parse_finish(raw) is Event.FINISH


@pytest.mark.parametrize("raw", [b"0", b"2", b"-1", b"y", b"4294967297"])
def test_finish_anything_else_is_einval(raw):
    with raises_errno(errnos.EINVAL):
        parse_finish(raw)


def test_an_empty_write_is_a_no_op():
    assert parse_prepare(b"") is None and parse_finish(b"") is None
    sm = GlobalState("rfc-v1")
    store(sm, "prepare", b"")
    assert sm.state is State.NORMAL and sm.version == 0


def test_render_state():
    assert [render_state(s) for s in State] == [b"normal\n", b"prepared\n", b"frozen\n",
                                                b"updated\n"]


# ---- writes driving the rfc-v1 state machine -------------------------------------------------


def test_a_v1_update_through_sysfs():
    old = GlobalState("rfc-v1")
    with raises_errno(errnos.EINVAL):
        store(old, "prepare", b"0\n")  # CANCEL needs PREPARED
    with raises_errno(errnos.EINVAL):
        store(old, "finish", b"1\n")  # FINISH needs UPDATED
    store(old, "prepare", b"1\n")
    assert render_state(old.state) == b"prepared\n"
    with raises_errno(errnos.EINVAL):
        store(old, "prepare", b"1\n")  # PREPARE needs NORMAL
    store(old, "prepare", b"0\n")
    assert old.state is State.NORMAL

    new = GlobalState("rfc-v1", updated=True)
    with raises_errno(errnos.EINVAL):
        store(new, "prepare", b"1")
    store(new, "finish", b"0x1")
    assert render_state(new.state) == b"normal\n"


def test_a_failing_callback_gives_its_own_errno():
    class Veto:
        name = "veto"

        def prepare(self):
            raise LuoError(errnos.EBUSY, "not now")

    sm = GlobalState("rfc-v1", [Veto()])
    with raises_errno(errnos.EBUSY):
        store(sm, "prepare", b"1")
    assert sm.state is State.NORMAL

import pytest
from construct import Array, TerminatedError
from hypothesis import given, strategies as st

from kho.luo_format import (FILE_RECORD, SESSION_HEADER, SESSION_RECORD, LuoFileSer, LuoFileSetSer,
                            LuoFlbBlock, LuoFlbHeaderSer, LuoFlbSer, LuoSessionBlock,
                            LuoSessionHeaderSer, LuoSessionSer)
from kho.memory import PAGE_SIZE

u64 = st.integers(0, 2**64 - 1)


@pytest.mark.parametrize("definition, size", [
    (LuoSessionHeaderSer, 8), (LuoFileSetSer, 16), (LuoSessionSer, 80), (LuoFileSer, 64),
    (LuoFlbHeaderSer, 16), (LuoFlbSer, 64),
])
def test_sizes_match_the_kernel_structs(definition, size):
    assert definition.sizeof() == size


def test_field_offsets():
    session = LuoSessionSer.build(dict(name=b"s".ljust(64, b"\0"),
                                       file_set_ser=dict(files=0x1122, count=3)))
    assert session[:1] == b"s" and session[64:72] == (0x1122).to_bytes(8, "little")
    assert session[72:] == (3).to_bytes(8, "little")
    file = LuoFileSer.build(dict(compatible=b"memfd-v2".ljust(48, b"\0"), data=5, token=6))
    assert file[48:56] == (5).to_bytes(8, "little") and file[56:] == (6).to_bytes(8, "little")


@pytest.mark.parametrize("definition", [LuoSessionHeaderSer, LuoFileSetSer, LuoSessionSer,
                                        LuoFileSer, LuoFlbHeaderSer, LuoFlbSer])
@given(data=st.data())
def test_records_round_trip_byte_exact(definition, data):
    raw = data.draw(st.binary(min_size=definition.sizeof(), max_size=definition.sizeof()))
    assert definition.build(definition.parse(raw)) == raw


def _session(name, files, count):
    return dict(name=name.ljust(64, b"\0"), file_set_ser=dict(files=files, count=count))


sessions = st.lists(st.builds(_session, st.binary(max_size=63), u64, u64), max_size=20)


@given(sessions)
def test_session_block_derives_its_count_and_round_trips(records):
    block = LuoSessionBlock.build(dict(sessions=records))
    assert len(block) == 8 + 80 * len(records)
    assert LuoSessionHeaderSer.parse(block).count == len(records)
    assert LuoSessionBlock.build(LuoSessionBlock.parse(block)) == block
    with pytest.raises(TerminatedError):
        LuoSessionBlock.parse(block + b"\0")


@given(sessions)
def test_session_mirror_is_byte_identical_to_the_construct(records):
    fields = [v for r in records for v in (r["name"], r["file_set_ser"]["files"], r["file_set_ser"]["count"])]
    packed = SESSION_HEADER.pack(len(records)) + b"".join(
        SESSION_RECORD.pack(*fields[i:i + 3]) for i in range(0, len(fields), 3))
    assert packed == LuoSessionBlock.build(dict(sessions=records))


@given(st.lists(st.tuples(st.binary(max_size=47), u64, u64), max_size=20))
def test_file_mirror_is_byte_identical_to_the_construct(records):
    construct_bytes = Array(len(records), LuoFileSer).build(
        [dict(compatible=c.ljust(48, b"\0"), data=d, token=t) for c, d, t in records])
    assert b"".join(FILE_RECORD.pack(c, d, t) for c, d, t in records) == construct_bytes
    assert [(c.ljust(48, b"\0"), d, t) for c, d, t in records] == list(FILE_RECORD.iter_unpack(construct_bytes))


flbs = st.lists(st.fixed_dictionaries(dict(name=st.binary(min_size=48, max_size=48), data=u64, count=u64)),
                max_size=70)


@given(flbs)
def test_flb_block_is_whole_pages_and_round_trips(entries):
    block = LuoFlbBlock.build(dict(flbs=entries))
    header = LuoFlbHeaderSer.parse(block)
    assert header.count == len(entries)
    assert len(block) == header.pgcnt * PAGE_SIZE
    assert header.pgcnt == (1 if len(entries) <= 63 else 2)   # 63 entries fill one page
    assert block[16 + 64 * len(entries):] == bytes(len(block) - 16 - 64 * len(entries))
    assert LuoFlbBlock.build(LuoFlbBlock.parse(block)) == block


def test_flb_block_keeps_bytes_in_its_free_space():
    block = bytearray(LuoFlbBlock.build(dict(flbs=[])))
    block[-1] = 0xAA
    assert LuoFlbBlock.build(LuoFlbBlock.parse(bytes(block))) == bytes(block)

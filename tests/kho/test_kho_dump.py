import json

import pytest

import kho.dump
from kho.dump import dump_dts, dump_json
from kho.errors import KhoFormatError
from kho.handover import Handover
from kho.luo_image import FileImage, FlbImage, LuoImage, SessionImage
from kho.luo_write import write_luo
from kho.root_tree import build_root

IMAGE = LuoImage(5, [SessionImage(b"vm\xff", [FileImage("memfd-v2", 2**64 - 1, 3)])],
                 [FlbImage("iommu-v1", 9, 1)], {"kvm": 0x10})


def _finalized(memory):
    handover = Handover(memory)
    handover.add_subtree("LUO", write_luo(memory, handover.preserved, IMAGE))
    handover.finalize()
    return handover


def test_json_without_memory_shows_the_root():
    dump = dump_json(build_root(0x1234000, {"LUO": 0x5678000}))
    assert dump == {"compatible": "kho-v1", "preserved_memory_map": "0x1234000",
                    "subtrees": {"LUO": {"fdt": "0x5678000"}}}


def test_json_with_memory_decodes_luo(memory):
    handover = _finalized(memory)
    dump = dump_json(handover.root_blob, memory)
    json.dumps(dump)   # plain JSON types only
    luo = dump["subtrees"]["LUO"]
    assert luo["compatible"] == ["luo-v1"]
    assert luo["size"] == len(handover.subtrees["LUO"])
    assert luo["luo"] == {
        "liveupdate_number": 5,
        "sessions": [{"name": "vm\\xff", "files": [
            {"compatible": "memfd-v2", "data": "0xffffffffffffffff", "token": "0x3"}]}],
        "flbs": [{"name": "iommu-v1", "data": "0x9", "count": 1}],
        "subsystems": {"kvm": "0x10"},
    }
    assert [block["order"] for block in dump["preserved_memory"]] == [0] * len(handover.preserved)


def test_json_reports_a_broken_subtree_and_goes_on(memory):
    handover = _finalized(memory)
    luo_phys = int(dump_json(handover.root_blob)["subtrees"]["LUO"]["fdt"], 16)
    memory.write(luo_phys, b"\0\0\0\0")
    dump = dump_json(handover.root_blob, memory)
    assert dump["subtrees"]["LUO"]["error"].startswith("KHO subtree 'LUO': bad FDT magic")
    assert dump["preserved_memory"]


def test_json_rejects_a_broken_root():
    with pytest.raises(KhoFormatError, match="KHO root"):
        dump_json(b"\0" * 64)


def test_dts_with_dtc(memory, dtc_decode):
    blob = _finalized(memory).root_blob
    assert dump_dts(blob) == dtc_decode(blob)


def test_dts_without_dtc_uses_the_fdt_library(memory, monkeypatch):
    monkeypatch.setattr(kho.dump.shutil, "which", lambda name: None)
    text = dump_dts(build_root(0x1234000, {"LUO": 0x5678000}))
    assert 'compatible = "kho-v1";' in text
    assert "preserved-memory-map = <0x402301 0x0>;" in text
    assert "LUO {" in text
    with pytest.raises(KhoFormatError, match="FDT: bad FDT magic"):
        dump_dts(b"\0" * 64)


def test_dts_reports_what_dtc_rejects(dtc_decode):
    with pytest.raises(KhoFormatError, match="FDT: dtc cannot decode it"):
        dump_dts(b"\0" * 64)

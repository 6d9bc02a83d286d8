import subprocess
import sys
from pathlib import Path

import kho

REPO = Path(__file__).resolve().parents[2]


def test_public_api_is_pinned():
    assert sorted(kho.__all__) == sorted([
        "PAGE_SIZE", "PhysicalMemory", "OutOfPhysicalMemory", "PhysicalAddressError",
        "PreservedMemory", "Block", "KhoFormatError", "KhoRoot", "build_root", "parse_root",
        "LUO_SUBTREE", "LuoImage", "SessionImage", "FileImage", "FlbImage", "write_luo",
        "read_luo", "read_luo_header", "LuoHeader", "release_luo", "publish_luo",
        "MEMFD_COMPATIBLE",
        "MemfdRecord", "VmallocDescriptor",
        "encode_memfd_record", "decode_memfd_record", "Handover", "IncomingHandover",
        "ScratchArea", "scratch_areas", "scratch_debugfs", "dump_json", "dump_dts",
    ])
    assert all(hasattr(kho, name) for name in kho.__all__)


def test_format_errors_are_value_errors():
    assert issubclass(kho.KhoFormatError, ValueError)
    assert issubclass(kho.OutOfPhysicalMemory, MemoryError)


def test_kho_depends_only_on_construct_fdt_and_the_stdlib():
    """No pyfuse3 or trio: the core must be testable without a mount (struct_mirror is a
    leaf over construct)."""
    code = ("import sys; before = set(sys.modules); import kho;"
            "new = {name.split('.')[0] for name in set(sys.modules) - before};"
            "print(' '.join(sorted(new - set(sys.stdlib_module_names))))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True,
                            capture_output=True, text=True)
    assert set(result.stdout.split()) == {"kho", "construct", "fdt", "struct_mirror"}

"""Fixtures for the kho tests: emulated RAM and a dtc decoder."""

import shutil
import subprocess

import pytest

from kho.memory import PhysicalMemory

MiB = 1 << 20


@pytest.fixture
def memory():
    with PhysicalMemory(64 * MiB) as ram:
        yield ram


@pytest.fixture
def dtc_decode(tmp_path):
    """Decode a blob with the real `dtc -I dtb -O dts`; fail the test if dtc rejects it."""
    dtc = shutil.which("dtc")
    if dtc is None:
        pytest.skip("dtc (device-tree-compiler) is not installed; cannot check blobs with it")

    def decode(blob: bytes) -> str:
        path = tmp_path / "blob.dtb"
        path.write_bytes(blob)
        result = subprocess.run([dtc, "-I", "dtb", "-O", "dts", str(path)],
                                capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
        assert "Warning" not in result.stderr, result.stderr
        return result.stdout

    return decode

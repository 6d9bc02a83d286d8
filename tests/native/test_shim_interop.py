"""The C shim and the Python client speak the same protocol: a session preserved
by one side is retrieved by the other across a live update.

The shell tests (scripts/test-native-*.sh) are the main harness for native/;
these only pin the interoperation. They build nothing: `make test` builds
native/ first, and they skip when native/build is missing.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BUILD = Path(__file__).resolve().parents[2] / "native" / "build"
SHIM = BUILD / "libluofs-shim.so"
LUOCTL = BUILD / "luoctl"

pytestmark = pytest.mark.skipif(
    not (SHIM.exists() and LUOCTL.exists()),
    reason="native/build is missing: run `make -C native` (make test does)",
)


def _luofs_bin() -> str:
    return shutil.which("luofs") or str(Path(sys.executable).with_name("luofs"))


def _luoctl(root: str, *steps: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    env = dict(os.environ, LD_PRELOAD=str(SHIM), LUOFS_ROOT=root, LUOFS_BIN=_luofs_bin())
    return subprocess.run([str(LUOCTL), *steps], input=stdin, env=env, capture_output=True,
                          timeout=120)


def test_python_preserves_c_retrieves(luofs_instance):
    data = os.urandom(70000)
    with luofs_instance.client() as lu, lu.create_session("py-to-c") as session:
        memfd = os.memfd_create("interop")
        os.write(memfd, data)
        session.preserve_fd(memfd, token=3)
        os.close(memfd)
        luofs_instance.kexec()
    done = _luoctl(luofs_instance.root, "retrieve", "py-to-c", "name", "get", "3", "finish")
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b"py-to-c\n" + data


def test_c_preserves_python_retrieves(luofs_instance):
    data = os.urandom(70000)
    # reboot(LINUX_REBOOT_CMD_KEXEC) inside luoctl runs `luofs kexec` via the shim.
    done = _luoctl(luofs_instance.root, "create", "c-to-py", "preserve", "4", "-", "kexec",
                   stdin=data)
    assert done.returncode == 0, done.stderr.decode()
    with luofs_instance.client() as lu, lu.retrieve_session("c-to-py") as session:
        fd = session.retrieve_fd(4)
        try:
            assert os.pread(fd, len(data) + 1, 0) == data
        finally:
            os.close(fd)
        session.finish()

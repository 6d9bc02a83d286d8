"""Issue 7 §2: random ioctl argument bytes through the C shim: the program never crashes,
every call returns 0 or an errno, and the daemon stays up. A Python program under the
shim makes the calls, so the shim's own argument handling is what is fuzzed."""

import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from luofs.testing import booted

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHIM = os.path.join(ROOT, "native", "build", "libluofs-shim.so")

DRIVER = r"""
import fcntl, os, sys
from luofs.client import LiveUpdate
root = sys.argv[1]
dev = os.open("/dev/liveupdate", os.O_RDWR)           # through the shim's open()
lu = LiveUpdate.__new__(LiveUpdate); lu.root, lu.fd = root, dev
session = lu.create_session("fuzz").fd
counts = {}
for line in sys.stdin:
    target, cmd, hexarg = line.split()
    fd = dev if target == "d" else session
    buf = bytearray(bytes.fromhex(hexarg))
    try:
        fcntl.ioctl(fd, int(cmd), buf, True)
        key = "ok"
    except OSError as e:
        key = e.errno
    counts[key] = counts.get(key, 0) + 1
print(sum(counts.values()), sorted(counts.items(), key=str))
"""

COMMANDS = [0xBA00, 0xBA01, 0xBA40, 0xBA41, 0xBA42, 0xBA43, 0xBA44, 0xC048BA43, 0x8004BA03,
            0xC010BA00, 0x5401]


def run_inputs(root: str, lines: list[str]) -> str:
    env = dict(os.environ, LD_PRELOAD=SHIM, LUOFS_ROOT=root)
    result = subprocess.run([sys.executable, "-c", DRIVER, root], input="\n".join(lines) + "\n",
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.skipif(not os.path.exists(SHIM), reason="native/build is not built (make native)")
def test_random_argument_bytes_through_the_shim():
    inputs = st.tuples(st.sampled_from("ds"), st.sampled_from(COMMANDS),
                       st.binary(min_size=1, max_size=160))
    lines: list[str] = []

    @settings(max_examples=1500, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(inputs)
    def collect(item):
        target, cmd, arg = item
        lines.append(f"{target} {cmd} {arg.hex()}")

    collect()
    with booted() as inst:
        out = run_inputs(inst.root, lines)
        assert int(out.split()[0]) == len(lines)
        assert inst.status()["kernel"] is not None

"""luofs.waitfd: waits on descriptors beyond select()'s 1023, as a test or a user's
program holding thousands of memfds gives them."""

import os
import resource
import subprocess
import sys

from luofs.waitfd import readable


def test_a_descriptor_above_1023_is_waited_for():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 2100:
        import pytest

        pytest.skip(f"RLIMIT_NOFILE hard limit {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2100), hard))
    r, w = os.pipe()
    high_r, high_w = os.dup2(r, 2000), os.dup2(w, 2001)
    try:
        assert readable(high_r, 0.01) is False
        os.write(high_w, b"x")
        assert readable(high_r, 0.01) is True
    finally:
        for fd in (r, w, high_r, high_w):
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_shutdown_from_a_process_holding_many_descriptors(tmp_path):
    """The fixture's shutdown waits on the machine's pidfd: numbered above 1023 here."""
    script = """
import os, resource
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
held = [os.memfd_create("x") for _ in range(1100)]
from luofs.testing import booted
with booted() as inst:
    assert os.path.exists(inst.path("dev", "liveupdate"))
print("clean")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "clean" in out.stdout, out.stderr[-2000:]

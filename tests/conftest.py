import os

import pytest


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="mount tests need root (FUSE allow_other, pidfd_getfd)")
        for item in items:
            if "luofs_instance" in getattr(item, "fixturenames", ()):
                item.add_marker(skip)


@pytest.fixture
def ram():
    """An fd of emulated RAM (64 MiB memfd) for kernels booted in-process."""
    fd = os.memfd_create("ram")
    os.ftruncate(fd, 64 << 20)
    yield fd
    os.close(fd)

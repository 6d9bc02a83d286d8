import os

import pytest


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="mount tests need root (FUSE allow_other, pidfd_getfd)")
        for item in items:
            if "luofs_instance" in getattr(item, "fixturenames", ()):
                item.add_marker(skip)

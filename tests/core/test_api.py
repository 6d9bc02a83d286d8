"""luofs/core/__init__.py: the package's public face, pinned."""

import luofs.core


def test_public_names():
    assert sorted(luofs.core.__all__) == sorted([
        "Caller", "Command", "CommandTable", "Request", "check", "MAINLINE_DEVICE",
        "MAINLINE_SESSION", "LuoError", "FileHandler", "HandlerRegistry", "CarriedFile",
        "CarriedSession", "Luo", "Outcome", "Rebooting", "session_name", "Direction",
        "PreservedFile", "Session",
    ])
    for name in luofs.core.__all__:
        assert hasattr(luofs.core, name)

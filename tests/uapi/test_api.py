"""luofs/uapi/__init__.py: the package's public face, pinned."""

import luofs.uapi


def test_public_names():
    assert sorted(luofs.uapi.__all__) == sorted([
        "errnos", "frames", "ioctl", "structs", "errno_name",
        "LIVEUPDATE_IOCTL_CREATE_SESSION", "LIVEUPDATE_IOCTL_RETRIEVE_SESSION",
        "LIVEUPDATE_IOCTL_TYPE", "LIVEUPDATE_SESSION_FINISH", "LIVEUPDATE_SESSION_GET_NAME",
        "LIVEUPDATE_SESSION_NAME_LENGTH", "LIVEUPDATE_SESSION_PRESERVE_FD",
        "LIVEUPDATE_SESSION_RETRIEVE_FD",
    ])
    for name in luofs.uapi.__all__:
        assert hasattr(luofs.uapi, name)

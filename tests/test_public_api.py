"""The public contract other programs build on (README "Public contract"): pinned here,
so a change to it is a deliberate one."""

import inspect

import luofs.client
import luofs.testing


def test_client_names():
    assert sorted(luofs.client.__all__) == sorted(
        ["LiveUpdate", "Session", "LiveUpdateV2", "ioctl", "DEVICE_PATH", "kexec", "status"])
    methods = {
        "LiveUpdate": {"create_session", "retrieve_session", "close", "fileno"},
        "Session": {"preserve_fd", "retrieve_fd", "preserve_bytes", "retrieve_bytes", "finish",
                    "get_name", "close", "fileno",
                    "name"},
        "LiveUpdateV2": {"preserve", "unpreserve", "restore", "state", "prepare", "freeze",
                         "cancel", "finish", "close", "fileno"},
    }
    for cls, names in methods.items():
        missing = names - set(dir(getattr(luofs.client, cls)))
        assert not missing, f"{cls} lacks {missing}"
        assert hasattr(getattr(luofs.client, cls), "__enter__")


def test_client_signatures():
    assert list(inspect.signature(luofs.client.ioctl).parameters) == ["root", "fd", "cmd", "arg"]
    assert list(inspect.signature(luofs.client.kexec).parameters) == ["root", "timeout"]
    assert list(inspect.signature(luofs.client.status).parameters) == ["root", "timeout"]
    assert list(inspect.signature(luofs.client.Session.preserve_fd).parameters) == [
        "self", "fd", "token"]


def test_testing_names():
    assert sorted(luofs.testing.__all__) == ["Instance", "booted", "luofs_instance"]
    for name in ("boot", "kexec", "shutdown", "status", "client", "path", "read"):
        assert callable(getattr(luofs.testing.Instance, name))


def test_cli_userspace_options():
    """Issue 13: boot --init PROG [-- ARGS]; kexec --cmdline/--load/--unload/--keep-userspace."""
    from luofs.cli import build_parser

    parser = build_parser()
    boot = parser.parse_args(["boot", "--init", "/sbin/init", "--", "-x", "y"])
    assert (boot.init, boot.init_args) == ("/sbin/init", ["-x", "y"])
    kexec = parser.parse_args(["kexec", "--cmdline", "a=1", "--keep-userspace"])
    assert (kexec.cmdline, kexec.load, kexec.unload, kexec.keep_userspace) == (
        "a=1", False, False, True)
    assert parser.parse_args(["kexec", "--load"]).load
    assert parser.parse_args(["kexec", "--unload"]).unload

"""Test tools shipped to users: boot an emulated kernel in a temp dir, tear it down.

As a pytest plugin (registered automatically when luofs is installed) it provides:

    def test_something(luofs_instance):
        with luofs_instance.client() as lu: ...
        luofs_instance.kexec()

Each instance has its own root, so tests run in parallel.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from contextlib import contextmanager

import pytest

from . import cli, wire
from .client import LiveUpdate, status
from .mounts import detach_mount

__all__ = ["Instance", "booted", "luofs_instance"]


class Instance:
    def __init__(self, root: str, boot_args=()):
        self.root = os.path.realpath(root)
        self.boot_args = list(boot_args)
        self.machine_pid: int | None = None
        self.state_dir: str | None = None

    def _cli(self, *args) -> None:
        code = cli.main([*args, "--root", self.root])
        if code != 0:
            raise RuntimeError(f"luofs {' '.join(args)} failed with status {code}")

    def boot(self) -> "Instance":
        self._cli("boot", *self.boot_args)
        self.machine_pid = self.status()["machine"]["pid"]
        self.state_dir = wire.state_dir(self.root)
        return self

    def status(self) -> dict:
        return status(self.root)

    def kexec(self) -> None:
        self._cli("kexec")

    def shutdown(self) -> None:
        """Unmount and stop every process of this instance, whatever state it is in, and
        remove its logs (a test that wants them reads them before it ends)."""
        try:
            self._cli("shutdown")
            if self.state_dir:
                shutil.rmtree(self.state_dir, ignore_errors=True)
        except Exception:
            if self.machine_pid is not None:
                try:
                    os.killpg(self.machine_pid, signal.SIGKILL)  # machine leads its session
                except ProcessLookupError:
                    pass
            detach_mount(self.root)
            raise

    def client(self) -> LiveUpdate:
        return LiveUpdate(self.root)

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def read(self, *parts: str) -> str:
        with open(self.path(*parts)) as f:
            return f.read()


@contextmanager
def booted(boot_args=(), root: str | None = None):
    """An instance in a fresh temp dir (or `root`), always shut down and removed."""
    with tempfile.TemporaryDirectory(prefix="luofs-") as tmp:
        instance = Instance(root or tmp, boot_args).boot()
        try:
            yield instance
        finally:
            instance.shutdown()


@pytest.fixture
def luofs_instance():
    with booted() as instance:
        yield instance

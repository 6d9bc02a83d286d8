"""Builds luofs's native pieces into the package when a wheel (or `pip install .`) is built.

luofs needs C at run time: the LD_PRELOAD shim, the seccomp supervisor, the userspace
launcher, the file keepers' records helper, `luoctl`, the test guest of `luofs vm` and
the ABI header. In a checkout `make native` builds them, with the C test programs, into
native/build; here native/Makefile builds only these, in the build tree, and they ship
as luofs/_native in a platform wheel (luofs/native.py finds them there). Editable
installs build nothing: they use the checkout's native/build. Metadata: pyproject.toml.
"""

import os
import platform
import shutil
import subprocess

from setuptools import Distribution, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
NATIVE = os.path.join(HERE, "native")
RUNTIME = ["libluofs-shim.so", "luofs-supervise", "luofs-userspace", "libluofs-records.so",
           "luoctl", "luofs-spawn"]
GUEST = "luofs-guest.elf"  # a 32-bit x86 image: built where gcc targets x86
HEADER = os.path.join("include", "linux", "liveupdate.h")
TOOLS = {"gcc": "gcc", "make": "make", "ld": "binutils"}  # tool: its Debian package


class BuildError(Exception):
    pass


def _check_tools() -> None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        packages = " ".join(dict.fromkeys(TOOLS[tool] for tool in missing))
        raise BuildError(
            f"luofs: building its native pieces (the LD_PRELOAD shim, the seccomp supervisor, "
            f"the userspace launcher) needs {', '.join(missing)}, not found on PATH. "
            f"On Debian or Ubuntu: apt-get install {packages} libc6-dev "
            f"(and libfuse3-dev pkg-config for pyfuse3); then install luofs again.")


def build_native(objects: str, into: str) -> list[str]:
    """Run native/Makefile for the runtime pieces (objects under `objects`), copy them and
    the header into `into`; the files copied."""
    _check_tools()
    names = RUNTIME + ([GUEST] if platform.machine() in ("x86_64", "AMD64", "i686") else [])
    objects = os.path.abspath(objects)
    # The checkout builds with -Werror; a user's newer compiler may warn where ours did not,
    # and that must not stop an install.
    command = ["make", "-s", "-C", NATIVE, f"-j{os.cpu_count() or 1}", f"BUILD={objects}",
               "WARN=-Wall -Wextra", *(os.path.join(objects, name) for name in names)]
    if subprocess.run(command).returncode != 0:
        raise BuildError(f"luofs: building the native pieces failed: {' '.join(command)}")
    copied = []
    for name in names:
        os.makedirs(into, exist_ok=True)
        copied.append(shutil.copy2(os.path.join(objects, name), os.path.join(into, name)))
    header = os.path.join(into, HEADER)
    os.makedirs(os.path.dirname(header), exist_ok=True)
    copied.append(shutil.copy2(os.path.join(NATIVE, HEADER), header))
    return copied


class build_py_native(build_py):
    """build_py, then the native pieces into the built package's _native directory."""

    def run(self):
        super().run()
        self._native = []
        if not self.editable_mode:
            temp = os.path.join(self.get_finalized_command("build").build_temp, "native")
            into = os.path.join(self.build_lib, "luofs", "_native")
            try:
                self._native = build_native(temp, into)
            except BuildError as e:
                raise SystemExit(str(e)) from None

    def get_outputs(self, include_bytecode=True):
        return super().get_outputs(include_bytecode) + getattr(self, "_native", [])


class PlatformDistribution(Distribution):
    """Binary, as one with extension modules is: the wheel is for this platform only."""

    def has_ext_modules(self):
        return True


class bdist_wheel_platform(bdist_wheel):
    """Any Python 3 (the binaries are executables and ctypes libraries, not extensions)."""

    def get_tag(self):
        return ("py3", "none", super().get_tag()[2])


setup(distclass=PlatformDistribution,
      cmdclass={"build_py": build_py_native, "bdist_wheel": bdist_wheel_platform})

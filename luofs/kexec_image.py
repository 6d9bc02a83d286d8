"""The next kernel as kexec_file_load(2)/kexec_load(2) loaded it: its command line.

The machine keeps one loaded image, as the running kernel does: `luofs kexec --load
[--cmdline CMDLINE]` (what the shim's kexec_file_load runs) records it, `--unload`
forgets it, and the next kexec boots it, so its command line becomes the next
kernel's proc/cmdline. A kexec consumes the image; a refused freeze keeps it loaded
and the running kernel keeps its own command line. `luofs kexec --cmdline CMDLINE`
loads and executes in one step.

Deviation: a kexec with nothing loaded boots the running kernel's command line again
(the kernel answers EINVAL there), since programs call reboot(LINUX_REBOOT_CMD_KEXEC)
alone to mean "the same kernel".

Unhappy paths: a command line longer than the kernel's COMMAND_LINE_SIZE or holding a
NUL byte is refused with EINVAL, and nothing changes.
"""

from __future__ import annotations

import dataclasses
import errno

COMMAND_LINE_SIZE = 2048  # x86's and arm64's, the NUL included


class ImageError(ValueError):
    errno = errno.EINVAL


def check_cmdline(cmdline: str) -> str:
    if not isinstance(cmdline, str) or "\0" in cmdline:
        raise ImageError("a command line is text without NUL bytes")
    if len(cmdline.encode()) >= COMMAND_LINE_SIZE:
        raise ImageError(f"a command line holds at most {COMMAND_LINE_SIZE - 1} bytes")
    return cmdline


class LoadedImage:
    """What `kexec -l` left loaded: nothing, or a command line (None: the running one's)."""

    def __init__(self):
        self.loaded = False
        self.cmdline: str | None = None

    def load(self, cmdline: str | None) -> None:
        self.cmdline = check_cmdline(cmdline) if cmdline is not None else None
        self.loaded = True

    def unload(self) -> None:
        self.loaded, self.cmdline = False, None

    def next_config(self, config, cmdline: str | None = None):
        """The next kernel's KernelConfig: `cmdline` given for this kexec, else the
        loaded image's, else the running kernel's."""
        if cmdline is not None:
            return dataclasses.replace(config, cmdline=check_cmdline(cmdline))
        if self.loaded and self.cmdline is not None:
            return dataclasses.replace(config, cmdline=self.cmdline)
        return config

    def status(self) -> dict:
        return {"loaded": self.loaded, "cmdline": self.cmdline}

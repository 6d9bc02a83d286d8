"""dev/liveupdate under each ABI, as the FUSE layer sees it: open, close, ioctl.

Mainline: exclusive open, size-prefixed structs, sessions (luofs.core.luo).
RFC v2: any number of privileged openers, sizes encoded in the request number
(luofs.core.rfc_v2). RFC v1 has no device at all.
"""

from __future__ import annotations

from ..core import Luo, Request
from ..core.rfc_v2 import RfcV2Device


class MainlineDevice:
    sized = True  # every argument starts with its u32 size

    def __init__(self, luo: Luo):
        self.luo = luo

    def open(self, flags: int, uid: int) -> None:
        self.luo.open_device()

    def close(self) -> None:
        self.luo.close_device()

    def ioctl(self, request: Request, caller):
        return self.luo.device_ioctl(request, caller)


class V2Device:
    sized = False

    def __init__(self, device: RfcV2Device):
        self.device = device

    def open(self, flags: int, uid: int) -> None:
        # FUSE strips O_EXCL before open reaches us: only the shim could refuse it.
        self.device.open(flags, privileged=uid == 0)

    def close(self) -> None:
        pass

    def ioctl(self, request: Request, caller):
        return self.device.ioctl(request.cmd, None if request.arg_fault else request.arg, caller)

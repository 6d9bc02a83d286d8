"""RFC v1 (spec/rfc.md): no device; user space drives LUO's global state through
sysfs, `echo 1 > prepare` / `echo 0 > prepare` (cancel) / `echo 1 > finish`.

DOC: The control files parse their input as the kernel's kstrtoint does (any base,
one trailing newline); anything else, or an event the state does not allow, is
EINVAL; a failing participant gives its own errno (luofs/core/rfc_sysfs.py).
"""

from __future__ import annotations

import functools

from ..core import rfc_sysfs
from ..fs.nodes import Node, TextFile
from .rfc import RfcPersonality


class RfcV1(RfcPersonality):
    name = "rfc-v1"
    profile = "rfc-v1"

    def liveupdate_nodes(self, intern) -> dict[bytes, Node]:
        nodes = super().liveupdate_nodes(intern)
        for name in ("prepare", "finish"):
            nodes[name.encode()] = TextFile(None, 0o200, store=functools.partial(
                rfc_sysfs.store, self.state, name))
        return nodes

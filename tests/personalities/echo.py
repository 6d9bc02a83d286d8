"""A test-only personality: the smallest ABI there is. It serves a `state` file and a
`number` file, carries nothing, and is registered with one line (see test_registry)."""

from luofs.core.state import GlobalState
from luofs.fs.nodes import Node, TextFile
from luofs.personalities.base import Personality


class Echo(Personality):
    name = "test-echo"

    @classmethod
    def cold(cls, parts):
        return cls(parts, GlobalState("rfc-v2", []))

    @classmethod
    def thaw(cls, parts, handover, sources):
        if sources:
            raise AssertionError("echo carries no files")
        return cls.cold(parts)

    def liveupdate_nodes(self, intern) -> dict[bytes, Node]:
        return {b"state": TextFile(lambda: str(self.state.state).encode() + b"\n"),
                b"number": TextFile(lambda: b"%d\n" % self.parts.liveupdate_number)}

    def freeze(self):
        root = self.parts.finalize(None, None, None)
        return self.parts.hand_over(root, [], ())

    def undo_freeze(self):
        self.parts.handover.abort()

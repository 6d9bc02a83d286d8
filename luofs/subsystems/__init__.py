"""Built-in in-kernel participants of the RFC subsystem API (spec/rfc.md §5)."""

from .mm import MmSubsystem

__all__ = ["MmSubsystem"]

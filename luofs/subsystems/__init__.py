"""Built-in in-kernel participants of the RFC subsystem API (spec/rfc.md §5): mm
keeps pages, kvm carries the running VMs (kvm_node.py: its KHO node)."""

from .kvm import KvmSubsystem
from .mm import MmSubsystem

__all__ = ["KvmSubsystem", "MmSubsystem"]

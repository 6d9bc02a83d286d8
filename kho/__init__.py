"""Kexec HandOver (KHO) for the luofs emulator.

Emulated physical memory, preserved-memory tracking and its serialized map,
the KHO root tree and LUO's subtree, all in the kernel's on-wire formats
(spec/kho.md, spec/uapi.md §17).  No I/O beyond reading and writing the RAM
memfd, so the luofs core can use it without FUSE.  Imports only construct,
the FDT library and the ``struct_mirror`` leaf.

Map: ``memory`` (RAM and its page allocator), ``preserve`` and ``mem_map``
(which blocks survive, and their chunk list), ``root_tree`` and ``fdt_blob``
(FDTs), ``handover`` (old kernel's builder, new kernel's view), ``luo_format``,
``luo_image``, ``luo_write`` and ``luo_read`` (LUO's subtree and blocks),
``memfd_record``, ``scratch``, ``dump`` (debugfs and JSON views).
"""

from .dump import dump_dts, dump_json
from .errors import KhoFormatError
from .handover import Handover, IncomingHandover
from .luo_image import LUO_SUBTREE, FileImage, FlbImage, LuoImage, SessionImage
from .luo_read import LuoHeader, read_luo, read_luo_header
from .luo_write import publish_luo, release_luo, write_luo
from .memfd_record import (MEMFD_COMPATIBLE, MemfdRecord, VmallocDescriptor,
                           decode_memfd_record, encode_memfd_record)
from .memory import PAGE_SIZE, OutOfPhysicalMemory, PhysicalAddressError, PhysicalMemory
from .preserve import Block, PreservedMemory
from .root_tree import KhoRoot, build_root, parse_root
from .scratch import ScratchArea, scratch_areas, scratch_debugfs

__all__ = [
    "PAGE_SIZE",
    "PhysicalMemory",
    "OutOfPhysicalMemory",
    "PhysicalAddressError",
    "PreservedMemory",
    "Block",
    "KhoFormatError",
    "KhoRoot",
    "build_root",
    "parse_root",
    "LUO_SUBTREE",
    "LuoImage",
    "SessionImage",
    "FileImage",
    "FlbImage",
    "write_luo",
    "read_luo",
    "read_luo_header",
    "LuoHeader",
    "release_luo",
    "publish_luo",
    "MEMFD_COMPATIBLE",
    "MemfdRecord",
    "VmallocDescriptor",
    "encode_memfd_record",
    "decode_memfd_record",
    "Handover",
    "IncomingHandover",
    "ScratchArea",
    "scratch_areas",
    "scratch_debugfs",
    "dump_json",
    "dump_dts",
]

"""Human- and tool-readable views of a handover, for debugging and debugfs.

``dump_dts`` prefers the real ``dtc``, because "dtc decodes it" is the
contract for every blob KHO writes; without dtc it falls back to the ``fdt``
library's rendering.  ``dump_json`` decodes what it understands (the root,
the memory map, LUO's subtree) and shows u64 values as hex strings, since
JSON numbers lose precision above 2**53.
"""

import shutil
import subprocess

from .errors import KhoFormatError
from .fdt_blob import parse_fdt, raw_value
from .handover import read_subtree
from .luo_image import LUO_COMPATIBLE, LuoImage
from .luo_read import read_luo
from .preserve import PreservedMemory
from .root_tree import KHO_COMPATIBLE, parse_root


def dump_dts(blob: bytes) -> str:
    """Decode an FDT to DTS source text."""
    dtc = shutil.which("dtc")
    if dtc is None:
        return parse_fdt(blob, "FDT").to_dts()
    result = subprocess.run([dtc, "-q", "-I", "dtb", "-O", "dts", "-"], input=bytes(blob),
                            capture_output=True, check=False)
    if result.returncode:
        raise KhoFormatError(f"FDT: dtc cannot decode it: {result.stderr.decode().strip()}")
    return result.stdout.decode()


def dump_json(root_blob: bytes, memory=None, preserved=None) -> dict:
    """Describe a root tree; with ``memory``, also what it points to.

    ``preserved`` gives the preserved blocks directly: a running kernel's map is
    not serialized before finalize, and an incoming map lives in pages the new
    kernel may already have reused, so it must not be read again.

    A subtree that cannot be decoded gets an ``error`` entry instead of
    aborting the whole dump: a dump is most needed when something is broken.
    """
    root = parse_root(root_blob)
    dump = {
        "compatible": KHO_COMPATIBLE,
        "preserved_memory_map": hex(root.mem_map_phys),
        "subtrees": {name: {"fdt": hex(phys)} for name, phys in root.subtrees.items()},
    }
    if memory is None:
        return dump
    if preserved is None:
        preserved = PreservedMemory.deserialize(memory, root.mem_map_phys)
    dump["preserved_memory"] = [{"phys": hex(block.phys), "order": block.order,
                                 "size": hex(block.size)} for block in preserved]
    for name, phys in root.subtrees.items():
        entry = dump["subtrees"][name]
        try:
            blob = read_subtree(memory, phys, name)
            entry["size"] = len(blob)
            compatible = parse_fdt(blob, name).root.get_property("compatible")
            entry["compatible"] = _strings(raw_value(compatible)) if compatible else []
            if LUO_COMPATIBLE in entry["compatible"]:
                entry["luo"] = _luo_json(read_luo(memory, blob))
        except KhoFormatError as exc:
            entry["error"] = str(exc)
    return dump


def _luo_json(image: LuoImage) -> dict:
    return {
        "liveupdate_number": image.liveupdate_number,
        "sessions": [{"name": session.name.decode("utf-8", "backslashreplace"),
                      "files": [{"compatible": file.compatible, "data": hex(file.data),
                                 "token": hex(file.token)} for file in session.files]}
                     for session in image.sessions],
        "flbs": [{"name": flb.name, "data": hex(flb.data), "count": flb.count}
                 for flb in image.flbs],
        "subsystems": {name: hex(value) for name, value in image.subsystems.items()},
    }


def _strings(value: bytes) -> list[str]:
    return [text.decode("ascii", "backslashreplace") for text in value.split(b"\0") if text]

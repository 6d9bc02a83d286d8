"""What preserved devices hand to the next kernel: a KHO subtree, one node per device.

::

    / { compatible = "luofs,dev-liveupdate-v1";
        dma0    { compatible = "luofs,dma-engine-v1";  path = "pci0000:00/…/0000:01:00.0";
                  state = [104 bytes: struct dma_driver_state]; };
        bridge0 { compatible = "luofs,pci-bridge-v1";  path = "pci0000:00/0000:00:01.0";
                  state = [8 bytes: struct pci_bridge_state]; }; };

Nodes are named by the machine's device labels (PCI names contain ':', which
FDT node names may not), in the order the device layer preserved them (deepest
first). The ring and the I/O page tables themselves stay where they are, in
preserved pages; the state says where.

Half: drivers (the kernel process).

Unhappy paths: decoding fails with KhoFormatError on anything that does not match
(size, flags, compatible, path, property encoding), and the caller treats the
device as not handed over; encoding a state that does not fit its fields is
ValueError (a driver bug).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import fdt
from construct import Int32ul, Int64ul, Struct, Terminated

from kho.errors import KhoFormatError
from kho.fdt_blob import (check_compatible, get_prop, new_node, new_tree, parse_fdt, to_blob)
from kho.memory import PAGE_SIZE

from .ring import RECORDS_PER_PAGE

DEVICES_SUBTREE = "dev-liveupdate"
DEVICES_COMPATIBLE = "luofs,dev-liveupdate-v1"
DMA_COMPATIBLE = "luofs,dma-engine-v1"
BRIDGE_COMPATIBLE = "luofs,pci-bridge-v1"

IRQ_ENABLED = 1 << 0

_U32 = 1 << 32
_U64 = 1 << 64


def _fields_size(definition) -> int:
    """Bytes of a struct without its ``Terminated`` marker (which has no size)."""
    return sum(sub.sizeof() for sub in definition.subcons if sub is not Terminated)


# struct dma_driver_state: where the ring and tables are, how far the driver got.
DmaDriverState = Struct(
    "device_id" / Int32ul,
    "epoch" / Int32ul,           # the device's reset count when frozen: a reset since shows
    "ring_phys" / Int64ul,
    "ring_iova" / Int64ul,
    "ring_entries" / Int32ul,
    "irq_vector" / Int32ul,      # interrupt routing: the vector the driver assigned
    "irq_flags" / Int32ul,       # IRQ_ENABLED
    "pt_pages" / Int32ul,        # I/O page tables: root, then L1 pages, contiguous
    "pt_phys" / Int64ul,
    "tail" / Int64ul,            # consumed up to here (free-running)
    "head" / Int64ul,            # the device's head when frozen: it may only grow since
    "next_seq" / Int64ul,        # the seq the driver expects next
    "records_received" / Int64ul,  # lifetime counters, carried for `luofs status`
    "irq_consumed" / Int64ul,
    "seq_gaps" / Int64ul,
    "bad_records" / Int64ul,
    Terminated,
)
DMA_STATE_SIZE = _fields_size(DmaDriverState)

# struct pci_bridge_state
PciBridgeState = Struct(
    "secondary_bus" / Int32ul,
    "flags" / Int32ul,           # BRIDGE_ENABLED
    Terminated,
)
BRIDGE_STATE_SIZE = _fields_size(PciBridgeState)
BRIDGE_ENABLED = 1 << 0



@dataclass(frozen=True)
class DmaState:
    device_id: int
    epoch: int
    ring_phys: int
    ring_iova: int
    ring_entries: int
    irq_vector: int
    irq_flags: int
    pt_pages: int
    pt_phys: int
    tail: int
    head: int
    next_seq: int
    records_received: int = 0
    irq_consumed: int = 0
    seq_gaps: int = 0
    bad_records: int = 0

    @property
    def ring_bytes(self) -> int:
        return self.ring_entries * PAGE_SIZE // RECORDS_PER_PAGE

    def __post_init__(self):
        for name, sub in ((sub.name, sub) for sub in DmaDriverState.subcons if sub.name):
            limit = _U32 if sub.sizeof() == 4 else _U64
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value < limit:
                raise ValueError(f"dma_driver_state.{name} = {value!r} does not fit")
        problem = _dma_problem(self)
        if problem:
            raise ValueError(f"dma_driver_state: {problem}")


def _dma_problem(state) -> str | None:
    if not state.ring_entries or state.ring_entries % RECORDS_PER_PAGE:
        return f"ring_entries {state.ring_entries} is not a positive multiple of {RECORDS_PER_PAGE}"
    for name in ("ring_phys", "ring_iova", "pt_phys"):
        if getattr(state, name) % PAGE_SIZE:
            return f"{name} {getattr(state, name):#x} is not page-aligned"
    if not state.ring_phys or not state.pt_phys:
        return "the ring and the page tables need addresses (0 means none)"
    if state.pt_pages < 2:
        return f"pt_pages {state.pt_pages}: the tables need a root and at least one L1 page"
    if not state.tail <= state.head <= state.tail + state.ring_entries:
        return f"head {state.head} is not within a ring ahead of tail {state.tail}"
    if state.irq_flags & ~IRQ_ENABLED:
        return f"unknown irq_flags bits {state.irq_flags & ~IRQ_ENABLED:#x}"
    return None


def encode_dma_state(state: DmaState) -> bytes:
    return DmaDriverState.build(asdict(state))


def decode_dma_state(data: bytes) -> DmaState:
    what = "dma_driver_state"
    if len(data) != DMA_STATE_SIZE:
        raise KhoFormatError(f"{what}: {len(data)} bytes, expected {DMA_STATE_SIZE}")
    parsed = DmaDriverState.parse(data)
    problem = _dma_problem(parsed)
    if problem:
        raise KhoFormatError(f"{what}: {problem}")
    return DmaState(**{s.name: parsed[s.name] for s in DmaDriverState.subcons if s.name})


@dataclass(frozen=True)
class BridgeState:
    secondary_bus: int
    enabled: bool


def encode_bridge_state(state: BridgeState) -> bytes:
    if not 0 <= state.secondary_bus < 256:
        raise ValueError(f"secondary bus {state.secondary_bus} is not 0..255")
    return PciBridgeState.build(dict(secondary_bus=state.secondary_bus,
                                     flags=BRIDGE_ENABLED if state.enabled else 0))


def decode_bridge_state(data: bytes) -> BridgeState:
    what = "pci_bridge_state"
    if len(data) != BRIDGE_STATE_SIZE:
        raise KhoFormatError(f"{what}: {len(data)} bytes, expected {BRIDGE_STATE_SIZE}")
    parsed = PciBridgeState.parse(data)
    if parsed.flags & ~BRIDGE_ENABLED:
        raise KhoFormatError(f"{what}: unknown flag bits {parsed.flags & ~BRIDGE_ENABLED:#x}")
    if parsed.secondary_bus > 255:
        raise KhoFormatError(f"{what}: secondary bus {parsed.secondary_bus} is not 0..255")
    return BridgeState(parsed.secondary_bus, bool(parsed.flags & BRIDGE_ENABLED))


# -- the subtree -----------------------------------------------------------------------

@dataclass(frozen=True)
class DeviceImage:
    """One preserved device: its label (the node name), path, state format and bytes."""

    label: str
    path: str
    compatible: str
    state: bytes


def build_devices_fdt(images) -> bytes:
    tree = new_tree(DEVICES_COMPATIBLE)
    seen = set()
    for image in images:
        if image.label in seen:
            raise ValueError(f"device {image.label!r} appears twice")
        seen.add(image.label)
        node = new_node(image.label, image.compatible)
        node.append(fdt.PropStrings("path", image.path))
        node.append(fdt.PropBytes("state", data=bytes(image.state)))
        tree.root.append(node)
    return to_blob(tree)


def parse_devices_fdt(blob: bytes) -> list[DeviceImage]:
    """Decode the subtree; KhoFormatError for anything malformed."""
    what = "KHO subtree 'dev-liveupdate'"
    root = parse_fdt(blob, what).root
    check_compatible(root, DEVICES_COMPATIBLE, what)
    images = []
    for node in root.nodes:
        where = f"{what}: device '{node.name}'"
        compatible = _string(get_prop(node, "compatible", where), where, "compatible")
        path = _string(get_prop(node, "path", where), where, "path")
        if not path or path.startswith("/") or "//" in path or path.endswith("/"):
            raise KhoFormatError(f"{where}: path {path!r} is not a device path")
        images.append(DeviceImage(node.name, path, compatible,
                                  get_prop(node, "state", where)))
    return images


def _string(raw: bytes, where: str, name: str) -> str:
    if not raw.endswith(b"\0") or b"\0" in raw[:-1]:
        raise KhoFormatError(f"{where}: property '{name}' is not one NUL-terminated string")
    try:
        return raw[:-1].decode("ascii")
    except UnicodeDecodeError:
        raise KhoFormatError(f"{where}: property '{name}' is not ASCII") from None


def describe_devices_fdt(blob: bytes) -> list[dict]:
    """The subtree decoded for people (``luofs kho-dump``): one dict per device, states
    decoded where the format is known; u64 addresses as hex strings, as kho.dump_json."""
    decoders = {DMA_COMPATIBLE: decode_dma_state, BRIDGE_COMPATIBLE: decode_bridge_state}
    out = []
    for image in parse_devices_fdt(blob):
        entry = {"label": image.label, "path": image.path, "compatible": image.compatible}
        decode = decoders.get(image.compatible)
        try:
            state = asdict(decode(image.state)) if decode else {"raw": image.state.hex()}
        except KhoFormatError as e:
            state = {"error": str(e)}
        entry["state"] = {key: hex(value) if key.endswith(("_phys", "_iova")) else value
                          for key, value in state.items()}
        out.append(entry)
    return out

"""The device SPEC of `luofs boot --devices SPEC`: which emulated hardware the machine has.

Grammar (entries separated by ';', options by ','; blanks around them are ignored)::

    SPEC   := 'default' | 'none' | ENTRY (';' ENTRY)*
    ENTRY  := LABEL ['@' PARENT] [':' OPTION (',' OPTION)*]
    LABEL  := KIND DIGITS            kind from the prefix: 'bridge' or 'dma'
    PARENT := the label of a bridge declared earlier (default: the root bus)
    OPTION := KEY '=' VALUE

Options, with defaults:

=========  ======  ============================================================
key        kinds   meaning
=========  ======  ============================================================
lu         all     1: the device's driver has liveupdate callbacks; 0: it has
                   none, so neither it nor anything below it can be requested
fail       all     PHASE[:ERRNO]: the driver's PHASE callback (prepare or
                   reboot) fails with ERRNO (default EIO) — a test hook
rate       dma     records per second (10000); 0 = the device writes only when
                   told to (``DmaEngine.produce``), for deterministic tests
ring       dma     ring entries (4096), a multiple of 128 (one 4 KiB page of
                   32-byte records), at most 1048576
full       dma     what a full ring does: ``stall`` (default: the device waits
                   for the driver, nothing is lost) or ``drop`` (records made
                   while full are counted and skipped: gaps in seq)
=========  ======  ============================================================

The PCI layout follows from the order of declaration, as firmware enumerates:
the root complex is ``pci0000:00``; devices on bus 0 take slots 1, 2, …; each
bridge gets the next free bus number and its children take slots 0, 1, … on
it. So the default ``bridge0;dma0@bridge0;dma1@bridge0`` is::

    pci0000:00                    root complex (no driver, no bus)
    └─ 0000:00:01.0   bridge0     PCI bridge, driver pcieport
       ├─ 0000:01:00.0   dma0     DMA engine, driver luofs-dma
       └─ 0000:01:01.0   dma1     DMA engine, driver luofs-dma

Shared: the machine parses the SPEC, kernels receive its :class:`DeviceConfig` s.

Unhappy paths: every malformed SPEC is ValueError, naming the device and what is
wrong (``luofs boot`` reports it as ``--devices: …``).
"""

from __future__ import annotations

import errno as _errno
import re
from dataclasses import dataclass, field

DEFAULT_SPEC = "bridge0;dma0@bridge0;dma1@bridge0"
ROOT_NAME = "pci0000:00"
KINDS = ("bridge", "dma")
PHASES = ("prepare", "reboot")
FULL_MODES = ("stall", "drop")
RECORDS_PER_PAGE = 128
MAX_RING = 1 << 20
MAX_RATE = 10_000_000
SLOTS_PER_BUS = 32
MAX_BUS = 255

_LABEL = re.compile(r"(bridge|dma)([0-9]{1,6})\Z")


@dataclass(frozen=True)
class DeviceConfig:
    """One device of the machine, fully resolved: what `device-list` reports."""

    label: str
    kind: str
    name: str                 # sysfs name: 0000:BB:SS.0
    path: str                 # under sys/devices: pci0000:00/…/name
    parent: str               # the parent's path (the root complex for top-level devices)
    lu: bool = True
    fail: tuple[str, int] | None = None
    rate: int = 10_000
    ring: int = 4096
    full: str = "stall"
    secondary_bus: int = 0    # bridges: the bus number behind them

    @property
    def depth(self) -> int:
        return self.path.count("/")

    def to_message(self) -> dict:
        """JSON-able form, as the machine describes its hardware to a kernel."""
        message = {"label": self.label, "kind": self.kind, "name": self.name, "path": self.path,
                   "parent": self.parent, "lu": self.lu,
                   "fail": list(self.fail) if self.fail else None}
        if self.kind == "dma":
            message.update(rate=self.rate, ring=self.ring, full=self.full)
        else:
            message.update(secondary_bus=self.secondary_bus)
        return message

    @classmethod
    def from_message(cls, message: dict) -> "DeviceConfig":
        fields = dict(message)
        fail = fields.pop("fail", None)
        return cls(**fields, fail=tuple(fail) if fail else None)


@dataclass(frozen=True)
class Topology:
    """Every device, parents before children."""

    devices: tuple[DeviceConfig, ...] = field(default_factory=tuple)

    def by_label(self, label: str) -> DeviceConfig:
        for device in self.devices:
            if device.label == label:
                return device
        raise KeyError(label)


def parse_spec(spec: str | None) -> Topology:
    """Resolve a SPEC; ValueError says what is wrong, in the user's terms."""
    text = (spec or "").strip()
    if text in ("", "none"):
        return Topology()
    if text == "default":
        text = DEFAULT_SPEC
    devices: list[DeviceConfig] = []
    labels: dict[str, DeviceConfig] = {}
    next_slot = {0: 1}  # bus → next free slot; slot 0 of bus 0 is the host bridge's own
    next_bus = 1
    for entry in filter(None, (part.strip() for part in text.split(";"))):
        head, _, options = entry.partition(":")
        label, _, parent_label = head.strip().partition("@")
        label, parent_label = label.strip(), parent_label.strip()
        match = _LABEL.match(label)
        if not match:
            raise ValueError(f"device {label!r}: a label is a kind ({', '.join(KINDS)}) "
                             f"followed by a number, e.g. dma0")
        if label in labels:
            raise ValueError(f"device {label!r} is declared twice")
        kind = match.group(1)
        if parent_label:
            parent = labels.get(parent_label)
            if parent is None:
                raise ValueError(f"device {label!r}: parent {parent_label!r} is not declared "
                                 f"before it")
            if parent.kind != "bridge":
                raise ValueError(f"device {label!r}: parent {parent_label!r} is a {parent.kind}, "
                                 f"only a bridge has devices behind it")
            bus, parent_path = parent.secondary_bus, parent.path
        else:
            bus, parent_path = 0, ROOT_NAME
        slot = next_slot.get(bus, 0)
        if slot >= SLOTS_PER_BUS:
            raise ValueError(f"device {label!r}: bus {bus:02x} has no free slot "
                             f"(at most {SLOTS_PER_BUS} devices per bus)")
        next_slot[bus] = slot + 1
        name = f"0000:{bus:02x}:{slot:02x}.0"
        config = dict(label=label, kind=kind, name=name, path=f"{parent_path}/{name}",
                      parent=parent_path, **_options(label, kind, options))
        if kind == "bridge":
            if next_bus > MAX_BUS:
                raise ValueError(f"device {label!r}: no bus number left (at most {MAX_BUS})")
            config["secondary_bus"] = next_bus
            next_bus += 1
        device = DeviceConfig(**config)
        labels[label] = device
        devices.append(device)
    return Topology(tuple(devices))


def _options(label: str, kind: str, text: str) -> dict:
    allowed = {"lu", "fail"} | ({"rate", "ring", "full"} if kind == "dma" else set())
    options: dict = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not value:
            raise ValueError(f"device {label!r}: option {item!r} is not KEY=VALUE")
        if key not in allowed:
            raise ValueError(f"device {label!r}: unknown option {key!r} for a {kind}; "
                             f"known: {', '.join(sorted(allowed))}")
        if key in options:
            raise ValueError(f"device {label!r}: option {key!r} is given twice")
        options[key] = _option_value(label, key, value)
    return options


def _option_value(label: str, key: str, value: str):
    what = f"device {label!r}: {key}={value}"
    if key == "lu":
        if value not in ("0", "1"):
            raise ValueError(f"{what}: expected 0 or 1")
        return value == "1"
    if key == "full":
        if value not in FULL_MODES:
            raise ValueError(f"{what}: expected one of {', '.join(FULL_MODES)}")
        return value
    if key == "fail":
        phase, _, code = value.partition(":")
        if phase not in PHASES:
            raise ValueError(f"{what}: the phase must be one of {', '.join(PHASES)}")
        return phase, _errno_value(what, code)
    number = _integer(what, value)
    if key == "rate" and not 0 <= number <= MAX_RATE:
        raise ValueError(f"{what}: expected 0..{MAX_RATE} records per second")
    if key == "ring" and not (RECORDS_PER_PAGE <= number <= MAX_RING
                              and number % RECORDS_PER_PAGE == 0):
        raise ValueError(f"{what}: expected a multiple of {RECORDS_PER_PAGE} "
                         f"between {RECORDS_PER_PAGE} and {MAX_RING}")
    return number


def _integer(what: str, value: str) -> int:
    scale = {"k": 1000, "m": 1000_000}.get(value[-1:].lower(), 1)
    digits = value[:-1] if scale > 1 else value
    if not digits.isdigit():
        raise ValueError(f"{what}: expected a number (a k or m suffix multiplies by 10^3 or 10^6)")
    return int(digits) * scale


def _errno_value(what: str, code: str) -> int:
    if not code:
        return _errno.EIO
    if code.isdigit() and int(code) > 0:
        return int(code)
    if code.upper().startswith("E") and isinstance(getattr(_errno, code.upper(), None), int):
        return getattr(_errno, code.upper())
    raise ValueError(f"{what}: {code!r} is not an errno name or number")

"""The typed messages between the luofs processes (CLI, machine, kernels, keepers).

Every message is a frozen dataclass registered under a type tag, with ONE encoder
(`encode`) and ONE decoder (`decode`); on a socket they travel as one JSON object
(luofs.wire frames it) with their fds beside it in NAMED groups: the message says
which groups it carries and how many fds each, and the decoder hands back
`dict[str, list[int]]`. A message is checked when it is built and again when it is
received: an unknown type, a missing, extra or ill-typed field, fds in a group the
type does not carry, or more bytes than the channel allows raise one ProtocolError,
and the decoder closes every fd of a message it rejects. Receivers answer a rejected
request with `Error` and carry on.

The vocabulary is split by channel, each module registering its types here when
imported: this one holds the CLI ⇄ machine control channel (requests answered by
`Error` or the named reply) and the HandOver; luofs.protocol_kernel the machine ⇄
kernel channel (and the MachineConfig the CLI starts a machine with);
luofs.protocol_keeper the kernel ⇄ keeper one. So `luofs kexec` builds a dozen
classes at start-up, not thirty.
"""

import collections
import dataclasses
import json
import os
import types

from . import wire
from .wire import ProtocolError

__all__ = ["ProtocolError", "encode", "decode", "send", "recv", "close_fds", "Message",
           "FILES", "KEEPERS", "RAM", "MAX_MESSAGE", "MAX_REQUEST", "Ok", "Error", "HandOver",
           "ParkedRun", "StatusRequest", "MachineStatus", "KhoDumpRequest", "KhoDumpReply",
           "KexecRequest", "KexecLoad", "KexecDone", "Progress", "ColdBoot", "Shutdown"]

# Names of the fd groups that travel with a HandOver.
FILES = "files"  # preserved files held directly, in LUO image order (parked ones left out)
KEEPERS = "keepers"  # the sockets of the keeper processes holding parked files
RAM = "ram"  # the emulated physical memory, in a kernel's boot message

FdGroups = dict  # group name -> list[int]; the receiver owns (and must close) every fd

MAX_MESSAGE = 64 << 20  # between the processes of one instance (a keeper's records)
MAX_REQUEST = 4 << 10  # what the machine reads from a client of its control socket

_TYPES: dict[str, type] = {}  # type tag -> message class


class Message:
    """Base of every message: `class Ping(Message, tag="ping", groups=()):` with annotated
    fields makes a dataclass whose instances are frozen (assignment raises
    dataclasses.FrozenInstanceError), checked when built, and registered under `tag`.

    Why not @dataclass(frozen=True): it compiles five methods per class at import,
    a millisecond of every `luofs` command's start-up each; these generic ones read the
    same dataclass fields, so fields(), replace() and asdict() work as for any dataclass.
    """

    __slots__ = ()
    TAG = ""
    FD_GROUPS: tuple[str, ...] = ()

    def __init_subclass__(cls, tag: str, groups: tuple[str, ...] = (), **kwargs):
        super().__init_subclass__(**kwargs)
        if tag in _TYPES:
            raise ValueError(f"message type {tag!r} registered twice")
        cls.TAG, cls.FD_GROUPS = tag, groups
        dataclasses.dataclass(init=False, repr=False, eq=False)(cls)
        cls._FIELDS = tuple((f.name, f.default, f.type) for f in dataclasses.fields(cls))
        _TYPES[tag] = cls

    def __init__(self, *args, **kwargs):
        names = [name for name, _default, _type in self._FIELDS]
        if len(args) > len(names):
            raise TypeError(f"{type(self).__name__} takes {len(names)} values, "
                            f"{len(args)} given")
        values = dict(zip(names, args))
        for name, value in kwargs.items():
            if name not in names or name in values:
                raise TypeError(f"{type(self).__name__}: unexpected or repeated {name!r}")
            values[name] = value
        for name, default, tp in self._FIELDS:
            value = values.get(name, default)
            if value is dataclasses.MISSING:
                raise TypeError(f"{type(self).__name__}: missing {name!r}")
            # checked, and normalised: lists become tuples
            object.__setattr__(self, name, _convert(value, tp, f"{self.TAG}.{name}"))
        self.validate()

    def validate(self) -> None:
        """Rules beyond the field types (ProtocolError)."""

    def _values(self) -> tuple:
        return tuple(getattr(self, name) for name, _default, _type in self._FIELDS)

    def __eq__(self, other):
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self):
        return hash((self.__class__, self._values()))

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name, _d, _t in self._FIELDS)
        return f"{type(self).__name__}({inner})"

    def __setattr__(self, name, value):
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name):
        raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")


def _convert(value, tp, where: str, wire: bool = False):
    """`value` as a value of type `tp` (JSON forms accepted when `wire`), or ProtocolError."""
    if isinstance(tp, types.UnionType):  # X | None
        if value is None and type(None) in tp.__args__:
            return None
        (tp,) = [t for t in tp.__args__ if t is not type(None)]
    origin = getattr(tp, "__origin__", None)
    if origin is tuple or (isinstance(tp, type) and issubclass(tp, tuple) and tp is not tuple):
        return _convert_tuple(value, tp, where, wire)
    if origin is dict:
        key_type, value_type = tp.__args__
        if not isinstance(value, dict):
            raise ProtocolError(f"{where}: expected an object, got {type(value).__name__}")
        return {_convert(k, key_type, where, wire): _convert(v, value_type, f"{where}[{k!r}]", wire)
                for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, Message):
        if isinstance(value, tp):
            return value
        if wire and isinstance(value, dict):
            return _build(tp, value, where)
    elif tp is bytes and wire and isinstance(value, str):
        try:
            return bytes.fromhex(value)
        except ValueError:
            raise ProtocolError(f"{where}: not hex bytes") from None
    elif tp is float and type(value) is int:
        return float(value)
    elif type(value) is tp:  # exact: True is no int here, 1 no bool
        return value
    raise ProtocolError(f"{where}: expected {getattr(tp, '__name__', tp)}, "
                        f"got {type(value).__name__}")


def _convert_tuple(value, tp, where: str, wire: bool):
    if not isinstance(value, (list, tuple)):
        raise ProtocolError(f"{where}: expected a list, got {type(value).__name__}")
    if getattr(tp, "__origin__", None) is tuple:
        args = tp.__args__
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{where}[{i}]", wire) for i, v in enumerate(value))
        make = tuple
    else:  # a NamedTuple
        args, make = tuple(tp.__annotations__.values()), (lambda items: tp(*items))
    if len(value) != len(args):
        raise ProtocolError(f"{where}: expected {len(args)} items, got {len(value)}")
    return make([_convert(v, t, f"{where}[{i}]", wire)
                 for i, (v, t) in enumerate(zip(value, args))])


def _build(cls, data: dict, where: str):
    extra = set(data) - {name for name, _default, _type in cls._FIELDS}
    if extra:
        raise ProtocolError(f"{where}: unexpected field(s) {', '.join(sorted(map(str, extra)))}")
    values = {}
    for name, default, tp in cls._FIELDS:
        if name in data:
            values[name] = _convert(data[name], tp, f"{where}.{name}", wire=True)
        elif default is dataclasses.MISSING:
            raise ProtocolError(f"{where}: missing field {name!r}")
    return cls(**values)


def _jsonable(value):
    if isinstance(value, Message):
        return {name: _jsonable(getattr(value, name)) for name, _d, _t in value._FIELDS}
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def encode(msg, fds: FdGroups | None = None) -> tuple[bytes, list[int]]:
    """(bytes, fds in group order) for `msg` and its fd groups."""
    fds = {name: list(group) for name, group in (fds or {}).items() if group}
    unknown = set(fds) - set(msg.FD_GROUPS)
    if unknown:
        raise ProtocolError(f"{msg.TAG} carries no fd group {', '.join(sorted(unknown))}")
    body = {"type": msg.TAG, **_jsonable(msg)}
    if fds:
        body["fds"] = {name: len(group) for name, group in fds.items()}
    return json.dumps(body, separators=(",", ":")).encode(), [fd for g in fds.values() for fd in g]


def decode(data: bytes, fds: list[int], limit: int = MAX_MESSAGE):
    """(message, fd groups) from what `encode` made; ProtocolError (every fd closed) if the
    bytes are not a valid message of a known type."""
    try:
        if len(data) > limit:
            raise ProtocolError(f"message of {len(data)} bytes, more than {limit}")
        try:
            body = json.loads(data)
        except (ValueError, RecursionError):
            raise ProtocolError("message is not JSON") from None
        if not isinstance(body, dict):
            raise ProtocolError(f"message is a JSON {type(body).__name__}, not an object")
        tag = body.pop("type", None)
        cls = _TYPES.get(tag) if isinstance(tag, str) else None
        if cls is None:
            raise ProtocolError(f"unknown message type {tag!r}")
        counts = _convert(body.pop("fds", {}), dict[str, int], f"{tag}.fds", wire=True)
        if set(counts) - set(cls.FD_GROUPS) or sum(counts.values()) != len(fds) or any(
                n < 0 for n in counts.values()):
            raise ProtocolError(f"{tag}: fd groups {counts} do not match the {len(fds)} fd(s) "
                                f"received (groups allowed: {', '.join(cls.FD_GROUPS) or 'none'})")
        msg = _build(cls, body, tag)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    groups, at = {}, 0
    for name, count in counts.items():
        groups[name], at = list(fds[at:at + count]), at + count
    return msg, groups


def send(sock, msg, fds: FdGroups | None = None) -> None:
    data, flat = encode(msg, fds)
    wire.send_bytes(sock, data, flat)


def recv(sock, limit: int = MAX_MESSAGE):
    """(message, fd groups); (None, {}) when the peer has gone; ProtocolError for a bad one."""
    data, fds = wire.recv_bytes(sock, limit)
    if data is None:
        for fd in fds:
            os.close(fd)
        return None, {}
    return decode(data, fds, limit)


def close_fds(groups: FdGroups) -> None:
    for group in groups.values():
        for fd in group:
            os.close(fd)


# ---- replies used on every channel ------------------------------------------------------

class Ok(Message, tag="ok"):
    pass


class Error(Message, tag="error"):
    """A refusal: `errno` is the kernel's when it has one (a refused freeze), else 0."""

    error: str
    errno: int = 0


# ---- the hand-over ------------------------------------------------------------------------

class ParkedRun(collections.namedtuple("ParkedRun", "first keeper slot count")):
    """Consecutive preserved files parked in one keeper: image positions first..first+count
    are that keeper's slots slot..slot+count. (collections, not typing.NamedTuple: typing
    would cost every `luofs` command its import.)"""

    __slots__ = ()
    first: int
    keeper: int
    slot: int
    count: int


class HandOver(Message, tag="handover", groups=(FILES, KEEPERS)):
    """What a freezing kernel gives the machine, and the machine the next kernel.

    `liveupdate_number` is the freezing kernel's; the next kernel's is one more, always.
    `root_phys`/`root_size` locate KHO's root tree in emulated RAM; `sessions`/`files`
    count what LUO's image carries (0 for an RFC kexec that was not prepared).
    """

    root_phys: int
    root_size: int
    liveupdate_number: int
    sessions: int = 0
    files: int = 0
    parked: tuple[ParkedRun, ...] = ()
    devices: tuple[str, ...] = ()  # sysfs paths of the preserved devices
    keeper_pids: tuple[int | None, ...] = ()  # for `luofs status`, beside the KEEPERS fds
    dropped: int = 0  # incoming sessions nobody retrieved, which end here

    @property
    def next_number(self) -> int:
        return self.liveupdate_number + 1


# ---- CLI -> machine (status, kho-dump and shutdown also machine -> kernel) ------------

class StatusRequest(Message, tag="status"):
    pass


class MachineStatus(Message, tag="machine-status"):
    machine: dict
    kernel: dict | None = None


class KhoDumpRequest(Message, tag="kho-dump"):
    which: str = "out"  # "out": what the kernel would hand over; "in": what it received
    format: str = "json"  # or "dts"

    def validate(self) -> None:
        if self.which not in ("in", "out") or self.format not in ("json", "dts"):
            raise ProtocolError(f"kho-dump: which {self.which!r} (in|out), "
                                f"format {self.format!r} (json|dts)")


class KhoDumpReply(Message, tag="kho-dump-reply"):
    text: str = ""  # dts
    tree: dict | None = None  # json


class KexecRequest(Message, tag="kexec"):
    """`cmdline`: the next kernel's (else the loaded image's, else the running one's);
    `keep_userspace`: the userspace survives (a deviation, for a harness inside it);
    `progress_ms`: send Progress before the reply, at most that often and not before
    that long (None: none; a terminal watches)."""

    cmdline: str | None = None
    keep_userspace: bool = False
    progress_ms: int | None = None


class KexecLoad(Message, tag="kexec-load"):
    """kexec_file_load (`luofs kexec --load`): the next kernel's command line (None: the
    running one's); `unload`: forget what was loaded. Answered by Ok or Error."""

    cmdline: str | None = None
    unload: bool = False


class KexecDone(Message, tag="kexec-done"):
    liveupdate_number: int
    sessions: int
    files: int
    blackout_ms: float
    freeze_ms: float
    start_ms: float
    blackout_records: dict[str, int]  # what each DMA engine wrote while no kernel served it
    dropped: int = 0  # incoming sessions nobody retrieved, which ended here
    lost: dict | None = None  # as Ready.lost: the update happened, these did not arrive


class Progress(Message, tag="progress"):
    """How far a live update has come, before its reply (kernel -> machine -> CLI):
    `what` it does now, and `done` of `total` items (files) when it counts them."""

    what: str
    done: int = 0
    total: int = 0


class ColdBoot(Message, tag="cold-boot"):
    pass


class Shutdown(Message, tag="shutdown"):
    pass

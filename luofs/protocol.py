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

Channels: CLI -> machine (requests below, answered by `Error` or the named reply);
machine -> kernel (`KernelBoot`, `Mount`, the same requests, `Reboot`); kernel ->
machine (`Loaded`, `Crashing`, `Ready`, `Panicked`, `Unmounted`, `Failed`, replies);
kernel -> keeper (`Park`, `Fetch`, `Drop`, `Records`).
"""

import dataclasses
import json
import os
import types
from typing import NamedTuple

from . import wire
from .wire import ProtocolError

__all__ = ["ProtocolError", "encode", "decode", "send", "recv", "FILES", "KEEPERS", "RAM",
           "MAX_MESSAGE", "MAX_REQUEST", "HandOver", "ParkedRun"]

# Names of the fd groups that travel with a HandOver.
FILES = "files"  # preserved files held directly, in LUO image order (parked ones left out)
KEEPERS = "keepers"  # the sockets of the keeper processes holding parked files
RAM = "ram"  # the emulated physical memory, in a kernel's boot message

FdGroups = dict  # group name -> list[int]; the receiver owns (and must close) every fd

MAX_MESSAGE = 64 << 20  # between the processes of one instance (a keeper's records)
MAX_REQUEST = 4 << 10  # what the machine reads from a client of its control socket

_TYPES: dict[str, type] = {}  # type tag -> message class


def message(tag: str, groups: tuple[str, ...] = ()):
    """Class decorator: a frozen dataclass registered under `tag`, carrying fd `groups`."""
    def register(cls):
        if tag in _TYPES:
            raise ValueError(f"message type {tag!r} registered twice")
        cls.TAG, cls.FD_GROUPS = tag, groups
        cls.__post_init__ = _post_init  # before dataclass(), which looks for it
        cls = dataclasses.dataclass(frozen=True)(cls)
        _TYPES[tag] = cls
        return cls
    return register


def _post_init(self) -> None:
    """Check (and normalise: lists become tuples) every field as it is built."""
    for field in dataclasses.fields(self):
        value = _convert(getattr(self, field.name), field.type, f"{self.TAG}.{field.name}")
        object.__setattr__(self, field.name, value)
    validate = getattr(self, "validate", None)
    if validate is not None:  # rules beyond the field types
        validate()


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
    if dataclasses.is_dataclass(tp):
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
    names = {f.name for f in dataclasses.fields(cls)}
    extra = set(data) - names
    if extra:
        raise ProtocolError(f"{where}: unexpected field(s) {', '.join(sorted(map(str, extra)))}")
    values = {}
    for field in dataclasses.fields(cls):
        if field.name in data:
            values[field.name] = _convert(data[field.name], field.type, f"{where}.{field.name}",
                                          wire=True)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ProtocolError(f"{where}: missing field {field.name!r}")
    return cls(**values)


def _jsonable(value):
    if dataclasses.is_dataclass(value):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
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

@message("ok")
class Ok:
    pass


@message("error")
class Error:
    """A refusal: `errno` is the kernel's when it has one (a refused freeze), else 0."""

    error: str
    errno: int = 0


# ---- the hand-over ------------------------------------------------------------------------

class ParkedRun(NamedTuple):
    """Consecutive preserved files parked in one keeper: image positions first..first+count
    are that keeper's slots slot..slot+count."""

    first: int
    keeper: int
    slot: int
    count: int


@message("handover", groups=(FILES, KEEPERS))
class HandOver:
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


from .messages import *  # noqa: E402,F401,F403  the rest of the vocabulary
from .messages import __all__ as _more  # noqa: E402

__all__ += _more

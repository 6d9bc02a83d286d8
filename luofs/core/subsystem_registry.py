"""RFC v2 subsystems (spec/rfc.md §5): kernel parts that carry one u64 each across a kexec.

`liveupdate_register_subsystem(h)` in Python: a `Subsystem` handle names the
subsystem and holds its optional callbacks, which get the handle's `arg` back:

    prepare(arg, data) -> int | None   may veto (raise LuoError); returns the new u64
    freeze(arg, data)  -> int | None   or None to keep it
    cancel(arg, data)  -> None         must not fail
    finish(arg, data)  -> None         must not fail; gets the value the old kernel saved

Rules, in the kernel's order of checks:
- register/unregister only in NORMAL or UPDATED, otherwise EBUSY (checked first);
- register: the same handle twice, or a second handle with a registered name → EEXIST;
- unregister: a handle that is not registered → ENOENT;
- get_subsystem_data (new kernel): only in UPDATED, and only for a name the previous
  kernel saved, otherwise ENOENT.
Emulator additions: a name must be a non-empty FDT property name (letters, digits,
",._+*#?-") other than "compatible", because it becomes one (EINVAL); prepare and
freeze must return a u64 or None (EINVAL, which vetoes the event).

Order: prepare and freeze in registration order, cancel in reverse (the RFC code
cancels in registration order; the emulator unwinds in reverse, as the rest of
luofs does); finish in registration order, as the kernel does. Each subsystem is its
own participant of the state machine (`SubsystemRegistry.participants()`), so the
rollback rules of luofs/core/state.py apply one subsystem at a time. LUO's cached
u64 starts at 0 and goes back to 0 after cancel and after finish.

The hand-over: after a successful freeze `export()` gives {name: u64} in
registration order for the LUO subtree (kho's `LuoImage.subsystems`); the next
kernel builds its registry with `incoming=` that dict. A subsystem registered in the
new kernel under a name the old one did not save gets 0 at finish (the RFC kernel
panics there).

Fault points (for luofs/core/faults.py POINTS):
- ``subsystem.<name>.prepare``: subsystem <name>'s prepare fails (PREPARE is vetoed);
- ``subsystem.<name>.freeze``: its freeze fails (FREEZE, or the reboot, is refused).
Each is checked just before that callback would run, also for a subsystem that has
no such callback, so any registered subsystem can be made to fail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

from kho.fdt_blob import check_prop_name

from ..uapi import errnos
from .errors import LuoError
from .faults import NONE, Faults
from .state import State

U64_LIMIT = 1 << 64

DataCallback = Callable[[Any, int], "int | None"]
VoidCallback = Callable[[Any, int], None]

# Registration is allowed only while no live update is in flight.
_REGISTRATION_STATES = frozenset({State.NORMAL, State.UPDATED})


@dataclass(frozen=True, eq=False)
class Subsystem:
    """`struct liveupdate_subsystem`: the handle a subsystem registers (compared by identity).

    LUO's cached u64 (`private_data`) is kept by the registry: `registry.data(h)`.
    """

    name: str
    prepare: DataCallback | None = None
    freeze: DataCallback | None = None
    cancel: VoidCallback | None = None
    finish: VoidCallback | None = None
    arg: Any = None

    def __post_init__(self):
        if not isinstance(self.name, str):
            raise LuoError(errnos.EINVAL, f"subsystem name must be a str, not {self.name!r}")
        try:
            check_prop_name(self.name)
        except ValueError as e:
            raise LuoError(errnos.EINVAL, f"subsystem name: {e}") from None
        if self.name == "compatible":
            raise LuoError(errnos.EINVAL, "a subsystem cannot be named 'compatible'")
        for op in ("prepare", "freeze", "cancel", "finish"):
            callback = getattr(self, op)
            if callback is not None and not callable(callback):
                raise TypeError(f"subsystem {self.name!r}: {op} is not callable")

    def __repr__(self) -> str:
        return f"<Subsystem {self.name!r}>"


class SubsystemRegistry:
    """The registered subsystems of one kernel, in registration order."""

    def __init__(self, state: Callable[[], State], *, incoming: Mapping[str, int] | None = None,
                 faults: Faults = NONE):
        """`state` reads the global state; `incoming` is what the previous kernel
        saved ({name: u64}), None on a kernel booted without LUO data."""
        self._state = state
        self._faults = faults
        self._incoming = None if incoming is None else dict(incoming)
        self._data: dict[Subsystem, int] = {}  # registered handle → LUO's cached u64, in order

    # ---- liveupdate_{register,unregister}_subsystem, liveupdate_get_subsystem_data -------

    def register(self, handle: Subsystem) -> Subsystem:
        self._check_state("register")
        if handle in self._data:
            raise LuoError(errnos.EEXIST, f"subsystem {handle.name!r} is already registered")
        if any(h.name == handle.name for h in self._data):
            raise LuoError(errnos.EEXIST, f"a subsystem named {handle.name!r} is registered")
        self._data[handle] = 0
        return handle

    def register_subsystem(self, name: str, prepare: DataCallback | None = None,
                           freeze: DataCallback | None = None, cancel: VoidCallback | None = None,
                           finish: VoidCallback | None = None, arg: Any = None) -> Subsystem:
        return self.register(Subsystem(name, prepare, freeze, cancel, finish, arg))

    def unregister_subsystem(self, handle: Subsystem) -> None:
        self._check_state("unregister")
        if handle not in self._data:
            raise LuoError(errnos.ENOENT, f"subsystem {handle.name!r} is not registered")
        del self._data[handle]

    def get_subsystem_data(self, handle: Subsystem) -> int:
        """The u64 the previous kernel saved under this handle's name (looked up by name)."""
        if self._incoming is None or self._state() is not State.UPDATED:
            raise LuoError(errnos.ENOENT,
                           "subsystem data exists only in UPDATED after a live update")
        value = self._incoming.get(handle.name)
        if value is None:
            raise LuoError(errnos.ENOENT, f"the previous kernel saved nothing for {handle.name!r}")
        return value

    def _check_state(self, what: str) -> None:
        state = self._state()
        if state not in _REGISTRATION_STATES:
            raise LuoError(errnos.EBUSY, f"cannot {what} a subsystem in state {state}")

    # ---- views ------------------------------------------------------------------------

    def data(self, handle: Subsystem) -> int:
        """LUO's cached u64 for a registered handle (KeyError if not registered)."""
        return self._data[handle]

    def export(self) -> dict[str, int]:
        """{name: u64} of every registered subsystem, in order, for the LUO subtree."""
        return {handle.name: value for handle, value in self._data.items()}

    @property
    def incoming(self) -> dict[str, int] | None:
        return None if self._incoming is None else dict(self._incoming)

    def __iter__(self) -> Iterator[Subsystem]:
        return iter(list(self._data))

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, handle: object) -> bool:
        return handle in self._data

    # ---- the state machine's view -------------------------------------------------------

    def participants(self) -> list["SubsystemParticipant"]:
        """One participant per registered subsystem, in registration order."""
        return [SubsystemParticipant(self, handle) for handle in self._data]

    def _update(self, handle: Subsystem, op: str) -> None:
        self._faults.check(f"subsystem.{handle.name}.{op}")
        callback = getattr(handle, op)
        if callback is None:
            return
        value = callback(handle.arg, self._data[handle])
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < U64_LIMIT:
            raise LuoError(errnos.EINVAL,
                           f"subsystem {handle.name!r}: {op} returned {value!r}, not a u64")
        self._data[handle] = value

    def _release(self, handle: Subsystem, op: str, value: int) -> None:
        self._data[handle] = 0
        callback = getattr(handle, op)
        if callback is not None:
            callback(handle.arg, value)


class SubsystemParticipant:
    """Adapter: one registered subsystem as a participant of the state machine."""

    __slots__ = ("registry", "handle")

    def __init__(self, registry: SubsystemRegistry, handle: Subsystem):
        self.registry = registry
        self.handle = handle

    @property
    def name(self) -> str:
        return f"subsystem {self.handle.name}"

    def prepare(self) -> None:
        self.registry._update(self.handle, "prepare")

    def freeze(self) -> None:
        self.registry._update(self.handle, "freeze")

    def cancel(self) -> None:
        self.registry._release(self.handle, "cancel", self.registry.data(self.handle))

    def finish(self) -> None:
        saved = (self.registry._incoming or {}).get(self.handle.name, 0)
        self.registry._release(self.handle, "finish", saved)

    def __repr__(self) -> str:
        return f"<SubsystemParticipant {self.handle.name!r}>"

"""The global LUO state machine of the RFCs (spec/rfc.md §1), with no I/O.

One table (`TRANSITIONS`, just below) says everything about which event may
happen in which state and where it leads; `GlobalState` runs the participants'
callbacks for an event in the kernel's order and unwinds in reverse on failure.

Profiles:
- ``rfc-v2``: the table of rfc.md §1 as it stands.
- ``rfc-v1``: no FROZEN; CANCEL only from PREPARED; REBOOT (our FREEZE) is not a
  stored state: on success the state stays PREPARED and the kexec proceeds.
- ``mainline``: nothing is user-driven. A kexec is PREPARE then FREEZE
  (`GlobalState.reboot`); a kernel booted with incoming sessions starts in
  UPDATED and goes back to NORMAL when the core reports, through
  `GlobalState.incoming_settled`, that every incoming session is finished or
  dropped. Mainline has no global state at all, so its failures and cancels
  go back HOME: wherever the kernel rests, UPDATED while incoming sessions
  remain, else NORMAL.

Callbacks (participants, each with prepare/freeze/cancel/finish):
- PREPARE runs `prepare` on each participant in order. If one fails, the ones
  already prepared get `cancel` in reverse, the state takes the failure target
  and the error propagates. The failing participant does not get `cancel`: it
  undoes its own partial work.
- FREEZE runs `freeze` on the participants PREPARE engaged, in order. If one
  fails, *every* engaged participant (the failing one too: it was prepared)
  gets `cancel` in reverse. (The RFC v2 code cancels only the ones before the
  failing subsystem, in forward order; rfc.md says "on error, cancel".)
- CANCEL and FINISH callbacks cannot fail: an exception from one is recorded in
  `GlobalState.failures` and logged, and the others still run.
- The participants are read when PREPARE (or FINISH) starts; FREEZE and CANCEL
  act on the set PREPARE engaged, so a participant added in between is left out.

Observers (`subscribe`) see each change of state as a `StateChange`, after it
happened; `version` counts the changes, for poll()/sysfs_notify() wake-ups.

Fault points (for luofs/core/faults.py POINTS):
- ``state.lock``: the killable wait for the state rwsem is interrupted; arm it
  with EAGAIN (``state.lock:EAGAIN``) to emulate the kernel. Checked first by
  every event; nothing changes and no callback runs.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Iterable, Mapping, Protocol, Sequence

from .. import trace
from ..uapi import errnos
from ..unwind import do_all
from .errors import LuoError
from .faults import NONE, Faults

log = logging.getLogger("luofs.state")


class State(enum.Enum):
    """The global state; the value is what sysfs prints (before its newline)."""

    NORMAL = "normal"
    PREPARED = "prepared"
    FROZEN = "frozen"
    UPDATED = "updated"

    def __str__(self) -> str:
        return self.value


class Event(enum.Enum):
    """What user space (or the reboot path) asks for; the value names the callback."""

    PREPARE = "prepare"
    FREEZE = "freeze"  # RFC v1 calls it REBOOT
    CANCEL = "cancel"
    FINISH = "finish"

    def __str__(self) -> str:
        return self.value


class _Home(enum.Enum):
    HOME = "home"

    def __repr__(self) -> str:
        return "HOME"


HOME = _Home.HOME
"""Mainline only: UPDATED while incoming sessions remain, else NORMAL."""


@dataclass(frozen=True)
class Move:
    """One cell of the table: where an allowed event leads.

    `on_failure` is None for events whose callbacks cannot fail (CANCEL, FINISH).
    """

    to: State | _Home
    on_failure: State | _Home | None = None

    def __post_init__(self):
        if not isinstance(self.to, (State, _Home)):
            raise TypeError(f"Move.to must be a State or HOME, not {self.to!r}")
        if self.on_failure is not None and not isinstance(self.on_failure, (State, _Home)):
            raise TypeError(
                f"Move.on_failure must be a State, HOME or None, not {self.on_failure!r}")


_N, _P, _F, _U = State.NORMAL, State.PREPARED, State.FROZEN, State.UPDATED
_PREPARE, _FREEZE, _CANCEL, _FINISH = Event.PREPARE, Event.FREEZE, Event.CANCEL, Event.FINISH

# The transition table: profile → {(state, event): Move(to on success, to on failure)}.
# A (state, event) pair that is not listed is an illegal move: IllegalTransition
# (EINVAL), the state does not change and no callback runs. The callbacks an
# event runs are named after it (Event.value). "(boot)" is not an event: a
# kernel starts in UPDATED if the previous one handed LUO data over, else NORMAL.
TRANSITIONS: Mapping[str, Mapping[tuple[State, Event], Move]] = MappingProxyType({
    "rfc-v2": MappingProxyType({
        (_N, _PREPARE): Move(_P, on_failure=_N),
        (_P, _FREEZE): Move(_F, on_failure=_N),
        (_P, _CANCEL): Move(_N),
        (_F, _CANCEL): Move(_N),
        (_U, _FINISH): Move(_N),
    }),
    "rfc-v1": MappingProxyType({
        (_N, _PREPARE): Move(_P, on_failure=_N),
        (_P, _FREEZE): Move(_P, on_failure=_N),  # REBOOT: success = the kexec goes on
        (_P, _CANCEL): Move(_N),
        (_U, _FINISH): Move(_N),
    }),
    "mainline": MappingProxyType({
        (_N, _PREPARE): Move(_P, on_failure=HOME),
        (_U, _PREPARE): Move(_P, on_failure=HOME),  # unfinished incoming sessions are dropped
        (_P, _FREEZE): Move(_F, on_failure=HOME),
        (_P, _CANCEL): Move(HOME),
        (_F, _CANCEL): Move(HOME),  # the hand-over failed after the freeze
        (_U, _FINISH): Move(_N),  # incoming_settled()
    }),
})

# Events whose callbacks may fail, and so need a failure target.
FALLIBLE = frozenset({Event.PREPARE, Event.FREEZE})


@dataclass(frozen=True)
class Profile:
    name: str
    moves: Mapping[tuple[State, Event], Move]
    implicit: bool  # mainline: no user events; the reboot path and the core drive it

    def __post_init__(self):
        for (state, event), move in self.moves.items():
            if not isinstance(state, State) or not isinstance(event, Event):
                raise TypeError(f"{self.name}: bad table key {(state, event)!r}")
            if (move.on_failure is None) == (event in FALLIBLE):
                raise ValueError(f"{self.name}: {event} from {state} needs "
                                 f"{'a' if event in FALLIBLE else 'no'} failure target")

    @property
    def states(self) -> frozenset[State]:
        """Every state this profile can be in (boot states included)."""
        found = {State.NORMAL, State.UPDATED}
        for (state, _), move in self.moves.items():
            found.add(state)
            found.update(s for s in (move.to, move.on_failure) if isinstance(s, State))
        return frozenset(found)


PROFILES: Mapping[str, Profile] = MappingProxyType({
    name: Profile(name, moves, implicit=(name == "mainline")) for name, moves in TRANSITIONS.items()
})


class IllegalTransition(LuoError):
    """The table has no entry for this event in this state (EINVAL, nothing changed)."""

    def __init__(self, profile: str, state: State, event: Event):
        super().__init__(errnos.EINVAL, f"{profile}: cannot {event} from {state}")
        self.profile = profile
        self.state = state
        self.event = event


@dataclass(frozen=True)
class StateChange:
    """One change of the global state, as observers see it.

    `errno` is set when the change is a rollback (the event failed with it).
    """

    version: int
    event: Event
    before: State
    after: State
    errno: int | None = None

    def __post_init__(self):
        if not isinstance(self.version, int) or self.version < 1:
            raise ValueError(f"StateChange.version must be a positive int, not {self.version!r}")
        if not isinstance(self.event, Event):
            raise TypeError(f"StateChange.event must be an Event, not {self.event!r}")
        if not isinstance(self.before, State) or not isinstance(self.after, State):
            raise TypeError("StateChange.before and .after must be States")
        if self.before is self.after:
            raise ValueError(f"StateChange from {self.before} to itself is no change")
        if self.errno is not None and (not isinstance(self.errno, int) or self.errno <= 0):
            raise ValueError(f"StateChange.errno must be a positive errno, not {self.errno!r}")


@dataclass(frozen=True)
class CallbackFailure:
    """A CANCEL or FINISH callback (which must not fail) raised; recorded, not fatal."""

    participant: str
    event: Event
    errno: int | None  # None: it raised something other than LuoError
    reason: str


class Participant(Protocol):
    """Something with callbacks for the global events (file table, subsystems, ...).

    prepare/freeze raise LuoError to veto. `cancel` must undo prepare and, if it
    ran, freeze (also after this participant's own freeze failed); cancel and
    finish should not raise.
    """

    name: str

    def prepare(self) -> None: ...

    def freeze(self) -> None: ...

    def cancel(self) -> None: ...

    def finish(self) -> None: ...


Participants = Callable[[], Iterable[Participant]] | Sequence[Participant]


def _prepared(participant: Participant) -> Participant:
    with trace.span(f"prepare {getattr(participant, 'name', 'participant')}", "luo"):
        participant.prepare()
    return participant


class GlobalState:
    """The global state of one kernel, its participants and its observers."""

    def __init__(self, profile: str | Profile = "rfc-v2", participants: Participants = (), *,
                 updated: bool = False, faults: Faults = NONE):
        """`updated`: the previous kernel handed LUO data over (mainline: incoming
        sessions exist), so the kernel starts in UPDATED."""
        if isinstance(profile, str):
            if profile not in PROFILES:
                raise ValueError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}")
            profile = PROFILES[profile]
        self.profile = profile
        self._participants = participants
        self._faults = faults
        self._state = State.UPDATED if updated else State.NORMAL
        self._incoming = updated  # what HOME means
        self._engaged: list[Participant] = []  # prepared by the last PREPARE, in order
        self._observers: list[Callable[[StateChange], None]] = []
        self.version = 0  # number of changes so far
        self.failures: list[CallbackFailure] = []

    @property
    def state(self) -> State:
        return self._state

    def __repr__(self) -> str:
        return f"<GlobalState {self.profile.name} {self._state} v{self.version}>"

    # ---- observers --------------------------------------------------------------------

    def subscribe(self, observer: Callable[[StateChange], None]) -> Callable[[], None]:
        """Call `observer(change)` after each change; returns the unsubscribe function.

        Observers run synchronously and must not raise.
        """
        self._observers.append(observer)

        def unsubscribe() -> None:
            if observer in self._observers:
                self._observers.remove(observer)

        return unsubscribe

    # ---- events -------------------------------------------------------------------------

    def allowed(self, event: Event) -> bool:
        return (self._state, event) in self.profile.moves

    def handle(self, event: Event) -> State:
        """Run `event`; returns the new state or raises LuoError (state as documented)."""
        if not isinstance(event, Event):
            raise TypeError(f"not an Event: {event!r}")
        self._faults.check("state.lock")
        move = self.profile.moves.get((self._state, event))
        if move is None:
            raise IllegalTransition(self.profile.name, self._state, event)
        if event is Event.PREPARE:
            self._prepare(move)
        elif event is Event.FREEZE:
            self._freeze(move)
        elif event is Event.CANCEL:
            self._cancel_engaged(Event.CANCEL)
            self._set(move.to, event)
        else:
            for participant in list(self._current()):
                self._call_infallible(participant, Event.FINISH)
            self._incoming = False
            self._set(move.to, event)
        return self._state

    def prepare(self) -> State:
        return self.handle(Event.PREPARE)

    def freeze(self) -> State:
        return self.handle(Event.FREEZE)

    def cancel(self) -> State:
        return self.handle(Event.CANCEL)

    def finish(self) -> State:
        return self.handle(Event.FINISH)

    def reboot(self) -> bool:
        """`liveupdate_reboot()`, run by reboot(LINUX_REBOOT_CMD_KEXEC) before the kexec.

        Returns True if LUO hands data over (the caller then writes the image),
        False for a plain kexec. A LuoError refuses the reboot; the state is then
        the failure target (NORMAL, or HOME for mainline).
        - RFCs: acts only in PREPARED (runs FREEZE/REBOOT); FROZEN just proceeds;
          NORMAL or UPDATED kexec without LUO.
        - mainline: every kexec is PREPARE + FREEZE.
        If the hand-over fails after True was returned, call `cancel()`.
        """
        if self._state is State.FROZEN:
            return True
        if self.profile.implicit:
            if self._state is not State.PREPARED:
                self.handle(Event.PREPARE)
            self.handle(Event.FREEZE)
            return True
        if self._state is not State.PREPARED:
            return False
        self.handle(Event.FREEZE)
        return True

    def incoming_settled(self) -> None:
        """Mainline: every incoming session is finished or dropped; UPDATED ends.

        The core calls it after each finish/close of an incoming session once none
        remains (extra calls are harmless). RFC profiles end UPDATED only with an
        explicit FINISH, so there it does nothing.
        """
        if not self.profile.implicit:
            return
        if self._state is State.UPDATED:
            self.handle(Event.FINISH)
        else:
            self._incoming = False

    # ---- the callbacks --------------------------------------------------------------------

    def _current(self) -> Iterable[Participant]:
        source = self._participants
        return source() if callable(source) else source

    def _prepare(self, move: Move) -> None:
        self._engaged = []
        try:
            self._engaged = do_all(list(self._current()), _prepared, self._cancel_prepared)
        except Exception as e:  # do_all cancelled the ones prepared: nothing is engaged
            self._fail(Event.PREPARE, move, e)
            raise
        self._set(move.to, Event.PREPARE)

    def _cancel_prepared(self, participant: Participant, _result) -> None:
        self._call_infallible(participant, Event.CANCEL, during=Event.PREPARE)

    def _freeze(self, move: Move) -> None:
        # Not do_all: a failed freeze cancels every engaged participant, the failing
        # one too (cancel undoes its prepare), so the unit of undo is the whole set.
        try:
            for participant in self._engaged:
                with trace.span(f"freeze {getattr(participant, 'name', 'participant')}", "luo"):
                    participant.freeze()
        except Exception as e:
            self._fail(Event.FREEZE, move, e)
            raise
        self._set(move.to, Event.FREEZE)

    def _fail(self, event: Event, move: Move, error: Exception) -> None:
        self._cancel_engaged(event)
        self._set(move.on_failure, event, error.errno if isinstance(error, LuoError) else None)

    def _cancel_engaged(self, event: Event) -> None:
        """Cancel every engaged participant, last engaged first."""
        engaged, self._engaged = self._engaged, []
        for participant in reversed(engaged):
            self._call_infallible(participant, Event.CANCEL, during=event)

    def _call_infallible(self, participant: Participant, callback: Event, *,
                         during: Event | None = None) -> None:
        try:
            getattr(participant, callback.value)()
        except Exception as e:  # must not fail: record and go on, as the kernel warns
            errno = e.errno if isinstance(e, LuoError) else None
            name = getattr(participant, "name", repr(participant))
            self.failures.append(CallbackFailure(name, during or callback, errno, str(e)))
            log.warning("%s: %s callback failed during %s: %s", name, callback,
                        during or callback, e)

    def _set(self, target: State | _Home, event: Event, errno: int | None = None) -> None:
        after = target if isinstance(target, State) else (
            State.UPDATED if self._incoming else State.NORMAL)
        before = self._state
        if after is before:
            return
        self._state = after
        self.version += 1
        change = StateChange(self.version, event, before, after, errno)
        for observer in list(self._observers):
            observer(change)

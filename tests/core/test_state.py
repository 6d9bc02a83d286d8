"""luofs/core/state.py: the transition table of spec/rfc.md §1, callbacks, rollback, observers.

The stateful test at the end checks GlobalState against a model written from the
spec's prose (plain ifs, not the table), with random events and injected failures.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from luofs.core.errors import LuoError
from luofs.core.faults import Faults
from luofs.core.state import (
    HOME,
    PROFILES,
    TRANSITIONS,
    CallbackFailure,
    Event,
    IllegalTransition,
    Move,
    Profile,
    State,
    StateChange,
    GlobalState,
)
from luofs.uapi import errnos

from .fakes import raises_errno

N, P, F, U = State.NORMAL, State.PREPARED, State.FROZEN, State.UPDATED
PREPARE, FREEZE, CANCEL, FINISH = Event.PREPARE, Event.FREEZE, Event.CANCEL, Event.FINISH


class Recorder:
    """A participant that logs its calls into a shared list and fails on demand.

    `fails` is shared by all participants: (op, name) → errno or exception to raise.
    """

    def __init__(self, name, log: list, fails: dict):
        self.name = name
        self.log = log
        self.fails = fails

    def _call(self, op: str) -> None:
        self.log.append((op, self.name))
        outcome = self.fails.get((op, self.name))
        if isinstance(outcome, BaseException):
            raise outcome
        if outcome is not None:
            raise LuoError(outcome, f"{self.name} {op} fails")

    def prepare(self):
        self._call("prepare")

    def freeze(self):
        self._call("freeze")

    def cancel(self):
        self._call("cancel")

    def finish(self):
        self._call("finish")


def machine(profile="rfc-v2", n=3, updated=False, fail=None, **kw):
    """A GlobalState over participants p0..p{n-1}; `fail` = {index: {op: errno}}."""
    log = []
    fails = {(op, f"p{i}"): e for i, ops in (fail or {}).items() for op, e in ops.items()}
    parts = [Recorder(f"p{i}", log, fails) for i in range(n)]
    return GlobalState(profile, parts, updated=updated, **kw), parts, log


# ---- the table --------------------------------------------------------------------------


def test_rfc_v2_table_is_the_spec():
    assert dict(TRANSITIONS["rfc-v2"]) == {
        (N, PREPARE): Move(P, N),
        (P, FREEZE): Move(F, N),
        (P, CANCEL): Move(N),
        (F, CANCEL): Move(N),
        (U, FINISH): Move(N),
    }


def test_rfc_v1_table_has_no_frozen_and_cancel_only_from_prepared():
    assert dict(TRANSITIONS["rfc-v1"]) == {
        (N, PREPARE): Move(P, N),
        (P, FREEZE): Move(P, N),  # REBOOT is not a stored state
        (P, CANCEL): Move(N),
        (U, FINISH): Move(N),
    }
    assert PROFILES["rfc-v1"].states == {N, P, U}


def test_mainline_table_goes_home_on_failure():
    assert dict(TRANSITIONS["mainline"]) == {
        (N, PREPARE): Move(P, HOME),
        (U, PREPARE): Move(P, HOME),
        (P, FREEZE): Move(F, HOME),
        (P, CANCEL): Move(HOME),
        (F, CANCEL): Move(HOME),
        (U, FINISH): Move(N),
    }


def test_states_print_as_sysfs_does():
    assert [str(s) for s in State] == ["normal", "prepared", "frozen", "updated"]


@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.parametrize("state,event", list(itertools.product(State, Event)))
def test_every_missing_entry_is_einval_and_changes_nothing(profile, state, event):
    if (state, event) in TRANSITIONS[profile]:
        return
    sm, _, log = machine(profile)
    sm._state = state  # reach any state directly: the table, not the path, is under test
    seen = []
    sm.subscribe(seen.append)
    with raises_errno(errnos.EINVAL) as excinfo:
        sm.handle(event)
    assert isinstance(excinfo.value, IllegalTransition)
    assert (sm.state, sm.version, log, seen) == (state, 0, [], [])


def test_move_and_profile_validate_themselves():
    with pytest.raises(TypeError):
        Move("normal")
    with pytest.raises(TypeError):
        Move(N, on_failure="normal")
    with pytest.raises(ValueError, match="needs a failure target"):
        Profile("x", {(N, PREPARE): Move(P)}, implicit=False)
    with pytest.raises(ValueError, match="needs no failure target"):
        Profile("x", {(P, CANCEL): Move(N, N)}, implicit=False)
    with pytest.raises(ValueError, match="unknown profile"):
        GlobalState("rfc-v3")


def test_state_change_validates_itself():
    StateChange(1, PREPARE, N, P)
    for bad in [dict(version=0), dict(event="prepare"), dict(after=N), dict(errno=-5),
                dict(before="normal")]:
        args = dict(version=1, event=PREPARE, before=N, after=P, errno=None) | bad
        with pytest.raises((TypeError, ValueError)):
            StateChange(**args)


# ---- callbacks and rollback ---------------------------------------------------------------


def test_boot_state():
    assert GlobalState("rfc-v2").state is N
    assert GlobalState("rfc-v2", updated=True).state is U


def test_prepare_freeze_cancel_run_callbacks_in_order():
    sm, _, log = machine()
    assert sm.prepare() is P
    assert sm.freeze() is F
    assert sm.cancel() is N
    assert log == [("prepare", "p0"), ("prepare", "p1"), ("prepare", "p2"),
                   ("freeze", "p0"), ("freeze", "p1"), ("freeze", "p2"),
                   ("cancel", "p2"), ("cancel", "p1"), ("cancel", "p0")]


def test_prepare_failure_cancels_the_prepared_ones_in_reverse():
    sm, _, log = machine(n=4, fail={2: {"prepare": errnos.ENOMEM}})
    with raises_errno(errnos.ENOMEM):
        sm.prepare()
    assert sm.state is N
    assert log == [("prepare", "p0"), ("prepare", "p1"), ("prepare", "p2"),
                   ("cancel", "p1"), ("cancel", "p0")]
    assert sm.version == 0  # NORMAL → NORMAL is no change


def test_freeze_failure_cancels_everyone_in_reverse_and_returns_to_normal():
    sm, _, log = machine(fail={1: {"freeze": errnos.EIO}})
    sm.prepare()
    log.clear()
    seen = []
    sm.subscribe(seen.append)
    with raises_errno(errnos.EIO):
        sm.freeze()
    assert sm.state is N
    assert log == [("freeze", "p0"), ("freeze", "p1"),
                   ("cancel", "p2"), ("cancel", "p1"), ("cancel", "p0")]
    assert seen == [StateChange(2, FREEZE, P, N, errnos.EIO)]


def test_a_non_luo_exception_rolls_back_too_and_propagates():
    sm, _, log = machine(fail={1: {"prepare": RuntimeError("bug")}})
    with pytest.raises(RuntimeError):
        sm.prepare()
    assert sm.state is N
    assert log[-1] == ("cancel", "p0")


def test_cancel_and_finish_failures_are_recorded_and_the_rest_still_run():
    sm, _, log = machine(fail={1: {"cancel": errnos.EIO}})
    sm.prepare()
    log.clear()
    assert sm.cancel() is N
    assert log == [("cancel", "p2"), ("cancel", "p1"), ("cancel", "p0")]
    assert sm.failures == [CallbackFailure("p1", CANCEL, errnos.EIO, "EIO: p1 cancel fails")]

    sm, _, log = machine(updated=True, fail={0: {"finish": RuntimeError("oops")}})
    assert sm.finish() is N
    assert log == [("finish", "p0"), ("finish", "p1"), ("finish", "p2")]
    assert sm.failures == [CallbackFailure("p0", FINISH, None, "oops")]


def test_a_cancel_failing_during_a_rollback_is_recorded_under_that_event():
    sm, _, _ = machine(fail={0: {"cancel": errnos.EIO}, 1: {"prepare": errnos.EBUSY}})
    with raises_errno(errnos.EBUSY):
        sm.prepare()
    assert [(f.participant, f.event) for f in sm.failures] == [("p0", PREPARE)]


def test_participants_are_read_at_prepare_and_kept_until_cancel():
    log = []
    parts = [Recorder("a", log, {})]
    sm = GlobalState("rfc-v2", lambda: parts)
    sm.prepare()
    parts.append(Recorder("late", log, {}))  # registration is EBUSY here in the kernel
    sm.freeze()
    sm.cancel()
    assert ("freeze", "late") not in log and ("cancel", "late") not in log
    sm.prepare()
    assert log[-1] == ("prepare", "late")


def test_finish_uses_the_participants_of_the_new_kernel():
    log = []
    parts = []
    sm = GlobalState("rfc-v2", lambda: parts, updated=True)
    parts.append(Recorder("registered-after-boot", log, {}))
    sm.finish()
    assert log == [("finish", "registered-after-boot")]


def test_observers_and_version():
    sm, _, _ = machine()
    seen = []
    unsubscribe = sm.subscribe(seen.append)
    sm.prepare()
    sm.cancel()
    unsubscribe()
    unsubscribe()  # harmless twice
    sm.prepare()
    assert seen == [StateChange(1, PREPARE, N, P), StateChange(2, CANCEL, P, N)]
    assert sm.version == 3


def test_state_lock_fault_is_eagain_and_changes_nothing():
    sm, _, log = machine(faults=Faults({"state.lock": errnos.EAGAIN}))
    with raises_errno(errnos.EAGAIN):
        sm.prepare()
    assert (sm.state, log) == (N, [])


def test_handle_wants_an_event():
    with pytest.raises(TypeError):
        GlobalState().handle("prepare")


# ---- reboot and the profiles -----------------------------------------------------------------


@pytest.mark.parametrize("profile", ["rfc-v1", "rfc-v2"])
def test_rfc_reboot_acts_only_in_prepared(profile):
    for updated in (False, True):
        sm, _, log = machine(profile, updated=updated)
        assert sm.reboot() is False  # plain kexec, nothing handed over
        assert log == [] and sm.state is (U if updated else N)


def test_rfc_v2_reboot_freezes_when_prepared_and_proceeds_when_frozen():
    sm, _, log = machine("rfc-v2")
    sm.prepare()
    assert sm.reboot() is True and sm.state is F
    log.clear()
    assert sm.reboot() is True and log == []  # user space froze already


def test_rfc_v1_reboot_success_stays_prepared_and_cancel_still_works():
    sm, _, log = machine("rfc-v1")
    sm.prepare()
    assert sm.reboot() is True
    assert sm.state is P and ("freeze", "p2") in log
    assert sm.cancel() is N


def test_rfc_v1_reboot_failure_cancels_all():
    sm, _, log = machine("rfc-v1", fail={0: {"freeze": errnos.EIO}})
    sm.prepare()
    log.clear()
    with raises_errno(errnos.EIO):
        sm.reboot()
    assert sm.state is N
    assert log == [("freeze", "p0"), ("cancel", "p2"), ("cancel", "p1"), ("cancel", "p0")]


def test_mainline_reboot_is_prepare_plus_freeze():
    sm, _, log = machine("mainline", n=1)
    seen = []
    sm.subscribe(seen.append)
    assert sm.reboot() is True
    assert sm.state is F
    assert log == [("prepare", "p0"), ("freeze", "p0")]
    assert [(c.before, c.after) for c in seen] == [(N, P), (P, F)]
    assert sm.cancel() is N  # the hand-over failed after the freeze


def test_mainline_failed_reboot_from_updated_goes_back_to_updated():
    sm, _, log = machine("mainline", updated=True, fail={1: {"freeze": errnos.ENOMEM}})
    with raises_errno(errnos.ENOMEM):
        sm.reboot()
    assert sm.state is U
    sm, _, _ = machine("mainline", updated=True, fail={0: {"freeze": errnos.ENOMEM}})
    sm.incoming_settled()
    assert sm.state is N
    with raises_errno(errnos.ENOMEM):
        sm.reboot()
    assert sm.state is N


def test_mainline_cancel_goes_home():
    sm, _, _ = machine("mainline", updated=True)
    sm.reboot()
    assert sm.cancel() is U
    sm.prepare()
    assert sm.cancel() is U


def test_incoming_settled():
    sm, _, log = machine("mainline", updated=True)
    sm.incoming_settled()
    assert sm.state is N and log == [("finish", "p0"), ("finish", "p1"), ("finish", "p2")]
    sm.incoming_settled()  # harmless again
    assert sm.state is N and len(log) == 3
    sm, _, log = machine("rfc-v2", updated=True)
    sm.incoming_settled()  # RFCs end UPDATED only with an explicit FINISH
    assert sm.state is U and log == []


# ---- stateful: GlobalState against a model of the spec's prose ------------------------------

OPS = ["prepare", "freeze", "cancel", "finish"]


def model_event(profile, state, incoming, event, n, engaged, fails):
    """(new state, errno, calls, new engaged, new incoming) from rfc.md §1's prose.

    `fails` maps (op, index) to an errno; `engaged` are the indices PREPARE engaged.
    """
    home = U if incoming else N
    fail_state = home if profile == "mainline" else N
    legal = {
        PREPARE: state is N or (profile == "mainline" and state is U),
        FREEZE: state is P,
        CANCEL: state is P or (state is F and profile != "rfc-v1"),
        FINISH: state is U,
    }[event]
    if not legal:
        return state, errnos.EINVAL, [], engaged, incoming
    cancel_all = [("cancel", i) for i in reversed(engaged)]
    if event is PREPARE:
        calls = []
        for i in range(n):
            calls.append(("prepare", i))
            if ("prepare", i) in fails:
                calls += [("cancel", j) for j in reversed(range(i))]
                return fail_state, fails[("prepare", i)], calls, [], incoming
        return P, None, calls, list(range(n)), incoming
    if event is FREEZE:
        calls = []
        for i in engaged:
            calls.append(("freeze", i))
            if ("freeze", i) in fails:
                return fail_state, fails[("freeze", i)], calls + cancel_all, [], incoming
        return (P if profile == "rfc-v1" else F), None, calls, engaged, incoming
    if event is CANCEL:
        return (home if profile == "mainline" else N), None, cancel_all, [], incoming
    return N, None, [("finish", i) for i in range(n)], engaged, False


class StateMachineModel(RuleBasedStateMachine):
    """Random events, reboots, settles and registrations, with random callback failures."""

    @initialize(profile=st.sampled_from(sorted(PROFILES)), n=st.integers(0, 4),
                updated=st.booleans())
    def boot(self, profile, n, updated):
        self.profile = profile
        self.log = []
        self.fails = {}  # (op, index) → errno, planned per step
        self.parts = [Recorder(i, self.log, self.fails) for i in range(n)]
        self.sm = GlobalState(profile, lambda: self.parts, updated=updated)
        self.seen = []
        self.sm.subscribe(self.seen.append)
        # the model
        self.state = U if updated else N
        self.incoming = updated
        self.engaged = []
        self.changes = 0

    def _step(self, event, fails):
        """Advance the model by one event; returns (errno, calls) it predicts."""
        new, errno, calls, self.engaged, self.incoming = model_event(
            self.profile, self.state, self.incoming, event, len(self.parts), self.engaged, fails)
        self.changes += new is not self.state
        self.state = new
        return errno, calls

    def _plan(self, failures):
        self.fails.clear()
        self.fails.update(failures)
        self.log.clear()

    @rule()
    def register_participant(self):
        if len(self.parts) < 5:
            self.parts.append(Recorder(len(self.parts), self.log, self.fails))

    @rule(event=st.sampled_from(list(Event)),
          failures=st.dictionaries(st.tuples(st.sampled_from(OPS), st.integers(0, 4)),
                                   st.sampled_from([errnos.EIO, errnos.ENOMEM, errnos.EBUSY]),
                                   max_size=2))
    def event(self, event, failures):
        self._plan(failures)
        before = self.state
        errno, calls = self._step(event, {k: v for k, v in failures.items()
                                          if k[0] in ("prepare", "freeze")})
        try:
            self.sm.handle(event)
            got = None
        except LuoError as e:
            got = e.errno
        assert got == errno, f"{event} from {before}: errno {got}, model {errno}"
        assert self.log == calls  # cancel/finish failures do not stop the others

    @rule(failures=st.dictionaries(st.tuples(st.sampled_from(["prepare", "freeze"]),
                                             st.integers(0, 4)),
                                   st.sampled_from([errnos.EIO, errnos.ENOMEM]), max_size=1))
    def reboot(self, failures):
        self._plan(failures)
        if self.state is F:
            steps, carried = [], True
        elif self.profile == "mainline":
            steps, carried = ([] if self.state is P else [PREPARE]) + [FREEZE], True
        elif self.state is P:
            steps, carried = [FREEZE], True
        else:
            steps, carried = [], False
        expected_calls, errno = [], None
        for event in steps:
            errno, calls = self._step(event, failures)
            expected_calls += calls
            if errno is not None:
                break
        try:
            got = self.sm.reboot()
        except LuoError as e:
            got = e.errno
        assert got == (carried if errno is None else errno)
        assert self.log == expected_calls

    @rule()
    def settle(self):
        self._plan({})
        expected = []
        if self.profile == "mainline":
            if self.state is U:
                _, expected = self._step(FINISH, {})
            self.incoming = False
        self.sm.incoming_settled()
        assert self.log == expected

    @invariant()
    def agrees(self):
        assert self.sm.state is self.state
        assert self.sm.state in PROFILES[self.profile].states
        assert self.sm.version == self.changes == len(self.seen)
        assert all(c.before is not c.after for c in self.seen)


TestStateMachineModel = StateMachineModel.TestCase
TestStateMachineModel.settings = settings(
    max_examples=200, stateful_step_count=30, deadline=None, derandomize=True, database=None)

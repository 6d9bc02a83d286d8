"""luofs/core/luo.py against an independent reference model (plain dicts), step by step.

The machine drives Luo the way the FUSE layer does (open/close the device, device and
session ioctls, closing session fds, one reboot into a fresh Luo) and predicts every
step's errno from the spec (§5–§14) alone. After each step the visible state must
agree: session names per direction and tokens per session, in order.
"""

from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from luofs.core import Direction, Rebooting
from luofs.uapi import errnos

from .fakes import (
    FakeCaller,
    FakeFile,
    FakeHandler,
    errno_of,
    first_boot,
    make_request,
    next_kernel,
)

NAMES = [b"a", b"b", b"c", b"a", b"b", b"", b"x" * 64]  # the last two are invalid names
TOKENS = [0, 1, 2**64 - 1]
BAD_FD = 99
pick = st.integers(0, 15)


class LuoMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.handler = FakeHandler()
        self.luo = first_boot(self.handler)  # its device is open
        self.caller = FakeCaller({3: FakeFile("A"), 4: FakeFile("B"), 5: FakeFile("A"),
                                  6: FakeFile("P", kind="pipe"), 7: FakeFile("C")})
        self.next_fd = 100
        self.rebooted = False
        # ---- the model: plain data, no luofs objects except the handles' real sessions
        self.device_open = True
        self.fds = {fd: (f.identity, f.kind) for fd, f in self.caller.fds.items()}
        self.sessions = []  # dicts in luo.sessions order: incoming (when loaded), then outgoing
        self.pending_incoming = []  # carried sessions, visible after the first open
        self.busy = set()  # identities preserved or retrieved-but-unfinished
        self.handles = []  # open session fds: (real Session, model dict)
        self.retrieved = {}  # (id(model session), token) → the file RETRIEVE_FD returned

    # ---- helpers ---------------------------------------------------------------------------

    def _handle(self, i, prefer=None):
        """Handle i; if `prefer` ("in"/"out") and there are such handles, one of those."""
        handles = [h for h in self.handles if h[1]["dir"] == prefer] or self.handles
        return handles[i % len(handles)]

    def _outgoing(self):
        return [s for s in self.sessions if s["dir"] == "out"]

    def _run(self, expected, fn, *args):
        got = errno_of(fn, *args)
        assert got == expected, f"{fn.__name__}{args[1:]}: got {got}, model says {expected}"
        return got is None

    @initialize(names=st.lists(st.sampled_from([b"a", b"b", b"c"]), max_size=3, unique=True),
                files=st.lists(st.tuples(pick, pick, st.sampled_from(TOKENS)), max_size=4),
                reboot_now=st.booleans(), fail_retrieves=st.booleans(),
                open_device=st.booleans())
    def start(self, names, files, reboot_now, fail_retrieves, open_device):
        """Some sessions to start with and, in half the runs, the reboot right away, so
        that the steps go to the new kernel. Uses the rules' own code (and checks)."""
        for name in names:
            self.create_session(name, junk=False)
        for i, fd_pick, token in files:
            if self.handles:
                self.preserve_fd(i, fd_pick, token, known=True)
        if reboot_now and any(s["files"] for s in self._outgoing()):
            self.kexec(fail_retrieves, open_device)

    # ---- /dev/liveupdate ---------------------------------------------------------------------

    @rule(open_=st.booleans())
    def open_or_close_device(self, open_):
        if not open_:
            self.luo.close_device()
            self.device_open = False
            return
        expected = errnos.EBUSY if self.device_open else None
        if self._run(expected, lambda _: self.luo.open_device(), None):
            self.device_open = True
            self.sessions[:0] = self.pending_incoming
            self.pending_incoming = []

    @rule(full=st.sampled_from([False, False, True]))
    def set_fd_table_full(self, full):
        self.caller.full = full

    @precondition(lambda self: self.device_open)
    @rule(name=st.sampled_from(NAMES), junk=st.booleans())
    def create_session(self, name, junk):
        raw = name + (b"\0junk" if junk and len(name) < 59 else b"")
        if self.caller.full:
            expected = errnos.EMFILE
        elif not name or len(name) == 64:
            expected = errnos.EINVAL
        elif any(s["name"] == name for s in self._outgoing()):
            expected = errnos.EEXIST
        else:
            expected = None
        req = make_request("CREATE_SESSION", name=raw)
        out = []
        if self._run(expected, lambda r: out.append(self.luo.device_ioctl(r, self.caller)), req):
            model = {"name": name, "dir": "out", "files": {}, "state": "open"}
            self.sessions.append(model)
            self.handles.append((out[0].session, model))

    @precondition(lambda self: self.device_open and self.rebooted)  # ENOENT before: test_luo
    @rule(name=st.sampled_from(NAMES), n=pick, known=st.booleans())
    def retrieve_session(self, name, n, known):
        carried = [s["name"] for s in self.sessions if s["dir"] == "in"]
        if known and carried:
            name = carried[n % len(carried)]
        found = [s for s in self.sessions if s["dir"] == "in" and s["name"] == name]
        if self.caller.full:
            expected = errnos.EMFILE
        elif not found:
            expected = errnos.ENOENT
        elif found[0]["state"] != "unretrieved":
            expected = errnos.EINVAL
        else:
            expected = None
        req = make_request("RETRIEVE_SESSION", name=name)
        out = []
        if self._run(expected, lambda r: out.append(self.luo.device_ioctl(r, self.caller)), req):
            found[0]["state"] = "open"
            self.handles.append((out[0].session, found[0]))

    # ---- session ioctls ------------------------------------------------------------------

    @precondition(lambda self: self.handles)
    @rule(i=pick, fd_pick=pick, token=st.sampled_from(TOKENS), known=st.booleans())
    def preserve_fd(self, i, fd_pick, token, known):
        session, model = self._handle(i, "out" if known else None)
        fds = sorted(self.fds) + [BAD_FD]
        fd = fds[fd_pick % len(fds)]
        if model["dir"] == "in":
            expected = errnos.EINVAL
        elif token in model["files"]:
            expected = errnos.EEXIST
        elif fd not in self.fds:
            expected = errnos.EBADF
        elif self.fds[fd][1] != "mem":
            expected = errnos.ENOENT
        elif self.fds[fd][0] in self.busy:
            expected = errnos.EBUSY
        else:
            expected = None
        req = make_request("PRESERVE_FD", fd=fd, token=token)
        if self._run(expected, self.luo.session_ioctl, session, req, self.caller):
            identity = self.fds[fd][0]
            model["files"][token] = {"identity": identity}
            self.busy.add(identity)

    @precondition(lambda self: self.handles and self.rebooted)  # no incoming session before
    @rule(i=pick, token=st.sampled_from(TOKENS), n=pick, known=st.booleans())
    def retrieve_fd(self, i, token, n, known):
        session, model = self._handle(i, "in" if known else None)
        if known and model["files"]:
            token = list(model["files"])[n % len(model["files"])]
        f = model["files"].get(token)
        if model["dir"] == "out":
            expected = errnos.EINVAL
        elif self.caller.full:
            expected = errnos.EMFILE
        elif f is None:
            expected = errnos.ENOENT
        elif f["failed"] is not None:
            expected = f["failed"]
        elif not f["retrieved"] and f["data"] in self.handler.fail_retrieve:
            # fails once; the handler would succeed next time, but the failure is sticky
            expected = f["failed"] = self.handler.fail_retrieve[f["data"]]
        else:
            expected = None
        out = []
        req = make_request("RETRIEVE_FD", token=token)
        ok = self._run(expected,
                       lambda r: out.append(self.luo.session_ioctl(session, r, self.caller)), req)
        if model["dir"] == "in" and f is not None and f["failed"] is not None:
            self.handler.fail_retrieve.pop(f["data"], None)
        if ok:
            file = out[0].file
            assert file.identity == f["identity"]
            key = (id(model), token)
            if f["retrieved"]:
                assert file is self.retrieved[key]  # the same open file description
            else:
                f["retrieved"] = True
                self.retrieved[key] = file
                self.busy.add(f["identity"])
                self.caller.fds[self.next_fd] = file  # installed in the caller's table
                self.fds[self.next_fd] = (file.identity, file.kind)
                self.next_fd += 1

    def _finish(self, model):
        """§11 on the model: EBUSY if any file cannot finish, else drop every file."""
        if any(f["data"] in self.handler.cannot_finish for f in model["files"].values()):
            return errnos.EBUSY
        for f in model["files"].values():
            if f["retrieved"]:
                self.busy.discard(f["identity"])
        model["files"] = {}
        return None

    @precondition(lambda self: self.handles and self.rebooted)
    @rule(i=pick, reserved=st.sampled_from([0, 1]), known=st.booleans())
    def finish(self, i, reserved, known):
        session, model = self._handle(i, "in" if known else None)
        if model["dir"] == "out":
            expected = errnos.EINVAL
        elif any(f["data"] in self.handler.cannot_finish for f in model["files"].values()):
            expected = errnos.EBUSY
        else:
            expected = None
        req = make_request("FINISH", reserved=reserved)
        if self._run(expected, self.luo.session_ioctl, session, req, self.caller):
            assert self._finish(model) is None

    @precondition(lambda self: self.handles)
    @rule(i=pick, reserved=st.sampled_from([0, 0, 1]))
    def get_name(self, i, reserved):
        session, model = self._handle(i)
        expected = errnos.EINVAL if reserved else None
        out = []
        req = make_request("GET_NAME", reserved=reserved, name=b"\xee" * 64)
        if self._run(expected,
                     lambda r: out.append(self.luo.session_ioctl(session, r, self.caller)), req):
            head = model["name"] + b"\0"
            assert out[0].copy_back[8:] == head + b"\xee" * (64 - len(head))

    @precondition(lambda self: self.handles)
    @rule(i=pick)
    def close_session(self, i):
        session, model = self._handle(i)
        self.handles.remove((session, model))
        self.luo.close_session(session)
        if model["dir"] == "out":
            for f in model["files"].values():
                self.busy.discard(f["identity"])
            self.sessions.remove(model)
        elif self._finish(model) is None:
            self.sessions.remove(model)
        else:
            model["state"] = "stuck"  # retrieved, no fd, until the next reboot

    # ---- the new kernel's handler knobs ---------------------------------------------------------

    @precondition(lambda self: self.rebooted)
    @rule(n=pick)
    def toggle_can_finish(self, n):
        datas = sorted(f["data"] for s in self.sessions + self.pending_incoming
                       if s["dir"] == "in" for f in s["files"].values())
        if datas:
            self.handler.cannot_finish ^= {datas[n % len(datas)]}

    # ---- reboot -------------------------------------------------------------------------------

    @precondition(lambda self: not self.rebooted
                  and any(s["files"] for s in self._outgoing()))
    @rule(n=pick, err=st.sampled_from([errnos.ENOMEM, errnos.EIO]))
    def reboot_with_a_failing_freeze(self, n, err):
        identities = [f["identity"] for s in self._outgoing() for f in s["files"].values()]
        victim = identities[n % len(identities)]
        self.handler.fail_freeze[victim] = err
        self.handler.ops.clear()
        self._run(err, lambda _: self.luo.reboot(), None)
        frozen = [op[1] for op in self.handler.calls("freeze")]
        assert frozen == identities[: identities.index(victim) + 1]
        assert [op[1] for op in self.handler.calls("unfreeze")] == frozen[:-1][::-1]
        del self.handler.fail_freeze[victim]
        assert not self.luo.rebooting

    @precondition(lambda self: not self.rebooted and any(s["files"] for s in self._outgoing()))
    @rule(fail_retrieves=st.booleans(), open_device=st.booleans())
    def kexec(self, fail_retrieves, open_device):
        carried = self.luo.reboot()
        expected = [(s["name"], [(t, f["identity"]) for t, f in s["files"].items()])
                    for s in self._outgoing()]
        assert [(c.name, [(f.token, f.file.identity) for f in c.files])
                for c in carried] == expected
        try:
            self.luo.device_ioctl(make_request("CREATE_SESSION", name=b"z"), self.caller)
        except Rebooting:
            pass
        else:
            raise AssertionError("the old kernel still takes ioctls after reboot()")
        self.luo, self.handler = next_kernel(carried, rename=lambda i: i + "'")
        self.rebooted = True
        self.caller.full = False  # a new system, with fresh processes
        self.device_open = False
        self.handles = []
        self.busy = set()
        self.retrieved = {}
        self.sessions = []
        self.pending_incoming = [
            {"name": c.name, "dir": "in", "state": "unretrieved",
             "files": {f.token: {"identity": f.file.identity + "'", "data": f.data,
                                 "retrieved": False, "failed": None} for f in c.files}}
            for c in carried]
        datas = [f.data for c in carried for f in c.files]
        if fail_retrieves:  # every other carried file fails to retrieve
            self.handler.fail_retrieve.update(dict.fromkeys(datas[::2], errnos.ENOMEM))
        if open_device:  # as the first thing the new system does; else a later rule does it
            self.open_or_close_device(open_=True)

    # ---- what everyone can see --------------------------------------------------------------

    @invariant()
    def visible_state_matches(self):
        real = [(s.name, s.direction, list(s.files)) for s in self.luo.sessions]
        model = [(s["name"], Direction.OUTGOING if s["dir"] == "out" else Direction.INCOMING,
                  list(s["files"])) for s in self.sessions]
        assert real == model
        assert self.luo.device_open == self.device_open


TestLuoStateful = LuoMachine.TestCase
TestLuoStateful.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)

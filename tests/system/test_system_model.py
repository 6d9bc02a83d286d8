"""Issue 7 §3: the whole system through a real mount — create, preserve, close, kexec,
retrieve, finish in random order from several client processes — against a reference
model. Default: a short run; `-m slow` runs ≥ 10,000 sequences (make fuzz)."""

import hashlib
import json
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import (Bundle, RuleBasedStateMachine, consumes, initialize,
                                 invariant, precondition, rule)

from luofs import client
from luofs.testing import booted

WORKERS = 3
NAMES = st.sampled_from(["a", "b", "c"])
TOKENS = st.integers(0, 3)


class Worker:
    def __init__(self, root):
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(os.path.dirname(__file__), "worker.py"), root],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def __call__(self, **cmd):
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def stop(self):
        self.proc.stdin.close()
        self.proc.wait(30)


def digest(seed: int) -> str:
    return hashlib.sha256(hashlib.sha256(seed.to_bytes(8, "little")).digest()
                          * (1 + seed % 7)).hexdigest()


class Env:
    instance = None
    workers = None


@pytest.fixture(scope="module", autouse=True)
def system():
    with booted() as instance:
        Env.instance = instance
        Env.workers = [Worker(instance.root) for _ in range(WORKERS)]
        yield
        for w in Env.workers:
            w.stop()


def kexec():
    reply = client.kexec(Env.instance.root, timeout=120)
    assert reply["files"] >= 0, reply


class System(RuleBasedStateMachine):
    """Model: outgoing {name: {token: seed}}, incoming {name: {token: seed}} with a
    `retrieved` set; handles map to (worker, kind, name)."""

    handles = Bundle("handles")

    @initialize()
    def reset(self):
        for w in Env.workers:
            assert w(op="forget")["ok"]  # every session closed: nothing is carried
        kexec()  # and whatever was incoming is dropped
        self.outgoing, self.incoming, self.retrieved = {}, {}, set()
        self.live = {}  # handle → (worker index, "out"|"in", name)
        self.holder = None
        self.next_handle = 0

    def _expect(self, result, error=None):
        if error is None:
            assert result["ok"], result
        else:
            assert not result["ok"] and result["errno"] == error, (error, result)
        return result

    @rule(w=st.integers(0, WORKERS - 1))
    def hold_device(self, w):
        result = Env.workers[w](op="hold")
        if self.holder is None:
            self._expect(result)
            self.holder = w
        else:
            self._expect(result, "EBUSY")

    @precondition(lambda self: self.holder is not None)
    @rule()
    def release_device(self):
        self._expect(Env.workers[self.holder](op="release"))
        self.holder = None

    def _device_op(self, w):
        """Device ops from a worker that does not hold it while another does: EBUSY."""
        return self.holder is not None and self.holder != w

    @rule(target=handles, w=st.integers(0, WORKERS - 1), name=NAMES)
    def create(self, w, name):
        handle = self.next_handle
        self.next_handle += 1
        result = Env.workers[w](op="create", name=name, handle=handle)
        if self._device_op(w):
            self._expect(result, "EBUSY")
        elif name in self.outgoing:
            self._expect(result, "EEXIST")
        else:
            self._expect(result)
            self.outgoing[name] = {}
            self.live[handle] = (w, "out", name)
        return handle

    @rule(target=handles, w=st.integers(0, WORKERS - 1), name=NAMES)
    def retrieve(self, w, name):
        handle = self.next_handle
        self.next_handle += 1
        result = Env.workers[w](op="retrieve", name=name, handle=handle)
        if self._device_op(w):
            self._expect(result, "EBUSY")
        elif name not in self.incoming:
            self._expect(result, "ENOENT")
        elif name in self.retrieved:
            self._expect(result, "EINVAL")
        else:
            self._expect(result)
            self.retrieved.add(name)
            self.live[handle] = (w, "in", name)
        return handle

    @rule(h=handles, token=TOKENS, seed=st.integers(0, 1000))
    def preserve(self, h, token, seed):
        if h not in self.live:
            return
        w, kind, name = self.live[h]
        result = Env.workers[w](op="preserve", handle=h, token=token, seed=seed)
        if kind == "in":
            self._expect(result, "EINVAL")
        elif token in self.outgoing[name]:
            self._expect(result, "EEXIST")
        else:
            self._expect(result)
            self.outgoing[name][token] = seed

    @rule(h=handles, token=TOKENS)
    def retrieve_fd(self, h, token):
        if h not in self.live:
            return
        w, kind, name = self.live[h]
        result = Env.workers[w](op="retrieve_fd", handle=h, token=token)
        if kind == "out":
            self._expect(result, "EINVAL")
        elif token not in self.incoming[name]:
            self._expect(result, "ENOENT")
        else:
            assert self._expect(result)["value"] == digest(self.incoming[name][token])

    @rule(h=handles)
    def finish(self, h):
        if h not in self.live:
            return
        w, kind, name = self.live[h]
        result = Env.workers[w](op="finish", handle=h)
        if kind == "out":
            self._expect(result, "EINVAL")
        else:
            self._expect(result)
            self.incoming[name] = {}

    @rule(h=consumes(handles))
    def close(self, h):
        if h not in self.live:
            return
        w, kind, name = self.live.pop(h)
        self._expect(Env.workers[w](op="close", handle=h))
        if kind == "out":
            del self.outgoing[name]
        else:
            del self.incoming[name]
            self.retrieved.discard(name)

    @rule()
    def live_update(self):
        kexec()
        for w in Env.workers:
            assert w(op="forget")["ok"]
        # only open outgoing sessions are carried; every old handle is dead
        self.incoming = {name: dict(files) for name, files in self.outgoing.items()}
        self.outgoing, self.retrieved, self.live, self.holder = {}, set(), {}, None

    @invariant()
    def views_match(self):
        if not hasattr(self, "outgoing"):
            return
        base = Env.instance.path("sys/kernel/liveupdate/sessions")
        assert sorted(os.listdir(f"{base}/outgoing")) == sorted(self.outgoing)


SHORT = settings(max_examples=12, stateful_step_count=25, deadline=None,
                 suppress_health_check=list(HealthCheck))
# ≥ 10,000 sequences (about 1.5 s each: hours); LUOFS_SYSTEM_EXAMPLES runs fewer.
LONG = settings(max_examples=int(os.environ.get("LUOFS_SYSTEM_EXAMPLES", 10_000)),
                stateful_step_count=30, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))

TestSystemShort = System.TestCase
TestSystemShort.settings = SHORT


@pytest.mark.slow
def test_system_long():
    from hypothesis.stateful import run_state_machine_as_test
    run_state_machine_as_test(System, settings=LONG)

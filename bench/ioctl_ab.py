"""The ioctl round trips of two luofs trees side by side, their rounds interleaved:

    python -m bench.ioctl_ab OTHER_TREE [--rounds 20] [--block 50]

OTHER_TREE is a checkout of another commit (`git worktree add /tmp/before 2f10c44`;
no build needed). Each tree boots its own instance in a worker process that imports
that tree's luofs (this bench's cases, ioctl_roundtrip.py, drive both); the driver asks
them for one round at a time, in turns, the first of each round alternating, so that
both see the same machine. Prints each case's median and ratio to its own floor per
tree, and the median over rounds of this tree's ratio over the other's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

BENCH_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = "__worker__"


def _worker(block: int, calls: int) -> None:
    """Runs in a tree's interpreter: one JSON line per command read from stdin."""
    from luofs.testing import booted

    from . import ioctl_roundtrip as rt
    from .common import interleaved_blocks

    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # what booting prints goes to stderr, not into the replies

    def warm(phase):
        cases, prepare = phase.cases(), phase.prepare()
        for name, fn in cases.items():
            if name in prepare:
                prepare[name](rt.WARM_UP)
            for _ in range(rt.WARM_UP):
                fn()
        return cases, prepare

    with booted() as instance:
        outgoing = rt.Outgoing(instance, calls)
        incoming = None
        cases, prepare = warm(outgoing)
        out.write("{}\n")
        for line in sys.stdin:
            if line.strip() == "round":
                samples = interleaved_blocks(cases, 1, block, prepare)
                out.write(json.dumps({k: v[0] for k, v in samples.items()}) + "\n")
            elif line.strip() == "kexec":
                outgoing.leave()
                instance.kexec()
                outgoing.session.close()
                outgoing.lu.close()
                incoming = rt.Incoming(instance, outgoing.preserved)
                cases, prepare = warm(incoming)
                out.write("{}\n")
            else:
                break
        if incoming is not None:
            incoming.close()


class _Tree:
    def __init__(self, label: str, tree: str, block: int, calls: int, bench_copy: str):
        # The other tree's luofs, this bench (copied: the other tree has its own bench/).
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([bench_copy, tree]))
        self.label = label
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.ioctl_ab", WORKER, str(block), str(calls)],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=bench_copy)
        self.read()

    def ask(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read()

    def read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.label} worker ended (see its stderr)")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _phase(trees: list[_Tree], rounds: int) -> list[dict]:
    got = []
    for r in range(rounds):
        order = trees if r % 2 == 0 else trees[::-1]
        got.append({t.label: t.ask("round") for t in order})
    return got


def _report(rounds: list[dict], this: str, other: str) -> None:
    med = statistics.median

    def ratio(r, label, case):
        return med(r[label][case]) / med(r[label]["floor"])

    print(f"{'case':16} {other + ' µs':>10} {this + ' µs':>10} {other + ' ×':>8} "
          f"{this + ' ×':>8} {this + '/' + other:>12}")
    for case in rounds[0][this]:
        values = {t: med(x for r in rounds for x in r[t][case]) for t in (other, this)}
        ratios = {t: med(ratio(r, t, case) for r in rounds) for t in (other, this)}
        change = med(ratio(r, this, case) / ratio(r, other, case) for r in rounds)
        print(f"{case:16} {values[other]:10.1f} {values[this]:10.1f} {ratios[other]:8.2f} "
              f"{ratios[this]:8.2f} {change:12.2f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ioctl_ab", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("other", help="another luofs checkout (its luofs/ is imported as is)")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--block", type=int, default=50)
    args = p.parse_args(argv)
    calls = 100 + args.rounds * args.block
    with tempfile.TemporaryDirectory(prefix="luofs-ab-") as copy:
        subprocess.run(["cp", "-r", os.path.join(BENCH_ROOT, "bench"), copy], check=True)
        trees = [_Tree("other", os.path.abspath(args.other), args.block, calls, copy),
                 _Tree("this", BENCH_ROOT, args.block, calls, copy)]
        try:
            before = _phase(trees, args.rounds)
            for t in trees:
                t.ask("kexec")
            after = _phase(trees, args.rounds)
        finally:
            for t in trees:
                t.close()
    _report(before, "this", "other")
    _report(after, "this", "other")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == [WORKER]:
        _worker(int(sys.argv[2]), int(sys.argv[3]))
    else:
        raise SystemExit(main())

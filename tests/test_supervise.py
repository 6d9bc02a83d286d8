"""luofs/supervise.py: how `luofs run` starts a program (the mechanism itself is
tested end to end by scripts/test-native-supervisor.sh)."""

import os
import subprocess
import sys

import pytest

from luofs import supervise


def _elf(tmp_path, static: bool) -> str:
    source = tmp_path / "p.c"
    source.write_text("int main(void) { return 0; }\n")
    program = str(tmp_path / ("static" if static else "dynamic"))
    if subprocess.run(["gcc", *(["-static"] if static else []), "-o", program, str(source)]
                      ).returncode:
        pytest.skip("no static libc to link against")
    return program


def test_a_dynamic_program_gets_the_supervisor_and_the_shim(tmp_path):
    program = _elf(tmp_path, static=False)
    argv, env = supervise.command("/r", [program, "a"], {"PATH": "/bin"}, "/x/luofs")
    assert argv == [supervise.supervisor_path(), "--root", "/r", "--shim", supervise.shim_path(),
                    "--", program, "a"]
    assert env == {"PATH": "/bin", "LUOFS_ROOT": "/r", "LUOFS_BIN": "/x/luofs"}


def test_a_static_program_gets_the_supervisor_alone(tmp_path):
    program = _elf(tmp_path, static=True)
    assert supervise.statically_linked(program)
    argv, env = supervise.command("/r", [program], {"LUOFS_BIN": "/mine"}, "/x/luofs")
    assert argv == [supervise.supervisor_path(), "--root", "/r", "--", program]
    assert env["LUOFS_BIN"] == "/mine"  # the caller's choice of luofs stands
    assert "LD_PRELOAD" not in env


def test_scripts_and_unknown_programs_get_the_shim_too(tmp_path):
    script = tmp_path / "s.sh"
    script.write_text("#!/bin/sh\n")
    assert not supervise.statically_linked(str(script))
    argv, _ = supervise.command("/r", ["no-such-program"], {"PATH": str(tmp_path)}, "luofs")
    assert "--shim" in argv


def test_a_helper_that_is_not_built_is_named_with_the_fix(tmp_path, monkeypatch):
    missing = str(tmp_path / "luofs-supervise")
    monkeypatch.setenv("LUOFS_SUPERVISOR", missing)
    with pytest.raises(supervise.NotBuilt) as e:
        supervise.supervisor_path()
    assert str(e.value) == (f"{missing} is not built: run `make native` "
                            "(or set LUOFS_SUPERVISOR)")


def test_luofs_run_reports_a_missing_supervisor(tmp_path):
    root = tmp_path / "root"
    (root / "sys" / "kernel" / "liveupdate").mkdir(parents=True)  # looks served (any ABI):
    # the check that matters comes next
    missing = str(tmp_path / "none")
    result = subprocess.run([sys.executable, "-m", "luofs", "run", "--root", str(root), "--",
                             "true"], capture_output=True, text=True,
                            env=dict(os.environ, LUOFS_SUPERVISOR=missing))
    assert result.returncode == 1
    assert result.stderr == (f"luofs run: {missing} is not built: run `make native` "
                             "(or set LUOFS_SUPERVISOR)\n")

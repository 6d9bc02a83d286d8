"""`luofs boot/status/shutdown` error paths (issue 2 §8): clear messages, and stale
mounts found and cleaned."""

import os
import signal
import subprocess
import sys

from luofs.client import status


def luofs(*args):
    return subprocess.run([sys.executable, "-m", "luofs", *args], capture_output=True, text=True)


def test_busy_root_is_refused_with_how_to_free_it(luofs_instance):
    result = luofs("boot", "--root", luofs_instance.root)
    assert result.returncode == 1
    assert "busy" in result.stderr and "luofs shutdown" in result.stderr


def test_a_non_empty_or_missing_directory_is_refused(tmp_path):
    (tmp_path / "file").write_text("keep me")
    result = luofs("boot", "--root", str(tmp_path))
    assert result.returncode == 1 and "not empty" in result.stderr
    result = luofs("boot", "--root", str(tmp_path / "nowhere"))
    assert result.returncode == 1 and "not a directory" in result.stderr


def test_no_root_at_all_says_how_to_give_one():
    env = {k: v for k, v in os.environ.items() if k != "LUOFS_ROOT"}
    result = subprocess.run([sys.executable, "-m", "luofs", "status"], capture_output=True,
                            text=True, env=env)
    assert result.returncode == 1 and "--root" in result.stderr and "LUOFS_ROOT" in result.stderr


def test_status_and_shutdown_of_nothing_say_so(tmp_path):
    for command in ("status", "shutdown", "kexec"):
        result = luofs(command, "--root", str(tmp_path))
        assert result.returncode == 1 and "no luofs kernel serves" in result.stderr


def test_bad_options_are_refused_before_anything_starts(tmp_path):
    result = luofs("boot", "--root", str(tmp_path), "--devices", "dma0@nowhere")
    assert result.returncode == 1 and "--devices" in result.stderr
    result = luofs("boot", "--root", str(tmp_path), "--fault", "no.such.point")
    assert result.returncode == 1 and "unknown fault point" in result.stderr
    result = luofs("boot", "--root", str(tmp_path), "--memory", "12345")
    assert result.returncode == 64 and "multiple of 4096" in result.stderr
    assert not os.listdir(tmp_path)


def test_a_stale_mount_is_found_and_cleaned(tmp_path):
    root = str(tmp_path)
    assert luofs("boot", "--root", root).returncode == 0
    info = status(root)
    # Both processes die at once: nobody unmounts, the mount is left dead.
    os.killpg(info["machine"]["pid"], signal.SIGKILL)
    for pid in (info["machine"]["pid"], info["kernel"]["pid"]):
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    try:
        assert luofs("status", "--root", root).returncode == 1
        result = luofs("boot", "--root", root)
        assert result.returncode == 0, result.stderr
        assert "stale" in result.stderr
        assert os.path.exists(os.path.join(root, "dev/liveupdate"))
    finally:
        assert luofs("shutdown", "--root", root).returncode == 0


def test_a_clean_shutdown_removes_the_logs_and_keep_logs_keeps_them(tmp_path):
    root = str(tmp_path)
    for keep in (False, True):
        assert luofs("boot", "--root", root).returncode == 0
        state = status(root)["machine"]["state_dir"]
        args = ["shutdown", "--root", root] + (["--keep-logs"] if keep else [])
        result = luofs(*args)
        assert result.returncode == 0
        assert os.path.isdir(state) == keep
        if keep:
            assert state in result.stdout
            import shutil
            shutil.rmtree(state)


def test_run_serves_static_and_dynamic_programs_without_a_warning(luofs_instance, tmp_path):
    source = tmp_path / "static.c"
    source.write_text("int main(void) { return 7; }\n")
    program = tmp_path / "static"
    if subprocess.run(["gcc", "-static", "-o", str(program), str(source)]).returncode:
        import pytest
        pytest.skip("no static libc to link against")
    result = luofs("run", "--root", luofs_instance.root, "--", str(program))
    assert result.returncode == 7  # its exit status is the run's
    assert result.stderr == ""  # the supervisor reaches it: nothing to warn about
    dynamic = luofs("run", "--root", luofs_instance.root, "--", "true")
    assert dynamic.returncode == 0 and dynamic.stderr == ""
    missing = luofs("run", "--root", luofs_instance.root, "--", str(tmp_path / "missing"))
    assert missing.returncode == 127
    assert missing.stderr == f"luofs-supervise: {tmp_path / 'missing'}: No such file or directory\n"

"""luofs as a user gets it (issue 16): `python -m build` makes an sdist and, from it, a wheel;
the wheel goes into a fresh virtualenv outside the checkout, and from a temp dir, with no
trace of the checkout in any path or variable, the installed `luofs` boots, runs a C
program (built against the installed header) that preserves a memfd, live updates,
retrieves it and shuts down; its pytest fixture does the same in a pytest run.

The wheel and the venv are made once per test session (shared by the xdist workers,
under a lock): about 15 s with pip's cache warm (a CI machine's `make deps` warms it).
"""

import fcntl
import glob
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parents[2]
PHRASE = "carried by the installed package"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="luofs boot needs root")

PROGRAM = r"""
/* preserve: a memfd holding argv[2] goes into session "pkg" (token 7), and a child that
 * keeps the session open stays behind for the live update. retrieve: print what came back.
 * Both print where the LD_PRELOAD shim was loaded from, and what their parent runs (the
 * seccomp supervisor). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/liveupdate.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

static void die(const char *what) { perror(what); exit(1); }

static void print_helpers(void)
{
	char line[4096], parent[64];
	FILE *maps = fopen("/proc/self/maps", "r");
	ssize_t n;

	while (maps && fgets(line, sizeof(line), maps))
		if (strstr(line, "libluofs-shim.so")) {
			printf("shim %s", strchr(line, '/'));
			break;
		}
	snprintf(parent, sizeof(parent), "/proc/%d/exe", (int)getppid());
	n = readlink(parent, line, sizeof(line) - 1);
	printf("parent %.*s\n", n > 0 ? (int)n : 0, line);
}

int main(int argc, char **argv)
{
	struct liveupdate_ioctl_create_session s = { .size = sizeof(s) };
	int dev = open("/dev/liveupdate", O_RDWR);

	if (argc < 2 || dev < 0)
		die("open /dev/liveupdate");
	print_helpers();
	strcpy((char *)s.name, "pkg");
	if (!strcmp(argv[1], "preserve")) {
		struct liveupdate_session_preserve_fd p = { .size = sizeof(p), .token = 7 };
		int memfd = memfd_create("pkg", 0);

		if (ioctl(dev, LIVEUPDATE_IOCTL_CREATE_SESSION, &s) < 0)
			die("CREATE_SESSION");
		if (write(memfd, argv[2], strlen(argv[2])) < 0)
			die("write");
		p.fd = memfd;
		if (ioctl(s.fd, LIVEUPDATE_SESSION_PRESERVE_FD, &p) < 0)
			die("PRESERVE_FD");
		printf("preserved\n");
		fflush(stdout);
		if (fork() == 0) { /* the holder: the session lives while its fd is open */
			for (int fd = 0; fd < 3; fd++)
				close(fd);
			pause();
		}
		return 0;
	} else {
		struct liveupdate_session_retrieve_fd r = { .size = sizeof(r), .token = 7 };
		struct liveupdate_session_finish f = { .size = sizeof(f) };
		char text[256] = "";

		if (ioctl(dev, LIVEUPDATE_IOCTL_RETRIEVE_SESSION, &s) < 0)
			die("RETRIEVE_SESSION");
		if (ioctl(s.fd, LIVEUPDATE_SESSION_RETRIEVE_FD, &r) < 0)
			die("RETRIEVE_FD");
		if (pread(r.fd, text, sizeof(text) - 1, 0) < 0)
			die("pread");
		if (ioctl(s.fd, LIVEUPDATE_SESSION_FINISH, &f) < 0)
			die("FINISH");
		printf("retrieved %s\n", text);
		return 0;
	}
}
"""

FIXTURE_TEST = """
import os

def test_the_fixture_carries_a_memfd(luofs_instance):
    with luofs_instance.client() as lu:
        session = lu.create_session("fixture")
        fd = os.memfd_create("fixture")
        os.write(fd, b"%s")
        session.preserve_fd(fd, 1)
    luofs_instance.kexec()
    with luofs_instance.client() as lu, lu.retrieve_session("fixture") as back:
        assert os.pread(back.retrieve_fd(1), 100, 0) == b"%s"
        back.finish()
    session.close()
""" % (PHRASE, PHRASE)


def _clean_env(venv: Path, home: Path) -> dict:
    """Nothing that points back at the checkout: no PYTHONPATH, no LUOFS_*, its PATH not."""
    return {"PATH": f"{venv}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(home), "LANG": "C.UTF-8", "TMPDIR": os.environ.get("TMPDIR", "/tmp")}


def _run(argv, **kwargs):
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, f"{argv}: {result.stdout}{result.stderr}"
    return result


@pytest.fixture(scope="session")
def installed(tmp_path_factory):
    """(venv, dist dir): the wheel built from the sdist, installed in a fresh venv."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # this session's, the same for every worker
    where = shared / "installed-package"
    with open(shared / "installed-package.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (where / "ready").exists():
            dist, venv = where / "dist", where / "venv"
            env = {k: v for k, v in os.environ.items() if not k.startswith("LUOFS_")}
            _run([sys.executable, "-m", "build", "--outdir", str(dist), str(CHECKOUT)],
                 cwd=CHECKOUT, env=env)
            _run([sys.executable, "-m", "venv", str(venv)], cwd=where)
            wheel, = glob.glob(str(dist / "luofs-*.whl"))
            env.pop("PYTHONPATH", None)
            _run([str(venv / "bin" / "pip"), "install", "-q", wheel, "pytest"], cwd=where,
                 env={**env, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
            (where / "ready").touch()
    return where / "venv", where / "dist"


def test_the_build_makes_an_sdist_with_the_native_sources_and_a_platform_wheel(installed):
    _, dist = installed
    sdist, = glob.glob(str(dist / "luofs-*.tar.gz"))
    wheel, = glob.glob(str(dist / "luofs-*.whl"))
    assert os.path.basename(wheel).endswith(f"-py3-none-linux_{os.uname().machine}.whl")
    import tarfile
    import zipfile

    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    assert {"setup.py", "native/Makefile", "native/shim/transport.c",
            "native/include/linux/liveupdate.h", "native/userspace/userspace.c"} <= names
    assert not any(name.startswith("native/build") for name in names)
    with zipfile.ZipFile(wheel) as whl:
        shipped = {info.filename: info.external_attr >> 16 for info in whl.infolist()}
    for name in ("libluofs-shim.so", "luofs-supervise", "luofs-userspace", "luoctl"):
        assert shipped[f"luofs/_native/{name}"] & 0o111, name  # executable once installed
    assert "luofs/_native/include/linux/liveupdate.h" in shipped
    assert not any("errno_walk" in name for name in shipped)  # test programs stay home


def _instance_processes(machine_pid: int) -> list[int]:
    """Every process of the machine's session (it leads one): kernels, keepers, userspace."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except (OSError, ValueError):
            continue
        if entry.isdigit() and int(fields[3]) == machine_pid:  # field 6: session id
            found.append(int(entry))
    return found


def _assert_no_checkout(pids: list[int]) -> None:
    """Nothing these processes mapped, run or were given names the checkout."""
    for pid in pids:
        for what in ("maps", "cmdline", "environ"):
            try:
                with open(f"/proc/{pid}/{what}", "rb") as f:
                    text = f.read().replace(b"\0", b" ").decode(errors="replace")
            except (FileNotFoundError, ProcessLookupError):
                continue
            assert str(CHECKOUT) not in text, f"pid {pid}'s {what} names the checkout: {text}"


def test_the_installed_luofs_boots_runs_kexecs_and_retrieves_outside_the_checkout(
        installed, tmp_path):
    venv, _ = installed
    env = _clean_env(venv, tmp_path)
    python = str(venv / "bin" / "python")
    where = json.loads(_run([python, "-c", (
        "import json, sys, luofs, luofs.native as n; print(json.dumps({'file': luofs.__file__, "
        "'path': sys.path, 'shim': n.locate(n.SHIM), 'supervisor': n.locate(n.SUPERVISOR), "
        "'include': n.header_dir()}))")], cwd=tmp_path, env=env).stdout)
    assert where["file"].startswith(f"{venv}/")
    assert where["shim"][1] == where["supervisor"][1] == "package"
    helpers = f"shim {where['shim'][0]}\nparent {where['supervisor'][0]}\n"
    assert not any(str(CHECKOUT) in entry for entry in where["path"]), where["path"]
    source = tmp_path / "pkg.c"
    source.write_text(PROGRAM)
    _run(["gcc", "-O2", "-Wall", f"-I{where['include']}", "-o", "pkg", "pkg.c"], cwd=tmp_path)
    root = tmp_path / "root"
    root.mkdir()
    luofs = str(venv / "bin" / "luofs")
    _run([luofs, "boot", "--root", str(root)], cwd=tmp_path, env=env)
    try:
        status = json.loads(_run([luofs, "status", "--root", str(root), "--json"],
                                 cwd=tmp_path, env=env).stdout)
        assert status["machine"]["userspace"]["running"], status["machine"]["userspace"]
        out = _run([luofs, "run", "--root", str(root), "--", "./pkg", "preserve", PHRASE],
                   cwd=tmp_path, env=env).stdout
        assert out == f"{helpers}preserved\n"
        _assert_no_checkout(_instance_processes(status["machine"]["pid"]))
        kexec = _run([luofs, "kexec", "--root", str(root)], cwd=tmp_path, env=env)
        assert "carried 1 session(s), 1 file(s)" in kexec.stdout, kexec.stdout
        out = _run([luofs, "run", "--root", str(root), "--", "./pkg", "retrieve"],
                   cwd=tmp_path, env=env).stdout
        assert out == f"{helpers}retrieved {PHRASE}\n"
        _assert_no_checkout(_instance_processes(status["machine"]["pid"]))
    finally:
        down = subprocess.run([luofs, "shutdown", "--root", str(root)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    assert not os.listdir(root)


def test_the_installed_pytest_fixture_boots_and_kexecs(installed, tmp_path):
    venv, _ = installed
    (tmp_path / "test_fixture.py").write_text(textwrap.dedent(FIXTURE_TEST))
    result = subprocess.run([str(venv / "bin" / "python"), "-m", "pytest", "-q",
                             "-p", "no:cacheprovider", "test_fixture.py"],
                            cwd=tmp_path, env=_clean_env(venv, tmp_path),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_the_installed_doctor_finds_the_packaged_pieces(installed, tmp_path):
    venv, _ = installed
    result = subprocess.run([str(venv / "bin" / "luofs"), "doctor", "--json"], cwd=tmp_path,
                            env={**_clean_env(venv, tmp_path), "LUOFS_VM_ACCEL": "tcg"},
                            capture_output=True, text=True, timeout=60)
    report = {check["name"]: check for check in json.loads(result.stdout)["checks"]}
    assert result.returncode == 0, result.stdout
    for name in ("libluofs-shim.so", "luofs-supervise", "luofs-userspace",
                 "libluofs-records.so", "luoctl", "luofs-spawn", "luofs-guest.elf"):
        assert report[name]["ok"] and report[name]["detail"] == (
            f"{venv}/lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages/"
            f"luofs/_native/{name} (package)"), report[name]


def test_building_without_gcc_stops_with_what_to_install(installed, tmp_path):
    _, dist = installed
    sdist, = glob.glob(str(dist / "luofs-*.tar.gz"))
    bin_dir = tmp_path / "bin"  # make and ld, but no gcc
    bin_dir.mkdir()
    for tool in ("make", "ld"):
        (bin_dir / tool).symlink_to(subprocess.run(["which", tool], capture_output=True,
                                                   text=True).stdout.strip())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LUOFS_", "PYTHON"))}
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w",
                             str(tmp_path / "out"), sdist], cwd=tmp_path,
                            env={**env, "PATH": str(bin_dir)}, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode != 0
    assert ("luofs: building its native pieces (the LD_PRELOAD shim, the seccomp supervisor, "
            "the userspace launcher) needs gcc, not found on PATH. On Debian or Ubuntu: "
            "apt-get install gcc libc6-dev (and libfuse3-dev pkg-config for pyfuse3); then "
            "install luofs again.") in result.stdout + result.stderr

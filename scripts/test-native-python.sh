#!/usr/bin/env bash
# An unmodified Python program that speaks to /dev/liveupdate with os.open and
# fcntl.ioctl (no luofs import) works under the shim.
set -euo pipefail
source "$(dirname "$0")/../native/tests/boot-lib.sh"
require_native libluofs-shim.so

boot_luofs

program=$(cat <<'PY'
import ctypes, errno, fcntl, os, struct, sys

CREATE, GET_NAME, PRESERVE_FD = 0xBA00, 0xBA43, 0xBA40
ANON_INODE_FS_MAGIC = 0x09041934
results = []

def check(ok, what):
    results.append(ok)
    print(("ok   " if ok else "FAIL ") + what, flush=True)

dev = os.open("/dev/liveupdate", os.O_RDWR | os.O_CLOEXEC)
arg = bytearray(struct.pack("<Ii64s", 72, -1, b"py-session"))
check(fcntl.ioctl(dev, CREATE, arg, True) == 0, "CREATE_SESSION with a mutable buffer")
size, session, name = struct.unpack("<Ii64s", arg)
check(session >= 0 and size == 72 and name.rstrip(b"\0") == b"py-session",
      f"the kernel wrote the session fd ({session}) into the buffer")

try:
    fcntl.ioctl(dev, CREATE, bytearray(struct.pack("<Ii64s", 72, -1, b"py-session")), True)
    check(False, "duplicate CREATE_SESSION raises")
except OSError as e:
    check(e.errno == errno.EEXIST, f"duplicate CREATE_SESSION raises EEXIST (got {e.errno})")

reply = fcntl.ioctl(session, GET_NAME, struct.pack("<II64s", 72, 0, b""))
check(struct.unpack("<II64s", reply)[2].rstrip(b"\0") == b"py-session",
      "GET_NAME with an immutable bytes argument returns the name")

memfd = os.memfd_create("py", os.MFD_CLOEXEC)
os.write(memfd, b"python data")
check(fcntl.ioctl(session, PRESERVE_FD, struct.pack("<IiQ", 16, memfd, 5)) is not None,
      "PRESERVE_FD a memfd under token 5")

link = os.readlink(f"/proc/self/fd/{session}")
check(link == "anon_inode:[luo_session] py-session", f"os.readlink of the session fd: {link!r}")

libc = ctypes.CDLL(None, use_errno=True)
buf = ctypes.create_string_buffer(256)
check(libc.fstatfs(session, buf) == 0 and
      struct.unpack_from("<q", buf.raw)[0] == ANON_INODE_FS_MAGIC,
      "fstatfs through ctypes reports ANON_INODE_FS_MAGIC")

view = os.path.join(os.environ["LUOFS_ROOT"], "sys/kernel/liveupdate/sessions/outgoing/py-session")
check(open(os.path.join(view, "files")).read().startswith("0x5 "),
      "the sessions view lists token 0x5")
os.close(session)
check(not os.path.exists(view), "closing the session fd ends the session")
sys.exit(0 if all(results) else 1)
PY
)

out=$(under_shim "$VENV_PY" -c "$program" 2>&1) && status=0 || status=$?
printf '%s\n' "$out" | sed 's/^/    /'
check "python3 os.open + fcntl.ioctl under the shim (exit $status)" test "$status" -eq 0

finish

#!/usr/bin/env bash
# The C conformance walkers under the shim: every errno path that needs no
# reboot (errno_walk, built plain and the way distributions build daemons),
# and session lifetime across dup/fork/SCM_RIGHTS/exec (fd_lifetime).
set -euo pipefail
source "$(dirname "$0")/../native/tests/boot-lib.sh"
require_native libluofs-shim.so errno_walk errno_walk64 fd_lifetime frozen_memfd

boot_luofs

run_c_test "errno_walk under the shim" "$NATIVE/errno_walk"
run_c_test "errno_walk64 (64-bit offsets, _FORTIFY_SOURCE) under the shim" "$NATIVE/errno_walk64"
run_c_test "fd_lifetime under the shim" "$NATIVE/fd_lifetime"
run_c_test "the frozen-memfd rule under the shim (ftruncate, fallocate: EPERM)" \
	"$NATIVE/frozen_memfd" "$root/dev/liveupdate"

# The 64-bit build must really take the other entry points, or it proves nothing.
imports=$(nm -D "$NATIVE/errno_walk64" 2>/dev/null || true)
for sym in open64 __open64_2 fstatfs64 statfs64 __readlink_chk readlinkat; do
	check "errno_walk64 calls $sym" grep -q " U $sym@" <<<"$imports"
done

# A walker that passes without the emulator would prove nothing either.
if [ ! -e /dev/liveupdate ]; then
	LUOFS_ROOT="$root" "$NATIVE/errno_walk" >/dev/null 2>&1 && status=0 || status=$?
	check "without the shim errno_walk fails (no /dev/liveupdate here)" test "$status" -ne 0
fi

finish

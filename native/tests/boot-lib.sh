# Sourced by scripts/test-native-*.sh (bash, set -euo pipefail).
#
# boot_luofs boots a private luofs instance in a fresh temp root and arranges
# for it to be shut down and removed however the script ends; under_shim runs
# a program the way `luofs run` will: LD_PRELOAD shim + LUOFS_ROOT. Checks print
# one line each; finish prints the tally and sets the exit status.

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
NATIVE="$REPO/native/build"
SHIM="$NATIVE/libluofs-shim.so"
VENV_PY="$REPO/.venv/bin/python"
if ! command -v luofs >/dev/null 2>&1 && [ -x "$REPO/.venv/bin/luofs" ]; then
	PATH="$REPO/.venv/bin:$PATH"
fi

passed=0
failed=0
root=""
background_pids=()

ok() { echo "ok   $*"; passed=$((passed + 1)); }
not_ok() { echo "FAIL $*"; failed=$((failed + 1)); }

# check DESCRIPTION COMMAND...: passes when COMMAND succeeds.
check() {
	local what=$1
	shift
	if "$@"; then ok "$what"; else not_ok "$what"; fi
}

finish() {
	echo "$passed passed, $failed failed"
	[ "$failed" -eq 0 ]
}

require_native() {
	local f
	for f in "$@"; do
		if [ ! -e "$NATIVE/$f" ]; then
			echo "FAIL native/build/$f is missing: run make -C native" >&2
			exit 1
		fi
	done
}

cleanup_luofs() {
	local status=$? pid
	for pid in "${background_pids[@]}"; do
		kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	if [ -n "$root" ]; then
		luofs shutdown --root "$root" >/dev/null 2>&1 || true
		# A daemon that died leaves a mount shutdown cannot remove.
		if grep -q " $root fuse" /proc/mounts 2>/dev/null; then
			umount -l "$root" 2>/dev/null || true
		fi
		rmdir "$root" 2>/dev/null || true
	fi
	if [ -n "$view_dir" ]; then # its mounts lived and died with each program's namespace
		rmdir "$view_dir" 2>/dev/null || true
	fi
	exit "$status"
}

boot_luofs() {
	root=$(mktemp -d "${TMPDIR:-/tmp}/luofs-native.XXXXXX")
	# Here, not in under_shim: that often runs in a $(…) subshell, whose variables die.
	if [ "${LUOFS_TEST_VIEW:-}" = bind ] && [ -z "$view_dir" ]; then
		view_dir=$(mktemp -d "${TMPDIR:-/tmp}/luofs-view.XXXXXX")
	fi
	trap cleanup_luofs EXIT
	trap 'exit 130' INT TERM
	luofs boot --root "$root" "$@" >/dev/null
}

# A hung daemon must fail the test, not hang `make test`: every program run
# under the shim gets a deadline (SIGKILL too, since a task waiting on a FUSE
# request ignores other signals).
#
# LUOFS_TEST_VIEW runs each such program where the mount has another mount id
# but is the same file system (scripts/run-tests.sh runs some scripts so):
#   unshare  in a mount namespace of its own (a container, PrivateTmp=, ...);
#   bind     also chrooted into a bind mount of / (a bind-mounted root).
# Each program gets a fresh namespace: a private copy of the mounts does not
# follow the next kernel's mount after a kexec, a new one does.
# shim_prefix: a command under_shim runs the program with, inside any view (for
# example unshare -p -f --mount-proc, a PID namespace of its own).
TEST_TIMEOUT=${LUOFS_TEST_TIMEOUT:-120}
view_dir=""
shim_prefix=()
under_shim() {
	local view=()
	case "${LUOFS_TEST_VIEW:-}" in
	"") ;;
	unshare) view=(unshare -m) ;;
	bind) view=(unshare -m sh -c 'mount --rbind / "$0" && exec chroot "$0" "$@"' "$view_dir") ;;
	*)
		echo "FAIL LUOFS_TEST_VIEW=$LUOFS_TEST_VIEW: expected unshare or bind" >&2
		return 2 ;;
	esac
	timeout -k 5 "$TEST_TIMEOUT" "${view[@]}" "${shim_prefix[@]}" \
		env LD_PRELOAD="$SHIM" LUOFS_ROOT="$root" "$@"
}

# status_field EXPR: a field of `luofs status --json`, EXPR on `s` (Python).
status_field() {
	luofs status --root "$root" --json | "$VENV_PY" -c \
		'import json, sys; s = json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"
}

# under_supervisor runs a program in the transparent mode: the seccomp supervisor
# serves every LUO call (--all); the shim is preloaded only to redirect the path
# "/dev/liveupdate", which the kernel's own mount namespace will do instead.
SUPERVISOR="$NATIVE/luofs-supervise"
under_supervisor() {
	timeout -k 5 "$TEST_TIMEOUT" "$SUPERVISOR" --root "$root" --all -- \
		env LD_PRELOAD="$SHIM" LUOFS_ROOT="$root" "$@"
}

# run_c_test NAME PROG ARGS...: a C test program under the shim (or whatever
# RUN_UNDER names); one line for the whole program (its own lines are shown),
# passing iff it exits 0.
RUN_UNDER=under_shim
run_c_test() {
	local what=$1
	shift
	local out status=0
	out=$("$RUN_UNDER" "$@" 2>&1) || status=$?
	printf '%s\n' "$out" | sed 's/^/    /'
	if [ "$status" -eq 0 ]; then
		ok "$what ($(printf '%s\n' "$out" | tail -n 1))"
	else
		not_ok "$what (exit $status: $(printf '%s\n' "$out" | tail -n 1))"
	fi
}

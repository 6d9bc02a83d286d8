#!/usr/bin/env bash
# The transparent mode (issue 14): the seccomp supervisor serves programs no
# LD_PRELOAD shim reaches. The C conformance walkers run through it; static glibc
# and musl programs, a Go program and a Rust program with raw syscalls each do a
# two-stage live update through `luofs run`; a raw reboot(LINUX_REBOOT_CMD_KEXEC)
# from a static program (in its own PID namespace) performs the update and never
# returns to it.
set -euo pipefail
source "$(dirname "$0")/../native/tests/boot-lib.sh"
require_native libluofs-shim.so luofs-supervise errno_walk errno_walk64 fd_lifetime reboot_walk \
	static_update_gcc rfc_v2_cycle

boot_luofs
device="$root/dev/liveupdate" # until `luofs run` joins the kernel's mount namespace

RUN_UNDER=under_supervisor
run_c_test "errno_walk in the transparent mode" "$NATIVE/errno_walk"
run_c_test "errno_walk64 in the transparent mode" "$NATIVE/errno_walk64"
run_c_test "fd_lifetime in the transparent mode" "$NATIVE/fd_lifetime"
# What `luofs run` does with a dynamic program: the supervisor, and the shim serving
# its libc ioctl() calls (reboot, readlink and statfs go to the supervisor).
under_luofs_run() {
	timeout -k 5 "$TEST_TIMEOUT" luofs run --root "$root" -- "$@"
}
RUN_UNDER=under_luofs_run
run_c_test "errno_walk through luofs run" "$NATIVE/errno_walk"
run_c_test "errno_walk64 through luofs run" "$NATIVE/errno_walk64"
run_c_test "fd_lifetime through luofs run" "$NATIVE/fd_lifetime"
# The shim told to leave its calls to a supervisor, with none there: the walker
# fails, so the runs above were served by the supervisor, not by the shim.
LUOFS_SUPERVISED=all under_shim "$NATIVE/errno_walk" >/dev/null 2>&1 && status=0 || status=$?
check "with no supervisor, the stepped-aside shim alone fails errno_walk" test "$status" -ne 0

out=$("$SUPERVISOR" --root "$root" 2>&1) && status=0 || status=$?
check "no program: usage, exit 2 (exit $status)" test "$status" -eq 2 -a \
	"$out" = "usage: luofs-supervise [--root DIR] [--all] [--shim LIB] [--pid-ns] -- PROG ARGS..."
out=$("$SUPERVISOR" --bogus -- true 2>&1) && status=0 || status=$?
check "an unknown option: usage, exit 2 (exit $status)" test "$status" -eq 2

kernel_number() {
	luofs status --root "$root" --json | "$VENV_PY" -c 'import json, sys; print(json.load(sys.stdin)["kernel"]["liveupdate_number"])'
}

# two_stage LABEL PROGRAM TOOLCHAIN: stage 1 leaves a holder (C) or holds the session
# itself (Go, Rust: it prints "ready" and waits), `luofs kexec`, stage 2 in the next
# kernel. Skipped only when the toolchain is not installed (`make deps` installs it).
two_stage() {
	local label=$1 program=$NATIVE/$2 name="two-stage-$2" out status=0 pid holder
	if ! command -v "$3" >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/$3" ]; then
		echo "skip $label: $3 is not installed (make deps installs musl-tools and golang-go)"
		return
	fi
	if [ ! -x "$program" ]; then
		not_ok "$label: $program was not built although $3 is installed (make native)"
		return
	fi
	out="$root.$2.stage1"
	timeout -k 5 "$TEST_TIMEOUT" luofs run --root "$root" -- "$program" "$device" stage1 "$name" \
		>"$out" 2>&1 &
	pid=$!
	for _ in $(seq 200); do
		grep -qE '^(ready|holder|[0-9]+ failed)' "$out" && break
		sleep 0.05
	done
	sed 's/^/    /' "$out"
	check "$label: stage 1 preserved a memfd" grep -q '^0 failed' "$out"
	holder=$(awk '/^holder/ { print $2 }' "$out")
	luofs kexec --root "$root" >/dev/null
	kill "$pid" 2>/dev/null || true # a holding stage 1 ends with the old kernel
	wait "$pid" 2>/dev/null || true
	[ -n "$holder" ] && kill "$holder" 2>/dev/null || true
	rm -f "$out"
	out=$(timeout -k 5 "$TEST_TIMEOUT" luofs run --root "$root" -- "$program" "$device" stage2 \
		"$name" 2>&1) || status=$?
	printf '%s\n' "$out" | sed 's/^/    /'
	check "$label: stage 2 retrieved and finished in the next kernel (exit $status)" \
		test "$status" -eq 0
}

out=$(timeout -k 5 "$TEST_TIMEOUT" luofs run --root "$root" -- "$NATIVE/static_update_gcc" \
	"$device" signals sig 2>&1) && status=0 || status=$?
printf '%s\n' "$out" | sed 's/^/    /'
check "signals never interrupt a request the supervisor took (exit $status)" test "$status" -eq 0

two_stage "gcc -static" static_update_gcc gcc
two_stage "musl-gcc -static" static_update_musl musl-gcc
two_stage "Go (raw syscalls)" go_update go
two_stage "Rust (raw ioctl syscalls)" rust_update rustc

# reboot(KEXEC) as a raw syscall from a static program, in a PID namespace of its
# own (if anything let the call through, it could not reach the host), with the
# supervisor outside it.
before=$(kernel_number)
out=$(timeout -k 5 "$TEST_TIMEOUT" luofs run --root "$root" -- \
	unshare -p -f "$NATIVE/static_update_gcc" "$device" reboot raw-reboot 2>&1) || true
printf '%s\n' "$out" | sed 's/^/    /'
check "the static program reached its reboot(LINUX_REBOOT_CMD_KEXEC)" grep -q '^rebooting' <<<"$out"
check "reboot(KEXEC) never returned to it" test -z "$(grep 'reboot returned' <<<"$out")"
check "reboot(KEXEC) performed the live update ($before -> $(kernel_number))" \
	test "$(kernel_number)" -eq $((before + 1))
out=$(timeout -k 5 "$TEST_TIMEOUT" luofs run --root "$root" -- "$NATIVE/static_update_gcc" \
	"$device" stage2 raw-reboot 2>&1) && status=0 || status=$?
check "the session open at the reboot is retrieved in the next kernel (exit $status)" \
	test "$status" -eq 0
# `luofs run` execs the supervisor: its exit status is the run's.
status=0
timeout -k 5 "$TEST_TIMEOUT" "$SUPERVISOR" --root "$root" --pid-ns -- "$NATIVE/static_update_gcc" \
	"$device" reboot direct-reboot >/dev/null 2>&1 || status=$?
check "the supervisor exits 0 when its program ended in a live update (exit $status)" \
	test "$status" -eq 0

out=$(timeout -k 5 "$TEST_TIMEOUT" "$SUPERVISOR" --root "$root" --pid-ns -- \
	"$NATIVE/static_update_gcc" "$device" refused - 2>&1) && status=0 || status=$?
printf '%s\n' "$out" | sed 's/^/    /'
check "reboot calls other than a kexec are refused, kexec_file_load is checked (exit $status)" \
	test "$status" -eq 0
out=$(timeout -k 5 "$TEST_TIMEOUT" "$SUPERVISOR" --root "$root" --pid-ns -- \
	"$NATIVE/static_update_gcc" "$device" load "liveupdate=on kho=on luo_stage=2" 2>&1) &&
	status=0 || status=$?
printf '%s\n' "$out" | sed 's/^/    /'
check "a static program's kexec_file_load is served (exit $status)" test "$status" -eq 0
timeout -k 5 "$TEST_TIMEOUT" luofs kexec --root "$root" >/dev/null 2>&1
check "...and its command line is the next kernel's proc/cmdline ($(cat "$root/proc/cmdline"))" \
	grep -qx "liveupdate=on kho=on luo_stage=2" "$root/proc/cmdline"
if [ -x "$NATIVE/frozen_memfd_static" ]; then
	out=$(timeout -k 5 "$TEST_TIMEOUT" "$SUPERVISOR" --root "$root" -- \
		"$NATIVE/frozen_memfd_static" "$device" raw 2>&1) && status=0 || status=$?
	printf '%s\n' "$out" | sed 's/^/    /'
	check "the frozen-memfd rule for a static program's raw ftruncate/fallocate (exit $status)" \
		test "$status" -eq 0
fi
fake=$(mktemp -d)
printf '#!/bin/sh\nexit 16\n' >"$fake/busy"
chmod +x "$fake/busy"
before=$(kernel_number)
out=$(LUOFS_BIN="$fake/busy" timeout -k 5 "$TEST_TIMEOUT" "$SUPERVISOR" --root "$root" --pid-ns \
	-- "$NATIVE/static_update_gcc" "$device" reboot busy-reboot 2>&1) && status=0 || status=$?
rm -rf "$fake"
check "a kexec that fails returns to its caller with its errno ($(grep 'reboot returned' <<<"$out"))" \
	grep -q '^reboot returned: Device or resource busy' <<<"$out"
check "...and leaves the kernel as it was" test "$(kernel_number)" -eq "$before"

# The C walker of the reboot paths, its reboot() served by the supervisor, as
# PID 1 of a PID namespace of its own. Killed in reboot(), `prepare` prints no
# summary; the supervisor exits 0 for a program a live update ended.
in_pid_ns() {
	timeout -k 5 "$TEST_TIMEOUT" "$SUPERVISOR" --root "$root" --all --pid-ns -- \
		env LD_PRELOAD="$SHIM" LUOFS_ROOT="$root" "$@"
}
before=$(kernel_number)
RUN_UNDER=in_pid_ns
run_c_test "reboot_walk prepare in the transparent mode (ends in reboot(KEXEC))" \
	"$NATIVE/reboot_walk" prepare sv
check "...which performed the live update and never returned" \
	test "$(kernel_number)" -eq $((before + 1))
RUN_UNDER=under_supervisor
run_c_test "reboot_walk check after it" "$NATIVE/reboot_walk" check sv

# The RFC v2 ABI: its ioctl numbers carry their size, FD_PRESERVE carries the fd at
# offset 0 and FD_RESTORE returns one; the cycle split where the kexec ends it.
luofs shutdown --root "$root" >/dev/null
rmdir "$root"
boot_luofs --abi rfc-v2
RUN_UNDER=in_pid_ns
run_c_test "rfc_v2_cycle before, in the transparent mode (ends in reboot(KEXEC))" \
	"$NATIVE/rfc_v2_cycle" before
RUN_UNDER=under_supervisor
run_c_test "rfc_v2_cycle after it, in the next kernel" "$NATIVE/rfc_v2_cycle" after

finish

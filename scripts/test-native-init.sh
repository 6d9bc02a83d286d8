#!/usr/bin/env bash
# A whole two-stage live update driven by PID 1 alone (issue 13): `luofs boot
# --init` runs init_two_stage as PID 1 of kernel #0's userspace; it preserves a
# memfd, loads the next kernel with luo_stage=2 and calls reboot(KEXEC); kernel
# #1's userspace runs it again, it reads the stage from /proc/cmdline, retrieves,
# verifies and exits. Nothing drives it from outside; no process of the old
# userspace may be left.
set -euo pipefail
source "$(dirname "$0")/../native/tests/boot-lib.sh"
require_native libluofs-shim.so luofs-userspace init_two_stage

state=$(mktemp "${TMPDIR:-/tmp}/luofs-init.XXXXXX")
boot_luofs --init "$NATIVE/init_two_stage" -- "$state"
log=$(status_field 's["machine"]["userspace"]["log"]')
for _ in $(seq 300); do # the whole scenario takes about a second
	done_=$(status_field '(s["machine"]["userspace"]["kernel"], s["machine"]["userspace"]["running"])')
	[ "$done_" = "(1, False)" ] && break
	sleep 0.1
done
sed 's/^/    /' "$log"
check "kernel #1 serves" test "$(status_field 's["kernel"]["liveupdate_number"]')" = 1
check "its proc/cmdline carries luo_stage=2" grep -q ' luo_stage=2$' "$root/proc/cmdline"
daemon=$(sed -n 's/^stage 1: daemon //p' "$state")
check "stage 1 ran as PID 1 of kernel #0's userspace and left a daemon ($daemon)" test -n "$daemon"
check "stage 2 retrieved and verified every byte in kernel #1" grep -qx 'stage 2: ok' "$state"
ended=$(status_field 's["machine"]["userspace"]["ended"]')
check "luofs status: kernel #1's init exited with status 0 ($ended)" \
	test "$ended" = "init exited with status 0"
status_text=$(luofs status --root "$root")
check "luofs status shows it in words" grep -q "^userspace: .*kernel #1, init .*init_two_stage.*ended: init exited with status 0" <<<"$status_text"
left=""
for p in /proc/[0-9]*; do
	comm=$(cat "$p/comm" 2>/dev/null) || continue
	if [ "$comm" = "$daemon" ] || [ "$comm" = init_two_stage ]; then
		left="$left ${p#/proc/}"
	fi
done
check "no process of either userspace is left${left:+: $left}" test -z "$left"
status=0
luofs run --root "$root" -- true 2>/dev/null || status=$?
check "luofs run refuses once init has ended (exit $status)" test "$status" -eq 1
rm -f "$state"
finish

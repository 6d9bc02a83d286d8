#!/usr/bin/env bash
# A VMM's live update in two stages (issue 4): stage 1 preserves guest RAM and its
# stage record, a child holds the session while `luofs kexec` runs; stage 2, a new
# process in the new kernel, checks every byte and finishes.
set -euo pipefail
source "$(dirname "$0")/../native/tests/boot-lib.sh"
require_native libluofs-shim.so vmm_two_stage

boot_luofs
out=$(under_shim "$NATIVE/vmm_two_stage" stage1) && status=0 || status=$?
printf '%s\n' "$out" | sed 's/^/    /'
check "stage 1 preserved guest RAM and the stage record" test "$status" -eq 0
holder=$(printf '%s\n' "$out" | awk '/^holder/ { print $2 }')
background_pids+=("$holder")
check "a child holds the session" test -d "$root/sys/kernel/liveupdate/sessions/outgoing/vmm"
luofs kexec --root "$root" >/dev/null
kill "$holder" 2>/dev/null || true  # the old world ends with the old kernel
run_c_test "stage 2 in the new kernel" "$NATIVE/vmm_two_stage" stage2
check "the kernel is back to normal after FINISH and close" \
	test "$(cat "$root/sys/kernel/liveupdate/state")" = normal
finish

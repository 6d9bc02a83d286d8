#!/usr/bin/env bash
# An RFC v2 cycle through a small C program under the shim: preserve, events,
# reboot(LINUX_REBOOT_CMD_KEXEC), restore, finish (spec/rfc.md §3).
set -euo pipefail
source "$(dirname "$0")/../native/tests/boot-lib.sh"
require_native libluofs-shim.so rfc_v2_cycle

boot_luofs --abi rfc-v2
# Programs that call reboot() run in a PID namespace of their own: should the shim
# ever let the call through, the kernel ends that namespace, never the host.
shim_prefix=(unshare -p -f --mount-proc)
run_c_test "rfc_v2_cycle" "$NATIVE/rfc_v2_cycle"
check "the kernel counts one live update" \
	bash -c "luofs status --root '$root' --json | grep -q '\"liveupdate_number\": 1'"
finish

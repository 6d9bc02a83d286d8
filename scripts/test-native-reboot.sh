#!/usr/bin/env bash
# reboot(2) and kexec_file_load(2) as on a machine (issue 13): no reboot command
# reaches the host, a kexec never returns, a refused one returns the kernel's
# errno, and a loaded command line becomes the next kernel's proc/cmdline. Every
# program runs in a PID namespace of its own: should the shim let a reboot
# through, the kernel ends that namespace instead of rebooting the host.
set -euo pipefail
source "$(dirname "$0")/../native/tests/boot-lib.sh"
require_native libluofs-shim.so reboot_cmds

boot_luofs
shim_prefix=(unshare -p -f --mount-proc)
first="liveupdate=on kho=on"
next="$first luo_stage=2"

run_c_test "reboot commands and the loads' errno paths" "$NATIVE/reboot_cmds" errnos
out=$(timeout -k 5 "$TEST_TIMEOUT" unshare -p -f --mount-proc env LD_PRELOAD="$SHIM" \
	"$NATIVE/reboot_cmds" no-root 2>&1) && status=0 || status=$?
check "without LUOFS_ROOT: EPERM for every reboot and load ($(tail -n 1 <<<"$out"))" \
	test "$status" -eq 0
check "nothing is left loaded" test "$(status_field 's["machine"]["next_kernel"]["loaded"]')" = False
run_c_test "kexec_file_load with '$next'" "$NATIVE/reboot_cmds" load "$next"
check "luofs status shows the next kernel loaded with it" \
	test "$(status_field 's["machine"]["next_kernel"]["cmdline"]')" = "$next"
check "proc/cmdline is the running kernel's until the kexec" \
	test "$(cat "$root/proc/cmdline")" = "$first"
run_c_test "reboot(KEXEC) performs the update and never returns" "$NATIVE/reboot_cmds" kexec
check "kernel #1 serves" test "$(status_field 's["kernel"]["liveupdate_number"]')" = 1
check "its proc/cmdline is the loaded one" test "$(cat "$root/proc/cmdline")" = "$next"
check "the kexec consumed the loaded image" \
	test "$(status_field 's["machine"]["next_kernel"]["loaded"]')" = False

luofs kexec --root "$root" --cmdline "a=1 b=2" >/dev/null
check "luofs kexec --cmdline sets the next kernel's proc/cmdline" \
	test "$(cat "$root/proc/cmdline")" = "a=1 b=2"
luofs kexec --root "$root" >/dev/null
check "with nothing loaded the next kernel keeps the running one's" \
	test "$(cat "$root/proc/cmdline")" = "a=1 b=2"
luofs kexec --root "$root" --load >/dev/null
luofs kexec --root "$root" --unload >/dev/null
check "--unload forgets what --load loaded" \
	test "$(status_field 's["machine"]["next_kernel"]["loaded"]')" = False
status=0
luofs kexec --root "$root" --load --unload 2>/dev/null || status=$?
check "--load with --unload is a usage error (exit $status)" test "$status" -eq 1
status=0
luofs kexec --root "$root" --cmdline "$(head -c 3000 /dev/zero | tr '\0' x)" 2>/dev/null || status=$?
check "a command line over COMMAND_LINE_SIZE: EINVAL (exit $status), nothing changed" \
	test "$status" -eq 22 -a "$(cat "$root/proc/cmdline")" = "a=1 b=2"

# A freeze that refuses: a fresh instance whose memfd handler fails to freeze.
luofs shutdown --root "$root" >/dev/null
rmdir "$root"
boot_luofs --fault memfd.freeze:EBUSY
shim_prefix=(unshare -p -f --mount-proc)
run_c_test "reboot(KEXEC) refused by the freeze: -1/EBUSY, the old kernel serves" \
	"$NATIVE/reboot_cmds" refused
check "kernel #0 still serves" test "$(status_field 's["kernel"]["liveupdate_number"]')" = 0
finish

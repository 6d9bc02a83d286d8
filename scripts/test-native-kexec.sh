#!/usr/bin/env bash
# Live updates driven from C: reboot(LINUX_REBOOT_CMD_KEXEC) under the shim runs
# `luofs kexec`; sessions held open across it are retrieved in the next kernel.
set -euo pipefail
source "$(dirname "$0")/../native/tests/boot-lib.sh"
require_native libluofs-shim.so luoctl reboot_walk

boot_luofs
# Programs that call reboot() run in a PID namespace of their own: should the shim
# ever let the call through, the kernel ends that namespace, never the host.
shim_prefix=(unshare -p -f --mount-proc)

run_c_test "reboot_walk prepare (ends in reboot(KEXEC))" "$NATIVE/reboot_walk" prepare
run_c_test "reboot_walk check (after the update)" "$NATIVE/reboot_walk" check

# Arbitrary bytes through a kexec with luoctl, in one process each side.
blob="$root.blob"
head -c 200000 /dev/urandom >"$blob"
out=$(under_shim "$NATIVE/luoctl" create blob-vm preserve 0x10 - kexec <"$blob" 2>/dev/null) \
	&& status=0 || status=$?
check "luoctl create/preserve/kexec in one process (exit $status)" test "$status" -eq 0
check "reboot() writes nothing to the caller's stdout" test -z "$out"
under_shim "$NATIVE/luoctl" retrieve blob-vm get 0x10 finish >"$blob.out"
check "luoctl retrieve/get returns the same 200000 bytes" cmp -s "$blob" "$blob.out"
check "closing the retrieved session ends it" test ! -e "$root/sys/kernel/liveupdate/sessions/incoming/blob-vm"
rm -f "$blob" "$blob.out"

# How reboot() reports a kexec that fails, with stand-ins for `luofs`.
fake=$(mktemp -d)
printf '#!/bin/sh\necho "$@" >"%s/args"\nexit 16\n' "$fake" >"$fake/busy"
printf '#!/bin/sh\nexit 1\n' >"$fake/broken"
chmod +x "$fake/busy" "$fake/broken"
kexec_error() { # LUOFS_BIN → the message luoctl prints for reboot()
	LUOFS_BIN=$1 under_shim "$NATIVE/luoctl" create "fake-$RANDOM" kexec 2>&1 >/dev/null || true
}
msg=$(kexec_error "$fake/busy")
check "luofs kexec exiting 16 -> reboot() fails EBUSY ($msg)" \
	test "$msg" = "luoctl: reboot (LINUX_REBOOT_CMD_KEXEC): Device or resource busy"
check "...after running 'luofs kexec --root ROOT'" test "$(cat "$fake/args")" = "kexec --root $root"
msg=$(kexec_error "$fake/broken")
check "luofs kexec exiting 1 -> EIO ($msg)" \
	test "$msg" = "luoctl: reboot (LINUX_REBOOT_CMD_KEXEC): Input/output error"
msg=$(kexec_error "$fake/missing")
check "no luofs to run -> ENOENT ($msg)" \
	test "$msg" = "luoctl: reboot (LINUX_REBOOT_CMD_KEXEC): No such file or directory"
rm -rf "$fake"
check "a failed kexec leaves the kernel serving" test "$(cat "$root/sys/kernel/liveupdate/state")" = normal

finish

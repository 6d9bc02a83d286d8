#!/usr/bin/env bash
# A whole RFC v1 cycle with echo and cat only (spec/rfc.md §2): prepare, cancel,
# prepare again, live update, updated, finish, normal — and the errnos of bad writes.
set -euo pipefail
source "$(dirname "$0")/../native/tests/boot-lib.sh"

boot_luofs --abi rfc-v1
lu="$root/sys/kernel/liveupdate"
state() { cat "$lu/state"; }
# echo's write error is the errno the kernel returned; the shell prints it.
fails_with() { local msg; msg=$( (echo "$2" > "$lu/$1") 2>&1) && return 1; [[ $msg == *"$3"* ]]; }

check "state is normal" test "$(state)" = normal
check "there is no /dev/liveupdate in RFC v1" test ! -e "$root/dev/liveupdate"
echo 1 > "$lu/prepare"
check "echo 1 > prepare: prepared" test "$(state)" = prepared
echo 0 > "$lu/prepare"
check "echo 0 > prepare cancels: normal" test "$(state)" = normal
check "echo 2 > prepare: Invalid argument" fails_with prepare 2 "Invalid argument"
check "echo 1 > finish in normal: Invalid argument" fails_with finish 1 "Invalid argument"
check "cat prepare (write-only): Permission denied" bash -c "! cat '$lu/prepare' 2>/dev/null"
check "state still normal after bad writes" test "$(state)" = normal
echo 0x1 > "$lu/prepare"
check "echo 0x1 > prepare (any base): prepared" test "$(state)" = prepared
check "the mm subsystem prepared its pages" grep -q '^outgoing=0x[1-9a-f]' "$lu/subsystems/mm"
luofs kexec --root "$root" >/dev/null
check "after luofs kexec: updated" test "$(state)" = updated
check "the mm subsystem's pages arrived intact" grep -q '^received=intact' "$lu/subsystems/mm"
echo 1 > "$lu/finish"
check "echo 1 > finish: normal" test "$(state)" = normal
finish

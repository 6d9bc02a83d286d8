#!/usr/bin/env bash
# A booted luofs instance seen from the shell and from luoctl (the C client
# under the shim): sysfs state, proc/cmdline, and the sessions view following a
# session's life.
set -euo pipefail
source "$(dirname "$0")/../native/tests/boot-lib.sh"
require_native libluofs-shim.so luoctl

boot_luofs

check "state reads 'normal'" test "$(cat "$root/sys/kernel/liveupdate/state")" = normal
cmdline=$(cat "$root/proc/cmdline") && status=0 || status=$?
check "proc/cmdline is readable ('$cmdline')" test "$status" -eq 0

outgoing="$root/sys/kernel/liveupdate/sessions/outgoing"
fifo="$root.held"
mkfifo "$fifo"
# env, not the under_shim function: $! must be luoctl itself, not a subshell.
printf 'payload' | env LD_PRELOAD="$SHIM" LUOFS_ROOT="$root" \
	"$NATIVE/luoctl" create shell-vm preserve 7 - hold >"$fifo" &
holder=$!
background_pids+=("$holder")
read -r -t "$TEST_TIMEOUT" held <"$fifo" || held="(nothing)"
rm -f "$fifo"
check "luoctl holds the session ('$held')" test "$held" = "held shell-vm"
check "the sessions view lists shell-vm" test -d "$outgoing/shell-vm"
check "its name file reads shell-vm" test "$(cat "$outgoing/shell-vm/name")" = shell-vm
check "its files list token 0x7" grep -q '^0x7 ' "$outgoing/shell-vm/files"
check "a second luoctl cannot create the same name (exit 1)" \
	bash -c '! under_shim() { LD_PRELOAD="$1" LUOFS_ROOT="$2" "${@:3}"; }; under_shim "$@" 2>/dev/null; test $? -eq 1' \
	_ "$SHIM" "$root" "$NATIVE/luoctl" create shell-vm
kill -TERM "$holder"
wait "$holder" && status=0 || status=$?
check "luoctl hold ends cleanly on SIGTERM (status $status)" test "$status" -eq 0
check "after luoctl exits the session is gone from the view" test ! -e "$outgoing/shell-vm"

out=$(under_shim "$NATIVE/luoctl" create shell-a name create shell-b name)
check "luoctl runs several steps in one process" test "$out" = $'shell-a\nshell-b'

err=$(under_shim "$NATIVE/luoctl" create shell-c preserve 1 /dev/null 2>&1) && status=0 || status=$?
check "a failing ioctl exits 1" test "$status" -eq 1
check "...naming the ioctl and the error ($err)" \
	test "$err" = "luoctl: LIVEUPDATE_SESSION_PRESERVE_FD (token 1): No such file or directory"
under_shim "$NATIVE/luoctl" create shell-d bogus 2>/dev/null && status=0 || status=$?
check "a usage error exits 2" test "$status" -eq 2
check "...and runs no step (shell-d was never created)" \
	under_shim "$NATIVE/luoctl" create shell-d
check "luoctl --help documents hold" bash -c '"$1" --help | grep -q "^  hold "' _ "$NATIVE/luoctl"

finish

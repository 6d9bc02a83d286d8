#!/usr/bin/env bash
# Runs every scripts/test-*.sh (each boots and shuts down its own luofs
# instance), shows the failing checks of those that fail (run a script by hand
# for its whole output), and ends with the line "N passed, N failed" counting
# scripts. Exit status 1 if any failed.
#
# The scripts that run C and Python programs under the shim run twice more, with
# those programs in a mount namespace of their own and chrooted into a bind
# mount of / (LUOFS_TEST_VIEW, native/tests/boot-lib.sh): a caller is known by
# the file system its fd is on, never by which copy of the mount it came through.
set -uo pipefail
cd "$(dirname "$0")/.."

VIEW_SCRIPTS="scripts/test-native-errno.sh scripts/test-native-kexec.sh
	scripts/test-native-python.sh scripts/test-native-vmm.sh"
runs=()
for test in scripts/test-*.sh; do
	[ -e "$test" ] && runs+=("$test")
done
if [ "$(id -u)" = 0 ] && command -v unshare >/dev/null; then
	for view in unshare bind; do
		for test in $VIEW_SCRIPTS; do
			runs+=("$view:$test")
		done
	done
else
	echo "skip the unshare/bind views: they need root and unshare(1)"
fi

passed=0
failed=0
for run in "${runs[@]}"; do
	test=${run#*:}
	view=${run%%:*}
	[ "$view" = "$run" ] && view=""
	start=$(date +%s.%N)
	out=$(LUOFS_TEST_VIEW=$view bash "$test" 2>&1)
	status=$?
	took=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
	summary=$(printf '%s\n' "$out" | tail -n 1)
	if [ "$status" -eq 0 ]; then
		echo "ok   ${view:+[$view] }$test (${took}s: $summary)"
		passed=$((passed + 1))
	else
		printf '%s\n' "$out" | grep -E 'FAIL|rror' | sed 's/^/    /'
		echo "FAIL ${view:+[$view] }$test (exit $status, ${took}s: $summary)"
		failed=$((failed + 1))
	fi
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]

#!/usr/bin/env bash
# Runs every scripts/test-*.sh (each boots and shuts down its own luofs
# instance), shows the failing checks of those that fail (run a script by hand
# for its whole output), and ends with the line "N passed, N failed" counting
# scripts. Exit status 1 if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."

passed=0
failed=0
for test in scripts/test-*.sh; do
	[ -e "$test" ] || continue
	start=$(date +%s.%N)
	out=$(bash "$test" 2>&1)
	status=$?
	took=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
	summary=$(printf '%s\n' "$out" | tail -n 1)
	if [ "$status" -eq 0 ]; then
		echo "ok   $test (${took}s: $summary)"
		passed=$((passed + 1))
	else
		printf '%s\n' "$out" | grep -E 'FAIL|rror' | sed 's/^/    /'
		echo "FAIL $test (exit $status, ${took}s: $summary)"
		failed=$((failed + 1))
	fi
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]

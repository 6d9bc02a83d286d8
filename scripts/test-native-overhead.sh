#!/usr/bin/env bash
# The shim must cost nothing measurable for ioctls that are not LUO's: a pipe
# FIONREAD through the preloaded ioctl() stays within 5% of libc's own. Also
# reports what a LUO ioctl costs (one FUSE round trip), for information.
set -euo pipefail
source "$(dirname "$0")/../native/tests/boot-lib.sh"
require_native libluofs-shim.so ioctl_bench

boot_luofs

# The bench alternates rounds of both paths in one process and keeps the best
# of each; three tries absorb a noisy neighbour.
best=""
for try in 1 2 3; do
	line=$(under_shim "$NATIVE/ioctl_bench" pipe)
	ratio=${line##*ratio }
	echo "    try $try: $line"
	if awk -v r="$ratio" 'BEGIN { exit !(r <= 1.05) }'; then
		best=$ratio
		break
	fi
done
check "the bench's ioctl() is the shim's" grep -q "interposed yes" <<<"$line"
check "pipe ioctl through the shim within 5% of libc (ratio ${best:-$ratio})" test -n "$best"

us=$(under_shim "$NATIVE/ioctl_bench" session) && status=0 || status=$?
check "GET_NAME through the daemon works in a loop (${us:-?} us per call)" test "$status" -eq 0

finish

#!/usr/bin/env bash
# `make demo`: a live update with luofs, start to finish, leaving nothing behind.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(mktemp -d /tmp/luofs-demo.XXXXXX)"
fifo="$(mktemp -u /tmp/luofs-demo-fifo.XXXXXX)"
vmm_pid=""
cleanup() {
  [ -n "$vmm_pid" ] && kill "$vmm_pid" 2>/dev/null && wait "$vmm_pid" 2>/dev/null || true
  luofs shutdown --root "$root" >/dev/null 2>&1 || true
  rm -f "$fifo"; rmdir "$root" 2>/dev/null || true
}
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }

step "Boot the emulated machine and kernel #0 at $root"
show luofs boot --root "$root" --debugfs --devices "bridge0;dma0@bridge0:rate=20000;dma1@bridge0:rate=20000"
show cat "$root/sys/kernel/liveupdate/state"
show cat "$root/proc/cmdline"

step "A VMM preserves its guest RAM in a LUO session and keeps the session fd open"
mkfifo "$fifo"
# stdin is a pipe we hold: the VMM exits when we close it.
exec 3> >(python "$here/demo_vmm.py" stage1 --root "$root" --ready "$fifo")
vmm_pid=$!
read -r _ < "$fifo"

step "Two DMA engines write records into rings through an IOMMU; preserve dma0 only"
dma0="$root/sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0"
show ls "$root/sys/bus/pci/devices"
show sh -c "echo 1 > $dma0/liveupdate/requested"
show cat "$dma0/liveupdate/requested"

step "The sessions view (an emulator extension) and KHO's debugfs"
show ls "$root/sys/kernel/liveupdate/sessions/outgoing"
show cat "$root/sys/kernel/liveupdate/sessions/outgoing/vm-42/files"
show ls "$root/sys/kernel/debug/kho/out"
show luofs status --root "$root"

step "Live update: freeze, hand over through KHO, kernel #1 takes over"
show luofs kexec --root "$root"
sleep 0.3  # let the new drivers drain what the engines wrote in the blackout
echo "# dma0 (preserved): never reset, every record received; dma1: reset, its records restart"
show luofs status --root "$root"
show cat "$dma0/liveupdate/reclaimed"
exec 3>&-   # the old VMM process ends, as a real reboot would end it
wait "$vmm_pid" 2>/dev/null || true; vmm_pid=""
show cat "$root/sys/kernel/liveupdate/state"
show sh -c "dtc -I dtb -O dts $root/sys/kernel/debug/kho/in/sub_fdts/LUO 2>/dev/null | head -12"

step "The new VMM retrieves guest RAM and checks every page"
show python "$here/demo_vmm.py" stage2 --root "$root"
show luofs status --root "$root"

step "A real VM lives through a live update: QEMU, its guest RAM a preserved memfd"
# The VMM takes part in every update: it stops the guest and saves only vCPU and device
# state (RAM stays in the memfd); the next kernel's VMM loads it over the same RAM.
show luofs vm start --root "$root" --ram 256M
serial="$(luofs vm status --root "$root" --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["serial_log"])')"
for _ in $(seq 200); do grep -q "tick=20 " "$serial" && break; sleep 0.1; done
show tail -n 2 "$serial"
show luofs kexec --root "$root"
show luofs vm status --root "$root"
sleep 0.5
echo "# the guest's counter goes on, with the seed it drew at boot: it never restarted"
show tail -n 3 "$serial"
show luofs vm check --root "$root"

linux="$(dirname "$here")/native/build/linux-guest"  # (make linux-guest; if it could not: no scene)
if [ -f "$linux/vmlinuz" ] && [ -f "$linux/initramfs.gz" ]; then
  step "A Linux guest lives through the next update too: Debian's cloud kernel, a busybox /init"
  # Every ~100 ms /init prints a tick, its uptime and an md5 check of a pattern it wrote
  # over 8 MiB of its RAM; a restarted guest would print its boot line again.
  show luofs vm start --root "$root" --name linux --ram 128M --kernel "$linux/vmlinuz" \
    --initrd "$linux/initramfs.gz" --append "console=ttyS0 quiet loglevel=1 acpi=off panic=-1" \
    -- -no-reboot
  serial="$(luofs vm status --root "$root" --name linux --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["serial_log"])')"
  for _ in $(seq 300); do grep -q "tick=5 " "$serial" && break; sleep 0.1; done
  show tail -n 2 "$serial"
  show luofs kexec --root "$root"
  show luofs vm status --root "$root" --name linux
  sleep 1
  echo "# ticks and uptime go on, the pattern is intact, and the guest booted once"
  show tail -n 4 "$serial"
  show grep -c "luofs-linux boot" "$serial"
fi

step "Shut down: no mount and no process left behind"
show luofs shutdown --root "$root"
if grep -q " $root " /proc/mounts; then echo "a mount was left behind"; exit 1; fi
echo "demo done"

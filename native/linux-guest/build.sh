#!/bin/bash
# Build luofs vm's Linux test guest in DIR: DIR/vmlinuz (Debian's cloud kernel) and
# DIR/initramfs.gz (busybox-static and ./init, cpio newc, gzip).
#
# Both come as .debs fetched with `apt-get download` into DIR/debs and unpacked with
# dpkg-deb, never installed: a kernel package's hooks would write to /boot, and
# busybox-static would replace a system's busybox. Debs already in DIR/debs are reused.
# On failure DIR/unavailable says why (the test that boots the guest skips with it).
set -Eeuo pipefail
dir=$1
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$dir/debs"
rm -f "$dir/unavailable"
report() { [ -e "$dir/unavailable" ] && return  # (once, also from a subshell)
	echo "$why" > "$dir/unavailable"; echo "luofs: the Linux test guest is not built: $why" >&2; }
trap report ERR

[ "$(uname -m)" = x86_64 ] || { why="it is an x86-64 guest for an x86-64 host"; false; }
sudo=$([ "$(id -u)" = 0 ] || echo sudo)
sandbox=$([ "$(id -u)" != 0 ] || echo "-o APT::Sandbox::User=root")  # (root: no _apt warning)

# The cloud kernel: the smallest of Debian's (no sound, no graphics), fast to boot.
why="apt knows no linux-image-cloud-amd64 (apt-get update?)"
kernel_pkg() { apt-cache depends linux-image-cloud-amd64 2>/dev/null |
	awk '/Depends: linux-image-/ { print $2; exit }'; }
pkg=$(kernel_pkg)
if [ -z "$pkg" ]; then $sudo apt-get update -qq; pkg=$(kernel_pkg); fi
[ -n "$pkg" ]

why="apt-get download $pkg busybox-static failed"
fetch() { ls "$dir"/debs/"$1"_*.deb >/dev/null 2>&1 ||
	(cd "$dir/debs" && apt-get download -qq $sandbox "$1"); }
fetch "$pkg"
fetch busybox-static

why="unpacking the .debs failed"
tmp=$(mktemp -d "$dir/tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
unpack() { mkdir -p "$tmp/$1"  # only what is used (not the kernel's 90 MB of modules)
	dpkg-deb --fsys-tarfile "$(ls "$dir"/debs/"$2"_*.deb | tail -1)" |
		tar -x -C "$tmp/$1" --wildcards "$3"; }
unpack kernel "$pkg" './boot/vmlinuz-*'
unpack busybox busybox-static ./bin/busybox

why="building the initramfs failed (is cpio installed?)"
root=$tmp/initramfs
mkdir -p "$root/bin" "$root/proc" "$root/sys" "$root/dev" "$root/pattern"
cp "$tmp/busybox/bin/busybox" "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
cp "$here/init" "$root/init"
chmod 755 "$root/init"
(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -9 > "$tmp/initramfs.gz"
mv "$tmp/initramfs.gz" "$dir/initramfs.gz"
mv "$tmp"/kernel/boot/vmlinuz-* "$dir/vmlinuz"
echo "$pkg" > "$dir/kernel-package"

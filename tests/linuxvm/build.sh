#!/usr/bin/env bash
# Builds a small Linux VM that exercises the kernel iSCSI initiator
# (open-iscsi + iscsi_tcp) against a Tandem portal: Debian 12's kernel, an
# initramfs with busybox, iscsiadm/iscsid, e2fsprogs, fstrim and dmsetup, and an init
# script (guest-init.sh) that runs the scenario and powers off.
#
#   build.sh OUTDIR     writes OUTDIR/vmlinuz and OUTDIR/initrd.img
#
# The Debian packages come from the machine's apt sources; the user-space
# tools besides open-iscsi are copied from this (Debian 12) host with their
# libraries. Needs root for apt-get download, depmod from kmod, and cpio.
set -euo pipefail
out=${1:?usage: build.sh OUTDIR}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
[ -s "$out/initrd.img" ] && [ -s "$out/vmlinuz" ] && [ "$out/initrd.img" -nt "$here/guest-init.sh" ] && [ "$out/initrd.img" -nt "$here/build.sh" ] && exit 0

need=()
command -v depmod >/dev/null || need+=(kmod)
command -v cpio >/dev/null || need+=(cpio)
command -v mke2fs >/dev/null || need+=(e2fsprogs)
command -v dmsetup >/dev/null || need+=(dmsetup)
[ ${#need[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null

work=$(mktemp -d /tmp/tandem-linuxvm.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"
kernel_pkg() { apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/.*Depends: \(linux-image-[0-9].*\)/\1/p' | head -1; }
download() { (cd "$work" && apt-get download "$kpkg" busybox-static open-iscsi libisns0 libopeniscsiusr >/dev/null 2>&1); }
kpkg=$(kernel_pkg)
if [ -z "$kpkg" ] || ! download; then
	# Package lists may be missing or stale (a fresh machine): refresh once.
	apt-get update -qq >/dev/null 2>&1 || true
	kpkg=$(kernel_pkg)
	[ -n "$kpkg" ] || { echo "build.sh: no linux-image package in the apt sources" >&2; exit 1; }
	download || { echo "build.sh: apt-get download of $kpkg and open-iscsi failed" >&2; exit 1; }
fi
kver=${kpkg#linux-image-}
for d in ./*.deb; do dpkg-deb -x "$d" pkg; done
depmod -b pkg "$kver"

root=$work/initramfs
mkdir -p "$root"/{bin,sbin,etc/iscsi,proc,sys,dev,run,tmp,mnt,var/lib/iscsi,var/lock/iscsi,run/lock/iscsi,lib/modules}
cp pkg/bin/busybox "$root/bin/busybox"
for a in sh mount umount mkdir cat echo sleep ip ls dd md5sum rm sync poweroff insmod grep sed head seq cmp stat df awk wc ps kill date printf cut tr sort od dmesg; do
	ln -sf busybox "$root/bin/$a"
done

# Binaries and the libraries they load.
copy_bin() { # SRC DEST-DIR [LIBPATH]
	local src=$1 dst=$2 lp=${3:-} lib to
	cp -L "$src" "$root/$dst/"
	LD_LIBRARY_PATH=$lp ldd "$src" | awk '/=>/ {print $3} /^\t\/lib64/ {print $1}' | while read -r lib; do
		[ -n "$lib" ] && [ -e "$lib" ] || continue
		to=$lib
		case $lib in "$work"/*) to=/lib/x86_64-linux-gnu/$(basename "$lib") ;; esac
		mkdir -p "$root$(dirname "$to")"
		cp -L "$lib" "$root$to"
	done
}
lp=$work/pkg/usr/lib/x86_64-linux-gnu
for b in iscsiadm iscsid; do copy_bin "pkg/sbin/$b" sbin "$lp"; done
for b in mke2fs e2fsck fstrim blkid dmsetup; do copy_bin "$(command -v $b)" sbin; done
ln -sf mke2fs "$root/sbin/mkfs.ext4"
cp pkg/etc/iscsi/iscsid.conf "$root/etc/iscsi/iscsid.conf"
sed -i 's|^iscsid.startup.*|iscsid.startup = /bin/true|' "$root/etc/iscsi/iscsid.conf"
echo 'root:x:0:0:root:/:/bin/sh' >"$root/etc/passwd"
echo 'root:x:0:' >"$root/etc/group"

# Kernel modules for virtio networking, iSCSI over TCP, SCSI disks, ext4 and
# dm-multipath with the ALUA device handler, in load order.
: >"$root/modules.order"
for m in virtio_pci virtio_net iscsi_tcp sd_mod crc32c_generic ext4 scsi_dh_alua dm_multipath dm_round_robin; do
	modprobe -d pkg -S "$kver" --show-depends "$m" | awk '$1=="insmod"{print $2}'
done | awk '!seen[$0]++' | while read -r ko; do
	base=$(basename "$ko")
	cp "$ko" "$root/lib/modules/$base"
	echo "$base" >>"$root/modules.order"
done

cp "$here/guest-init.sh" "$root/init"
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$out/initrd.img.tmp"
cp "pkg/boot/vmlinuz-$kver" "$out/vmlinuz"
mv "$out/initrd.img.tmp" "$out/initrd.img"
echo "built $out/vmlinuz ($kver) and $out/initrd.img"
